//! `cairn-bench`: a load generator for Cairn and any etcd v3 server, modelled on etcd's `benchmark`
//! tool: `--clients` concurrent requesters share `--conns` gRPC connections spread over the
//! endpoints, and run `--total` requests of one workload; throughput and latency percentiles are
//! printed as text, or as one JSON line with `--json` for scripts.

mod stats;
mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use etcd_client::{Client, ConnectOptions, GetOptions, KvClient, PutOptions, Txn, TxnOp};
use rand::Rng;

#[derive(Debug, Parser)]
#[command(
    name = "cairn-bench",
    about = "Load generator for etcd v3 servers (Cairn, etcd)"
)]
struct Cli {
    /// gRPC endpoints, comma separated; connections are spread over them in turn.
    #[arg(long, global = true, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Concurrent requesters.
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// gRPC connections shared by the requesters.
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Requests to send in all.
    #[arg(long, global = true, default_value_t = 10_000)]
    total: usize,
    /// Print one JSON line instead of the text summary.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// Puts keys of --key-size bytes with values of --val-size bytes.
    Put(PutArgs),
    /// Ranges over [key, end) (one key when no end is given).
    Range(RangeArgs),
    /// Transactions of --txn-ops puts each.
    TxnPut(TxnPutArgs),
    /// Put→event latency for one watcher, puts at --put-rate (--total puts).
    WatchLatency(watch::LatencyArgs),
    /// Events per second delivered to --watchers watchers of one prefix while --clients writers
    /// make --total puts.
    WatchFanout(watch::FanoutArgs),
}

#[derive(Debug, Args)]
struct PutArgs {
    #[command(flatten)]
    keys: KeyArgs,
}

#[derive(Debug, Args)]
struct KeyArgs {
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// How many distinct keys to write.
    #[arg(long, default_value_t = 1)]
    key_space_size: usize,
    /// Write keys in order instead of at random.
    #[arg(long)]
    sequential_keys: bool,
}

#[derive(Debug, Args)]
struct RangeArgs {
    key: String,
    end: Option<String>,
    /// l (linearizable) or s (serializable).
    #[arg(long, default_value = "l")]
    consistency: String,
    /// Maximum keys per response (0: no limit).
    #[arg(long, default_value_t = 0)]
    limit: i64,
}

#[derive(Debug, Args)]
struct TxnPutArgs {
    #[command(flatten)]
    keys: KeyArgs,
    /// Puts per transaction.
    #[arg(long, default_value_t = 1)]
    txn_ops: usize,
}

/// One kind of request, built fresh for each sequence number.
#[derive(Clone)]
enum Request {
    Put {
        keys: Arc<KeyGen>,
        value: Arc<Vec<u8>>,
    },
    Range {
        key: Vec<u8>,
        options: GetOptions,
    },
    TxnPut {
        keys: Arc<KeyGen>,
        value: Arc<Vec<u8>>,
        ops: usize,
    },
}

struct KeyGen {
    size: usize,
    space: usize,
    sequential: bool,
}

impl KeyGen {
    /// `count` distinct keys (a transaction may not write one key twice) for request `sequence`.
    fn keys(&self, sequence: usize, count: usize) -> Vec<Vec<u8>> {
        let space = self.space.max(count).max(1);
        let first = if self.sequential {
            sequence * count
        } else {
            rand::rng().random_range(0..space)
        };
        (0..count)
            .map(|i| {
                let mut key = format!("{:0width$}", (first + i) % space, width = self.size).into_bytes();
                key.truncate(self.size.max(1));
                key
            })
            .collect()
    }
}

impl Request {
    fn from_workload(workload: &Workload) -> anyhow::Result<(String, Request)> {
        let value = |size: usize| Arc::new(vec![b'v'; size]);
        let keys = |k: &KeyArgs| {
            Arc::new(KeyGen {
                size: k.key_size,
                space: k.key_space_size,
                sequential: k.sequential_keys,
            })
        };
        Ok(match workload {
            Workload::Put(args) => (
                format!(
                    "put key-size={} val-size={}",
                    args.keys.key_size, args.keys.val_size
                ),
                Request::Put {
                    keys: keys(&args.keys),
                    value: value(args.keys.val_size),
                },
            ),
            Workload::Range(args) => {
                let mut options = GetOptions::new().with_limit(args.limit);
                if let Some(end) = &args.end {
                    options = options.with_range(end.as_bytes());
                }
                options = match args.consistency.as_str() {
                    "l" => options,
                    "s" => options.with_serializable(),
                    other => bail!("unknown consistency {other:?}: use l or s"),
                };
                (
                    format!("range consistency={}", args.consistency),
                    Request::Range {
                        key: args.key.clone().into_bytes(),
                        options,
                    },
                )
            }
            Workload::TxnPut(args) => (
                format!("txn-put ops={} val-size={}", args.txn_ops, args.keys.val_size),
                Request::TxnPut {
                    keys: keys(&args.keys),
                    value: value(args.keys.val_size),
                    ops: args.txn_ops,
                },
            ),
            Workload::WatchLatency(_) | Workload::WatchFanout(_) => {
                bail!("watch workloads are not request loops")
            }
        })
    }

    async fn send(&self, kv: &mut KvClient, sequence: usize) -> Result<(), etcd_client::Error> {
        match self {
            Request::Put { keys, value } => {
                let key = keys.keys(sequence, 1).remove(0);
                kv.put(key, value.as_slice(), None::<PutOptions>).await?;
            }
            Request::Range { key, options } => {
                kv.get(key.clone(), Some(options.clone())).await?;
            }
            Request::TxnPut { keys, value, ops } => {
                let puts: Vec<TxnOp> = keys
                    .keys(sequence, *ops)
                    .into_iter()
                    .map(|key| TxnOp::put(key, value.as_slice(), None))
                    .collect();
                kv.txn(Txn::new().and_then(puts)).await?;
            }
        }
        Ok(())
    }
}

async fn run(cli: Cli) -> anyhow::Result<stats::Report> {
    if cli.clients == 0 || cli.conns == 0 || cli.endpoints.is_empty() {
        bail!("--clients, --conns and --endpoints must not be zero or empty");
    }
    match &cli.workload {
        Workload::WatchLatency(args) => return watch::latency(&cli.endpoints, cli.total, args).await,
        Workload::WatchFanout(args) => {
            return watch::fanout(&cli.endpoints, cli.clients, cli.total, args).await;
        }
        _ => {}
    }
    let (name, request) = Request::from_workload(&cli.workload)?;
    let mut conns = Vec::new();
    for i in 0..cli.conns {
        let endpoint = &cli.endpoints[i % cli.endpoints.len()];
        let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
        let client = Client::connect([endpoint], Some(options))
            .await
            .with_context(|| format!("cannot connect to {endpoint}"))?;
        conns.push(client.kv_client());
    }
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..cli.clients {
        let mut kv = conns[i % conns.len()].clone();
        let (next, done, request, total) = (next.clone(), done.clone(), request.clone(), cli.total);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut first_error = None;
            loop {
                let sequence = next.fetch_add(1, Ordering::Relaxed);
                if sequence >= total {
                    break;
                }
                let sent = Instant::now();
                match request.send(&mut kv, sequence).await {
                    Ok(()) => latencies.push(sent.elapsed()),
                    Err(error) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| error.to_string());
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (latencies, errors, first_error)
        }));
    }
    let progress = tokio::spawn(report_progress(done.clone(), cli.total));
    let mut latencies = Vec::with_capacity(cli.total);
    let mut errors = 0;
    for task in tasks {
        let (mine, failed, first_error) = task.await.context("a requester panicked")?;
        latencies.extend(mine);
        errors += failed;
        if let Some(error) = first_error {
            eprintln!("request failed: {error}");
        }
    }
    let elapsed = started.elapsed();
    progress.abort();
    Ok(stats::Report::new(name, latencies, errors, elapsed))
}

/// Long runs say how far they are, on stderr so that --json output stays clean.
async fn report_progress(done: Arc<AtomicUsize>, total: usize) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        eprintln!("{} / {total} requests", done.load(Ordering::Relaxed));
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = runtime.block_on(run(cli))?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.text());
    }
    if report.errors > 0 {
        bail!(
            "{} of {} requests failed",
            report.errors,
            report.errors + report.requests
        );
    }
    Ok(())
}
