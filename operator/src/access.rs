//! The operator's access to a cluster's members: how it reaches a member's client port (over TLS
//! with its own client certificate where the member wants one), root's password and the
//! operator's own credentials while auth is on, kept in Secrets (made once with random passwords,
//! never rewritten), member connections that log in with them, and turning auth on and off
//! through a member.

use std::fmt;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use rand::distr::{Alphanumeric, SampleString};

use crate::build::names::{CLIENT_PORT, Names};
use crate::build::secret_data;
use crate::build::tls::{CA_CERT, Pem, pem_in, text_in};
use crate::validate::ValidSpec;

/// The user the operator logs in as; it has the root role.
pub const OPERATOR_USER: &str = "cairn-operator";
/// The key of a password in its Secret.
pub const PASSWORD_KEY: &str = "password";
/// The key of the user's name in the operator's Secret.
pub const USERNAME_KEY: &str = "username";
/// The role etcd gives every right.
const ROOT: &str = "root";

/// A user and its password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

// Passwords stay out of logs and of the plan's debug output.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What the operator can log in with, and what keeps it from turning auth on.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// The operator's own credentials, once their Secret exists.
    pub operator: Option<Credentials>,
    /// Root's password, while the spec asks for auth and its Secret holds one.
    pub root_password: Option<String>,
    /// Why auth cannot be turned on (the Secret the spec names is missing, or has no password).
    pub problem: Option<String>,
    /// The operator's client certificate, for members that want one.
    pub identity: Option<ClientIdentity>,
}

/// The operator's client certificate for one cluster, and the CA its members' certificates are
/// from.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ClientIdentity {
    pub certificate: Pem,
    pub ca: String,
}

/// Where the operator reaches one member's client port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAddress {
    pub pod: String,
    pub ip: String,
    /// The member's host name, which its certificate is valid for (pod IPs change; names stay).
    pub host: String,
    /// The member serves clients over TLS only.
    pub tls: bool,
}

impl Access {
    /// The endpoint and options to reach `member` with: its IP, and over TLS the operator's
    /// certificate, checking the member's under its host name. None when the member wants a
    /// certificate the operator does not have yet.
    pub fn dial(&self, member: &MemberAddress, options: ConnectOptions) -> Option<(String, ConnectOptions)> {
        if !member.tls {
            return Some((format!("http://{}:{CLIENT_PORT}", member.ip), options));
        }
        let identity = self.identity.as_ref()?;
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(&identity.ca))
            .identity(Identity::from_pem(
                &identity.certificate.cert,
                &identity.certificate.key,
            ))
            .domain_name(member.host.clone());
        Some((
            format!("https://{}:{CLIENT_PORT}", member.ip),
            options.with_tls(tls),
        ))
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("operator", &self.operator)
            .field(
                "root_password",
                &self.root_password.as_ref().map(|_| "<redacted>"),
            )
            .field("problem", &self.problem)
            .field("identity", &self.identity)
            .finish()
    }
}

/// A Secret the operator makes: the cluster's labels, and no owner, so that it outlives the
/// KVCluster as retained claims do (their data keeps its users, and needs these passwords).
pub fn secret(names: &Names, name: String, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(names.namespace.clone()),
            labels: Some(names.labels()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(secret_data(data)),
        ..Secret::default()
    }
}

/// 32 random letters and digits (190 bits).
pub fn random_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// A non-empty UTF-8 value of `key` in `secret`.
fn value(secret: &Secret, key: &str) -> Option<String> {
    let bytes = &secret.data.as_ref()?.get(key)?.0;
    let text = String::from_utf8(bytes.clone()).ok()?;
    (!text.is_empty()).then_some(text)
}

fn credentials_in(secret: &Secret) -> Option<Credentials> {
    Some(Credentials {
        user: value(secret, USERNAME_KEY)?,
        password: value(secret, PASSWORD_KEY)?,
    })
}

/// Reads the Secrets, first making the ones the operator owns when the spec asks for auth. The
/// operator's own Secret is read either way: auth turned off in the spec is turned off with it.
pub async fn read(client: &kube::Client, spec: &ValidSpec) -> Result<Access, kube::Error> {
    let names = Names::of(spec);
    let secrets = Api::<Secret>::namespaced(client.clone(), &spec.namespace);
    // Read whatever the spec says: members keep wanting certificates while they roll off TLS.
    let identity = secrets
        .get_opt(&spec.operator_tls_secret())
        .await?
        .and_then(|secret| {
            Some(ClientIdentity {
                certificate: pem_in(&secret)?,
                ca: text_in(&secret, CA_CERT)?,
            })
        });
    let own_name = names.operator_credentials_secret();
    let mut own = secrets.get_opt(&own_name).await?;
    let Some(auth) = &spec.auth else {
        return Ok(Access {
            operator: own.as_ref().and_then(credentials_in),
            identity,
            ..Access::default()
        });
    };
    if own.is_none() {
        let password = random_password();
        let made = secret(
            &names,
            own_name,
            &[(USERNAME_KEY, OPERATOR_USER), (PASSWORD_KEY, &password)],
        );
        own = Some(create_once(&secrets, &made).await?);
    }
    let mut root = secrets.get_opt(&auth.root_secret).await?;
    if root.is_none() && auth.made_by_operator {
        let made = secret(
            &names,
            auth.root_secret.clone(),
            &[(PASSWORD_KEY, &random_password())],
        );
        root = Some(create_once(&secrets, &made).await?);
    }
    let root_password = root.as_ref().and_then(|s| value(s, PASSWORD_KEY));
    let problem = match (&root, &root_password) {
        (None, _) => Some(format!(
            "the Secret {:?} that spec.auth.rootPasswordSecret names does not exist",
            auth.root_secret
        )),
        (Some(_), None) => Some(format!(
            "the Secret {:?} has no {PASSWORD_KEY:?} key with a non-empty UTF-8 value",
            auth.root_secret
        )),
        (Some(_), Some(_)) => None,
    };
    let operator = own.as_ref().and_then(credentials_in);
    let problem = problem.or_else(|| {
        operator.is_none().then(|| {
            format!(
                "the Secret {:?} has no {USERNAME_KEY:?} and {PASSWORD_KEY:?}; delete it and the \
                 operator makes it again",
                names.operator_credentials_secret()
            )
        })
    });
    Ok(Access {
        operator,
        root_password,
        problem,
        identity,
    })
}

/// Creates `secret`; one made in between (by an earlier pass that failed later, or by hand) is
/// read instead, never overwritten.
pub(crate) async fn create_once(secrets: &Api<Secret>, secret: &Secret) -> Result<Secret, kube::Error> {
    match secrets.create(&PostParams::default(), secret).await {
        Ok(made) => Ok(made),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            secrets
                .get(secret.metadata.name.as_deref().unwrap_or_default())
                .await
        }
        Err(error) => Err(error),
    }
}

/// How a member took the operator's login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// Logged in: the cluster's auth is on.
    Accepted,
    /// Auth is off (the member said so when asked to log in).
    AuthOff,
    /// The member refused the credentials; in its words.
    Refused(String),
    /// The operator has no credentials to try.
    NotTried,
}

impl Login {
    /// Whether the cluster's auth is on, when the login told.
    pub fn auth_enabled(&self) -> Option<bool> {
        match self {
            Login::Accepted | Login::Refused(_) => Some(true),
            Login::AuthOff => Some(false),
            Login::NotTried => None,
        }
    }
}

/// Connects to `endpoint`, logged in as the operator when it has credentials and the cluster's
/// auth is on. A member whose auth is off, or that refuses the credentials, is connected to
/// without them: what needs no rights (Status, MemberList) still works, and the rest says why.
pub async fn connect(
    endpoint: &str,
    options: ConnectOptions,
    operator: Option<&Credentials>,
) -> Result<(Client, Login), etcd_client::Error> {
    let login = match operator {
        None => Login::NotTried,
        Some(credentials) => {
            let logged_in = options
                .clone()
                .with_user(credentials.user.clone(), credentials.password.clone());
            match Client::connect([endpoint], Some(logged_in)).await {
                Ok(client) => return Ok((client, Login::Accepted)),
                Err(error) => match refusal(&error) {
                    Some(words) if words.contains("authentication is not enabled") => Login::AuthOff,
                    Some(words) => Login::Refused(words),
                    None => return Err(error),
                },
            }
        }
    };
    Ok((Client::connect([endpoint], Some(options)).await?, login))
}

/// The message of an error the member answered with (not one of reaching it).
fn refusal(error: &etcd_client::Error) -> Option<String> {
    match error {
        etcd_client::Error::GRpcStatus(status) => Some(status.message().to_owned()),
        _ => None,
    }
}

/// Turns auth on through `client` (connected without credentials: auth is off): root with
/// `root_password` and the operator's user, each with the root role, then AuthEnable. Every call
/// may have been made before by a pass that failed half-way, so what exists is updated.
pub async fn enable(
    client: &mut Client,
    root_password: &str,
    operator: &Credentials,
) -> Result<(), etcd_client::Error> {
    match client.role_add(ROOT).await {
        Err(error) if refusal(&error).is_some_and(|w| w.contains("role name already exists")) => {}
        other => {
            other?;
        }
    }
    for (user, password) in [
        (ROOT, root_password),
        (operator.user.as_str(), operator.password.as_str()),
    ] {
        match client.user_add(user, password, None).await {
            Err(error) if refusal(&error).is_some_and(|w| w.contains("user name already exists")) => {
                client.user_change_password(user, password).await?;
            }
            other => {
                other?;
            }
        }
        client.user_grant_role(user, ROOT).await?;
    }
    client.auth_enable().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::testing::assert_yaml;

    #[test]
    fn made_secrets_carry_the_cluster_labels_and_no_owner() {
        let names = Names::new("kv", "prod");
        let made = secret(&names, names.root_password_secret(), &[(PASSWORD_KEY, "pw")]);
        assert_yaml(
            &made,
            "apiVersion: v1\nkind: Secret\n\
             metadata: {name: kv-root-password, namespace: prod, labels: {app.kubernetes.io/name: cairn, \
             app.kubernetes.io/instance: kv, app.kubernetes.io/managed-by: cairn-operator}}\n\
             type: Opaque\ndata: {password: cHc=}\n",
        );
        assert_eq!(value(&made, PASSWORD_KEY).as_deref(), Some("pw"));
        assert_eq!(value(&made, USERNAME_KEY), None);
    }

    #[test]
    fn passwords_are_random_and_never_printed() {
        let (a, b) = (random_password(), random_password());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        let access = Access {
            operator: Some(Credentials {
                user: OPERATOR_USER.into(),
                password: a.clone(),
            }),
            root_password: Some(b.clone()),
            problem: None,
            identity: Some(ClientIdentity {
                certificate: Pem {
                    cert: "CERT".into(),
                    key: "PRIVATE-KEY".into(),
                },
                ca: "CA".into(),
            }),
        };
        let printed = format!("{access:?}");
        assert!(!printed.contains(&a) && !printed.contains(&b), "{printed}");
        assert!(!printed.contains("PRIVATE-KEY"), "{printed}");
        assert!(printed.contains(OPERATOR_USER), "{printed}");
    }

    #[test]
    fn members_are_dialed_by_ip_and_over_tls_only_with_the_operators_certificate() {
        let member = |tls| MemberAddress {
            pod: "kv-1".into(),
            ip: "10.0.0.7".into(),
            host: "kv-1.kv-peer.ns.svc.cluster.local".into(),
            tls,
        };
        let endpoint =
            |access: &Access, tls| access.dial(&member(tls), ConnectOptions::new()).map(|(e, _)| e);
        let without = Access::default();
        assert_eq!(endpoint(&without, false).as_deref(), Some("http://10.0.0.7:2379"));
        assert_eq!(endpoint(&without, true), None);
        let with = Access {
            identity: Some(ClientIdentity {
                certificate: Pem {
                    cert: "c".into(),
                    key: "k".into(),
                },
                ca: "ca".into(),
            }),
            ..Access::default()
        };
        assert_eq!(endpoint(&with, true).as_deref(), Some("https://10.0.0.7:2379"));
    }

    #[test]
    fn an_empty_or_missing_password_is_no_password() {
        let names = Names::new("kv", "prod");
        let empty = secret(
            &names,
            "s".into(),
            &[(USERNAME_KEY, OPERATOR_USER), (PASSWORD_KEY, "")],
        );
        assert_eq!(credentials_in(&empty), None);
        let full = secret(
            &names,
            "s".into(),
            &[(USERNAME_KEY, OPERATOR_USER), (PASSWORD_KEY, "x")],
        );
        assert_eq!(credentials_in(&full).unwrap().password, "x");
    }
}
