//! A version change under the operator in the sandbox, while a client writes throughout: the
//! members are restarted onto the new pod template one at a time, followers first, the leader
//! last and only after leadership has moved off it, and every write the client saw acknowledged
//! is on every member afterwards. Then the running cluster moves to client TLS the same way:
//! never two members away, every member serving TLS only afterwards, the operator seeing each
//! through its own certificate, and every write there, read with a certificate it issued.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cairn_e2e::testkit::{TestNamespace, TestSandbox, wait_for};
use cairn_operator::crd::KVCluster;
use common::{
    IssuedCertificate, OperatorSandbox, Seen, Traffic, client_options, keys_on, look_until, member_endpoint,
    operator_events, wait_settled, with_operator,
};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};

const MEMBERS: [&str; 3] = ["kv-0", "kv-1", "kv-2"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_change_rolls_members_one_at_a_time_leader_last_under_writes() {
    let OperatorSandbox {
        env,
        context,
        dir: _dir,
    } = OperatorSandbox::start(20343, 27490, 29).await;
    with_operator(&env, context, upgrade(&env)).await;
}

async fn upgrade(env: &TestSandbox) {
    let ns = env.namespace("upgrade").await;
    ns.apply(
        "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {name: kv}\n\
         spec: {replicas: 3, version: 0.1.0, storage: {size: 64Mi}}\n",
    )
    .await;
    let before = wait_settled(&ns, 3, Duration::from_secs(120)).await;
    let first_leader = before.leader.clone().expect("a leader");
    let pods: Api<Pod> = ns.api();
    // The members answer (settled) a little before their readiness probes have passed.
    for member in MEMBERS {
        ns.wait_pod_ready(member, Duration::from_secs(60)).await;
    }

    let traffic = Traffic::start(&pods, &MEMBERS).await;

    let started = Instant::now();
    let clusters: Api<cairn_operator::crd::KVCluster> = ns.api();
    let next = serde_json::json!({"spec": {"version": "0.2.0"}});
    clusters
        .patch("kv", &PatchParams::default(), &Patch::Merge(&next))
        .await
        .unwrap();
    // The roll begins (status leaves Running) and ends with every pod on the new image.
    wait_for("the roll to begin", Duration::from_secs(60), || async {
        let status = clusters.get("kv").await.ok()?.status?;
        (status.phase.as_deref() == Some("Upgrading")).then_some(())
    })
    .await;
    let after = wait_settled(&ns, 3, Duration::from_secs(240)).await;
    let rolled_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = traffic.stop().await;
    let looks = &seen.looks;
    eprintln!(
        "rolled 3 members in {:.1}s; {} writes acknowledged, {} failed",
        rolled_in.as_secs_f64(),
        seen.acknowledged.len(),
        seen.failed
    );

    for member in MEMBERS {
        let pod = pods.get(member).await.unwrap();
        let image = pod.spec.as_ref().unwrap().containers[0].image.clone();
        assert_eq!(
            image.as_deref(),
            Some("ghcr.io/cairn-dev/cairn:0.2.0"),
            "{member}"
        );
    }
    assert_eq!(after.cluster_id, before.cluster_id, "the same cluster");
    let ids = |status: &cairn_operator::crd::KVClusterStatus| -> BTreeSet<String> {
        status.members.iter().map(|m| m.id.clone()).collect()
    };
    assert_eq!(
        ids(&after),
        ids(&before),
        "the same members, restarted, not replaced"
    );

    // One at a time (never two members away), each restarted once, the first leader last.
    let history = looks
        .iter()
        .map(|l| {
            let uids: Vec<String> = l
                .pods
                .values()
                .map(|uid| uid.as_deref().map_or("-".into(), |u| u[..4].to_owned()))
                .collect();
            format!("{} leader {:?}", uids.join(" "), l.leader)
        })
        .collect::<Vec<_>>()
        .join("\n");
    let initial = &looks.first().expect("looks").pods;
    let mut restarted: Vec<String> = Vec::new();
    for (i, look) in looks.iter().enumerate() {
        let away: Vec<&String> = look
            .pods
            .iter()
            .filter(|(_, uid)| uid.is_none())
            .map(|(n, _)| n)
            .collect();
        assert!(away.len() <= 1, "{away:?} away at once in look {i}:\n{history}");
        for (member, uid) in &look.pods {
            let renewed = uid.is_some() && initial.get(member) != Some(uid);
            if renewed && !restarted.contains(member) {
                restarted.push(member.clone());
            }
        }
    }
    assert_eq!(
        restarted.len(),
        3,
        "each member restarted once: {restarted:?}\n{history}"
    );
    assert_eq!(
        restarted.last(),
        Some(&first_leader),
        "the leader goes last: {restarted:?}"
    );
    assert!(
        looks
            .iter()
            .any(|l| l.leader.is_some() && l.leader.as_ref() != Some(&first_leader)),
        "leadership moved"
    );
    // The operator's own record, in the order it acted: the followers restarted, leadership
    // moved off the first leader, and only then the first leader restarted.
    let steps = roll_events(&ns).await;
    let position = |wanted: &str| steps.iter().position(|step| step == wanted);
    let moved = steps
        .iter()
        .position(|step| step.starts_with(&format!("LeaderMoved: moving leadership from {first_leader} ")));
    let leader_restarted = position(&format!(
        "MemberRestarted: restarting {first_leader} on the new pod template"
    ));
    assert!(
        matches!((moved, leader_restarted), (Some(m), Some(r)) if m < r),
        "leadership moves before the leader restarts: {steps:#?}"
    );
    assert_eq!(
        steps.iter().filter(|s| s.starts_with("MemberRestarted")).count(),
        3,
        "{steps:#?}"
    );

    seen.on_every_member(&ns, &MEMBERS, |_| client_options(), false)
        .await;
    eprintln!("restart order {restarted:?}, first leader {first_leader}");

    move_to_client_tls(&ns, &pods, seen.acknowledged).await;
}

/// Turns client TLS on in the running cluster's spec and follows the roll that carries it out.
async fn move_to_client_tls(ns: &TestNamespace, pods: &Api<Pod>, written: Vec<String>) {
    let clusters: Api<KVCluster> = ns.api();
    let before = clusters.get("kv").await.unwrap().status.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let looker = tokio::spawn(look_until(pods.clone(), &MEMBERS, stop.clone()));
    let started = Instant::now();
    let tls = serde_json::json!({"spec": {"tls": {"client": {
        "enabled": true,
        "certificates": [{"secretName": "kv-admin", "user": "root"}],
    }}}});
    clusters
        .patch("kv", &PatchParams::default(), &Patch::Merge(&tls))
        .await
        .unwrap();
    wait_for(
        "the move to client TLS to begin",
        Duration::from_secs(60),
        || async {
            let status = clusters.get("kv").await.ok()?.status?;
            (status.phase.as_deref() == Some("Upgrading")).then_some(())
        },
    )
    .await;
    let after = wait_settled(ns, 3, Duration::from_secs(240)).await;
    let moved_in = started.elapsed();
    for member in MEMBERS {
        ns.wait_pod_ready(member, Duration::from_secs(60)).await;
    }
    stop.store(true, Ordering::Relaxed);
    // No writes while clients move to TLS; the earlier ones must all be there.
    let seen = Seen {
        acknowledged: written,
        failed: 0,
        looks: looker.await.unwrap(),
    };
    eprintln!("moved 3 members to client TLS in {:.1}s", moved_in.as_secs_f64());
    seen.at_most_one_away();
    assert_eq!(after.cluster_id, before.cluster_id, "the same cluster");
    assert!(
        after.members.iter().all(|m| m.healthy
            && m.client_url
                .as_deref()
                .is_some_and(|url| url.starts_with("https://"))),
        "every member serves TLS and the operator sees it: {:?}",
        after.members
    );

    let admin = IssuedCertificate::read(ns, "kv-admin").await;
    let with_certificate = |member: &str| client_options().with_tls(admin.tls(&ns.name, member, true));
    seen.on_every_member(ns, &MEMBERS, with_certificate, true).await;
    for member in MEMBERS {
        let endpoint = member_endpoint(ns, member)
            .await
            .replacen("http://", "https://", 1);
        let plaintext = member_endpoint(ns, member).await;
        assert!(
            keys_on(&plaintext, client_options()).await.is_none(),
            "{member} still answers plaintext clients"
        );
        let without_certificate = client_options().with_tls(admin.tls(&ns.name, member, false));
        assert!(
            keys_on(&endpoint, without_certificate).await.is_none(),
            "{member} answers a client without a certificate"
        );
    }
}

/// The operator's Events about the roll (`reason: note`), in the order they happened.
async fn roll_events(ns: &TestNamespace) -> Vec<String> {
    operator_events(ns, &["MemberRestarted", "LeaderMoved"])
        .await
        .into_iter()
        .map(|(reason, note, _)| format!("{reason}: {note}"))
        .collect()
}
