//! Making a cluster's peer TLS Secrets when they are missing: its CA first, then the members'
//! certificate from it. Both are made once and never rewritten: a new CA would cut members that
//! still hold the old certificate off from each other.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use rcgen::KeyPair;

use crate::access::create_once;
use crate::build::names::Names;
use crate::build::peer_tls::{ca_in, ca_secret, member_certificate, new_ca, peer_secret};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot make the peer certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(
        "the Secret {0:?} has no CA certificate and key (tls.crt, tls.key); delete it and the operator \
         makes a new CA"
    )]
    BadCa(String),
}

/// Makes whichever of the cluster's CA and peer Secrets is missing.
pub async fn ensure_peer_tls(
    client: &kube::Client,
    names: &Names,
    owner: &OwnerReference,
) -> Result<(), TlsError> {
    let secrets = Api::<Secret>::namespaced(client.clone(), &names.namespace);
    let api = |action: &str| {
        let action = action.to_owned();
        move |source| TlsError::Api { action, source }
    };
    let peer_name = names.peer_tls_secret();
    if secrets
        .get_opt(&peer_name)
        .await
        .map_err(api("read the peer TLS Secret"))?
        .is_some()
    {
        return Ok(());
    }
    let ca_name = names.ca_secret();
    let ca_secret_seen = match secrets
        .get_opt(&ca_name)
        .await
        .map_err(api("read the CA Secret"))?
    {
        Some(secret) => secret,
        None => {
            let ca = new_ca(names, &KeyPair::generate()?)?;
            create_once(&secrets, &ca_secret(names, owner, &ca))
                .await
                .map_err(api("make the CA Secret"))?
        }
    };
    let ca = ca_in(&ca_secret_seen).ok_or(TlsError::BadCa(ca_name))?;
    let member = member_certificate(names, &ca, &KeyPair::generate()?)?;
    create_once(&secrets, &peer_secret(names, owner, &member, &ca))
        .await
        .map_err(api("make the peer TLS Secret"))?;
    tracing::info!(cluster = %names.cluster, "peer certificates issued");
    Ok(())
}
