#!/usr/bin/env python3
"""Side-by-side benchmark: a local 3-member Cairn cluster against a local 3-member etcd 3.4 cluster
(Debian's etcd-server), same load from cairn-bench, interleaved round by round so that the noise of
a shared host falls on both. Prints medians per workload and the Cairn/etcd ratios.

    cargo build --release --bin cairn --bin cairn-bench
    apt-get install etcd-server          # provides /usr/bin/etcd (3.4)
    bench/compare.py --rounds 5

Ratios above 1.0 mean Cairn is faster (ops/s) or slower (p50 and p99, where lower is better). For
the watch workloads ops/s counts events received and the latencies are put→event; `--only watch`
runs just those. `--breakdown` times one client's puts on Cairn stage by stage instead, from the
members' `cairn_write_stage_duration_seconds` histograms.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")

# name, cairn-bench arguments, requests per run (None: --total); the bar for Cairn is on the first
# four, and on the watch workloads: put→event p50 no worse than etcd's, fan-out events/s at least
# etcd's.
WORKLOADS = [
    ("put, 64 clients", ["--clients", "64", "--conns", "8", "put", "--key-size", "8", "--val-size", "256",
                         "--key-space-size", "100000"], None),
    ("put, 256 clients", ["--clients", "256", "--conns", "32", "put", "--key-size", "8", "--val-size", "256",
                          "--key-space-size", "100000"], None),
    ("range linearizable, 64 clients", ["--clients", "64", "--conns", "8", "range", "bench-key",
                                        "--consistency", "l"], None),
    ("range serializable, 64 clients", ["--clients", "64", "--conns", "8", "range", "bench-key",
                                        "--consistency", "s"], None),
    ("txn-put, 64 clients", ["--clients", "64", "--conns", "8", "txn-put", "--txn-ops", "4", "--val-size", "256",
                             "--key-space-size", "100000"], None),
    ("put, 1 client", ["--clients", "1", "--conns", "1", "put", "--key-size", "8", "--val-size", "32",
                       "--key-space-size", "100000"], 2000),
    # 1,000 puts at 200/s, each timed from its sending to the watcher's event.
    ("watch put->event, 1 watcher", ["watch-latency", "--put-rate", "200"], 1000),
    # 1,000 watchers of one prefix on 10 streams, 16 writers, 1,000 puts: 1,000,000 events.
    ("watch fan-out, 1000 watchers", ["--clients", "16", "--conns", "4", "watch-fanout", "--watchers", "1000",
                                      "--streams", "10"], 1000),
]


class Cluster:
    """Three members of one system on loopback, each with its own data directory."""

    def __init__(self, system, binary, base_port, workdir, cpus=None):
        self.system = system
        self.binary = binary
        # Each member's share of the host's CPUs, told as each runtime takes it: etcd's Go
        # scheduler by GOMAXPROCS, Cairn's tokio runtime by TOKIO_WORKER_THREADS.
        self.env = dict(os.environ)
        if cpus:
            self.env.update(GOMAXPROCS=str(cpus), TOKIO_WORKER_THREADS=str(cpus))
        self.members = []
        for i in range(3):
            client, peer = base_port + 10 * i, base_port + 10 * i + 1
            self.members.append({"name": f"{system}{i}", "client": client, "peer": peer,
                                 "dir": os.path.join(workdir, f"{system}{i}")})
        self.processes = []
        self.logs = []

    @property
    def endpoints(self):
        """Client endpoints, the leader's first: one-client workloads then talk to the leader on both
        systems, rather than to whichever member happens to be listed first."""
        return ",".join(f"127.0.0.1:{m['client']}" for m in self.members)

    def put_leader_first(self):
        """Puts the current leader at the head of the member list (both systems serve etcd's JSON
        gateway, whose status names the leader and the member answering)."""
        def status(member):
            request = urllib.request.Request(f"http://127.0.0.1:{member['client']}/v3/maintenance/status",
                                             data=b"{}", method="POST")
            with urllib.request.urlopen(request, timeout=5) as r:
                return json.load(r)
        for m in self.members:
            answer = status(m)
            if answer.get("leader") == answer.get("header", {}).get("member_id"):
                self.members.remove(m)
                self.members.insert(0, m)
                return
        sys.exit(f"{self.system}: no member says it leads")

    def start(self):
        initial = ",".join(f"{m['name']}=http://127.0.0.1:{m['peer']}" for m in self.members)
        for m in self.members:
            args = [self.binary, "--name", m["name"], "--data-dir", m["dir"],
                    "--listen-client-urls", f"http://127.0.0.1:{m['client']}",
                    "--advertise-client-urls", f"http://127.0.0.1:{m['client']}",
                    "--listen-peer-urls", f"http://127.0.0.1:{m['peer']}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{m['peer']}",
                    "--initial-cluster", initial, "--initial-cluster-token", f"bench-{self.system}",
                    "--initial-cluster-state", "new", "--quota-backend-bytes", str(8 * 1024 ** 3)]
            log = open(m["dir"] + ".log", "w")
            self.logs.append(log)
            self.processes.append(subprocess.Popen(args, stdout=log, stderr=log, env=self.env))

    def wait_healthy(self, within=60):
        deadline = time.time() + within
        for m in self.members:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{m['client']}/health", timeout=2) as r:
                        if json.load(r).get("health") == "true":
                            break
                except OSError:
                    pass
                if time.time() > deadline:
                    sys.exit(f"{self.system} member {m['name']} never became healthy; see {m['dir']}.log")
                time.sleep(0.3)

    def stop(self):
        for p in self.processes:
            p.send_signal(signal.SIGTERM)
        for p in self.processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in self.logs:
            log.close()


def bench(endpoints, args, total):
    command = [os.path.join(RELEASE, "cairn-bench"), "--endpoints", endpoints, "--total", str(total),
               "--json"] + args
    out = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        sys.exit(f"cairn-bench failed: {' '.join(command)}\n{out.stdout}{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--total", type=int, default=20000, help="requests per run")
    parser.add_argument("--etcd", default="/usr/bin/etcd")
    parser.add_argument("--results", help="also write every run as JSON to this file")
    parser.add_argument("--only", help="run only the workloads whose name contains this text")
    parser.add_argument("--breakdown", action="store_true",
                        help="only time one client's puts on Cairn, stage by stage, from its metrics")
    parser.add_argument("--cpus-per-member", type=int,
                        help="give every member of both systems this many CPUs' worth of threads (GOMAXPROCS "
                             "for etcd, TOKIO_WORKER_THREADS for Cairn), as when members share a host; "
                             "by default each runtime sizes itself to the whole host")
    options = parser.parse_args()
    global WORKLOADS
    if options.only:
        WORKLOADS = [w for w in WORKLOADS if options.only in w[0]]
    for binary in (os.path.join(RELEASE, "cairn"), os.path.join(RELEASE, "cairn-bench"), options.etcd):
        if not os.access(binary, os.X_OK):
            sys.exit(f"{binary} is missing: build with `cargo build --release` / install etcd-server")

    workdir = tempfile.mkdtemp(prefix="cairn-bench-")
    cpus = options.cpus_per_member
    clusters = [Cluster("cairn", os.path.join(RELEASE, "cairn"), 21379, workdir, cpus),
                Cluster("etcd", options.etcd, 22379, workdir, cpus)]
    if options.breakdown:
        clusters = clusters[:1]
    runs = []
    try:
        for cluster in clusters:
            cluster.start()
        for cluster in clusters:
            cluster.wait_healthy()
            bench(cluster.endpoints, ["--clients", "8", "put", "--val-size", "256"], 500)  # warm-up
            put_range_key(cluster.endpoints)
            cluster.put_leader_first()
        if options.breakdown:
            breakdown(clusters[0], options.total)
            return
        for round_number in range(options.rounds):
            for name, args, total in WORKLOADS:
                order = clusters if round_number % 2 == 0 else list(reversed(clusters))
                for cluster in order:
                    report = bench(cluster.endpoints, args, total or options.total)
                    report.update(system=cluster.system, name=name, round=round_number)
                    runs.append(report)
                    print(f"round {round_number + 1}/{options.rounds} {name:32} {cluster.system:6} "
                          f"{report['ops_per_second']:9.0f} ops/s  p99 {report['p99_ms']:7.2f} ms",
                          file=sys.stderr, flush=True)
    finally:
        for cluster in clusters:
            cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    if options.results:
        with open(options.results, "w") as f:
            json.dump(runs, f, indent=1)
    share = f", {cpus} per member" if cpus else ""
    print(f"\nMedians of {options.rounds} interleaved rounds, {options.total} requests per run "
          f"({os.cpu_count()} CPUs{share}, both clusters on this host):\n")
    print(f"{'workload':32} {'cairn ops/s':>12} {'etcd ops/s':>11} {'ratio':>6}   "
          f"{'cairn p50':>10} {'etcd p50':>9} {'ratio':>6}   {'cairn p99':>10} {'etcd p99':>9} {'ratio':>6}")
    for name, _, _ in WORKLOADS:
        medians = {}
        for system in ("cairn", "etcd"):
            mine = [r for r in runs if r["name"] == name and r["system"] == system]
            medians[system] = tuple(statistics.median(r[field] for r in mine)
                                    for field in ("ops_per_second", "p50_ms", "p99_ms"))
        (c_ops, c_p50, c_p99), (e_ops, e_p50, e_p99) = medians["cairn"], medians["etcd"]
        print(f"{name:32} {c_ops:12.0f} {e_ops:11.0f} {c_ops / e_ops:6.2f}   "
              f"{c_p50:8.2f}ms {e_p50:7.2f}ms {c_p50 / e_p50:6.2f}   "
              f"{c_p99:8.2f}ms {e_p99:7.2f}ms {c_p99 / e_p99:6.2f}")


STAGES = [("write", "the write inside the leader, end to end"),
          ("wal_append", "the leader's own log append: queue, write, fsync"),
          ("peer_append", "the leader's AppendEntries round trip to a follower"),
          ("peer_append_handled", "a follower's handling of it, its append and fsync included"),
          ("apply", "applying the entry to the state machine")]


def stage_histograms(cluster):
    """Every member's write stage histograms: {stage: [(upper bound, cumulative count)]}."""
    found = []
    for m in cluster.members:
        with urllib.request.urlopen(f"http://127.0.0.1:{m['client']}/metrics", timeout=5) as r:
            text = r.read().decode()
        buckets = {}
        for line in text.splitlines():
            match = re.match(r'cairn_write_stage_duration_seconds_bucket\{stage="(\w+)",le="([^"]+)"\} (\d+)', line)
            if match:
                buckets.setdefault(match[1], []).append((float(match[2]), int(match[3])))
        found.append(buckets)
    return found


def quantile(buckets, q):
    """The q-quantile of a cumulative histogram, interpolated within its bucket, in µs."""
    total = buckets[-1][1]
    if total == 0:
        return None
    low, below = 0.0, 0
    for high, count in buckets:
        if count >= q * total:
            if high == float("inf"):
                return low * 1e6
            return (low + (high - low) * (q * total - below) / max(count - below, 1)) * 1e6
        low, below = high, count
    return None


def breakdown(cluster, total):
    """Where one client's puts spend their time, from the members' write stage histograms."""
    before = stage_histograms(cluster)
    report = bench(cluster.endpoints, ["--clients", "1", "--conns", "1", "put", "--key-size", "8", "--val-size",
                                       "32", "--key-space-size", "100000"], total)
    after = stage_histograms(cluster)
    print(f"\nOne client's puts to the leader ({total}): p50 {report['p50_ms'] * 1000:.0f} µs, "
          f"p99 {report['p99_ms'] * 1000:.0f} µs at the client. Stages (p50, p99, µs):\n")
    for stage, meaning in STAGES:
        merged = {}
        for old, new in zip(before, after):
            for high, count in new.get(stage, []):
                merged[high] = merged.get(high, 0) + count - dict(old.get(stage, [])).get(high, 0)
        buckets = sorted(merged.items())
        if not buckets or buckets[-1][1] == 0:
            continue
        print(f"  {stage:20} {quantile(buckets, 0.5):6.0f} {quantile(buckets, 0.99):7.0f}   {meaning}")


def put_range_key(endpoints):
    """Writes `bench-key` (256 bytes), the key the range workloads read."""
    subprocess.run([os.path.join(RELEASE, "cairnctl"), "--endpoints", endpoints, "put", "bench-key",
                    "v" * 256], check=True, capture_output=True)


if __name__ == "__main__":
    main()
