//! The names, labels and addresses every object of one cluster shares, derived from the
//! KVCluster's name and namespace (and the scheme its peers speak), so that every builder agrees
//! on them.

use std::collections::BTreeMap;

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
/// Port names are part of the contract: the headless Service's `cairn-server` port is what makes
/// Kubernetes publish the `_cairn-server._tcp` SRV records that `--discovery-srv` reads. Members
/// with https:// peer URLs read them too when `_cairn-server-ssl._tcp` has no records, as it
/// cannot have here: port names are at most 15 characters.
pub const PEER_PORT_NAME: &str = "cairn-server";
pub const CLIENT_PORT_NAME: &str = "cairn-client";
pub const DATA_DIR: &str = "/var/lib/cairn";
pub const BOOTSTRAP_DIR: &str = "/etc/cairn/bootstrap";
/// Where members find their peer certificate, key and CA (the peer TLS Secret's keys).
pub const PEER_TLS_DIR: &str = "/etc/cairn/peer-tls";
/// Where members find their client-port certificate, key and the CA clients must be from.
pub const CLIENT_TLS_DIR: &str = "/etc/cairn/client-tls";
/// The plain HTTP port (health, version, metrics) probes use once the client port wants
/// certificates; etcd's conventional `--listen-metrics-urls` port.
pub const METRICS_PORT: u16 = 2381;
pub const METRICS_PORT_NAME: &str = "cairn-metrics";

const APP_LABEL: &str = "app.kubernetes.io/name";
const APP: &str = "cairn";
const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

/// A label query for the member pods of every cluster.
pub const MEMBER_PODS: &str = "app.kubernetes.io/name=cairn,app.kubernetes.io/instance";

/// The name of the cluster a member pod belongs to, from the pod's labels; None for other pods.
pub fn cluster_of_member(labels: &BTreeMap<String, String>) -> Option<&str> {
    if labels.get(APP_LABEL)?.as_str() != APP {
        return None;
    }
    labels.get(INSTANCE_LABEL).map(String::as_str)
}

/// How members reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerScheme {
    /// http:// peer URLs, no certificates.
    Plain,
    /// A plaintext cluster on its way to TLS: members listen under both schemes on one port
    /// with their certificates, new members are added under http://, and the member list holds
    /// both while members' URLs change to https:// one at a time.
    Moving,
    /// https:// peer URLs; a peer without a certificate from the cluster's CA is refused.
    Tls,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub cluster: String,
    pub namespace: String,
    pub peer_scheme: PeerScheme,
}

impl Names {
    pub fn new(cluster: &str, namespace: &str) -> Names {
        Names {
            cluster: cluster.to_owned(),
            namespace: namespace.to_owned(),
            peer_scheme: PeerScheme::Plain,
        }
    }

    /// The names of the cluster `spec` describes, with its peers' scheme.
    pub fn of(spec: &crate::validate::ValidSpec) -> Names {
        let peer_scheme = match (spec.peer_tls, spec.peer_move) {
            (true, _) => PeerScheme::Tls,
            (false, true) => PeerScheme::Moving,
            (false, false) => PeerScheme::Plain,
        };
        Names {
            peer_scheme,
            ..Names::new(&spec.name, &spec.namespace)
        }
    }

    /// The same cluster's names once its peers are on TLS.
    pub fn on_tls(&self) -> Names {
        Names {
            peer_scheme: PeerScheme::Tls,
            ..self.clone()
        }
    }

    /// The scheme of the peer URLs members are added and start under.
    fn url_scheme(&self) -> &'static str {
        match self.peer_scheme {
            PeerScheme::Plain | PeerScheme::Moving => "http",
            PeerScheme::Tls => "https",
        }
    }

    /// Members hold peer certificates (on TLS, or moving there).
    pub fn peer_certificates(&self) -> bool {
        self.peer_scheme != PeerScheme::Plain
    }

    /// The Secret holding the cluster's own CA (certificate and key).
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.cluster)
    }

    /// The Secret the members' peer certificate, key and CA certificate are mounted from.
    pub fn peer_tls_secret(&self) -> String {
        format!("{}-peer-tls", self.cluster)
    }

    /// The Secret the members' client-port certificate, key and CA certificate are mounted from.
    pub fn server_tls_secret(&self) -> String {
        format!("{}-server-tls", self.cluster)
    }

    /// The Secret holding the operator's own client certificate for the cluster.
    pub fn operator_tls_secret(&self) -> String {
        format!("{}-operator-tls", self.cluster)
    }

    /// Every Secret the operator keeps for the cluster under a name of its choosing.
    pub fn operator_secrets(&self) -> Vec<String> {
        vec![
            self.ca_secret(),
            self.peer_tls_secret(),
            self.server_tls_secret(),
            self.operator_tls_secret(),
            self.root_password_secret(),
            self.operator_credentials_secret(),
        ]
    }

    /// The StatefulSet, the client Service and the PodDisruptionBudget share the cluster's name.
    pub fn statefulset(&self) -> String {
        self.cluster.clone()
    }

    pub fn client_service(&self) -> String {
        self.cluster.clone()
    }

    pub fn pdb(&self) -> String {
        self.cluster.clone()
    }

    pub fn network_policy(&self) -> String {
        self.cluster.clone()
    }

    /// The headless Service that gives members their stable DNS names.
    pub fn peer_service(&self) -> String {
        format!("{}-peer", self.cluster)
    }

    /// The Secret the operator makes for root's password when the spec names none.
    pub fn root_password_secret(&self) -> String {
        format!("{}-root-password", self.cluster)
    }

    /// The Secret holding the operator's own user and password on the cluster.
    pub fn operator_credentials_secret(&self) -> String {
        format!("{}-operator-credentials", self.cluster)
    }

    /// The ConfigMap holding each member's bootstrap file.
    pub fn bootstrap_config_map(&self) -> String {
        format!("{}-bootstrap", self.cluster)
    }

    pub fn member(&self, ordinal: i32) -> String {
        format!("{}-{ordinal}", self.cluster)
    }

    /// The claim the StatefulSet controller creates for a member (template `data`).
    pub fn claim(&self, ordinal: i32) -> String {
        format!("data-{}", self.member(ordinal))
    }

    /// The ordinal of a member name of this cluster (`kv-3` → 3).
    pub fn ordinal_of_member(&self, member: &str) -> Option<i32> {
        let digits = member.strip_prefix(&self.cluster)?.strip_prefix('-')?;
        let ordinal: i32 = digits.parse().ok()?;
        // `kv-03` or `kv-+3` would parse, but are no pod's name.
        (self.member(ordinal) == member).then_some(ordinal)
    }

    pub fn ordinal_of_claim(&self, claim: &str) -> Option<i32> {
        self.ordinal_of_member(claim.strip_prefix("data-")?)
    }

    /// The ordinal of the member with this peer URL, if it is one of this cluster's pods (under
    /// either scheme while the peers move to TLS).
    pub fn ordinal_of_peer_url(&self, url: &str) -> Option<i32> {
        let host = url.split_once("://")?.1.split(['.', ':']).next()?;
        let ordinal = self.ordinal_of_member(host)?;
        let theirs = match self.peer_scheme {
            PeerScheme::Moving => self.peer_url(host) == url || self.on_tls().peer_url(host) == url,
            PeerScheme::Plain | PeerScheme::Tls => self.peer_url(host) == url,
        };
        theirs.then_some(ordinal)
    }

    /// The domain the peer Service's SRV records live under.
    pub fn peer_domain(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.peer_service(), self.namespace)
    }

    /// The names the client Service answers to, short to fully qualified.
    pub fn client_service_hosts(&self) -> Vec<String> {
        let service = self.client_service();
        let namespace = &self.namespace;
        vec![
            service.clone(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ]
    }

    pub fn member_host(&self, member: &str) -> String {
        format!("{member}.{}", self.peer_domain())
    }

    pub fn peer_url(&self, member: &str) -> String {
        format!("{}://{}:{PEER_PORT}", self.url_scheme(), self.member_host(member))
    }

    pub fn client_url(&self, member: &str) -> String {
        format!("http://{}:{CLIENT_PORT}", self.member_host(member))
    }

    /// `name=peer-url,...` of the given members, as `--initial-cluster` wants it.
    pub fn initial_cluster(&self, members: impl IntoIterator<Item = String>) -> String {
        members
            .into_iter()
            .map(|member| format!("{member}={}", self.peer_url(&member)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The labels that select this cluster's member pods.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (APP_LABEL.to_owned(), APP.to_owned()),
            (INSTANCE_LABEL.to_owned(), self.cluster.clone()),
        ])
    }

    /// The selector as a label query (`status.selector`, for `/scale`).
    pub fn selector(&self) -> String {
        self.selector_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Labels of the objects of a part of the cluster other than its members (`app`: backups,
    /// a restore): the cluster's labels with the part's name label, which keeps the members'
    /// selector from matching them.
    pub fn part_labels(&self, app: &str) -> BTreeMap<String, String> {
        let mut labels = self.labels();
        labels.insert(APP_LABEL.to_owned(), app.to_owned());
        labels
    }

    /// The selector of a part's objects (see `part_labels`), as a label query.
    pub fn part_selector(&self, app: &str) -> String {
        format!("{APP_LABEL}={app},{INSTANCE_LABEL}={}", self.cluster)
    }

    /// Labels on every object the operator makes.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels();
        labels.insert(
            "app.kubernetes.io/managed-by".to_owned(),
            "cairn-operator".to_owned(),
        );
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_addressed_through_the_peer_service() {
        let names = Names::new("kv", "prod");
        assert_eq!(names.member(2), "kv-2");
        assert_eq!(names.claim(2), "data-kv-2");
        assert_eq!(
            names.peer_url("kv-2"),
            "http://kv-2.kv-peer.prod.svc.cluster.local:2380"
        );
        assert_eq!(
            names.client_url("kv-0"),
            "http://kv-0.kv-peer.prod.svc.cluster.local:2379"
        );
        assert_eq!(
            names.initial_cluster(["kv-0".to_owned(), "kv-1".to_owned()]),
            "kv-0=http://kv-0.kv-peer.prod.svc.cluster.local:2380,\
             kv-1=http://kv-1.kv-peer.prod.svc.cluster.local:2380"
        );
        assert_eq!(
            names.selector(),
            "app.kubernetes.io/instance=kv,app.kubernetes.io/name=cairn"
        );
    }

    #[test]
    fn member_pods_lead_back_to_their_cluster() {
        let names = Names::new("kv", "prod");
        let labels = names.selector_labels();
        assert_eq!(cluster_of_member(&labels), Some("kv"));
        let query: BTreeMap<&str, Option<&str>> = MEMBER_PODS
            .split(',')
            .map(|term| match term.split_once('=') {
                Some((key, value)) => (key, Some(value)),
                None => (term, None),
            })
            .collect();
        for (key, value) in &query {
            let got = labels.get(*key).map(String::as_str);
            assert!(got.is_some() && (value.is_none() || got == *value), "{key}");
        }
        let other = BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), "web".to_owned()),
            ("app.kubernetes.io/instance".to_owned(), "kv".to_owned()),
        ]);
        assert_eq!(cluster_of_member(&other), None);
        assert_eq!(cluster_of_member(&BTreeMap::new()), None);
    }

    #[test]
    fn ordinals_come_back_only_from_this_clusters_own_names() {
        let names = Names::new("kv", "prod");
        assert_eq!(names.ordinal_of_member("kv-12"), Some(12));
        assert_eq!(names.ordinal_of_claim("data-kv-3"), Some(3));
        for other in ["kv-03", "kv-+3", "kv-", "kv-x-1", "kvx-1", "other-1"] {
            assert_eq!(names.ordinal_of_member(other), None, "{other}");
        }
        assert_eq!(
            names.ordinal_of_peer_url("http://kv-4.kv-peer.prod.svc.cluster.local:2380"),
            Some(4)
        );
        // Peers with TLS are https://, and a URL of the other scheme is not theirs.
        let tls = names.on_tls();
        assert_eq!(
            tls.peer_url("kv-4"),
            "https://kv-4.kv-peer.prod.svc.cluster.local:2380"
        );
        assert_eq!(tls.ordinal_of_peer_url(&tls.peer_url("kv-4")), Some(4));
        assert_eq!(tls.ordinal_of_peer_url(&names.peer_url("kv-4")), None);
        assert_eq!(names.ordinal_of_peer_url(&tls.peer_url("kv-4")), None);
        // While they move, members are added under http:// and known under either.
        let moving = Names {
            peer_scheme: PeerScheme::Moving,
            ..names.clone()
        };
        assert_eq!(moving.peer_url("kv-4"), names.peer_url("kv-4"));
        assert_eq!(moving.ordinal_of_peer_url(&names.peer_url("kv-4")), Some(4));
        assert_eq!(moving.ordinal_of_peer_url(&tls.peer_url("kv-4")), Some(4));
        assert_eq!(
            moving.ordinal_of_peer_url("ftp://kv-4.kv-peer.prod.svc.cluster.local:2380"),
            None
        );
        for url in [
            "http://kv-4.kv-peer.staging.svc.cluster.local:2380",
            "http://kv-4:2380",
            "http://10.0.0.4:2380",
        ] {
            assert_eq!(names.ordinal_of_peer_url(url), None, "{url}");
        }
    }
}
