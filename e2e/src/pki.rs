//! The sandbox's credentials: a CA, the apiserver's serving certificate signed by it, the
//! service-account signing key and the admin's static token, written as files the control plane reads.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot generate {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Where the files are; every one of them exists once `Pki::create` returned.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_public: PathBuf,
    pub tokens: PathBuf,
    pub admin_token: String,
}

/// The in-cluster IP of the `kubernetes` Service: the first address of the service range.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

impl Pki {
    pub fn paths(dir: &Path) -> Pki {
        Pki {
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            service_account_key: dir.join("sa.key"),
            service_account_public: dir.join("sa.pub"),
            tokens: dir.join("tokens.csv"),
            admin_token: String::new(),
        }
    }

    /// Creates fresh credentials in `dir`, with a random admin token.
    pub fn create(dir: &Path) -> Result<Pki, PkiError> {
        let generate = |what| move |source| PkiError::Generate { what, source };
        let mut pki = Pki::paths(dir);
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.to_owned(),
            source,
        })?;

        let ca_key = KeyPair::generate().map_err(generate("the CA key"))?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(generate("the CA"))?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "cairn-sandbox-ca");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).map_err(generate("the CA certificate"))?;
        let issuer = Issuer::new(ca, ca_key);

        let serving_key = KeyPair::generate().map_err(generate("the apiserver key"))?;
        let names = [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
        ]
        .map(String::from)
        .to_vec();
        let mut serving = CertificateParams::new(names).map_err(generate("the apiserver certificate"))?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        for ip in [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(KUBERNETES_SERVICE_IP)] {
            serving.subject_alt_names.push(SanType::IpAddress(ip));
        }
        let serving_cert = serving
            .signed_by(&serving_key, &issuer)
            .map_err(generate("the apiserver certificate"))?;

        let service_account = KeyPair::generate().map_err(generate("the service-account key"))?;
        pki.admin_token = random_token();

        let files = [
            (&pki.ca_cert, ca_cert.pem()),
            (&pki.serving_cert, serving_cert.pem()),
            (&pki.serving_key, serving_key.serialize_pem()),
            (&pki.service_account_key, service_account.serialize_pem()),
            (&pki.service_account_public, service_account.public_key_pem()),
            (
                &pki.tokens,
                format!("{},admin,admin,system:masters\n", pki.admin_token),
            ),
        ];
        for (path, content) in files {
            std::fs::write(path, content).map_err(|source| PkiError::Write {
                path: path.clone(),
                source,
            })?;
        }
        Ok(pki)
    }

    /// Reads the admin token back from an existing sandbox.
    pub fn load(dir: &Path) -> Option<Pki> {
        let mut pki = Pki::paths(dir);
        let tokens = std::fs::read_to_string(&pki.tokens).ok()?;
        pki.admin_token = tokens.split(',').next()?.trim().to_owned();
        Some(pki)
    }
}

fn random_token() -> String {
    (0..24).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::create(dir.path()).unwrap();
        assert_eq!(pki.admin_token.len(), 48);
        for path in [
            &pki.ca_cert,
            &pki.serving_cert,
            &pki.serving_key,
            &pki.service_account_key,
        ] {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{}", path.display());
        }
        assert_eq!(Pki::load(dir.path()).unwrap().admin_token, pki.admin_token);
    }
}
