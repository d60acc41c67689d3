//! The cluster's TLS Secrets before members mount them: the ones the operator keeps are made
//! when missing, its CA first, then what the spec needs the CA to issue (see
//! `build::tls::wanted`); an issued certificate is renewed in its Secret, with a new key from
//! the same CA, once a third of its lifetime is left (the CA itself is made once and never
//! rewritten: a new CA would cut members that still hold the old certificate off from each
//! other); the ones the user supplies are checked (see `supplied_tls`).

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::api::{Patch, PatchParams};
use rcgen::KeyPair;
use rustls::pki_types::UnixTime;
use serde_json::json;
use time::OffsetDateTime;

use crate::access::create_once;
use crate::build::names::Names;
use crate::build::tls::{
    CA_LIFETIME, CERT, Validity, ca_secret, due_for_renewal, issue, issued_secret, new_ca, pem_in, text_in,
    wanted,
};
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
    let now = OffsetDateTime::now_utc();
    let mut missing = Vec::new();
    let mut due = Vec::new();
    for (secret, certificate) in wanted(spec) {
        let found = secrets
            .get_opt(&secret)
            .await
            .map_err(api(format!("read the Secret {secret:?}")))?;
        match found {
            None => missing.push((secret, certificate)),
            // Only a Secret the operator made is renewed: one of the user's under a name the
            // spec lists is left as it is.
            Some(found) if made_by_operator(&found, &names) => {
                if due_for_renewal(&text_in(&found, CERT).unwrap_or_default(), now) {
                    due.push((secret, certificate));
                }
            }
            Some(_) => {}
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
    if missing.is_empty() && due.is_empty() {
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
            let ca = new_ca(
                &names,
                &KeyPair::generate()?,
                &Validity::starting(now, CA_LIFETIME),
            )?;
            create_once(&secrets, &ca_secret(&names, owner, &ca))
                .await
                .map_err(api("make the CA Secret".into()))?
        }
    };
    let ca = pem_in(&ca_seen).ok_or(TlsError::BadCa(ca_name))?;
    let validity = Validity::starting(now, spec.certificate_lifetime);
    for (secret, certificate) in missing {
        let issued = issue(&names, &ca, &certificate, &KeyPair::generate()?, &validity)?;
        create_once(
            &secrets,
            &issued_secret(&names, secret.clone(), owner, &issued, &ca),
        )
        .await
        .map_err(api(format!("make the Secret {secret:?}")))?;
        tracing::info!(cluster = %names.cluster, %secret, ?certificate, "certificate issued");
    }
    for (secret, certificate) in due {
        let issued = issue(&names, &ca, &certificate, &KeyPair::generate()?, &validity)?;
        // Only the data changes; the rest of the Secret stays as it was made.
        let data = issued_secret(&names, secret.clone(), owner, &issued, &ca).data;
        secrets
            .patch(
                &secret,
                &PatchParams::default(),
                &Patch::Merge(json!({"data": data})),
            )
            .await
            .map_err(api(format!("renew the certificate in the Secret {secret:?}")))?;
        tracing::info!(cluster = %names.cluster, %secret, ?certificate, "certificate renewed");
    }
    Ok(())
}

/// Whether the operator made `secret` for this cluster (its labels say so).
fn made_by_operator(secret: &Secret, names: &Names) -> bool {
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    names
        .labels()
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}
