//! `cairnctl make-mirror`: copies every key under a prefix from the cluster at --endpoints to the
//! destination cluster at one revision, then keeps it in step by replaying the watch from the
//! next revision, each source revision as one transaction. Prints the number of keys mirrored
//! every 30 seconds, as etcdctl does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn::mvcc::prefix_end;
use etcd_client::{EventType, GetOptions, Txn, TxnOp, WatchOptions};

use crate::cli::{Global, MirrorArgs};
use crate::{Exit, Rpc, Session, connect};

/// Keys per read of the initial copy.
const BATCH: i64 = 1000;

pub async fn run(session: &mut Session, args: MirrorArgs) -> anyhow::Result<()> {
    if args.no_dest_prefix && args.dest_prefix.is_some() {
        return Err(Exit::bad_args(
            "`--dest-prefix` and `--no-dest-prefix` cannot be set at the same time, choose one",
        )
        .into());
    }
    let destination_prefix = match (&args.dest_prefix, args.no_dest_prefix) {
        (Some(prefix), _) => prefix.clone(),
        (None, true) => String::new(),
        (None, false) => args.prefix.clone(),
    };
    let rename = |key: &[u8]| -> Vec<u8> {
        let mut renamed = destination_prefix.as_bytes().to_vec();
        renamed.extend_from_slice(key.strip_prefix(args.prefix.as_bytes()).unwrap_or(key));
        renamed
    };
    let destination_global = Global {
        user: args.dest_user.clone(),
        password: args.dest_password.clone(),
        ..session.global.clone()
    };
    let mut destination = connect(std::slice::from_ref(&args.destination), &destination_global).await?;
    let source = &mut session.client;
    let total = Arc::new(AtomicU64::new(0));
    let reporter = total.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            println!("{}", reporter.load(Ordering::Relaxed));
        }
    });

    // The copy, at one revision.
    let revision = source
        .get("foo", None)
        .await
        .rpc()?
        .header()
        .map_or(0, |h| h.revision());
    let (mut from, end) = if args.prefix.is_empty() {
        (vec![0u8], vec![0u8])
    } else {
        (
            args.prefix.as_bytes().to_vec(),
            prefix_end(args.prefix.as_bytes()),
        )
    };
    loop {
        let options = GetOptions::new()
            .with_range(end.clone())
            .with_revision(revision)
            .with_limit(BATCH);
        let page = source.get(from.clone(), Some(options)).await.rpc()?;
        for kv in page.kvs() {
            destination.put(rename(kv.key()), kv.value(), None).await.rpc()?;
            total.fetch_add(1, Ordering::Relaxed);
        }
        match (page.more(), page.kvs().last()) {
            (true, Some(last)) => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }

    // Then every change after it.
    let mut options = WatchOptions::new().with_start_revision(revision + 1);
    options = if args.prefix.is_empty() {
        options.with_all_keys()
    } else {
        options.with_prefix()
    };
    let mut watch = source.watch(args.prefix.as_bytes(), Some(options)).await.rpc()?;
    while let Some(response) = watch.message().await.rpc()? {
        if response.compact_revision() != 0 {
            anyhow::bail!("etcdserver: mvcc: required revision has been compacted");
        }
        let mut pending: Vec<TxnOp> = Vec::new();
        let mut at = 0;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            if at != 0 && kv.mod_revision() > at {
                let ops = std::mem::take(&mut pending);
                destination.txn(Txn::new().and_then(ops)).await.rpc()?;
            }
            at = kv.mod_revision();
            pending.push(match event.event_type() {
                EventType::Put => TxnOp::put(rename(kv.key()), kv.value(), None),
                EventType::Delete => TxnOp::delete(rename(kv.key()), None),
            });
            total.fetch_add(1, Ordering::Relaxed);
        }
        if !pending.is_empty() {
            destination.txn(Txn::new().and_then(pending)).await.rpc()?;
        }
    }
    anyhow::bail!("the source ended the watch")
}
