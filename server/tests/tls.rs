//! TLS on both ports with etcd's flags, through the clients users have: etcdctl 3.4 with client
//! certificates, a plaintext or certificate-less client refused, peers with a certificate from
//! another CA (or another name) refused before any message, and certificates rotated by replacing
//! their files taking effect without a restart while running clients keep working.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::pki::{Ca, Pair};
use support::{Member, etcdctl_path, free_port, wait_or_explain};

/// etcdctl against `endpoint` presenting `identity` (or no certificate), trusting `ca`.
fn etcdctl_tls(endpoint: &str, ca: &Path, identity: Option<&Pair>, args: &[&str]) -> Output {
    let mut command = Command::new(etcdctl_path());
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg(format!("--cacert={}", ca.display()))
        .arg("--dial-timeout=2s")
        .arg("--command-timeout=5s");
    if let Some(identity) = identity {
        command
            .arg(format!("--cert={}", identity.cert.display()))
            .arg(format!("--key={}", identity.key.display()));
    }
    command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct TlsCluster {
    _root: tempfile::TempDir,
    members: Vec<Member>,
    ca: PathBuf,
    client: Pair,
    dir: PathBuf,
}

impl TlsCluster {
    /// `size` members with TLS and certificate authentication on both ports; every member's
    /// certificate is named `member`, and peers must present that name.
    fn start(size: usize, token: &str) -> TlsCluster {
        let root = tempfile::TempDir::new().unwrap();
        let dir = root.path().to_owned();
        let ca = Ca::new("cairn test CA");
        let ca_file = ca.write(&dir.join("ca.crt"));
        let client = ca.issue(&dir, "client", "alice");
        let mut members: Vec<Member> = (0..size)
            .map(|i| {
                let mut member = Member::new(&dir, &format!("m{i}"), token);
                member.client_url = format!("https://127.0.0.1:{}", free_port());
                member.peer_url = format!("https://127.0.0.1:{}", free_port());
                let pair = ca.issue(&dir, &member.name, "member");
                member.extra_args = [
                    format!("--cert-file={}", pair.cert.display()),
                    format!("--key-file={}", pair.key.display()),
                    format!("--trusted-ca-file={}", ca_file.display()),
                    "--client-cert-auth".into(),
                    format!("--peer-cert-file={}", pair.cert.display()),
                    format!("--peer-key-file={}", pair.key.display()),
                    format!("--peer-trusted-ca-file={}", ca_file.display()),
                    "--peer-client-cert-auth".into(),
                    "--peer-cert-allowed-cn=member".into(),
                ]
                .to_vec();
                member
            })
            .collect();
        support::start_as_one_cluster(&mut members);
        let cluster = TlsCluster {
            _root: root,
            members,
            ca: ca_file,
            client,
            dir,
        };
        for member in &cluster.members {
            wait_or_explain(
                &format!("{} answers etcdctl over TLS", member.name),
                Duration::from_secs(30),
                || cluster.ctl(member, &["endpoint", "health"]).status.success(),
                || cluster.logs(),
            );
        }
        cluster
    }

    fn ctl(&self, member: &Member, args: &[&str]) -> Output {
        etcdctl_tls(&member.client_url, &self.ca, Some(&self.client), args)
    }

    fn ok(&self, member: &Member, args: &[&str]) -> String {
        let out = self.ctl(member, args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}\n{}",
            text(&out),
            self.logs()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn logs(&self) -> String {
        support::logs_of(&self.members)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A TLS client handshake with `port` trusting `ca_pem`, presenting `identity` if given; the
/// served certificate's common name, or why the connection failed. A refused client certificate
/// shows as a failure to read after the handshake (TLS 1.3 sends the server's verdict then).
fn handshake(port: u16, ca: &Path, identity: Option<&Pair>) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(pair) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&pair.cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(&pair.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    runtime().block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        // An HTTP/2 preface: a server that accepted this client answers with its SETTINGS frame.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut first = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut first))
            .await
            .map_err(|_| "no answer".to_owned())?
            .map_err(|e| format!("read: {e}"))?;
        Ok(cairn::tls::certificate_common_name(&served).unwrap_or_default())
    })
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn a_cluster_with_tls_on_both_ports_serves_etcdctl_with_client_certificates_only() {
    let cluster = TlsCluster::start(3, "tls-both");
    let [first, _, last] = &cluster.members[..] else {
        unreachable!()
    };

    // Written through one member and read linearizably through another: peers talk over TLS.
    cluster.ok(first, &["put", "greeting", "over tls"]);
    assert_eq!(
        cluster.ok(last, &["get", "greeting", "--print-value-only"]),
        "over tls\n"
    );
    let members = cluster.ok(first, &["member", "list"]);
    assert_eq!(members.matches("https://127.0.0.1:").count(), 6, "{members}");

    // cairnctl takes etcdctl's TLS flags.
    let cairnctl = |identity: Option<&Pair>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cairnctl"));
        command
            .arg(format!("--endpoints={}", last.client_url))
            .arg(format!("--cacert={}", cluster.ca.display()));
        if let Some(pair) = identity {
            command
                .arg(format!("--cert={}", pair.cert.display()))
                .arg(format!("--key={}", pair.key.display()));
        }
        command
            .args(["get", "greeting", "--print-value-only"])
            .output()
            .unwrap()
    };
    let out = cairnctl(Some(&cluster.client));
    assert_eq!(text(&out), "over tls\n");
    assert!(!cairnctl(None).status.success());

    // The JSON gateway over TLS, as curl users reach it.
    let curl = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(&cluster.ca)
        .arg("--cert")
        .arg(&cluster.client.cert)
        .arg("--key")
        .arg(&cluster.client.key)
        .arg(format!("{}/v3/kv/range", last.client_url))
        .args(["-X", "POST", "-d", r#"{"key":"Z3JlZXRpbmc="}"#])
        .output()
        .expect("run curl (apt-get install curl)");
    let answer: serde_json::Value = serde_json::from_slice(&curl.stdout).unwrap_or_default();
    assert_eq!(answer["kvs"][0]["value"], "b3ZlciB0bHM=", "{}", text(&curl));

    // No client certificate: refused.
    let anonymous = etcdctl_tls(&first.client_url, &cluster.ca, None, &["get", "greeting"]);
    assert!(!anonymous.status.success(), "{}", text(&anonymous));
    assert!(!text(&anonymous).contains("over tls"));
    // Plaintext against the TLS port: refused.
    let plain_url = first.client_url.replace("https://", "http://");
    let plain = support::etcdctl(&plain_url, &["get", "greeting"]);
    assert!(!plain.status.success(), "{}", text(&plain));
    // A certificate from another CA: refused.
    let stranger = Ca::new("another CA").issue(&cluster.dir, "stranger", "alice");
    let foreign = etcdctl_tls(
        &first.client_url,
        &cluster.ca,
        Some(&stranger),
        &["get", "greeting"],
    );
    assert!(!foreign.status.success(), "{}", text(&foreign));
    // And the TLS handshake itself, as a client sees it.
    let port = port_of(&first.client_url);
    assert_eq!(
        handshake(port, &cluster.ca, Some(&cluster.client)),
        Ok("member".into())
    );
    assert!(handshake(port, &cluster.ca, None).is_err());
    assert!(handshake(port, &cluster.ca, Some(&stranger)).is_err());
}

/// With `--client-cert-auth` and auth on, a client certificate's common name is its user, as in
/// etcd: alice's certificate reaches alice's keys only, and a token (`--user`) takes precedence.
#[test]
fn a_client_certificates_common_name_is_its_user_once_auth_is_on() {
    let cluster = TlsCluster::start(1, "tls-cn-auth");
    let member = &cluster.members[0];
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "add", "alice:unused"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "/app/",
            "--prefix=true",
        ],
        &["user", "grant-role", "alice", "app"],
        &["auth", "enable"],
    ] {
        cluster.ok(member, args);
    }
    // The certificate names alice: her prefix only, and no root work.
    assert_eq!(cluster.ok(member, &["put", "/app/x", "by certificate"]), "OK\n");
    for denied in [
        &["put", "/other", "nope"][..],
        &["get", "/other"],
        &["user", "list"],
    ] {
        let out = cluster.ctl(member, denied);
        assert!(!out.status.success(), "{denied:?}: {}", text(&out));
        assert!(
            text(&out).contains("Error: etcdserver: permission denied"),
            "{denied:?}: {}",
            text(&out)
        );
    }
    // A token says who the caller is over the certificate.
    assert_eq!(
        cluster.ok(member, &["--user=root:rootpw", "put", "/other", "by root"]),
        "OK\n"
    );
    assert_eq!(
        cluster.ok(member, &["get", "/app/x", "--print-value-only"]),
        "by certificate\n"
    );
}

#[test]
fn peers_without_a_certificate_of_the_peer_ca_and_the_allowed_name_are_refused() {
    let cluster = TlsCluster::start(1, "tls-peers");
    let member = &cluster.members[0];
    let peer_port = port_of(&member.peer_url);
    let ca = Ca::new("another CA");
    // The peer port accepts a member certificate (the check below can pass)…
    let ours = cluster.dir.join("m0.crt");
    let ours = Pair {
        key: ours.with_extension("key"),
        cert: ours,
    };
    assert_eq!(
        handshake(peer_port, &cluster.ca, Some(&ours)),
        Ok("member".into())
    );
    // …and refuses no certificate, one from another CA, and one of the right CA for another name.
    let anonymous = handshake(peer_port, &cluster.ca, None);
    assert!(anonymous.is_err(), "{anonymous:?}");
    let stranger = ca.issue(&cluster.dir, "stranger", "member");
    let foreign = handshake(peer_port, &cluster.ca, Some(&stranger));
    assert!(foreign.is_err(), "{foreign:?}");
    let misnamed = handshake(peer_port, &cluster.ca, Some(&cluster.client));
    assert!(misnamed.is_err(), "{misnamed:?}");
    let log = std::fs::read_to_string(&member.log).unwrap();
    assert!(
        log.contains("certificate common name Some(\"alice\") is not the allowed \"member\""),
        "{log}"
    );

    // Through the peer client a member would use, a foreign member cannot even ask who is in
    // the cluster.
    let files = |pair: &Pair| cairn::tls::TlsFiles {
        cert: pair.cert.clone(),
        key: pair.key.clone(),
        trusted_ca: Some(cluster.ca.clone()),
        client_cert_auth: true,
        min_version: cairn::tls::TlsVersion::Tls12,
    };
    let ask = |pair: &Pair| {
        let tls = Arc::new(cairn::tls::ClientTls::new(&files(pair)).unwrap());
        let client = cairn::network::PeerClient::new(0, 0, 1 << 20, Some(tls));
        let own_urls = [member.peer_url.clone()];
        runtime().block_on(client.cluster_info(&member.peer_url, Duration::from_secs(3), &own_urls))
    };
    assert!(ask(&ours).is_ok());
    let refused = ask(&stranger).unwrap_err();
    assert!(
        matches!(
            refused,
            cairn::network::PeerError::NotDelivered { .. } | cairn::network::PeerError::Unreachable { .. }
        ),
        "{refused}"
    );
    assert!(ask(&cluster.client).is_err());
    // The member served on, untouched.
    cluster.ok(member, &["put", "k", "v"]);
}

/// Replaces a file the way a Secret volume update does: the new content appears at once.
fn replace(path: &Path, content: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, content).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

#[test]
fn rotated_certificates_take_effect_without_a_restart_and_running_clients_keep_working() {
    let cluster = TlsCluster::start(1, "tls-rotation");
    let member = &cluster.members[0];
    let port = port_of(&member.client_url);
    let ca = std::fs::read_to_string(&cluster.ca).unwrap();
    assert_eq!(
        handshake(port, &cluster.ca, Some(&cluster.client)),
        Ok("member".into())
    );

    // A watch over a connection opened before the rotation.
    let mut watch: Child = Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", member.client_url))
        .arg(format!("--cacert={}", cluster.ca.display()))
        .arg(format!("--cert={}", cluster.client.cert.display()))
        .arg(format!("--key={}", cluster.client.key.display()))
        .args(["watch", "rotated"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // A rotation caught half-written keeps the certificate in use.
    let cert = cluster.dir.join("m0.crt");
    let key = cluster.dir.join("m0.key");
    replace(&cert, "-----BEGIN CERTIFICATE-----\nnot yet\n");
    assert_eq!(
        handshake(port, &cluster.ca, Some(&cluster.client)),
        Ok("member".into())
    );

    // The new certificate, from a new CA that clients are given alongside the old one.
    let next = Ca::new("next CA");
    let (new_cert, new_key) = next.issue_pem("member-rotated");
    replace(&key, &new_key);
    replace(&cert, &new_cert);
    let both = cluster.dir.join("both.crt");
    std::fs::write(&both, format!("{ca}{}", next.cert_pem)).unwrap();
    assert_eq!(
        handshake(port, &both, Some(&cluster.client)),
        Ok("member-rotated".into())
    );
    // New clients that only trust the old CA are now refused the new certificate.
    assert!(handshake(port, &cluster.ca, Some(&cluster.client)).is_err());

    let put = etcdctl_tls(
        &member.client_url,
        &both,
        Some(&cluster.client),
        &["put", "rotated", "yes"],
    );
    assert!(put.status.success(), "{}\n{}", text(&put), cluster.logs());
    // The watch opened before the rotation sees the write.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stdout = watch.stdout.take().unwrap();
    let seen = std::thread::spawn(move || {
        use std::io::Read;
        let mut seen = String::new();
        let mut buf = [0u8; 256];
        while !seen.contains("yes") && Instant::now() < deadline {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        seen
    });
    std::thread::sleep(Duration::from_secs(2));
    let _ = watch.kill();
    let _ = watch.wait();
    let seen = seen.join().unwrap();
    assert_eq!(seen, "PUT\nrotated\nyes\n");
    let log = std::fs::read_to_string(&member.log).unwrap();
    assert!(
        log.contains("TLS certificates changed but cannot be read"),
        "{log}"
    );
    assert!(
        log.contains("TLS certificates changed; using the new ones"),
        "{log}"
    );
}

/// The member IDs (hex, as etcdctl takes them) and peer URLs of the cluster at `endpoints`.
fn peer_urls(endpoints: &str) -> Vec<(String, String)> {
    let listed = support::ok(endpoints, &["member", "list", "-w", "json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    listed["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                format!("{:x}", m["ID"].as_u64().unwrap()),
                m["peerURLs"][0].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// What a plaintext HTTP/1.1 request to `port` gets back, if anything.
fn plaintext_answer(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    stream
        .write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.starts_with("HTTP/").then_some(text)
}

#[test]
fn a_running_cluster_moves_its_peers_to_tls_one_member_at_a_time() {
    let mut cluster = support::Cluster::start(3, "peer-tls-move");
    cluster.wait_healthy(Duration::from_secs(30));
    let endpoints = cluster.endpoints();
    support::ok(&endpoints, &["put", "before", "1"]);
    let dir = cluster.root.path().to_owned();
    let ca = Ca::new("cairn test CA");
    let ca_file = ca.write(&dir.join("peer-ca.crt"));
    let ports: Vec<u16> = cluster.members.iter().map(|m| port_of(&m.peer_url)).collect();
    let first_flags: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.initial_cluster.clone())
        .collect();
    assert!(first_flags.iter().all(|flags| flags.contains("http://")));
    let restart = |cluster: &mut support::Cluster, i: usize, listen: String| {
        let member = &mut cluster.members[i];
        member.kill9();
        let pair = ca.issue(&dir, &member.name, "member");
        member.peer_url = listen;
        // A member with data knows its cluster by the member list: it keeps the
        // --initial-cluster of its first start (http://), as a deployment's config file does,
        // and starts although its advertised URLs now differ from it.
        member.initial_cluster = first_flags[i].clone();
        member.extra_args = vec![
            format!("--peer-cert-file={}", pair.cert.display()),
            format!("--peer-key-file={}", pair.key.display()),
            format!("--peer-trusted-ca-file={}", ca_file.display()),
            "--peer-client-cert-auth".into(),
        ];
        member.start();
        // Each member is back, and the cluster quorate, before the next one goes.
        cluster.wait_healthy(Duration::from_secs(30));
    };

    // 1. Each peer port serves both schemes: peers still dial its http:// URL.
    for (i, port) in ports.iter().enumerate() {
        restart(
            &mut cluster,
            i,
            format!("http://127.0.0.1:{port},https://127.0.0.1:{port}"),
        );
        assert!(plaintext_answer(*port).is_some(), "the port serves both");
    }
    // 2. The members' URLs become https://: peers dial them over TLS from now on.
    for (id, url) in peer_urls(&endpoints) {
        let tls_url = url.replacen("http://", "https://", 1);
        support::ok(
            &endpoints,
            &["member", "update", &id, &format!("--peer-urls={tls_url}")],
        );
        support::ok(&endpoints, &["put", &format!("after-update-{id}"), "1"]);
    }
    // 3. Each peer port serves TLS only, and the leader of the time reaches each restarted
    // member there (it must dial the URL the member list has now, not the one it first dialed).
    for (i, port) in ports.iter().enumerate() {
        restart(&mut cluster, i, format!("https://127.0.0.1:{port}"));
        let key = format!("after-restart-{i}");
        support::ok(&endpoints, &["put", &key, "1"]);
        let member = cluster.members[i].endpoint();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while support::ok(&member, &["get", &key, "--consistency=s", "--print-value-only"]) != "1\n" {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never received {key}:\n{}",
                cluster.members[i].name,
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let urls: Vec<String> = peer_urls(&endpoints).into_iter().map(|(_, url)| url).collect();
    assert!(urls.iter().all(|u| u.starts_with("https://")), "{urls:?}");
    for port in &ports {
        assert_eq!(
            plaintext_answer(*port),
            None,
            "port {port} still answers plaintext"
        );
    }
    support::ok(&endpoints, &["put", "after", "1"]);
    for member in &cluster.members {
        let value = support::ok(&member.endpoint(), &["get", "before", "--print-value-only"]);
        assert_eq!(value, "1\n", "{}", member.name);
    }
}
