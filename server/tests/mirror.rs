//! make-mirror from one Cairn cluster to another, with etcdctl 3.4 and with cairnctl: the copy at
//! one revision, then every later put and delete, under the prefix the user chose; and the way in
//! from etcd that the README describes, from Debian's etcd 3.4 into Cairn.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{Cluster, Etcd, etcdctl_path, ok, wait_until};

fn keys_and_values(endpoint: &str, prefix: &str) -> String {
    ok(endpoint, &["get", prefix, "--prefix"])
}

/// Writes, starts the mirror, writes and deletes more, and waits for the destination to match.
fn mirrors(start: impl FnOnce(&str, &str) -> Child, source_prefix: &str, dest_prefix: &str) {
    let source = Cluster::start(1, "mirror-source");
    let destination = Cluster::start(1, "mirror-destination");
    let (from, to) = (source.endpoints(), destination.endpoints());
    for i in 0..30 {
        ok(
            &from,
            &["put", &format!("{source_prefix}{i:02}"), &format!("v{i}")],
        );
    }
    ok(&from, &["put", "elsewhere", "not mirrored"]);
    let mut mirror = start(&from, &to);
    for i in 25..35 {
        ok(
            &from,
            &["put", &format!("{source_prefix}{i:02}"), &format!("w{i}")],
        );
    }
    ok(&from, &["del", &format!("{source_prefix}0"), "--prefix"]);
    let expected = keys_and_values(&from, source_prefix).replace(source_prefix, dest_prefix);
    assert!(expected.contains(&format!("{dest_prefix}34\nw34\n")));
    wait_until(
        "the destination to match the source",
        Duration::from_secs(20),
        || keys_and_values(&to, dest_prefix) == expected,
    );
    assert!(ok(&to, &["get", "elsewhere"]).is_empty());
    let _ = mirror.kill();
    let _ = mirror.wait();
}

#[test]
fn etcdctl_make_mirror_copies_and_follows_a_cairn_cluster() {
    mirrors(
        |from, to| {
            Command::new(etcdctl_path())
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={from}"))
                .args(["make-mirror", "--prefix=m/", to])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        },
        "m/",
        "m/",
    );
}

#[test]
fn cairnctl_make_mirror_moves_keys_to_another_prefix() {
    mirrors(
        |from, to| {
            Command::new(env!("CARGO_BIN_EXE_cairnctl"))
                .arg(format!("--endpoints={from}"))
                .args(["make-mirror", "--prefix=m/", "--dest-prefix=copy/", to])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        },
        "m/",
        "copy/",
    );
}

/// Turns auth on with a root user of this password.
fn secure(endpoint: &str, root_password: &str) {
    for args in [
        &["user", "add", &format!("root:{root_password}")][..],
        &["user", "grant-role", "root", "root"],
        &["auth", "enable"],
    ] {
        ok(endpoint, args);
    }
}

#[test]
fn cairnctl_make_mirror_logs_in_to_each_side_as_its_own_user() {
    let source = Cluster::start(1, "mirror-auth-source");
    let destination = Cluster::start(1, "mirror-auth-destination");
    let (from, to) = (source.endpoints(), destination.endpoints());
    secure(&from, "sourcepw");
    secure(&to, "destpw");
    ok(&from, &["--user=root:sourcepw", "put", "m/1", "before"]);
    let mut mirror = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .arg(format!("--endpoints={from}"))
        .args(["--user=root:sourcepw", "make-mirror", "--prefix=m/"])
        .args(["--dest-user", "root", "--dest-password", "destpw", &to])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ok(&from, &["--user=root:sourcepw", "put", "m/2", "after"]);
    wait_until(
        "the destination to hold both keys",
        Duration::from_secs(20),
        || ok(&to, &["--user=root:destpw", "get", "m/", "--prefix"]) == "m/1\nbefore\nm/2\nafter\n",
    );
    let _ = mirror.kill();
    let _ = mirror.wait();
}

/// The README's cut-over from etcd without a stop: mirror everything, keep writing to etcd, stop
/// writing, wait for the mirror to catch up; Cairn then holds exactly etcd's keys and values.
#[test]
fn cairnctl_make_mirror_moves_an_etcd_into_cairn_while_it_takes_writes() {
    let etcd = Etcd::start();
    let cairn = Cluster::start(1, "mirror-from-etcd");
    let (from, to) = (etcd.endpoint(), cairn.endpoints());
    for i in 0..40 {
        ok(&from, &["put", &format!("config/{i:02}"), &format!("v{i}")]);
    }
    let lease = ok(&from, &["lease", "grant", "600"]);
    let lease = lease.split_whitespace().nth(1).unwrap().to_owned();
    ok(
        &from,
        &["put", "service/a", "10.0.0.1", &format!("--lease={lease}")],
    );
    let mut mirror = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .arg(format!("--endpoints={from}"))
        .args(["make-mirror", &to])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Writes go on while the mirror copies and follows.
    for i in 30..60 {
        ok(&from, &["put", &format!("config/{i:02}"), &format!("w{i}")]);
    }
    ok(&from, &["del", "config/0", "--prefix"]);
    // Writes stop: the cut-over waits for Cairn to hold what etcd holds.
    let everything = |endpoint: &str| ok(endpoint, &["get", "", "--from-key"]);
    let expected = everything(&from);
    assert!(expected.contains("config/59\nw59\n") && expected.contains("service/a\n"));
    assert!(!expected.contains("config/05"));
    wait_until("Cairn to hold etcd's keys", Duration::from_secs(20), || {
        everything(&to) == expected
    });
    let _ = mirror.kill();
    let _ = mirror.wait();
}
