//! Who a verified certificate names: its common name, and the rules a peer's certificate must also
//! meet (`--peer-cert-allowed-cn`, `--peer-cert-allowed-hostname`).

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The subject common name of a DER certificate, if it has one.
pub fn certificate_common_name(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = X509Certificate::from_der(certificate.as_ref()).ok()?;
    parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

/// Whether `pattern` (a SAN DNS name, maybe `*.example`) covers `hostname`.
fn dns_matches(pattern: &str, hostname: &str) -> bool {
    let (pattern, hostname) = (pattern.to_ascii_lowercase(), hostname.to_ascii_lowercase());
    match pattern.strip_prefix("*.") {
        Some(suffix) => hostname
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == hostname,
    }
}

/// Whether the certificate is valid for `hostname`: a DNS name or IP address among its subject
/// alternative names.
fn names_host(certificate: &X509Certificate<'_>, hostname: &str) -> bool {
    let ip: Option<std::net::IpAddr> = hostname.parse().ok();
    let Ok(Some(names)) = certificate.subject_alternative_name() else {
        return false;
    };
    names.value.general_names.iter().any(|name| match name {
        GeneralName::DNSName(dns) => ip.is_none() && dns_matches(dns, hostname),
        GeneralName::IPAddress(bytes) => ip.is_some_and(|ip| match ip {
            std::net::IpAddr::V4(v4) => *bytes == v4.octets(),
            std::net::IpAddr::V6(v6) => *bytes == v6.octets(),
        }),
        _ => false,
    })
}

/// What a peer's certificate must name, beyond being signed by the peer CA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateRules {
    pub allowed_cn: Option<String>,
    pub allowed_hostname: Option<String>,
}

impl CertificateRules {
    pub fn is_empty(&self) -> bool {
        self.allowed_cn.is_none() && self.allowed_hostname.is_none()
    }

    /// Checks the certificate chain a connecting side presented (leaf first).
    pub fn check(&self, presented: Option<&[CertificateDer<'_>]>) -> Result<(), String> {
        if self.is_empty() {
            return Ok(());
        }
        let Some(leaf) = presented.and_then(|chain| chain.first()) else {
            return Err("no client certificate was presented".into());
        };
        let (_, parsed) =
            X509Certificate::from_der(leaf.as_ref()).map_err(|e| format!("unreadable certificate: {e}"))?;
        if let Some(allowed) = &self.allowed_cn {
            let cn = parsed
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok());
            if cn != Some(allowed.as_str()) {
                return Err(format!(
                    "certificate common name {cn:?} is not the allowed {allowed:?}"
                ));
            }
        }
        if let Some(allowed) = &self.allowed_hostname
            && !names_host(&parsed, allowed)
        {
            return Err(format!(
                "certificate is not valid for the allowed hostname {allowed:?}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(cn: &str, sans: &[&str]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans
            .iter()
            .map(|san| match san.parse() {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => rcgen::SanType::DnsName((*san).try_into().unwrap()),
            })
            .collect();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn the_common_name_must_be_the_allowed_one() {
        let rules = CertificateRules {
            allowed_cn: Some("member".into()),
            allowed_hostname: None,
        };
        assert!(rules.check(Some(&[certificate("member", &[])])).is_ok());
        let refused = rules.check(Some(&[certificate("intruder", &[])])).unwrap_err();
        assert!(refused.contains("\"intruder\""), "{refused}");
        assert!(rules.check(None).is_err());
        assert_eq!(
            certificate_common_name(&certificate("alice", &[])).as_deref(),
            Some("alice")
        );
    }

    #[test]
    fn the_hostname_must_be_among_the_alternative_names() {
        let rules = |host: &str| CertificateRules {
            allowed_cn: None,
            allowed_hostname: Some(host.into()),
        };
        let cert = certificate("x", &["kv-0.kv.default.svc", "*.peers.example", "10.1.2.3"]);
        assert!(
            rules("kv-0.kv.default.svc")
                .check(Some(std::slice::from_ref(&cert)))
                .is_ok()
        );
        assert!(
            rules("KV-0.kv.default.svc")
                .check(Some(std::slice::from_ref(&cert)))
                .is_ok()
        );
        assert!(
            rules("a.peers.example")
                .check(Some(std::slice::from_ref(&cert)))
                .is_ok()
        );
        assert!(rules("10.1.2.3").check(Some(std::slice::from_ref(&cert))).is_ok());
        assert!(
            rules("a.b.peers.example")
                .check(Some(std::slice::from_ref(&cert)))
                .is_err()
        );
        assert!(
            rules("kv-1.kv.default.svc")
                .check(Some(std::slice::from_ref(&cert)))
                .is_err()
        );
        assert!(
            rules("10.1.2.4")
                .check(Some(std::slice::from_ref(&cert)))
                .is_err()
        );
        assert!(CertificateRules::default().check(None).is_ok());
    }
}
