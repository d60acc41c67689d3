//! Watch workloads: how long a put takes to reach a watcher (`watch-latency`), and how many events
//! per second a member delivers to many watchers of one prefix (`watch-fanout`), modelled on etcd
//! benchmark's `watch-latency` and `watch` commands.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use etcd_client::{Client, ConnectOptions, PutOptions, WatchOptions};

use crate::stats::Report;

const PREFIX: &str = "watch-bench/";

#[derive(Debug, Args)]
pub struct LatencyArgs {
    /// Puts per second (each timed from its sending to the watcher's event).
    #[arg(long, default_value_t = 100)]
    pub put_rate: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 32)]
    pub val_size: usize,
}

#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// Watchers of the prefix, spread over the streams.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Watch streams (each on a connection of its own, spread over the endpoints).
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 32)]
    pub val_size: usize,
}

async fn connect(endpoint: &str) -> anyhow::Result<Client> {
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
    Client::connect([endpoint], Some(options))
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))
}

fn key(run: u64, sequence: usize) -> String {
    format!("{PREFIX}{run:x}/{sequence:09}")
}

/// The sequence number a key of this run carries.
fn sequence_of(run: u64, key: &[u8]) -> Option<usize> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix(&format!("{PREFIX}{run:x}/"))?;
    rest.parse().ok()
}

/// When each put was sent, in nanoseconds after `start`.
struct SendTimes {
    start: Instant,
    sent: Vec<AtomicU64>,
}

impl SendTimes {
    fn new(total: usize) -> SendTimes {
        SendTimes {
            start: Instant::now(),
            sent: (0..total).map(|_| AtomicU64::new(u64::MAX)).collect(),
        }
    }

    fn mark(&self, sequence: usize) {
        self.sent[sequence].store(self.start.elapsed().as_nanos() as u64, Ordering::Release);
    }

    /// Adds each event's time since its put was sent.
    fn record(&self, run: u64, response: &etcd_client::WatchResponse, latencies: &mut Vec<Duration>) {
        for event in response.events() {
            if let Some(latency) = event
                .kv()
                .and_then(|kv| sequence_of(run, kv.key()))
                .and_then(|s| self.since_sent(s))
            {
                latencies.push(latency);
            }
        }
    }

    fn since_sent(&self, sequence: usize) -> Option<Duration> {
        let sent = self.sent.get(sequence)?.load(Ordering::Acquire);
        let now = self.start.elapsed().as_nanos() as u64;
        (sent != u64::MAX).then(|| Duration::from_nanos(now.saturating_sub(sent)))
    }
}

fn run_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One watcher on the first endpoint, puts at a steady rate through the same endpoint: put→event.
pub async fn latency(endpoints: &[String], total: usize, args: &LatencyArgs) -> anyhow::Result<Report> {
    if args.put_rate == 0 {
        bail!("--put-rate must be greater than zero");
    }
    let run = run_id();
    let prefix = format!("{PREFIX}{run:x}/");
    let mut watcher = connect(&endpoints[0]).await?;
    let mut stream = watcher
        .watch(prefix.as_bytes(), Some(WatchOptions::new().with_prefix()))
        .await?;
    stream.message().await?.context("the watch was not created")?;
    let times = Arc::new(SendTimes::new(total));
    let writer_times = times.clone();
    let mut kv = connect(&endpoints[0]).await?.kv_client();
    let value = vec![b'v'; args.val_size];
    let pause = Duration::from_nanos(1_000_000_000 / args.put_rate);
    let writer = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(pause);
        for sequence in 0..total {
            ticks.tick().await;
            writer_times.mark(sequence);
            kv.put(key(run, sequence), value.clone(), None::<PutOptions>)
                .await?;
        }
        Ok::<(), etcd_client::Error>(())
    });
    let mut latencies = Vec::with_capacity(total);
    while latencies.len() < total {
        let response = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .context("no event for 30 s")??
            .context("the watch ended")?;
        times.record(run, &response, &mut latencies);
    }
    writer.await.context("the writer panicked")??;
    let elapsed = times.start.elapsed();
    Ok(Report::new(
        format!("watch-latency put-rate={}", args.put_rate),
        latencies,
        0,
        elapsed,
    ))
}

/// Many watchers of one prefix on `--streams` streams, `--clients` writers: events delivered per
/// second across all watchers, and each event's put→event latency.
pub async fn fanout(
    endpoints: &[String],
    clients: usize,
    total: usize,
    args: &FanoutArgs,
) -> anyhow::Result<Report> {
    if args.streams == 0 || args.watchers < args.streams {
        bail!("--streams must be at least 1 and at most --watchers");
    }
    let run = run_id();
    let prefix = format!("{PREFIX}{run:x}/");
    let times = Arc::new(SendTimes::new(total));
    let mut readers = Vec::new();
    for s in 0..args.streams {
        let watchers = args.watchers / args.streams + usize::from(s < args.watchers % args.streams);
        let mut client = connect(&endpoints[s % endpoints.len()]).await?;
        let options = || Some(WatchOptions::new().with_prefix());
        let mut stream = client.watch(prefix.as_bytes(), options()).await?;
        for _ in 1..watchers {
            stream.watch(prefix.as_bytes(), options()).await?;
        }
        let mut created = 0;
        while created < watchers {
            let response = stream.message().await?.context("the watch ended")?;
            created += usize::from(response.created());
        }
        let times = times.clone();
        readers.push(tokio::spawn(async move {
            let _client = client;
            let expected = watchers * total;
            let mut latencies = Vec::with_capacity(expected);
            while latencies.len() < expected {
                let response = tokio::time::timeout(Duration::from_secs(60), stream.message())
                    .await
                    .context("no event for 60 s")??
                    .context("the watch ended")?;
                times.record(run, &response, &mut latencies);
            }
            Ok::<Vec<Duration>, anyhow::Error>(latencies)
        }));
    }
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for c in 0..clients.max(1) {
        let mut kv = connect(&endpoints[c % endpoints.len()]).await?.kv_client();
        let (times, next) = (times.clone(), next.clone());
        let value = vec![b'v'; args.val_size];
        writers.push(tokio::spawn(async move {
            loop {
                let sequence = next.fetch_add(1, Ordering::Relaxed);
                if sequence >= total {
                    return Ok::<(), etcd_client::Error>(());
                }
                times.mark(sequence);
                kv.put(key(run, sequence), value.clone(), None::<PutOptions>)
                    .await?;
            }
        }));
    }
    for writer in writers {
        writer.await.context("a writer panicked")??;
    }
    let mut latencies = Vec::with_capacity(args.watchers * total);
    for reader in readers {
        latencies.extend(reader.await.context("a reader panicked")??);
    }
    let elapsed = started.elapsed();
    Ok(Report::new(
        format!("watch-fanout watchers={} streams={}", args.watchers, args.streams),
        latencies,
        0,
        elapsed,
    ))
}
