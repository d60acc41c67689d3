//! Peer TLS material of one cluster: its own CA and the member certificate the CA issues, valid
//! for every member's peer name as server and as client (members dial each other and check
//! each other both ways), and the two Secrets that carry them. The keys come from the caller, so
//! everything here is a pure function of its inputs.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::names::Names;
use super::{metadata, secret_data};

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
pub fn new_ca(names: &Names, key: &KeyPair) -> Result<Pem, rcgen::Error> {
    let cert = ca_params(names)?.self_signed(key)?;
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

/// The members' peer certificate, with `key`, issued by the cluster's CA (`ca`, as `new_ca` made
/// it).
pub fn member_certificate(names: &Names, ca: &Pem, key: &KeyPair) -> Result<Pem, rcgen::Error> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::new(ca_params(names)?, ca_key);
    let mut params = CertificateParams::new(member_names(names))?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{}-member", names.cluster));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(key, &issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
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

/// The Secret the members mount: their certificate and key, and the CA that peers must be from.
pub fn peer_secret(names: &Names, owner: &OwnerReference, member: &Pem, ca: &Pem) -> Secret {
    tls_secret(
        names,
        names.peer_tls_secret(),
        owner,
        &[(CERT, &member.cert), (KEY, &member.key), (CA_CERT, &ca.cert)],
    )
}

/// The CA as its Secret holds it.
pub fn ca_in(secret: &Secret) -> Option<Pem> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| String::from_utf8(data.get(key)?.0.clone()).ok();
    Some(Pem {
        cert: text(CERT)?,
        key: text(KEY)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::testing::owner;

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
        let ca = new_ca(&names, &KeyPair::generate().unwrap()).unwrap();
        let member = member_certificate(&names, &ca, &KeyPair::generate().unwrap()).unwrap();
        assert!(member.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(
            !format!("{member:?}").contains(&member.key),
            "keys are not printed"
        );

        // A TLS handshake is the check that matters: a server with the member certificate is
        // accepted by a client that trusts only the CA, under a member's name, and refused under
        // another cluster's.
        let accepts = |host: &str, trusted: &Pem| handshake(&member, trusted, host);
        assert!(accepts("kv-4.kv-peer.prod.svc.cluster.local", &ca).is_ok());
        assert!(accepts("kv-0.kv-peer.prod.svc", &ca).is_ok());
        assert!(accepts("kv-0.other-peer.prod.svc.cluster.local", &ca).is_err());
        let stranger = new_ca(&names, &KeyPair::generate().unwrap()).unwrap();
        assert!(accepts("kv-4.kv-peer.prod.svc.cluster.local", &stranger).is_err());

        let secret = peer_secret(&names, &owner(), &member, &ca);
        assert_eq!(secret.metadata.name.as_deref(), Some("kv-peer-tls"));
        let keys: Vec<&String> = secret.data.as_ref().unwrap().keys().collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
        assert_eq!(ca_in(&ca_secret(&names, &owner(), &ca)), Some(ca));
    }

    /// A rustls handshake in memory: a server presenting `server`, a client trusting `trusted`
    /// and dialing `host`.
    fn handshake(server: &Pem, trusted: &Pem, host: &str) -> Result<(), rustls::Error> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(trusted.cert.as_bytes()).unwrap())
            .unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
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
                return Ok(());
            }
        }
        panic!("the handshake did not finish");
    }
}
