#!/usr/bin/env python3
"""Memory under sustained overload: does the server's RSS stay flat?

Runs the server on embedded backends and, for --minutes, three times the clients the pipeline
benchmark uses (3 x 8 concurrent stores, no rate limit), each sending lines never seen before (a
new generated file per round, so the line-id index never turns them into cheap duplicates). Ingest
answers what it cannot take with 503 + Retry-After and the clients honour it; appends that time
out are dropped unwritten, the append queue is bounded in bytes, the archive's ETag cache by an
LRU. It samples the server's resident memory (VmRSS of /proc/PID/status) every 5 s and prints,
per minute, the RSS median and maximum, the medians of its anonymous, file and shared parts (so
a creep can be told apart: heap, or mapped files), the lines acknowledged and the busy answers,
then the ratio of the last minute's median RSS to the second minute's (the first is warm-up).

Usage: python3 scripts/bench/bench_overload_rss.py [--minutes 10] [--lines-per-round 100000]
       [--bin PATH]
Without --bin it builds the release binary. Data goes to bench-out/overload-rss/.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_pipeline as bp  # noqa: E402  (the server wrapper and paths)


MEMORY_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def memory_mb(pid):
    """The server's resident memory in MB, whole (VmRSS) and split: RssAnon (heap, stacks: what
    the allocator holds), RssFile (mapped files: the binary, libraries) and RssShmem (shared
    mappings, such as SQLite's WAL index `-shm` files)."""
    out = dict.fromkeys(MEMORY_FIELDS, float("nan"))
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in out:
                out[key] = int(line.split()[1]) / 1024
    return out


def tag_invoices(path, tag):
    """Puts `tag` in front of the digits of every InvoiceNo, so rounds never share a line id (a
    line id is the invoice and the line's number in it: equal ids with other content would be
    refused as conflicts)."""
    with open(path, encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    with open(path, "w", encoding="utf-8") as f:
        f.write(header + "\n")
        for row in rows:
            invoice, rest = row.split(",", 1)
            letters = invoice.rstrip("0123456789")
            f.write(f"{letters}{tag}{invoice[len(letters):]},{rest}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--lines-per-round", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=3, help="replay processes at once (default 3)")
    ap.add_argument("--stores", type=int, default=8, help="concurrent stores per client")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--bin", help="a shopstream binary to measure instead of building this tree's")
    args = ap.parse_args()

    out = os.path.join(bp.OUT, "overload-rss")
    os.makedirs(out, exist_ok=True)
    bp.OUT = out
    if args.bin:
        bp.BIN = os.path.abspath(args.bin)
    else:
        bp.sh("cargo", "build", "--release", "--locked", "--quiet", cwd=bp.ROOT)

    srv = bp.Server("overload-rss")
    pid = srv.proc.pid
    deadline = time.monotonic() + args.minutes * 60
    lock = threading.Lock()
    # minute -> {"rss": [...], "anon": [...], "file": [...], "shmem": [...], "accepted": n,
    # "busy": n}
    minutes = {}
    started = time.monotonic()

    def new_minute():
        return {"rss": [], "anon": [], "file": [], "shmem": [], "accepted": 0, "busy": 0}

    def minute():
        return int((time.monotonic() - started) // 60)

    def client(index):
        round_no = 0
        while time.monotonic() < deadline:
            data = os.path.join(out, f"round-{index}-{round_no}.csv")
            seed = 1_000_000 * (index + 1) + round_no
            bp.sh(bp.BIN, "generate", "--lines", str(args.lines_per_round), "--seed", str(seed),
                  "--output", data, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            tag_invoices(data, f"{index:02d}{round_no:04d}")
            r = bp.replay(srv.url, data, "--stores", str(args.stores), "--batch", str(args.batch))
            os.remove(data)
            with lock:
                m = minutes.setdefault(minute(), new_minute())
                m["accepted"] += r["lines_accepted"]
                m["busy"] += r["busy_answers"]
            round_no += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        with lock:
            m = minutes.setdefault(minute(), new_minute())
            mem = memory_mb(pid)
            for key, field in (("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile"),
                               ("shmem", "RssShmem")):
                m[key].append(mem[field])
        time.sleep(5)
    peak = srv.peak_rss_mb()
    srv.wait_caught_up(limit=1800)
    srv.stop()

    print()
    print(f"{args.clients} clients x {args.stores} stores x {args.batch} lines per request, "
          f"{args.minutes:g} minutes, {os.cpu_count()} cores")
    print(f"{'minute':>6} {'RSS median MB':>14} {'RSS max MB':>11} {'anon':>6} {'file':>6} "
          f"{'shmem':>6} {'lines acked':>12} {'busy answers':>13}")
    for m in sorted(minutes):
        v = minutes[m]
        if not v["rss"]:
            continue
        med = {k: statistics.median(v[k]) for k in ("rss", "anon", "file", "shmem")}
        print(f"{m:>6} {med['rss']:>14.0f} {max(v['rss']):>11.0f} {med['anon']:>6.0f} "
              f"{med['file']:>6.0f} {med['shmem']:>6.0f} {v['accepted']:>12,} {v['busy']:>13,}")
    rounds = [m for m in sorted(minutes) if minutes[m]["rss"]]
    if len(rounds) >= 3:
        second = statistics.median(minutes[rounds[1]]["rss"])
        last = statistics.median(minutes[rounds[-1]]["rss"])
        print(f"last minute's median RSS / second minute's: {last / second:.2f}")
    print(f"peak RSS (VmHWM): {peak:.0f} MB")
    print(json.dumps({"peak_rss_mb": round(peak, 1), "minutes": minutes}))


if __name__ == "__main__":
    main()
