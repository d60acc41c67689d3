//! DNS SRV bootstrap: members find each other through `_cairn-server._tcp.<domain>` served by a
//! real authoritative DNS server on a loopback port, and a member missing from the records refuses
//! to start with an error that says so. With `--initial-cluster-size` a member whose peers are not
//! published yet waits for them instead of bootstrapping from part of the cluster. Members with
//! https:// peer URLs find each other under the plain name when `_cairn-server-ssl._tcp` has no
//! records (all a Kubernetes Service can publish), and still talk over TLS.

mod support;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use tempfile::TempDir;

use support::pki::Ca;
use support::{Member, ok};

const DOMAIN: &str = "cairn.test.";

/// An authoritative server for `DOMAIN` on 127.0.0.1, answering SRV records that point at
/// `localhost` (which the members resolve through /etc/hosts, as they would any peer host name).
struct Dns {
    address: SocketAddr,
    _server: Server<Catalog>,
    _runtime: tokio::runtime::Runtime,
}

impl Dns {
    /// `services` maps an SRV owner name (relative to `DOMAIN`) to the peer ports it lists.
    fn serve(services: &[(&str, Vec<u16>)]) -> Dns {
        Dns::serve_on("127.0.0.1:0".parse().unwrap(), services)
    }

    /// The same on a given address, so a test can change the records under the members' feet.
    fn serve_on(address: SocketAddr, services: &[(&str, Vec<u16>)]) -> Dns {
        let origin = Name::from_str(DOMAIN).unwrap();
        let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let soa = SOA::new(
            Name::from_str("ns.cairn.test.").unwrap(),
            Name::from_str("admin.cairn.test.").unwrap(),
            1,
            3600,
            600,
            86400,
            5,
        );
        assert!(zone.upsert_mut(Record::from_rdata(origin.clone(), 5, RData::SOA(soa)), 1));
        for (owner, ports) in services {
            let owner = Name::from_str(&format!("{owner}.{DOMAIN}")).unwrap();
            for port in ports {
                let srv = SRV::new(0, 0, *port, Name::from_str("localhost.").unwrap());
                assert!(zone.upsert_mut(Record::from_rdata(owner.clone(), 5, RData::SRV(srv)), 1));
            }
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (server, address) = runtime.block_on(async {
            // A server just dropped from this address may still hold it for a moment.
            let mut attempts = 0;
            let socket = loop {
                match tokio::net::UdpSocket::bind(address).await {
                    Ok(socket) => break socket,
                    Err(error) if attempts < 50 && error.kind() == std::io::ErrorKind::AddrInUse => {
                        attempts += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(error) => panic!("cannot bind the DNS server to {address}: {error}"),
                }
            };
            let address = socket.local_addr().unwrap();
            let mut server = Server::new(catalog);
            server.register_socket(socket);
            (server, address)
        });
        Dns {
            address,
            _server: server,
            _runtime: runtime,
        }
    }
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

fn discovering_member(root: &TempDir, name: &str, dns: &Dns, service: Option<&str>) -> Member {
    let mut member = Member::new(root.path(), name, "srv-token");
    member.extra_args = vec![
        format!("--discovery-srv={}", DOMAIN.trim_end_matches('.')),
        format!("--discovery-srv-resolver={}", dns.address),
    ];
    if let Some(service) = service {
        member.extra_args.push(format!("--discovery-srv-name={service}"));
    }
    member
}

#[test]
fn three_members_bootstrap_from_srv_records() {
    let root = TempDir::new().unwrap();
    let mut members: Vec<Member> = (0..3)
        .map(|i| Member::new(root.path(), &format!("d{i}"), "srv-token"))
        .collect();
    let ports: Vec<u16> = members.iter().map(|m| port_of(&m.peer_url)).collect();
    let dns = Dns::serve(&[("_cairn-server._tcp", ports)]);
    for member in &mut members {
        let mut discovering = discovering_member(&root, &member.name, &dns, None);
        discovering.client_url = member.client_url.clone();
        discovering.peer_url = member.peer_url.clone();
        *member = discovering;
        member.start();
    }
    let endpoints: String = members.iter().map(Member::endpoint).collect::<Vec<_>>().join(",");
    let log_paths: Vec<_> = members.iter().map(|m| m.log.clone()).collect();
    let logs = || joined_logs(&log_paths);

    let listed = wait_for_one_cluster(&members, &logs);
    let peer_urls: Vec<String> = members
        .iter()
        .map(|m| format!("http://localhost:{}", port_of(&m.peer_url)))
        .collect();
    for url in &peer_urls {
        assert!(listed.contains(url.as_str()), "{url} missing from\n{listed}");
    }
    ok(&members[0].endpoint(), &["put", "found", "through-dns"]);
    for member in &members {
        let value = ok(&member.endpoint(), &["get", "found", "--print-value-only"]);
        assert_eq!(value.trim(), "through-dns");
    }

    // A restart does not ask DNS again: the data dir knows the cluster.
    drop(dns);
    members[1].kill9();
    members[1].start();
    for _ in 0..100 {
        let out = support::etcdctl(&members[1].endpoint(), &["get", "found", "--print-value-only"]);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "through-dns" {
            ok(&endpoints, &["put", "after-restart", "1"]);
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("restarted member did not rejoin without DNS\n{}", logs());
}

#[test]
fn tls_peers_found_under_the_plain_srv_name_talk_over_tls() {
    let root = TempDir::new().unwrap();
    let ca = Ca::new("cairn test CA");
    let ca_file = ca.write(&root.path().join("ca.crt"));
    let mut members: Vec<Member> = (0..3)
        .map(|i| Member::new(root.path(), &format!("d{i}"), "srv-token"))
        .collect();
    let ports: Vec<u16> = members.iter().map(|m| port_of(&m.peer_url)).collect();
    // Only the plain name has records, as under a Kubernetes headless Service.
    let dns = Dns::serve(&[("_cairn-server._tcp", ports.clone())]);
    for member in &mut members {
        let pair = ca.issue(root.path(), &member.name, "member");
        let mut discovering = discovering_member(&root, &member.name, &dns, None);
        discovering.client_url = member.client_url.clone();
        discovering.peer_url = member.peer_url.replacen("http://", "https://", 1);
        discovering.extra_args.extend([
            format!("--peer-cert-file={}", pair.cert.display()),
            format!("--peer-key-file={}", pair.key.display()),
            format!("--peer-trusted-ca-file={}", ca_file.display()),
            "--peer-client-cert-auth".into(),
        ]);
        *member = discovering;
        member.start();
    }
    let log_paths: Vec<_> = members.iter().map(|m| m.log.clone()).collect();
    let logs = || joined_logs(&log_paths);

    let listed = wait_for_one_cluster(&members, &logs);
    for port in ports {
        let url = format!("https://localhost:{port}");
        assert!(listed.contains(&url), "{url} missing from\n{listed}");
    }
    ok(&members[0].endpoint(), &["put", "found", "over-tls"]);
    for member in &members {
        let value = ok(&member.endpoint(), &["get", "found", "--print-value-only"]);
        assert_eq!(value.trim(), "over-tls");
    }
}

/// Waits until every member sees the same three members d0, d1, d2; returns the member list.
fn wait_for_one_cluster(members: &[Member], logs: &dyn Fn() -> String) -> String {
    let mut listed = String::new();
    for _ in 0..100 {
        let out = support::etcdctl(&members[2].endpoint(), &["member", "list"]);
        listed = String::from_utf8_lossy(&out.stdout).into_owned();
        if ["d0", "d1", "d2"]
            .iter()
            .all(|name| listed.contains(&format!(", {name}, ")))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for name in ["d0", "d1", "d2"] {
        assert!(
            listed.contains(&format!(", {name}, ")),
            "{name} missing from\n{listed}\n{}",
            logs()
        );
    }
    for member in members {
        let other = ok(&member.endpoint(), &["member", "list"]);
        assert_eq!(
            sorted_lines(&other),
            sorted_lines(&listed),
            "members disagree\n{}",
            logs()
        );
    }
    listed
}

#[test]
fn members_wait_until_the_records_list_the_whole_initial_cluster() {
    let root = TempDir::new().unwrap();
    let ports: Vec<u16> = (0..3)
        .map(|i| port_of(&Member::new(root.path(), &format!("p{i}"), "srv-token").peer_url))
        .collect();
    // At first only d0's pod is published.
    let dns = Dns::serve(&[("_cairn-server._tcp", vec![ports[0]])]);
    let mut members: Vec<Member> = (0..3)
        .map(|i| {
            let mut member = discovering_member(&root, &format!("d{i}"), &dns, None);
            member.peer_url = format!("http://127.0.0.1:{}", ports[i]);
            member.extra_args.push("--initial-cluster-size=3".to_owned());
            member
        })
        .collect();
    members[0].start();
    let waiting = "SRV records _cairn-server._tcp.cairn.test. list 1 members but --initial-cluster-size is 3";
    let mut log = String::new();
    for _ in 0..100 {
        log = std::fs::read_to_string(&members[0].log).unwrap_or_default();
        if log.contains(waiting) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(log.contains(waiting), "{log}");
    assert!(
        !members[0].data_dir.exists(),
        "a waiting member must not have bootstrapped anything"
    );

    // The other pods are published; every member finds all three and they form one cluster.
    let address = dns.address;
    drop(dns);
    let _dns = Dns::serve_on(address, &[("_cairn-server._tcp", ports.clone())]);
    members[1].start();
    members[2].start();
    let log_paths: Vec<_> = members.iter().map(|m| m.log.clone()).collect();
    let logs = || joined_logs(&log_paths);
    wait_for_one_cluster(&members, &logs);
    ok(&members[0].endpoint(), &["put", "whole", "cluster"]);
}

/// The members' logs, one after the other, for a failure message.
fn joined_logs(paths: &[std::path::PathBuf]) -> String {
    paths
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n----\n")
}

fn sorted_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines
}

#[test]
fn member_missing_from_srv_records_refuses_to_start() {
    let root = TempDir::new().unwrap();
    let listed = Member::new(root.path(), "listed", "srv-token");
    let dns = Dns::serve(&[("_cairn-server-blue._tcp", vec![port_of(&listed.peer_url)])]);

    let mut stranger = discovering_member(&root, "stranger", &dns, Some("blue"));
    stranger.start();
    let (status, log) = stranger
        .wait_exit(Duration::from_secs(20))
        .expect("stranger must exit");
    assert!(!status.success());
    assert!(
        log.contains(
            "cannot find local member \"stranger\" in SRV records _cairn-server-blue._tcp.cairn.test."
        ),
        "{log}"
    );
    assert!(
        !stranger.data_dir.exists(),
        "nothing may be written before the error"
    );

    // Without `--discovery-srv-name blue` the records are not there at all.
    let mut unnamed = discovering_member(&root, "listed", &dns, None);
    unnamed.peer_url = listed.peer_url.clone();
    unnamed.start();
    let (status, log) = unnamed.wait_exit(Duration::from_secs(20)).expect("must exit");
    assert!(!status.success());
    assert!(
        log.contains("DNS SRV lookup of _cairn-server._tcp.cairn.test. failed"),
        "{log}"
    );
}
