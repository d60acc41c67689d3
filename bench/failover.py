#!/usr/bin/env python3
"""Failover benchmark: how long writes fail when the leader of a local 3-member cluster is stopped
(SIGTERM, as on every pod deletion) or crashes (SIGKILL), Cairn against Debian's etcd 3.4, with the
same --heartbeat-interval and --election-timeout, interleaved run by run.

The figure of one run: the time from signalling the leader until a put through one of the two
other members succeeds, with etcdctl (300 ms dial and command timeouts) tried every 20 ms.

    cargo build --release --bin cairn --bin cairn-bench
    apt-get install etcd-server etcd-client
    bench/failover.py --runs 5
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import RELEASE, Cluster  # noqa: E402

ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}


def etcdctl(endpoint, *args, timeout="300ms"):
    command = [ETCDCTL, "--endpoints", endpoint, "--dial-timeout", timeout, "--command-timeout", timeout, *args]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"})


def leader_index(cluster):
    """The position of the member that leads, as every member's own status says."""
    deadline = time.time() + 30
    while time.time() < deadline:
        for i, m in enumerate(cluster.members):
            out = etcdctl(f"127.0.0.1:{m['client']}", "endpoint", "status", "-w", "json", timeout="2s")
            if out.returncode != 0:
                continue
            status = json.loads(out.stdout)[0]["Status"]
            if status["header"]["member_id"] == status["leader"]:
                return i
        time.sleep(0.2)
    sys.exit(f"{cluster.system}: no leader")


def one_run(system, binary, signame, workdir, base_port):
    cluster = Cluster(system, binary, base_port, workdir)
    cluster.start()
    try:
        cluster.wait_healthy()
        leader = leader_index(cluster)
        others = [f"127.0.0.1:{m['client']}" for i, m in enumerate(cluster.members) if i != leader]
        for endpoint in others:
            if etcdctl(endpoint, "put", "warm", "up", timeout="5s").returncode != 0:
                sys.exit(f"{system}: a put through {endpoint} failed before the fault")
        time.sleep(1)  # steady heartbeats before the fault
        signalled = time.monotonic()
        cluster.processes[leader].send_signal(SIGNALS[signame])
        attempt = 0
        while time.monotonic() - signalled < 30:
            if etcdctl(others[attempt % 2], "put", "after", str(attempt)).returncode == 0:
                return time.monotonic() - signalled
            attempt += 1
            time.sleep(0.02)
        sys.exit(f"{system}: no write succeeded within 30 s of {signame}")
    finally:
        cluster.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--etcd", default="/usr/bin/etcd")
    options = parser.parse_args()
    binaries = {"cairn": os.path.join(RELEASE, "cairn"), "etcd": options.etcd}
    for binary in (*binaries.values(), ETCDCTL):
        if not os.access(binary, os.X_OK):
            sys.exit(f"{binary} is missing: build with `cargo build --release` / install etcd-server etcd-client")
    results = {(system, signame): [] for system in binaries for signame in SIGNALS}
    for run in range(options.runs):
        # Alternate which system goes first, so drift on the host falls on both.
        order = list(binaries) if run % 2 == 0 else list(reversed(binaries))
        for signame in SIGNALS:
            for system in order:
                workdir = tempfile.mkdtemp(prefix="cairn-failover-")
                try:
                    base = 23379 if system == "cairn" else 24379
                    took = one_run(system, binaries[system], signame, workdir, base)
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
                results[(system, signame)].append(took)
                print(f"run {run + 1}/{options.runs} {signame:7} {system:5} first write after {took:.3f} s", flush=True)
    print()
    print(f"{'leader receives':16} {'cairn median (range)':28} {'etcd median (range)':28} cairn/etcd")
    for signame in SIGNALS:
        cells = []
        for system in binaries:
            times = results[(system, signame)]
            cells.append((statistics.median(times), min(times), max(times)))
        ratio = cells[0][0] / cells[1][0] if cells[1][0] else float("inf")
        text = [f"{m:.2f} s ({lo:.2f}-{hi:.2f})" for m, lo, hi in cells]
        print(f"{signame:16} {text[0]:28} {text[1]:28} {ratio:.2f}")


if __name__ == "__main__":
    main()
