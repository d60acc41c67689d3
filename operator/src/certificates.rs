//! The cluster's TLS Secrets before members mount them: the ones the operator keeps are made
//! when missing, its CA first, then what the spec needs the CA to issue (see
//! `build::tls::wanted`), each made once and never rewritten (a new CA would cut members that
//! still hold the old certificate off from each other); the ones the user supplies are checked
//! (see `supplied_tls`).

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use rcgen::KeyPair;
use rustls::pki_types::UnixTime;

use crate::access::create_once;
use crate::build::names::Names;
use crate::build::tls::{ca_secret, issue, issued_secret, new_ca, pem_in, wanted};
use crate::supplied_tls::{check, supplied};
use crate::validate::ValidSpec;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot make the cluster's certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(
        "the Secret {0:?} has no CA certificate and key (tls.crt, tls.key); delete it and the operator \
         makes a new CA"
    )]
    BadCa(String),
    #[error("the Secret {secret:?} that spec.tls names {problem}")]
    Supplied { secret: String, problem: String },
}

/// Makes whichever of the cluster's TLS Secrets is missing.
pub async fn ensure_tls(
    client: &kube::Client,
    spec: &ValidSpec,
    owner: &OwnerReference,
) -> Result<(), TlsError> {
    let names = Names::of(spec);
    let secrets = Api::<Secret>::namespaced(client.clone(), &names.namespace);
    let api = |action: String| move |source| TlsError::Api { action, source };
    let mut missing = Vec::new();
    for (secret, certificate) in wanted(spec) {
        let found = secrets
            .get_opt(&secret)
            .await
            .map_err(api(format!("read the Secret {secret:?}")))?;
        if found.is_none() {
            missing.push((secret, certificate));
        }
    }
    for (secret, purpose) in supplied(spec) {
        let found = secrets
            .get_opt(&secret)
            .await
            .map_err(api(format!("read the Secret {secret:?}")))?;
        let problem = match found {
            None => Err("does not exist (yet)".to_owned()),
            Some(found) => check(&found, &purpose, UnixTime::now()),
        };
        problem.map_err(|problem| TlsError::Supplied {
            secret: secret.clone(),
            problem,
        })?;
    }
    if missing.is_empty() {
        return Ok(());
    }
    let ca_name = names.ca_secret();
    let ca_seen = match secrets
        .get_opt(&ca_name)
        .await
        .map_err(api("read the CA Secret".into()))?
    {
        Some(secret) => secret,
        None => {
            let ca = new_ca(&names, &KeyPair::generate()?)?;
            create_once(&secrets, &ca_secret(&names, owner, &ca))
                .await
                .map_err(api("make the CA Secret".into()))?
        }
    };
    let ca = pem_in(&ca_seen).ok_or(TlsError::BadCa(ca_name))?;
    for (secret, certificate) in missing {
        let issued = issue(&names, &ca, &certificate, &KeyPair::generate()?)?;
        create_once(
            &secrets,
            &issued_secret(&names, secret.clone(), owner, &issued, &ca),
        )
        .await
        .map_err(api(format!("make the Secret {secret:?}")))?;
        tracing::info!(cluster = %names.cluster, %secret, ?certificate, "certificate issued");
    }
    Ok(())
}
