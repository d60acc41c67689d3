//! Moving a running plaintext cluster's peers to TLS, planned purely, in the three rounds its
//! members support: every member restarts listening under both schemes on one port with its
//! certificate (a roll, see `upgrade`); then each member's peer URL changes to https:// in the
//! member list, one at a time, so that its peers dial it over TLS; then, with every URL on
//! https://, peer TLS is latched in status and the members roll onto TLS only.
//!
//! A URL changes only while every member serves TLS, is healthy and its pod Ready, and the member
//! whose URL changed last has had a while to show its peers reach it: a member they could not
//! reach would lose its leader and fail its readiness probe within that while. So one bad
//! certificate costs at most one member, never the quorum.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::build::names::Names;
use crate::crd::{KVClusterStatus, MemberStatus};
use crate::membership::{PodSeen, Step, place};
use crate::observe::ClusterView;

/// The least time, in seconds, given a member after its URL changes: with the default election
/// timeout, a member its peers cannot reach has no leader after about a second, and its pod is
/// unready three failed probes (2 s apart) later.
const LEAST_SETTLE_SECONDS: u64 = 15;

/// How long to wait after a URL change before the next, for members with this election timeout.
pub fn settle_seconds(election_timeout_ms: Option<u32>) -> u64 {
    let election = u64::from(election_timeout_ms.unwrap_or(1000)).div_ceil(1000);
    LEAST_SETTLE_SECONDS.max(3 * election + 6)
}

fn is_tls(url: &str) -> bool {
    url.starts_with("https://")
}

/// The peer URLs of `members` that are on TLS.
fn tls_urls(members: &[MemberStatus]) -> BTreeSet<&str> {
    members
        .iter()
        .map(|m| m.peer_url.as_str())
        .filter(|url| is_tls(url))
        .collect()
}

/// When the member list last showed a peer URL newly on https://: `now`, when the leader's list
/// shows one the last status did not; otherwise what that status recorded.
pub fn last_url_change(previous: &KVClusterStatus, view: &ClusterView, now: &Time) -> Option<Time> {
    let before = tls_urls(&previous.members);
    let newly = view.list_from_leader && tls_urls(&view.members).iter().any(|url| !before.contains(url));
    if newly {
        return Some(now.clone());
    }
    previous.peer_tls_move.as_ref()?.last_url_change.clone()
}

/// The next step of the move once membership is settled (every member placed, no learner, no pod
/// on an older template than the StatefulSet's). `quiet_seconds`: how long since a URL last
/// changed (None before the first).
pub fn next_step(
    names: &Names,
    view: &ClusterView,
    pods: &BTreeMap<String, PodSeen>,
    quiet_seconds: Option<u64>,
    settle_seconds: u64,
) -> Step {
    let placed = match place(names, view) {
        Ok(placed) => placed,
        Err(wait) => return wait,
    };
    for member in &placed {
        // The pod's own spec says whether it serves TLS: right after the StatefulSet changes,
        // its pods may not look outdated yet.
        let why = match pods.get(&member.name).filter(|pod| !pod.terminating) {
            None => "has no pod",
            Some(pod) if !pod.peer_tls || pod.outdated => "does not serve TLS to its peers yet",
            Some(pod) if pod.unready_seconds.is_some() => "is not Ready",
            Some(_) if !member.status.healthy => "is not healthy",
            Some(_) => continue,
        };
        return Step::Wait(format!(
            "moving the peers to TLS: {} {why}; peer URLs change only while every member serves TLS",
            member.name
        ));
    }
    if let Some(quiet) = quiet_seconds.filter(|&quiet| quiet < settle_seconds) {
        return Step::Wait(format!(
            "moving the peers to TLS: the member whose peer URL changed last has {}s more to show \
             its peers reach it over TLS",
            settle_seconds - quiet
        ));
    }
    let tls = names.on_tls();
    match placed.iter().find(|member| !is_tls(&member.status.peer_url)) {
        Some(member) => Step::UpdatePeerUrl {
            member: member.name.clone(),
            id: member.id,
            peer_url: tls.peer_url(&member.name),
        },
        None => Step::PeersOnTls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::names::PeerScheme;
    use crate::crd::PeerTlsMove;

    fn names() -> Names {
        Names {
            peer_scheme: PeerScheme::Moving,
            ..Names::new("kv", "prod")
        }
    }

    /// Members 0..n, `tls[o]` saying whether the list has member o under https://.
    fn view(tls: &[bool]) -> ClusterView {
        let names = names();
        let members = tls
            .iter()
            .enumerate()
            .map(|(o, &on_tls)| {
                let name = names.member(o as i32);
                let url = if on_tls {
                    names.on_tls().peer_url(&name)
                } else {
                    names.peer_url(&name)
                };
                MemberStatus {
                    peer_url: url,
                    name,
                    id: format!("{:x}", 0x10 + o),
                    healthy: true,
                    is_leader: o == 0,
                    ..MemberStatus::default()
                }
            })
            .collect();
        ClusterView {
            members,
            leader: Some("kv-0".into()),
            list_from_leader: true,
            ..ClusterView::default()
        }
    }

    /// Ready pods of members 0..n that serve TLS to their peers.
    fn serving(n: usize) -> BTreeMap<String, PodSeen> {
        (0..n)
            .map(|o| {
                let pod = PodSeen {
                    peer_tls: true,
                    ready_seconds: Some(60),
                    ..PodSeen::default()
                };
                (format!("kv-{o}"), pod)
            })
            .collect()
    }

    fn step(view: &ClusterView, pods: &BTreeMap<String, PodSeen>, quiet: Option<u64>) -> Step {
        next_step(&names(), view, pods, quiet, 15)
    }

    #[test]
    fn urls_change_one_at_a_time_with_a_pause_after_each_then_tls_is_latched() {
        let pods = serving(3);
        let update = |o: usize| Step::UpdatePeerUrl {
            member: format!("kv-{o}"),
            id: 0x10 + o as u64,
            peer_url: format!("https://kv-{o}.kv-peer.prod.svc.cluster.local:2380"),
        };
        assert_eq!(step(&view(&[false, false, false]), &pods, None), update(0));
        let waits = step(&view(&[true, false, false]), &pods, Some(3));
        assert!(
            matches!(&waits, Step::Wait(why) if why.contains("12s more")),
            "{waits:?}"
        );
        assert_eq!(step(&view(&[true, false, false]), &pods, Some(15)), update(1));
        assert_eq!(step(&view(&[true, true, false]), &pods, Some(40)), update(2));
        assert_eq!(step(&view(&[true, true, true]), &pods, Some(1)), step_waiting());
        assert_eq!(
            step(&view(&[true, true, true]), &pods, Some(15)),
            Step::PeersOnTls
        );
    }

    fn step_waiting() -> Step {
        Step::Wait(
            "moving the peers to TLS: the member whose peer URL changed last has 14s more to show \
             its peers reach it over TLS"
                .into(),
        )
    }

    #[test]
    fn nothing_changes_until_every_member_serves_tls_and_is_ready_and_healthy() {
        let all = view(&[false, false, false]);
        let waits_for = |pods: &BTreeMap<String, PodSeen>, view: &ClusterView, what: &str| {
            let step = step(view, pods, None);
            assert!(
                matches!(&step, Step::Wait(why) if why.contains(what)),
                "{what}: {step:?}"
            );
        };
        let mut plain = serving(3);
        plain.get_mut("kv-1").unwrap().peer_tls = false;
        waits_for(&plain, &all, "kv-1 does not serve TLS to its peers yet");
        let mut outdated = serving(3);
        outdated.get_mut("kv-2").unwrap().outdated = true;
        waits_for(&outdated, &all, "kv-2 does not serve TLS");
        let mut unready = serving(3);
        unready.get_mut("kv-0").unwrap().unready_seconds = Some(4);
        waits_for(&unready, &all, "kv-0 is not Ready");
        let mut gone = serving(3);
        gone.get_mut("kv-2").unwrap().terminating = true;
        waits_for(&gone, &all, "kv-2 has no pod");
        let mut sick = view(&[true, false, false]);
        sick.members[0].healthy = false;
        waits_for(&serving(3), &sick, "kv-0 is not healthy");
        let mut hearsay = all.clone();
        hearsay.list_from_leader = false;
        waits_for(&serving(3), &hearsay, "the leader's member list");
    }

    #[test]
    fn a_url_newly_on_tls_is_dated_when_first_seen_and_the_date_kept_after() {
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
        let earlier = Time(k8s_openapi::jiff::Timestamp::from_second(900).unwrap());
        let previous = KVClusterStatus {
            members: view(&[true, false, false]).members,
            peer_tls_move: Some(PeerTlsMove {
                last_url_change: Some(earlier.clone()),
            }),
            ..KVClusterStatus::default()
        };
        assert_eq!(
            last_url_change(&previous, &view(&[true, true, false]), &now),
            Some(now.clone())
        );
        assert_eq!(
            last_url_change(&previous, &view(&[true, false, false]), &now),
            Some(earlier)
        );
        // Only the leader's list counts.
        let mut hearsay = view(&[true, true, false]);
        hearsay.list_from_leader = false;
        assert_ne!(last_url_change(&previous, &hearsay, &now), Some(now.clone()));
        let fresh = KVClusterStatus::default();
        assert_eq!(last_url_change(&fresh, &view(&[false, false, false]), &now), None);
    }

    #[test]
    fn longer_election_timeouts_wait_longer() {
        assert_eq!(settle_seconds(None), 15);
        assert_eq!(settle_seconds(Some(1000)), 15);
        assert_eq!(settle_seconds(Some(5000)), 21);
    }
}
