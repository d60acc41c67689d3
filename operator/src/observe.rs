//! Observing a cluster through its own API: every member pod is asked for its Status and its
//! version (`/version`), the leader for the MemberList, and the answers are assembled (purely,
//! in `assemble`) into what the status reports. Members are reached by pod IP, which works from
//! inside and outside the Kubernetes network alike (over TLS, their certificates are checked under
//! their host names).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::time::timeout;

use crate::access::{self, Access, Login, MemberAddress};
use crate::build::names::{CLIENT_PORT, METRICS_PORT};
use crate::crd::MemberStatus;

/// What one member said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberReport {
    /// The pod that answered at its address.
    pub pod: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub leader: u64,
    pub applied_index: u64,
    /// The Cairn version it runs, when its `/version` said.
    pub version: Option<String>,
}

/// One entry of the member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedMember {
    pub id: u64,
    pub name: String,
    pub peer_url: String,
    pub client_url: Option<String>,
    pub is_learner: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub members: Vec<MemberStatus>,
    pub leader: Option<String>,
    pub cluster_id: Option<String>,
    /// Whether the member list came from the leader (only such a list is acted on).
    pub list_from_leader: bool,
    /// The versions the listed members report, comma-separated when they differ.
    pub version: Option<String>,
    /// Whether the cluster's auth is on, as the leader's answer to the operator's login tells
    /// (None when the operator has no credentials to try, or no leader answered).
    pub auth_enabled: Option<bool>,
    /// The leader refused the operator's credentials, in its words.
    pub login_refused: Option<String>,
}

impl ClusterView {
    pub fn voters(&self) -> usize {
        self.members.iter().filter(|m| !m.is_learner).count()
    }

    pub fn healthy_voters(&self) -> usize {
        self.members.iter().filter(|m| !m.is_learner && m.healthy).count()
    }
}

const TIMEOUT: Duration = Duration::from_secs(2);

/// Asks every member pod (name, IP) for its status, all at once; pods that do not answer are
/// unhealthy. The member list comes from the leader: a member cut off from it may hold an older
/// list, and membership decisions must not follow an old list. When no member can give a list
/// (without a leader they cannot), the `known` one (the last status's) is shown, not acted on.
pub async fn observe(pods: &[MemberAddress], known: Vec<ListedMember>, access: &Access) -> ClusterView {
    let answers = futures::future::join_all(pods.iter().map(|pod| ask(pod, access))).await;
    let reports: Vec<MemberReport> = answers.iter().flatten().map(|(r, _)| r.clone()).collect();
    let leader = leader_by_majority(&reports);
    // Status and MemberList need no rights; one login, at the leader, tells whether auth is on
    // and whether the operator's credentials still work (a login is a log entry: one per pass).
    let leader_pod = reports
        .iter()
        .find(|r| Some(r.member_id) == leader)
        .and_then(|r| pods.iter().find(|pod| pod.pod == r.pod));
    let leader_dial = leader_pod.and_then(|pod| access.dial(pod, options()));
    let login = match (&access.operator, leader_dial) {
        (Some(credentials), Some((endpoint, options))) => {
            match access::connect(&endpoint, options, Some(credentials)).await {
                Ok((_, login)) => Some(login),
                Err(error) => {
                    tracing::debug!(%error, "the leader does not take the operator's login");
                    None
                }
            }
        }
        _ => None,
    };
    let with_auth = |view: ClusterView| ClusterView {
        auth_enabled: login.as_ref().and_then(Login::auth_enabled),
        login_refused: match &login {
            Some(Login::Refused(words)) => Some(words.clone()),
            _ => None,
        },
        ..view
    };
    let (from_leader, others): (Vec<_>, Vec<_>) = answers
        .into_iter()
        .flatten()
        .partition(|(report, _)| Some(report.member_id) == leader);
    for (_, client) in from_leader {
        if let Some(list) = member_list(client).await {
            return with_auth(ClusterView {
                list_from_leader: true,
                ..assemble(list, &reports)
            });
        }
    }
    // Without the leader's list, any member's is good enough to show, not to act on.
    for (_, client) in others {
        if let Some(list) = member_list(client).await {
            return with_auth(assemble(list, &reports));
        }
    }
    with_auth(assemble(known, &reports))
}

/// The members a status lists, as a member list.
pub fn listed_in(members: &[MemberStatus]) -> Vec<ListedMember> {
    members
        .iter()
        .filter_map(|m| {
            Some(ListedMember {
                id: u64::from_str_radix(&m.id, 16).ok()?,
                name: m.name.clone(),
                peer_url: m.peer_url.clone(),
                client_url: m.client_url.clone(),
                is_learner: m.is_learner,
            })
        })
        .collect()
}

fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(TIMEOUT)
        .with_timeout(TIMEOUT)
}

async fn ask(member: &MemberAddress, access: &Access) -> Option<(MemberReport, Client)> {
    let pod = &member.pod;
    let Some((endpoint, options)) = access.dial(member, options()) else {
        tracing::debug!(%pod, "member wants a client certificate the operator has not made yet");
        return None;
    };
    let mut client = match Client::connect([endpoint], Some(options)).await {
        Ok(client) => client,
        Err(error) => {
            tracing::debug!(%pod, %error, "member does not answer");
            return None;
        }
    };
    let status = match client.status().await {
        Ok(status) => status,
        Err(error) => {
            tracing::debug!(%pod, %error, "member does not report its status");
            return None;
        }
    };
    let report = MemberReport {
        pod: pod.to_owned(),
        member_id: status.header().map_or(0, |h| h.member_id()),
        cluster_id: status.header().map_or(0, |h| h.cluster_id()),
        leader: status.leader(),
        applied_index: status.raft_applied_index(),
        // With client TLS, /version is on the plain port beside the client port.
        version: cairn_version(&member.ip, if member.tls { METRICS_PORT } else { CLIENT_PORT }).await,
    };
    Some((report, client))
}

/// The `cairn` field of the member's `/version` (the Status RPC reports the etcd API version
/// clients expect, not Cairn's own).
async fn cairn_version(ip: &str, port: u16) -> Option<String> {
    let stream = timeout(TIMEOUT, tokio::net::TcpStream::connect((ip, port)))
        .await
        .ok()?
        .ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get("/version")
        .header(hyper::header::HOST, ip)
        .body(Empty::<Bytes>::new())
        .ok()?;
    let answer = timeout(TIMEOUT, async {
        let response = sender.send_request(request).await.ok()?;
        response.into_body().collect().await.ok().map(|b| b.to_bytes())
    })
    .await;
    connection.abort();
    let body: serde_json::Value = serde_json::from_slice(&answer.ok()??).ok()?;
    Some(body.get("cairn")?.as_str()?.to_owned())
}

async fn member_list(mut client: Client) -> Option<Vec<ListedMember>> {
    let members = client.member_list().await.ok()?;
    Some(
        members
            .members()
            .iter()
            .map(|m| ListedMember {
                id: m.id(),
                name: m.name().to_owned(),
                peer_url: m.peer_urls().first().cloned().unwrap_or_default(),
                client_url: m.client_urls().first().cloned(),
                is_learner: m.is_learner(),
            })
            .collect(),
    )
}

/// The member most reports name as leader (members briefly disagree during an election).
fn leader_by_majority(reports: &[MemberReport]) -> Option<u64> {
    majority(reports.iter().map(|r| r.leader).filter(|&leader| leader != 0))
}

/// The value given most often.
fn majority(values: impl Iterator<Item = u64>) -> Option<u64> {
    let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
    for value in values {
        *votes.entry(value).or_default() += 1;
    }
    votes.into_iter().max_by_key(|(_, n)| *n).map(|(value, _)| value)
}

/// How far behind the leader's applied index a member may be and still count as healthy: a
/// member further behind cannot take over without a long catch-up, so it is not counted on.
pub const MAX_LAG: u64 = 5_000;

/// The member list, with each member's health and progress from its own report. A member is
/// healthy when it answers, reports the leader's cluster ID, and is at most `MAX_LAG` entries
/// behind the leader.
pub fn assemble(list: Vec<ListedMember>, reports: &[MemberReport]) -> ClusterView {
    let by_id: BTreeMap<u64, &MemberReport> = reports.iter().map(|r| (r.member_id, r)).collect();
    let leader_id = leader_by_majority(reports);
    let leader_report = leader_id.and_then(|id| by_id.get(&id));
    let cluster_id = leader_report
        .map(|r| r.cluster_id)
        .or_else(|| majority(reports.iter().map(|r| r.cluster_id)));
    let members: Vec<MemberStatus> = list
        .into_iter()
        .map(|m| {
            let report = by_id.get(&m.id);
            let lag = report
                .zip(leader_report)
                .map(|(r, leader)| leader.applied_index.saturating_sub(r.applied_index));
            // Whatever answers at the member's pod counts: a member of another cluster there has
            // an ID of its own, unknown to this cluster's list.
            let at_its_pod = reports.iter().find(|r| r.pod == m.name);
            let foreign = report
                .copied()
                .or(at_its_pod)
                .map(|r| r.cluster_id)
                .filter(|id| Some(*id) != cluster_id);
            MemberStatus {
                name: m.name,
                id: format!("{:x}", m.id),
                peer_url: m.peer_url,
                client_url: m.client_url,
                is_leader: Some(m.id) == leader_id,
                is_learner: m.is_learner,
                healthy: report.is_some() && foreign.is_none() && lag.is_none_or(|lag| lag <= MAX_LAG),
                applied_index: report.map(|r| r.applied_index),
                lag,
                foreign_cluster_id: foreign.map(|id| format!("{id:x}")),
                version: report.and_then(|r| r.version.clone()),
            }
        })
        .collect();
    let versions: BTreeSet<&str> = members.iter().filter_map(|m| m.version.as_deref()).collect();
    ClusterView {
        leader: members.iter().find(|m| m.is_leader).map(|m| m.name.clone()),
        cluster_id: cluster_id.map(|id| format!("{id:x}")),
        version: (!versions.is_empty()).then(|| versions.into_iter().collect::<Vec<_>>().join(", ")),
        members,
        list_from_leader: false,
        auth_enabled: None,
        login_refused: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(id: u64, name: &str, learner: bool) -> ListedMember {
        ListedMember {
            id,
            name: name.into(),
            peer_url: format!("http://{name}:2380"),
            client_url: Some(format!("http://{name}:2379")),
            is_learner: learner,
        }
    }

    fn report(member_id: u64, leader: u64, applied_index: u64) -> MemberReport {
        MemberReport {
            pod: format!("pod-of-{member_id}"),
            member_id,
            cluster_id: 0xabc,
            leader,
            applied_index,
            version: Some("0.1.0".into()),
        }
    }

    #[test]
    fn members_that_answer_are_healthy_and_the_leader_is_marked() {
        let view = assemble(
            vec![
                listed(10, "kv-0", false),
                listed(11, "kv-1", false),
                listed(12, "kv-2", true),
            ],
            &[report(10, 11, 7), report(11, 11, 7)],
        );
        assert_eq!(view.leader.as_deref(), Some("kv-1"));
        assert_eq!(view.cluster_id.as_deref(), Some("abc"));
        assert_eq!(view.voters(), 2);
        assert_eq!(view.healthy_voters(), 2);
        let learner = &view.members[2];
        assert_eq!(
            (learner.id.as_str(), learner.healthy, learner.is_learner),
            ("c", false, true)
        );
        assert_eq!(view.members[0].applied_index, Some(7));
        assert!(view.members[1].is_leader && !view.members[0].is_leader);
        assert_eq!(view.version.as_deref(), Some("0.1.0"));
        assert_eq!(learner.version, None);
    }

    #[test]
    fn members_running_different_versions_show_all_of_them() {
        let newer = MemberReport {
            version: Some("0.2.0".into()),
            ..report(2, 1, 5)
        };
        let unknown = MemberReport {
            version: None,
            ..report(3, 1, 5)
        };
        let list = vec![
            listed(1, "a", false),
            listed(2, "b", false),
            listed(3, "c", false),
        ];
        let view = assemble(list.clone(), &[report(1, 1, 5), newer, unknown]);
        assert_eq!(view.version.as_deref(), Some("0.1.0, 0.2.0"));
        assert_eq!(view.members[1].version.as_deref(), Some("0.2.0"));
        assert_eq!(assemble(list, &[]).version, None);
    }

    #[test]
    fn a_lagging_member_or_one_of_another_cluster_is_not_healthy() {
        let list = vec![
            listed(1, "a", false),
            listed(2, "b", false),
            listed(3, "c", false),
        ];
        let far_behind = report(2, 1, 10_000 - MAX_LAG - 1);
        let stranger = MemberReport {
            cluster_id: 0xdef,
            ..report(3, 1, 10_000)
        };
        let view = assemble(list.clone(), &[report(1, 1, 10_000), far_behind, stranger]);
        assert_eq!(view.cluster_id.as_deref(), Some("abc"));
        let [a, b, c] = &view.members[..] else {
            panic!("three members");
        };
        assert!(a.healthy && a.lag == Some(0) && a.foreign_cluster_id.is_none());
        assert!(!b.healthy && b.lag == Some(MAX_LAG + 1));
        assert!(!c.healthy && c.foreign_cluster_id.as_deref() == Some("def"));

        // A member of another cluster at c's pod has an ID this cluster never listed.
        let impostor = MemberReport {
            pod: "c".into(),
            cluster_id: 0xdef,
            ..report(99, 99, 3)
        };
        let view = assemble(
            list.clone(),
            &[report(1, 1, 10_000), report(2, 1, 10_000), impostor],
        );
        let c = &view.members[2];
        assert!(!c.healthy && c.foreign_cluster_id.as_deref() == Some("def"));
        assert_eq!((c.applied_index, view.leader.as_deref()), (None, Some("a")));

        // Just within the bound is healthy; without the leader's report there is no lag to tell.
        let close = report(2, 1, 10_000 - MAX_LAG);
        let view = assemble(list.clone(), &[report(1, 1, 10_000), close]);
        assert!(view.members[1].healthy);
        let view = assemble(list, &[report(2, 0, 5)]);
        assert_eq!((view.members[1].healthy, view.members[1].lag), (true, None));
    }

    #[test]
    fn disagreeing_members_follow_the_majority_and_silence_means_no_leader() {
        let list = vec![
            listed(1, "a", false),
            listed(2, "b", false),
            listed(3, "c", false),
        ];
        let view = assemble(list.clone(), &[report(1, 2, 1), report(2, 2, 1), report(3, 3, 1)]);
        assert_eq!(view.leader.as_deref(), Some("b"));
        let view = assemble(list, &[report(1, 0, 1)]);
        assert_eq!(view.leader, None);
        assert_eq!(view.healthy_voters(), 1);
    }
}
