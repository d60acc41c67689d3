//! Checking the certificate Secrets a user supplies (cert-manager's, for one) before members
//! mount them: the TLS keys are there, the key belongs to the certificate, and the certificate
//! chains to the CA beside it and is valid now for the name and the use members need it for. A
//! Secret that fails says exactly why, in status, instead of members failing their handshakes.
//! Pure: the Secret and the time come from the caller.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;

use crate::build::names::Names;
use crate::build::tls::{CA_CERT, CERT, KEY, text_in};
use crate::validate::ValidSpec;

/// What a supplied certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Use {
    /// The members' peer certificate: a server for `host` and a client.
    Peer { host: String },
    /// The members' client-port certificate: a server for `host`.
    ClientPort { host: String },
    /// The operator's client certificate.
    OperatorClient,
}

/// The Secrets `spec` names for certificates the user keeps, each with what it must be good
/// for. A member's name stands for all of them (the certificates cover them by a wildcard or
/// one by one; the first member's is the one every cluster has).
pub fn supplied(spec: &ValidSpec) -> Vec<(String, Use)> {
    let names = Names::of(spec);
    let first_member = names.member_host(&names.member(0));
    let mut supplied = Vec::new();
    if spec.peer_certificates()
        && let Some(secret) = &spec.peer_tls_supplied
    {
        supplied.push((
            secret.clone(),
            Use::Peer {
                host: first_member.clone(),
            },
        ));
    }
    if spec.client_tls.enabled
        && let Some(secrets) = &spec.client_tls.supplied
    {
        supplied.push((secrets.server.clone(), Use::ClientPort { host: first_member }));
        supplied.push((secrets.operator.clone(), Use::OperatorClient));
    }
    supplied
}

/// Why the Secret cannot serve `purpose`, if it cannot.
pub fn check(secret: &Secret, purpose: &Use, now: UnixTime) -> Result<(), String> {
    let text = |key: &str| text_in(secret, key).ok_or_else(|| format!("has no {key} key with PEM text"));
    let (cert, key, ca) = (text(CERT)?, text(KEY)?, text(CA_CERT)?);
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{CERT} is not PEM certificates: {e}"))?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(format!("{CERT} holds no certificate"));
    };
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| format!("{KEY} holds no private key: {e}"))?;
    let mut roots = RootCertStore::empty();
    for authority in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        let authority = authority.map_err(|e| format!("{CA_CERT} is not PEM certificates: {e}"))?;
        roots
            .add(authority)
            .map_err(|e| format!("{CA_CERT} holds a certificate that is no CA: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{CA_CERT} holds no certificate"));
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    CertifiedKey::from_der(chain.clone(), key, &provider)
        .map_err(|e| format!("{KEY} does not fit {CERT}: {e}"))?;

    let as_server = |host: &str| verify_server(&roots, &provider, leaf, intermediates, host, now);
    let as_client = || verify_client(&roots, &provider, leaf, intermediates, now);
    match purpose {
        Use::Peer { host } => {
            as_server(host)?;
            as_client()
        }
        Use::ClientPort { host } => as_server(host),
        Use::OperatorClient => as_client(),
    }
}

fn verify_server(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    host: &str,
    now: UnixTime,
) -> Result<(), String> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| format!("{CA_CERT} cannot check a server: {e}"))?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?}: {e}"))?;
    verifier
        .verify_server_cert(leaf, intermediates, &name, &[], now)
        .map(|_| ())
        .map_err(|e| format!("{CERT} does not pass as a server for {host} from the CA in {CA_CERT}: {e}"))
}

fn verify_client(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), String> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| format!("{CA_CERT} cannot check a client: {e}"))?;
    verifier
        .verify_client_cert(leaf, intermediates, now)
        .map(|_| ())
        .map_err(|e| format!("{CERT} does not pass as a client from the CA in {CA_CERT}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::KeyPair;

    use super::*;
    use crate::build::testing::{owner, valid};
    use crate::build::tls::{Certificate, Pem, Validity, issue, issued_secret, new_ca};

    const HOST: &str = "kv-0.kv-peer.prod.svc.cluster.local";

    fn year() -> Validity {
        Validity::starting(
            time::OffsetDateTime::now_utc(),
            Duration::from_secs(365 * 24 * 3600),
        )
    }

    fn key() -> KeyPair {
        KeyPair::generate().unwrap()
    }

    fn secret_of(issued: &Pem, ca: &Pem) -> Secret {
        issued_secret(&Names::new("kv", "prod"), "mine".into(), &owner(), issued, ca)
    }

    fn now() -> UnixTime {
        UnixTime::now()
    }

    #[test]
    fn the_spec_names_the_secrets_to_check_and_what_for() {
        let spec = valid(
            "spec: {tls: {peer: {secretName: p}, client: {enabled: true, secretName: s, \
             operatorSecretName: o}}}",
        );
        assert_eq!(
            supplied(&spec),
            [
                ("p".to_owned(), Use::Peer { host: HOST.into() }),
                ("s".to_owned(), Use::ClientPort { host: HOST.into() }),
                ("o".to_owned(), Use::OperatorClient),
            ]
        );
        assert_eq!(supplied(&valid("spec: {}")), []);
        // Peer TLS off: its Secret is not used, so not checked.
        assert_eq!(
            supplied(&valid("spec: {tls: {peer: {enabled: false, secretName: p}}}")),
            []
        );
    }

    #[test]
    fn a_fitting_certificate_passes_for_its_use() {
        let names = Names::new("kv", "prod");
        let ca = new_ca(&names, &key(), &year()).unwrap();
        let peer = issue(&names, &ca, &Certificate::Member, &key(), &year()).unwrap();
        assert_eq!(
            check(&secret_of(&peer, &ca), &Use::Peer { host: HOST.into() }, now()),
            Ok(())
        );
        let server = issue(&names, &ca, &Certificate::Server, &key(), &year()).unwrap();
        let client_port = Use::ClientPort {
            host: "kv.prod.svc".into(),
        };
        assert_eq!(check(&secret_of(&server, &ca), &client_port, now()), Ok(()));
        let operator = issue(
            &names,
            &ca,
            &Certificate::Client("cairn-operator".into()),
            &key(),
            &year(),
        )
        .unwrap();
        assert_eq!(
            check(&secret_of(&operator, &ca), &Use::OperatorClient, now()),
            Ok(())
        );
    }

    #[test]
    fn each_misfit_is_named() {
        let names = Names::new("kv", "prod");
        let ca = new_ca(&names, &key(), &year()).unwrap();
        let peer = Use::Peer { host: HOST.into() };
        let problem =
            |secret: &Secret, purpose: &Use, now: UnixTime| check(secret, purpose, now).unwrap_err();

        // A server-only certificate cannot be a peer's (peers also dial).
        let server = issue(&names, &ca, &Certificate::Server, &key(), &year()).unwrap();
        let words = problem(&secret_of(&server, &ca), &peer, now());
        assert!(words.contains("does not pass as a client"), "{words}");
        // Another cluster's names.
        let other = issue(
            &Names::new("kv", "other"),
            &ca,
            &Certificate::Member,
            &key(),
            &year(),
        )
        .unwrap();
        let words = problem(&secret_of(&other, &ca), &peer, now());
        assert!(
            words.contains("does not pass as a server for kv-0.kv-peer.prod"),
            "{words}"
        );
        // Another CA than the one beside it.
        let stranger = new_ca(&names, &key(), &year()).unwrap();
        let member = issue(&names, &stranger, &Certificate::Member, &key(), &year()).unwrap();
        let words = problem(&secret_of(&member, &ca), &peer, now());
        assert!(words.contains("from the CA in ca.crt"), "{words}");
        // A key of another certificate.
        let mut swapped = issue(&names, &ca, &Certificate::Member, &key(), &year()).unwrap();
        swapped.key = key().serialize_pem();
        let words = problem(&secret_of(&swapped, &ca), &peer, now());
        assert!(words.contains("tls.key does not fit tls.crt"), "{words}");
        // Expired.
        let fine = issue(&names, &ca, &Certificate::Member, &key(), &year()).unwrap();
        let two_years = Duration::from_secs(2 * 365 * 24 * 3600);
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let later = UnixTime::since_unix_epoch(since_epoch + two_years);
        let words = problem(&secret_of(&fine, &ca), &peer, later);
        assert!(words.to_lowercase().contains("expired"), "{words}");
        // Keys missing.
        let mut bare = secret_of(&fine, &ca);
        bare.data.as_mut().unwrap().remove("ca.crt");
        assert_eq!(problem(&bare, &peer, now()), "has no ca.crt key with PEM text");
        let mut garbled = secret_of(&fine, &ca);
        garbled.data.as_mut().unwrap().insert(
            "tls.crt".into(),
            k8s_openapi::ByteString(b"not a certificate".to_vec()),
        );
        assert_eq!(problem(&garbled, &peer, now()), "tls.crt holds no certificate");
    }
}
