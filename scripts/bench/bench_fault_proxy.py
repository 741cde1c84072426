#!/usr/bin/env python3
"""Throughput of scripts/testing/fault_proxy.py: PutRecords calls per second, straight to moto and
through the proxy (faults off, then with a fail rate).

    python3 scripts/bench/bench_fault_proxy.py [--seconds 10] [--clients 4] [--records 500]
        [--record-bytes 100] [--fail-rate 0.1] [--upstream http://127.0.0.1:PORT]

Starts moto_server (or uses --upstream, e.g. a kinesalite) and the proxy on free loopback ports,
creates a fresh stream per setup, and runs `--clients` processes that each send PutRecords of `--records`
records of `--record-bytes` bytes over one keep-alive connection, back to back. The requests
are built once and sent with http.client (no SDK, no signing: the local servers do not check
signatures), so the figures are the servers', not the client's. Prints one line per setup, with
the CPU time the proxy (and moto, when started here) spent per call: on a shared machine that,
more than calls per second, is the proxy's cost.
"""

import argparse
import base64
import http.client
import json
import multiprocessing
import os
import sys
import tempfile
import time
import urllib.parse

sys.dont_write_bytecode = True  # no __pycache__ in scripts/
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "testing"))
from test_fault_proxy import http_json, start_moto, start_proxy, stop  # noqa: E402

AUTH = (
    "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/kinesis/aws4_request, "
    "SignedHeaders=host;x-amz-date;x-amz-target, Signature=0"
)


def request(op, body):
    headers = {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": f"Kinesis_20131202.{op}",
        "X-Amz-Date": "20250101T000000Z",
        "Authorization": AUTH,
    }
    return headers, json.dumps(body).encode()


def call(endpoint, op, body):
    u = urllib.parse.urlsplit(endpoint)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    headers, data = request(op, body)
    conn.request("POST", "/", data, headers)
    r = conn.getresponse()
    out = r.read()
    conn.close()
    if r.status != 200:
        raise RuntimeError(f"{op} answered {r.status}: {out[:300]!r}")
    return json.loads(out) if out else {}


def client(endpoint, stream, records, record_bytes, seconds, out):
    data = base64.b64encode(b"x" * record_bytes).decode()
    entries = [{"Data": data, "PartitionKey": f"k{i}"} for i in range(records)]
    headers, body = request("PutRecords", {"StreamName": stream, "Records": entries})
    u = urllib.parse.urlsplit(endpoint)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    calls = failed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.request("POST", "/", body, headers)
        r = conn.getresponse()
        answer = r.read()
        if r.status != 200:
            raise RuntimeError(f"PutRecords answered {r.status}: {answer[:300]!r}")
        calls += 1
        failed += json.loads(answer)["FailedRecordCount"]
    out.put((calls, failed))


def cpu_seconds(pid):
    """User plus system CPU time of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def new_stream(upstream, label):
    """A fresh stream per run: moto's PutRecords slows down as a stream fills."""
    stream = f"bench-{os.getpid()}-{label.replace(' ', '-').replace(',', '')}"
    call(upstream, "CreateStream", {"StreamName": stream, "ShardCount": 4})
    for _ in range(100):
        s = call(upstream, "DescribeStreamSummary", {"StreamName": stream})
        if s["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            return stream
        time.sleep(0.1)
    raise RuntimeError(f"stream {stream} did not become ACTIVE")


def run(label, upstream, endpoint, args, pids):
    stream = new_stream(upstream, label)
    q = multiprocessing.Queue()
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    procs = [
        multiprocessing.Process(
            target=client,
            args=(endpoint, stream, args.records, args.record_bytes, args.seconds, q),
        )
        for _ in range(args.clients)
    ]
    started = time.monotonic()
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.monotonic() - started
    calls = sum(c for c, _ in results)
    failed = sum(f for _, f in results)
    cpu = "  ".join(
        f"{name} {(cpu_seconds(pid) - cpu_before[name]) / max(calls, 1) * 1000:.1f} ms CPU/call"
        for name, pid in pids.items()
    )
    print(
        f"{label:<34} {calls / elapsed:7.1f} PutRecords/s {calls * args.records / elapsed:8.0f}"
        f" records/s  ({calls} calls in {elapsed:.1f} s, {failed} records failed)  {cpu}",
        flush=True,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--records", type=int, default=500)
    p.add_argument("--record-bytes", type=int, default=100)
    p.add_argument("--fail-rate", type=float, default=0.1)
    p.add_argument("--upstream", help="an already running server (default: start moto_server)")
    args = p.parse_args()

    workdir = tempfile.mkdtemp(prefix="fault-proxy-bench-")
    moto = None
    if args.upstream:
        upstream = args.upstream
    else:
        moto, upstream = start_moto()
    proxy, endpoint, _ = start_proxy(upstream, workdir)
    try:
        print(
            f"{args.clients} clients, PutRecords of {args.records} x {args.record_bytes} B, "
            f"{args.seconds:g} s each, upstream {upstream}"
        )
        pids = {"proxy": proxy.pid}
        if moto:
            pids["moto"] = moto.pid
        run("direct to the server", upstream, upstream, args, pids)
        run("through the proxy, faults off", upstream, endpoint, args, pids)
        http_json("POST", endpoint + "/__fault_proxy/config", {"fail_rate": args.fail_rate})
        run(f"through the proxy, fail-rate {args.fail_rate:g}", upstream, endpoint, args, pids)
        stats = http_json("GET", endpoint + "/__fault_proxy/stats")[1]
        put = stats["operations"]["Kinesis_20131202.PutRecords"]
        print(f"proxy counted {put['calls']} PutRecords, {put['entries']} entries, "
              f"{put['payload_units']} payload units, {put.get('injected_failed', 0)} injected")
    finally:
        stop(proxy)
        if moto:
            stop(moto)


if __name__ == "__main__":
    main()
