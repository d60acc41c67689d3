//! Cluster DNS: an authoritative `cluster.local.` zone (hickory) rebuilt from Services, their
//! endpoints and Pods on every change. Service names resolve to ready endpoints (all endpoints with
//! `publishNotReadyAddresses`), since there is no kube-proxy behind cluster IPs; named ports get
//! SRV records; `<hostname>.<subdomain>` pods get A records through their headless Service.
//!
//! Endpoints come from EndpointSlices: the apiserver refuses loopback addresses in core/v1
//! Endpoints (so the endpoints controller cannot publish pod IPs here), but accepts them in slices.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, CNAME, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

pub const DOMAIN: &str = "cluster.local.";
/// Short, so that resolvers that cache see a restarted pod's new address at once.
const TTL: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot listen on {address} for cluster DNS: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// The zone's records for these objects (SOA included).
pub fn records(services: &[Service], slices: &[EndpointSlice], pods: &[Pod], serial: u32) -> Vec<Record> {
    let name = |text: &str| Name::from_str(text).ok();
    let mut out = Vec::new();
    if let (Some(origin), Some(ns), Some(admin)) = (
        name(DOMAIN),
        name("ns.dns.cluster.local."),
        name("hostmaster.cluster.local."),
    ) {
        out.push(Record::from_rdata(
            origin,
            TTL,
            RData::SOA(SOA::new(ns, admin, serial, 60, 60, 60, TTL)),
        ));
    }
    let a =
        |owner: &str, ip: Ipv4Addr| name(owner).map(|owner| Record::from_rdata(owner, TTL, RData::A(A(ip))));

    for pod in pods {
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        if let Some(ip) = ip {
            out.extend(a(&format!("{}.{namespace}.pod.{DOMAIN}", dashed(ip)), ip));
        }
    }

    let mut slices_by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .cloned()
            .unwrap_or_default();
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        slices_by_service
            .entry((namespace, service))
            .or_default()
            .push(slice);
    }
    for service in services {
        let namespace = service.metadata.namespace.clone().unwrap_or_default();
        let service_name = service.metadata.name.clone().unwrap_or_default();
        let fqdn = format!("{service_name}.{namespace}.svc.{DOMAIN}");
        let spec = service.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            if let (Some(owner), Some(target)) = (
                name(&fqdn),
                spec.external_name.as_deref().and_then(|t| name(&format!("{t}."))),
            ) {
                out.push(Record::from_rdata(owner, TTL, RData::CNAME(CNAME(target))));
            }
            continue;
        }
        let Some(slices) = slices_by_service.get(&(namespace.clone(), service_name.clone())) else {
            continue;
        };
        for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
            // The controller marks every endpoint ready when the Service publishes not-ready ones.
            let ready = slice
                .endpoints
                .iter()
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false));
            for endpoint in ready {
                for ip in endpoint
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<Ipv4Addr>().ok())
                {
                    out.extend(a(&fqdn, ip));
                    let target = match endpoint.hostname.as_deref().filter(|h| !h.is_empty()) {
                        Some(hostname) => format!("{hostname}.{fqdn}"),
                        None => format!("{}.{fqdn}", dashed(ip)),
                    };
                    out.extend(a(&target, ip));
                    for port in slice.ports.iter().flatten() {
                        let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) else {
                            continue;
                        };
                        let protocol = port.protocol.as_deref().unwrap_or("TCP").to_lowercase();
                        let (Some(owner), Some(target), Some(number)) = (
                            name(&format!("_{port_name}._{protocol}.{fqdn}")),
                            name(&target),
                            port.port.and_then(|p| u16::try_from(p).ok()),
                        ) else {
                            continue;
                        };
                        out.push(Record::from_rdata(
                            owner,
                            TTL,
                            RData::SRV(SRV::new(0, 100, number, target)),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// EndpointSlices in the newest version the server has (discovery.k8s.io/v1beta1 before 1.21).
async fn endpoint_slice_resource(client: &Client) -> ApiResource {
    let version = match client.list_api_groups().await {
        Ok(groups) => groups
            .groups
            .iter()
            .find(|g| g.name == "discovery.k8s.io")
            .and_then(|g| g.preferred_version.as_ref())
            .map(|v| v.version.clone())
            .unwrap_or_else(|| "v1".into()),
        Err(_) => "v1".into(),
    };
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("discovery.k8s.io", &version, "EndpointSlice"),
        "endpointslices",
    )
}

/// The fields DNS reads are the same in v1beta1 and v1 (the v1 type insists on its apiVersion).
fn as_slice(object: &DynamicObject) -> Option<EndpointSlice> {
    let mut value = serde_json::to_value(object).ok()?;
    value["apiVersion"] = serde_json::Value::from("discovery.k8s.io/v1");
    value["kind"] = serde_json::Value::from("EndpointSlice");
    match serde_json::from_value(value) {
        Ok(slice) => Some(slice),
        Err(error) => {
            tracing::warn!(%error, slice = ?object.metadata.name, "cluster DNS: unreadable EndpointSlice");
            None
        }
    }
}

fn log_error<T>(event: Result<T, watcher::Error>) {
    if let Err(error) = event {
        tracing::warn!(%error, "cluster DNS: watch failed; retrying");
    }
}

fn owned<K: Clone>(items: Vec<Arc<K>>) -> Vec<K> {
    items.iter().map(|item| K::clone(item)).collect()
}

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

fn zone_with(records: Vec<Record>, serial: u32) -> InMemoryZoneHandler<TokioRuntimeProvider> {
    let origin = Name::from_str(DOMAIN).unwrap_or_else(|_| Name::root());
    let mut zone = InMemoryZoneHandler::empty(origin, ZoneType::Primary, AxfrPolicy::Deny);
    for record in records {
        zone.upsert_mut(record, serial);
    }
    zone
}

/// The DNS server, listening; `follow` keeps its zone in sync with the API.
pub struct ClusterDns {
    server: Server<Catalog>,
    zone: Arc<InMemoryZoneHandler<TokioRuntimeProvider>>,
    address: Option<SocketAddr>,
}

impl ClusterDns {
    /// Listens on `address` (UDP and TCP) with an empty zone.
    pub async fn bind(address: SocketAddr) -> Result<ClusterDns, DnsError> {
        let listen = |source| DnsError::Listen { address, source };
        let zone = Arc::new(zone_with(records(&[], &[], &[], 1), 1));
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::new(&Name::from_str(DOMAIN).unwrap_or_else(|_| Name::root())),
            vec![zone.clone()],
        );
        let mut server = Server::new(catalog);
        let (udp, tcp) = bind_udp_and_tcp(address).await.map_err(listen)?;
        let address = udp.local_addr().map_err(listen)?;
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 4096);
        Ok(ClusterDns {
            server,
            zone,
            address: Some(address),
        })
    }

    /// Swaps the zone's records for `records` while it is being served.
    pub async fn replace(&self, records: Vec<Record>, serial: u32) {
        let mut rebuilt = zone_with(records, serial);
        *self.zone.records_mut().await = std::mem::take(rebuilt.records_get_mut());
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.address
    }

    /// Rebuilds the zone on every change of Services, Endpoints or Pods, until `shutdown`.
    pub async fn follow(mut self, client: Client, mut shutdown: watch::Receiver<bool>) {
        let (services, services_writer) = reflector::store::<Service>();
        let slice_resource = endpoint_slice_resource(&client).await;
        let slices_writer = reflector::store::Writer::<DynamicObject>::new(slice_resource.clone());
        let slices = slices_writer.as_reader();
        let (pods, pods_writer) = reflector::store::<Pod>();
        let config = watcher::Config::default;
        let changes = futures::stream::select_all([
            reflector::reflector(
                services_writer,
                watcher(Api::<Service>::all(client.clone()), config()),
            )
            .default_backoff()
            .map(log_error)
            .boxed(),
            reflector::reflector(
                slices_writer,
                watcher(
                    Api::<DynamicObject>::all_with(client.clone(), &slice_resource),
                    config(),
                ),
            )
            .default_backoff()
            .map(log_error)
            .boxed(),
            reflector::reflector(pods_writer, watcher(Api::<Pod>::all(client), config()))
                .default_backoff()
                .map(log_error)
                .boxed(),
        ]);
        tokio::pin!(changes);
        let mut serial = 1u32;
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                change = changes.next() => if change.is_none() { break },
            }
            // Let a burst of events (a StatefulSet rolling) settle into one rebuild.
            while let Ok(Some(())) = tokio::time::timeout(Duration::from_millis(20), changes.next()).await {}
            serial = serial.wrapping_add(1);
            let slices: Vec<EndpointSlice> = slices.state().iter().filter_map(|o| as_slice(o)).collect();
            let fresh = records(&owned(services.state()), &slices, &owned(pods.state()), serial);
            tracing::debug!(records = fresh.len(), serial, "cluster DNS zone rebuilt");
            self.replace(fresh, serial).await;
        }
        let _ = self.server.shutdown_gracefully().await;
    }
}

/// UDP and TCP sockets on one address. Port 0 (tests) means any port: TCP takes the one UDP got,
/// and when another program holds that port on TCP, another pair is tried (a few times).
async fn bind_udp_and_tcp(
    address: SocketAddr,
) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let mut attempts = 0;
    loop {
        let udp = tokio::net::UdpSocket::bind(address).await?;
        match tokio::net::TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error)
                if address.port() == 0 && error.kind() == std::io::ErrorKind::AddrInUse && attempts < 10 =>
            {
                attempts += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_server::proto::rr::RecordType;

    fn from_yaml<T: serde::de::DeserializeOwned>(yaml: &str) -> Vec<T> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|doc| T::deserialize(doc).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn records_replaced_while_serving_are_answered() {
        use hickory_resolver::Resolver;
        use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
        let dns = ClusterDns::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = dns.local_addr().unwrap();
        let mut udp = ConnectionConfig::udp();
        udp.port = address.port();
        let mut options = ResolverOpts::default();
        options.cache_size = 0;
        let resolver = Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![NameServerConfig::new(address.ip(), true, vec![udp])]),
            TokioRuntimeProvider::default(),
        )
        .with_options(options)
        .build()
        .unwrap();
        let name = "kv-0.kv.shop.svc.cluster.local.";
        assert!(resolver.lookup_ip(name).await.is_err());
        let slices: Vec<EndpointSlice> = from_yaml(
            "metadata: {name: kv-x, namespace: shop, labels: {kubernetes.io/service-name: kv}}\naddressType: IPv4\n\
             endpoints: [{addresses: [127.10.0.9], hostname: kv-0}]\n",
        );
        let services: Vec<Service> =
            from_yaml("metadata: {name: kv, namespace: shop}\nspec: {clusterIP: None}\n");
        dns.replace(records(&services, &slices, &[], 2), 2).await;
        let found: Vec<_> = resolver.lookup_ip(name).await.unwrap().iter().collect();
        assert_eq!(found, ["127.10.0.9".parse::<std::net::IpAddr>().unwrap()]);
    }

    #[test]
    fn services_endpoints_and_pods_become_records() {
        let services: Vec<Service> = from_yaml(
            r#"
metadata: {name: kv, namespace: shop}
spec: {clusterIP: None, publishNotReadyAddresses: true}
---
metadata: {name: kv-client, namespace: shop}
spec: {clusterIP: 10.96.0.20}
---
metadata: {name: search, namespace: shop}
spec: {type: ExternalName, externalName: search.example.org}
"#,
        );
        let slices: Vec<EndpointSlice> = from_yaml(
            r#"
metadata: {name: kv-abcde, namespace: shop, labels: {kubernetes.io/service-name: kv}}
addressType: IPv4
endpoints:
- {addresses: [127.10.0.2], hostname: kv-0, conditions: {ready: true}}
- {addresses: [127.10.0.3], hostname: kv-1, conditions: {ready: true}}
ports:
- {name: cairn-server, port: 2380, protocol: TCP}
- {port: 9999}
---
metadata: {name: kv-client-fghij, namespace: shop, labels: {kubernetes.io/service-name: kv-client}}
addressType: IPv4
endpoints:
- {addresses: [127.10.0.2], conditions: {ready: true}}
- {addresses: [127.10.0.3], conditions: {ready: false}}
ports: [{name: client, port: 2379}]
---
metadata: {name: kv-ipv6, namespace: shop, labels: {kubernetes.io/service-name: kv}}
addressType: IPv6
endpoints: [{addresses: ["::1"]}]
"#,
        );
        let pods: Vec<Pod> =
            from_yaml("metadata: {name: kv-0, namespace: shop}\nstatus: {podIP: 127.10.0.2}\n");
        let records = records(&services, &slices, &pods, 7);
        let mut listing: Vec<String> = records
            .iter()
            .filter(|r| r.record_type() != RecordType::SOA)
            .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
            .collect();
        listing.sort();
        listing.dedup();
        assert_eq!(
            listing,
            [
                "127-10-0-2.kv-client.shop.svc.cluster.local. A 127.10.0.2",
                "127-10-0-2.shop.pod.cluster.local. A 127.10.0.2",
                "_cairn-server._tcp.kv.shop.svc.cluster.local. SRV 0 100 2380 kv-0.kv.shop.svc.cluster.local.",
                "_cairn-server._tcp.kv.shop.svc.cluster.local. SRV 0 100 2380 kv-1.kv.shop.svc.cluster.local.",
                "_client._tcp.kv-client.shop.svc.cluster.local. SRV 0 100 2379 127-10-0-2.kv-client.shop.svc.cluster.local.",
                "kv-0.kv.shop.svc.cluster.local. A 127.10.0.2",
                "kv-1.kv.shop.svc.cluster.local. A 127.10.0.3",
                "kv-client.shop.svc.cluster.local. A 127.10.0.2",
                "kv.shop.svc.cluster.local. A 127.10.0.2",
                "kv.shop.svc.cluster.local. A 127.10.0.3",
                "search.shop.svc.cluster.local. CNAME search.example.org.",
            ]
        );
        let soa = records
            .iter()
            .find(|r| r.record_type() == RecordType::SOA)
            .unwrap();
        assert!(soa.data.to_string().contains(" 7 "), "{}", soa.data);
    }
}
