//! The TLS material of one cluster: its own CA, and what the CA issues — the members' peer
//! certificate (valid for every member's peer name, as server and as client: members dial each
//! other and check each other both ways), the members' client-port certificate (every name
//! clients reach members by), and client certificates (the operator's, and the ones users ask
//! for) — with the Secrets that carry them, and when a certificate is due for renewal. The keys
//! and the time come from the caller, so everything here is a pure function of its inputs.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use time::OffsetDateTime;

use super::names::Names;
use super::{metadata, secret_data};
use crate::access::OPERATOR_USER;
use crate::validate::ValidSpec;

/// The keys of a TLS Secret, as cert-manager and `kubectl create secret tls` write them.
pub const CERT: &str = "tls.crt";
pub const KEY: &str = "tls.key";
pub const CA_CERT: &str = "ca.crt";

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pem")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

/// How long the cluster's CA is valid. It is not renewed: a new CA needs every member and client
/// to trust it first.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How far before its making a certificate is valid from: clocks of members, clients and the
/// operator differ a little.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// Valid from a little before `now`, for `lifetime`.
    pub fn starting(now: OffsetDateTime, lifetime: Duration) -> Validity {
        Validity {
            not_before: now - CLOCK_SKEW,
            not_after: now + lifetime,
        }
    }

    fn apply(&self, params: &mut CertificateParams) {
        params.not_before = self.not_before;
        params.not_after = self.not_after;
    }
}

/// Whether the certificate in `cert_pem` is due for renewal at `now`: a third of its lifetime
/// or less is left. One that cannot be read is due too: it serves nobody as it is.
pub fn due_for_renewal(cert_pem: &str, now: OffsetDateTime) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else {
        return true;
    };
    let Ok(cert) = pem.parse_x509() else {
        return true;
    };
    let validity = cert.validity();
    let (from, until) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    let renew_at = until - (until - from) / 3;
    now.unix_timestamp() >= renew_at
}

/// The CA's subject and uses. Issuing from a stored CA rebuilds these with its stored key: the
/// subject and the key (its identifier) are all a signature names of its issuer.
fn ca_params(names: &Names) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(
        DnType::CommonName,
        format!("cairn peer CA of {}/{}", names.namespace, names.cluster),
    );
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// A new CA for the cluster, with `key`.
pub fn new_ca(names: &Names, key: &KeyPair, validity: &Validity) -> Result<Pem, rcgen::Error> {
    let mut params = ca_params(names)?;
    validity.apply(&mut params);
    let cert = params.self_signed(key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The names a member's peer certificate holds: every form of a member's host name under the
/// headless Service (one wildcard each), so one certificate serves every member, present and
/// future.
pub fn member_names(names: &Names) -> Vec<String> {
    let service = names.peer_service();
    let namespace = &names.namespace;
    [
        format!("*.{}", names.peer_domain()),
        format!("*.{service}.{namespace}.svc"),
        format!("*.{service}.{namespace}"),
        format!("*.{service}"),
    ]
    .to_vec()
}

/// The names a member's client-port certificate holds: every member's, the client Service's,
/// and the loopback ones a port-forward or a shell in the pod dials.
pub fn server_names(names: &Names) -> Vec<String> {
    let mut hosts = member_names(names);
    hosts.extend(names.client_service_hosts());
    hosts.extend(["localhost".to_owned(), "127.0.0.1".to_owned()]);
    hosts
}

/// A certificate the cluster's CA issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Certificate {
    /// The members' peer certificate: every member's peer name, as server and as client.
    Member,
    /// The members' client-port certificate: every name clients reach members by, as server.
    Server,
    /// A client certificate for this user (its common name, which members take as the user
    /// while auth is on).
    Client(String),
}

impl Certificate {
    /// The subject, names and uses of this certificate for the cluster `names` describes.
    fn params(&self, names: &Names) -> Result<CertificateParams, rcgen::Error> {
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let (common_name, hosts, uses) = match self {
            Certificate::Member => (
                format!("{}-member", names.cluster),
                member_names(names),
                vec![ServerAuth, ClientAuth],
            ),
            Certificate::Server => (
                format!("{}-server", names.cluster),
                server_names(names),
                vec![ServerAuth],
            ),
            Certificate::Client(user) => (user.clone(), Vec::new(), vec![ClientAuth]),
        };
        let mut params = CertificateParams::new(hosts)?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = uses;
        Ok(params)
    }
}

/// Issues `certificate` for `key` from the cluster's CA (`ca`, as `new_ca` made it).
pub fn issue(
    names: &Names,
    ca: &Pem,
    certificate: &Certificate,
    key: &KeyPair,
    validity: &Validity,
) -> Result<Pem, rcgen::Error> {
    let mut params = certificate.params(names)?;
    validity.apply(&mut params);
    let issuer = Issuer::new(ca_params(names)?, KeyPair::from_pem(&ca.key)?);
    let cert = params.signed_by(key, &issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The certificates the operator issues for `spec`, each with the Secret it lives in: the
/// members' peer certificate with peer TLS; with client TLS, the members' client-port
/// certificate and the operator's own client certificate (unless the user supplies them); and
/// the client certificates the spec asks for.
pub fn wanted(spec: &ValidSpec) -> Vec<(String, Certificate)> {
    let names = Names::of(spec);
    let mut wanted = Vec::new();
    if spec.peer_certificates() && spec.peer_tls_supplied.is_none() {
        wanted.push((names.peer_tls_secret(), Certificate::Member));
    }
    let client = &spec.client_tls;
    if client.enabled && client.supplied.is_none() {
        wanted.push((names.server_tls_secret(), Certificate::Server));
        wanted.push((
            names.operator_tls_secret(),
            Certificate::Client(OPERATOR_USER.to_owned()),
        ));
    }
    for asked in &client.certificates {
        wanted.push((asked.secret.clone(), Certificate::Client(asked.user.clone())));
    }
    wanted
}

fn tls_secret(names: &Names, name: String, owner: &OwnerReference, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: metadata(names, name, owner),
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(secret_data(data)),
        ..Secret::default()
    }
}

/// The Secret holding the cluster's CA.
pub fn ca_secret(names: &Names, owner: &OwnerReference, ca: &Pem) -> Secret {
    tls_secret(
        names,
        names.ca_secret(),
        owner,
        &[(CERT, &ca.cert), (KEY, &ca.key)],
    )
}

/// The Secret `name` holding an issued certificate, its key and the CA the other side must be
/// from, in the layout cert-manager and `kubectl create secret tls` use.
pub fn issued_secret(names: &Names, name: String, owner: &OwnerReference, issued: &Pem, ca: &Pem) -> Secret {
    tls_secret(
        names,
        name,
        owner,
        &[(CERT, &issued.cert), (KEY, &issued.key), (CA_CERT, &ca.cert)],
    )
}

/// The certificate and key a TLS Secret holds (`tls.crt`, `tls.key`).
pub fn pem_in(secret: &Secret) -> Option<Pem> {
    Some(Pem {
        cert: text_in(secret, CERT)?,
        key: text_in(secret, KEY)?,
    })
}

/// The value of `key` in `secret`, when it is UTF-8 text.
pub fn text_in(secret: &Secret, key: &str) -> Option<String> {
    String::from_utf8(secret.data.as_ref()?.get(key)?.0.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::testing::owner;

    /// A year from now.
    pub(crate) fn year() -> Validity {
        Validity::starting(OffsetDateTime::now_utc(), Duration::from_secs(365 * 24 * 3600))
    }

    #[test]
    fn one_member_certificate_covers_every_member_and_is_issued_by_the_cluster_ca() {
        let names = Names::new("kv", "prod");
        assert_eq!(
            member_names(&names),
            [
                "*.kv-peer.prod.svc.cluster.local",
                "*.kv-peer.prod.svc",
                "*.kv-peer.prod",
                "*.kv-peer"
            ]
        );
        let ca = new_ca(&names, &KeyPair::generate().unwrap(), &year()).unwrap();
        let member = issue(
            &names,
            &ca,
            &Certificate::Member,
            &KeyPair::generate().unwrap(),
            &year(),
        )
        .unwrap();
        assert!(member.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(
            !format!("{member:?}").contains(&member.key),
            "keys are not printed"
        );

        // A TLS handshake is the check that matters: a server with the member certificate is
        // accepted by a client that trusts only the CA, under a member's name, and refused under
        // another cluster's.
        let accepts = |host: &str, trusted: &Pem| handshake(&member, trusted, host, None);
        assert!(accepts("kv-4.kv-peer.prod.svc.cluster.local", &ca).is_ok());
        assert!(accepts("kv-0.kv-peer.prod.svc", &ca).is_ok());
        assert!(accepts("kv-0.other-peer.prod.svc.cluster.local", &ca).is_err());
        let stranger = new_ca(&names, &KeyPair::generate().unwrap(), &year()).unwrap();
        assert!(accepts("kv-4.kv-peer.prod.svc.cluster.local", &stranger).is_err());

        let secret = issued_secret(&names, "kv-peer-tls".into(), &owner(), &member, &ca);
        assert_eq!(secret.metadata.name.as_deref(), Some("kv-peer-tls"));
        let keys: Vec<&String> = secret.data.as_ref().unwrap().keys().collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
        assert_eq!(pem_in(&ca_secret(&names, &owner(), &ca)), Some(ca.clone()));
        assert_eq!(text_in(&secret, CA_CERT), Some(ca.cert));
    }

    #[test]
    fn a_certificate_is_due_for_renewal_with_a_third_of_its_lifetime_left() {
        let names = Names::new("kv", "prod");
        let now = OffsetDateTime::now_utc();
        let ca = new_ca(
            &names,
            &KeyPair::generate().unwrap(),
            &Validity::starting(now, CA_LIFETIME),
        )
        .unwrap();
        let lifetime = Duration::from_secs(300);
        let validity = Validity::starting(now, lifetime);
        let member = issue(
            &names,
            &ca,
            &Certificate::Member,
            &KeyPair::generate().unwrap(),
            &validity,
        )
        .unwrap();
        // Valid from a minute before, for five minutes: six minutes, renewed with two left.
        let seconds = |s: i64| now + time::Duration::seconds(s);
        assert!(!due_for_renewal(&member.cert, now));
        assert!(!due_for_renewal(&member.cert, seconds(179)));
        assert!(due_for_renewal(&member.cert, seconds(181)));
        assert!(due_for_renewal(&member.cert, seconds(400)));
        // The CA's ten years hold for the certificates it issues.
        assert!(!due_for_renewal(&ca.cert, seconds(400)));
        assert!(due_for_renewal("not a certificate", now));

        // The handshake checks the same dates: the certificate is refused once expired.
        assert!(handshake(&member, &ca, "kv-0.kv-peer.prod.svc", None).is_ok());
        let expired = issue(
            &names,
            &ca,
            &Certificate::Member,
            &KeyPair::generate().unwrap(),
            &Validity::starting(now - time::Duration::seconds(600), lifetime),
        )
        .unwrap();
        let refused = handshake(&expired, &ca, "kv-0.kv-peer.prod.svc", None).unwrap_err();
        assert!(refused.to_string().contains("expired"), "{refused}");
    }

    #[test]
    fn the_spec_decides_which_certificates_are_issued_and_where() {
        let wanted_by = |yaml: &str| wanted(&crate::build::testing::valid(yaml));
        assert_eq!(
            wanted_by("spec: {}"),
            [("kv-peer-tls".to_owned(), Certificate::Member)]
        );
        assert_eq!(wanted_by("spec: {tls: {peer: {enabled: false}}}"), []);
        assert_eq!(
            wanted_by(
                "spec: {tls: {peer: {enabled: false}, client: {enabled: true, \
                 certificates: [{secretName: kv-admin, user: root}]}}}"
            ),
            [
                ("kv-server-tls".to_owned(), Certificate::Server),
                (
                    "kv-operator-tls".to_owned(),
                    Certificate::Client("cairn-operator".into())
                ),
                ("kv-admin".to_owned(), Certificate::Client("root".into())),
            ]
        );
    }

    #[test]
    fn the_client_port_certificate_covers_the_service_every_member_and_loopback() {
        let names = Names::new("kv", "prod");
        let ca = new_ca(&names, &KeyPair::generate().unwrap(), &year()).unwrap();
        let server = issue(
            &names,
            &ca,
            &Certificate::Server,
            &KeyPair::generate().unwrap(),
            &year(),
        )
        .unwrap();
        for host in [
            "kv",
            "kv.prod",
            "kv.prod.svc",
            "kv.prod.svc.cluster.local",
            "kv-2.kv-peer.prod.svc.cluster.local",
            "localhost",
            "127.0.0.1",
        ] {
            assert!(handshake(&server, &ca, host, None).is_ok(), "{host}");
        }
        for host in ["kv.other.svc", "kv-peer.prod.svc", "10.0.0.1"] {
            assert!(handshake(&server, &ca, host, None).is_err(), "{host}");
        }
    }

    #[test]
    fn client_certificates_name_their_user_and_pass_only_a_server_that_trusts_their_ca() {
        let names = Names::new("kv", "prod");
        let ca = new_ca(&names, &KeyPair::generate().unwrap(), &year()).unwrap();
        let server = issue(
            &names,
            &ca,
            &Certificate::Server,
            &KeyPair::generate().unwrap(),
            &year(),
        )
        .unwrap();
        let alice = issue(
            &names,
            &ca,
            &Certificate::Client("alice".into()),
            &KeyPair::generate().unwrap(),
            &year(),
        )
        .unwrap();
        let seen = handshake(&server, &ca, "kv", Some(&alice)).expect("alice is let in");
        assert_eq!(seen.as_deref(), Some("alice"));

        let stranger_ca = new_ca(&Names::new("kv", "other"), &KeyPair::generate().unwrap(), &year()).unwrap();
        let stranger = issue(
            &names,
            &stranger_ca,
            &Certificate::Client("alice".into()),
            &KeyPair::generate().unwrap(),
            &year(),
        )
        .unwrap();
        assert!(handshake(&server, &ca, "kv", Some(&stranger)).is_err());
    }

    /// A rustls handshake in memory: a server presenting `server`, a client trusting `trusted`
    /// and dialing `host`; with `client`, the client presents it and the server wants one from
    /// `trusted`. Returns the common name the server saw.
    fn handshake(
        server: &Pem,
        trusted: &Pem,
        host: &str,
        client: Option<&Pem>,
    ) -> Result<Option<String>, rustls::Error> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(trusted.cert.as_bytes()).unwrap())
            .unwrap();
        let roots = std::sync::Arc::new(roots);
        let client_config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone());
        let client_config = match client {
            None => client_config.with_no_client_auth(),
            Some(client) => client_config
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(client.cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(client.key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let server_config = match client {
            None => server_config.with_no_client_auth(),
            Some(_) => server_config.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .unwrap(),
            ),
        };
        let server_config = server_config
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(server.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(server.key.as_bytes()).unwrap(),
            )
            .unwrap();
        let name = ServerName::try_from(host.to_owned()).unwrap();
        let mut client = rustls::ClientConnection::new(std::sync::Arc::new(client_config), name).unwrap();
        let mut server = rustls::ServerConnection::new(std::sync::Arc::new(server_config)).unwrap();
        for _ in 0..10 {
            let mut buffer = Vec::new();
            client.write_tls(&mut buffer).unwrap();
            server.read_tls(&mut buffer.as_slice()).unwrap();
            server.process_new_packets()?;
            let mut buffer = Vec::new();
            server.write_tls(&mut buffer).unwrap();
            client.read_tls(&mut buffer.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                let common_name = server.peer_certificates().map(|chain| {
                    let (_, parsed) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
                    let name = parsed.subject().iter_common_name().next().unwrap();
                    name.as_str().unwrap().to_owned()
                });
                return Ok(common_name);
            }
        }
        panic!("the handshake did not finish");
    }
}
