#!/usr/bin/env python3
"""Benchmark of the whole pipeline on embedded backends, every figure from one run.

  (a) HTTP + parse ceiling: the same payloads with ?dry_run=true (parsed, validated, not written)
  (b) durable ingest: lines/s acknowledged (in the stream, fsynced), and its ratio to (a)
  (c) time until the full dataset is visible in all three sinks, from the first request
  (d) ack latency p50/p99 at half the rate of (b), as the client saw it; and the server's own p99
      of the ingest requests and of their stream appends (from its histograms, interpolated within
      a bucket as Prometheus' histogram_quantile does), so the client's queueing shows apart
  (e) peak RSS of the server in (b), and under 3x overload (three times the clients, no rate limit)
  (f) server CPU per line (user + system, from /proc/PID/stat): in (a), and in (b)+(c) end to end
      (ingest, stream, all three sinks). CPU time holds on a shared, noisy machine where wall
      time does not, so before/after comparisons should quote (f).
  (g) where (f) goes: server CPU per line by thread (name and nice value, from /proc/PID/task),
      while (b) runs and from its end until every sink has caught up
  (h) how the sinks' reads of the stream were served in (b)+(c) (shopstream_stream_shared_reads_total):
      from a shard's shared window, by a read of the stream into the window, or by a reader's
      own read (it was outside the window)

Usage: python3 scripts/bench/bench_pipeline.py [--lines 541909] [--runs 3] [--bin PATH] [--quick]
       python3 scripts/bench/bench_pipeline.py --latency-at 50000,100000 [--bin PATH]   (only (d))
It builds the release binary (or takes --bin, e.g. an older build to compare with), generates the
dataset into bench-out/, and prints a table.
The client (replay) runs on the same 2 cores as the server: figures are for the pair.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "bench-out")
BIN = os.path.join(ROOT, "target", "release", "shopstream")
KEY = "demo-key-change-me"
# Reads (/v1/status) take a reader key (auth.readers); this is config/default.toml's demo one.
READER_KEY = os.environ.get("SHOPSTREAM_READER_KEY", "demo-reader-key-change-me")


def read_request(url):
    return urllib.request.Request(url, headers={"Authorization": "Bearer " + READER_KEY})


CONFIG = """
[server]
max_inflight_ingest = 64

[archive]
flush_age = "250ms"

[sinks]
poll_interval = "20ms"
"""


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


class Server:
    def __init__(self, name):
        self.data = os.path.join(OUT, "data-" + name)
        shutil.rmtree(self.data, ignore_errors=True)
        cfg = os.path.join(OUT, "bench.toml")
        with open(cfg, "w") as f:
            f.write(CONFIG)
        self.log = open(os.path.join(OUT, name + ".log"), "w")
        self.proc = subprocess.Popen(
            [BIN, "--config", cfg, "serve", "--data-dir", self.data, "--port", "0"],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        for line in self.proc.stdout:
            m = re.match(r"shopstream listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
        else:
            sys.exit("the server did not start; see " + self.log.name)

    def cpu_seconds(self):
        """User + system CPU time the server has used so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # After the command name: state is field 3, utime 14 and stime 15 (1-based, man proc).
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def thread_cpu_seconds(self):
        """User + system CPU time so far, summed by thread name and nice value."""
        by_thread = {}
        for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
            try:
                with open(f"/proc/{self.proc.pid}/task/{tid}/comm") as f:
                    name = f.read().strip()
                with open(f"/proc/{self.proc.pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the thread ended meanwhile
            # After the name: utime field 14, stime 15, nice 19 (1-based, man proc).
            key = f"{name} (nice {fields[16]})"
            by_thread[key] = by_thread.get(key, 0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return by_thread

    def shared_reads(self):
        """shopstream_stream_shared_reads_total by outcome, from /metrics."""
        with urllib.request.urlopen(self.url + "/metrics") as r:
            text = r.read().decode()
        return {m.group(1): int(float(m.group(2))) for m in re.finditer(
            r'^shopstream_stream_shared_reads_total\{outcome="(\w+)"\} (\S+)$', text, re.M)}

    def server_p99_ms(self, metric, label):
        """The 99th percentile of a histogram of /metrics, in ms, over the series matching label."""
        with urllib.request.urlopen(read_request(self.url + "/metrics")) as r:
            text = r.read().decode()
        buckets = {}
        for m in re.finditer(r'^shopstream_%s_bucket\{(.*)\} (\S+)$' % metric, text, re.M):
            if label in m.group(1):
                le = re.search(r'le="([^"]+)"', m.group(1)).group(1)
                bound = float("inf") if le == "+Inf" else float(le)
                buckets[bound] = buckets.get(bound, 0) + float(m.group(2))
        bounds = sorted(buckets)
        if not bounds or buckets[bounds[-1]] == 0:
            return float("nan")
        rank = 0.99 * buckets[bounds[-1]]
        lower, below = 0.0, 0.0
        for b in bounds:
            if buckets[b] >= rank:
                if b == float("inf"):
                    return lower * 1000
                return (lower + (b - lower) * (rank - below) / max(buckets[b] - below, 1e-9)) * 1000
            lower, below = b, buckets[b]
        return float("nan")

    def peak_rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def status(self):
        with urllib.request.urlopen(read_request(self.url + "/v1/status")) as r:
            return json.load(r)

    def wait_caught_up(self, limit=600):
        start = time.monotonic()
        while time.monotonic() - start < limit:
            s = self.status()
            if s["caught_up"] and s["shards"]:
                return
            time.sleep(0.02)
        sys.exit("the sinks did not catch up")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


def replay(url, file, *extra):
    out = subprocess.run(
        [BIN, "replay", file, "--url", url, "--key", KEY, "--json", *extra],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out[out.index("{"):])


def ack_latency(data, load, rate):
    """(d): one replay at `rate` lines/s on a fresh server; the client's and the server's figures."""
    srv = Server("latency")
    d = replay(srv.url, data, *load, "--rate", str(int(rate)))
    d["rate"] = rate
    d["server_p99_ms"] = srv.server_p99_ms("http_request_duration_seconds", 'route="/v1/invoices"')
    d["append_p99_ms"] = srv.server_p99_ms("stream_append_duration_seconds", 'backend="embedded"')
    srv.wait_caught_up()
    srv.stop()
    return d


def print_latency(d):
    print(f"(d) ack latency at {d['rate']:,.0f} lines/s   p50 {d['latency_p50_ms']:.1f} ms, p99 {d['latency_p99_ms']:.1f} ms, max {d['latency_max_ms']:.1f} ms")
    print(f"    at the server: p99 of the requests {d['server_p99_ms']:.1f} ms, of their stream appends {d['append_p99_ms']:.1f} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=541_909)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stores", type=int, default=8)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--bin", help="a shopstream binary to measure instead of building this tree's")
    ap.add_argument("--quick", action="store_true",
                    help="only (a), (b), (c), (e) in (b) and (f): skip the latency and overload runs")
    ap.add_argument("--latency-at", metavar="RATES",
                    help="only (d), at each of these comma-separated rates in lines/s (a fresh server "
                         "each; repeat a rate to measure it again), instead of at half of (b)")
    args = ap.parse_args()

    global BIN
    os.makedirs(OUT, exist_ok=True)
    if args.bin:
        BIN = os.path.abspath(args.bin)
    else:
        sh("cargo", "build", "--release", "--locked", "--quiet", cwd=ROOT)
    data = os.path.join(OUT, f"retail-{args.lines}.csv")
    if not os.path.exists(data):
        sh(BIN, "generate", "--lines", str(args.lines), "--output", data)
    load = ["--stores", str(args.stores), "--batch", str(args.batch)]

    if args.latency_at:
        rates = [int(r.replace("_", "")) for r in args.latency_at.split(",") if r.strip()]
        print(f"dataset: {args.lines:,} generated lines; {args.stores} stores x {args.batch} lines per request; {os.cpu_count()} cores")
        for rate in rates:
            print_latency(ack_latency(data, load, rate))
        return

    ceiling, durable, visible, rss, cpu_dry, cpu_all = [], [], [], [], [], []
    threads, reads = [], []
    for run in range(args.runs):
        srv = Server(f"run{run}")
        c0 = srv.cpu_seconds()
        a = replay(srv.url, data, *load, "--dry-run")
        ceiling.append(a["lines_per_second"])
        c1 = srv.cpu_seconds()
        cpu_dry.append((c1 - c0) / args.lines * 1e6)
        t0 = time.monotonic()
        th0 = srv.thread_cpu_seconds()
        b = replay(srv.url, data, *load)
        assert b["lines_accepted"] == args.lines, b
        durable.append(b["lines_per_second"])
        th1 = srv.thread_cpu_seconds()
        srv.wait_caught_up()
        th2 = srv.thread_cpu_seconds()
        threads.append({k: ((th1.get(k, 0) - th0.get(k, 0)) / args.lines * 1e6,
                            (th2.get(k, 0) - th1.get(k, 0)) / args.lines * 1e6)
                        for k in set(th0) | set(th1) | set(th2)})
        visible.append(time.monotonic() - t0)
        cpu_all.append((srv.cpu_seconds() - c1) / args.lines * 1e6)
        reads.append(srv.shared_reads())
        rss.append(srv.peak_rss_mb())
        srv.stop()
        print(f"run {run + 1}: ceiling {a['lines_per_second']:,.0f} lines/s, durable "
              f"{b['lines_per_second']:,.0f} lines/s, in all sinks after {visible[-1]:.2f} s, "
              f"peak RSS {rss[-1]:.0f} MB, server CPU {cpu_dry[-1]:.1f} us/line dry-run, "
              f"{cpu_all[-1]:.1f} us/line end to end", file=sys.stderr)

    med = statistics.median

    def print_threads():
        """(g), from the first run."""
        print("(g) server CPU per line by thread    during (b)   after (b), until caught up")
        for k, (during, after) in sorted(threads[0].items(), key=lambda kv: -sum(kv[1])):
            if during + after >= 0.01:
                print(f"    {k:34} {during:8.2f} us {after:10.2f} us")
        print(f"    {'all threads':34} {sum(d for d, _ in threads[0].values()):8.2f} us "
              f"{sum(a for _, a in threads[0].values()):10.2f} us")
        r = reads[0]
        print(f"(h) the sinks' stream reads         {sum(r.values()):,}: {r.get('window', 0):,} from the shared "
              f"window, {r.get('stream', 0):,} into it, {r.get('own', 0):,} on their own (first run)")

    if args.quick:
        print(f"dataset: {args.lines:,} lines; {args.runs} runs; {os.cpu_count()} cores; quick")
        print(f"ceiling {med(ceiling):,.0f} lines/s, durable {med(durable):,.0f} lines/s "
              f"(ratio {med(durable) / med(ceiling):.2f}), all sinks {med(visible):.2f} s, "
              f"RSS {med(rss):.0f} MB, CPU/line dry-run {med(cpu_dry):.1f} us, "
              f"end to end {med(cpu_all):.1f} us")
        print_threads()
        return

    latency = ack_latency(data, load, statistics.median(durable) / 2)

    srv = Server("overload")
    procs = [subprocess.Popen([BIN, "replay", data, "--url", srv.url, "--key", KEY, "--json", *load],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    results = []
    for p in procs:
        text = p.communicate()[0]
        results.append(json.loads(text[text.index("{"):]))
    srv.wait_caught_up()
    overload_rss = srv.peak_rss_mb()
    srv.stop()
    busy = sum(r["busy_answers"] for r in results)
    accepted = sum(r["lines_accepted"] for r in results)

    print()
    print(f"dataset: {args.lines:,} generated lines; {args.runs} runs; {args.stores} stores x {args.batch} lines per request; {os.cpu_count()} cores")
    print(f"(a) parse-and-discard HTTP ceiling    {med(ceiling):>12,.0f} lines/s   (runs: {', '.join(f'{x:,.0f}' for x in ceiling)})")
    print(f"(b) durable ingest, acknowledged      {med(durable):>12,.0f} lines/s   ratio to (a): {med(durable) / med(ceiling):.2f}")
    print(f"(c) full dataset in all three sinks   {med(visible):>12.2f} s         (runs: {', '.join(f'{x:.2f}' for x in visible)})")
    print_latency(latency)
    print(f"(e) peak RSS in (b)                   {med(rss):>12.0f} MB")
    print(f"    peak RSS under 3x overload        {overload_rss:>12.0f} MB  ({accepted:,} lines acknowledged, {busy:,} busy answers honoured)")
    print(f"(f) server CPU per line, dry-run      {med(cpu_dry):>12.1f} us        (runs: {', '.join(f'{x:.1f}' for x in cpu_dry)})")
    print(f"    server CPU per line, end to end   {med(cpu_all):>12.1f} us        (runs: {', '.join(f'{x:.1f}' for x in cpu_all)})")
    print_threads()


if __name__ == "__main__":
    main()
