#!/usr/bin/env python3
"""API efficiency of the AWS backends: what one million generated lines cost in AWS calls.

Runs the real release binary with every stage on AWS against local servers on 127.0.0.1
(Kinesis on kinesalite, DynamoDB, S3 and Firehose on moto_server), each behind
scripts/testing/fault_proxy.py with faults off, which counts every call as it passes: Kinesis PutRecords
calls, records and PUT payload units (25 KiB steps, partition key included), DynamoDB
BatchWriteItem calls and items per call, Firehose PutRecordBatch calls and billed 5 KiB units,
S3 PUT-class requests. It also prints the shopstream process's own CPU time per line (user +
system, from /proc/PID/stat, from before the first request until every sink has every line): the
local servers are slow and take most of the machine, so only shopstream's share is measured. The store simulator sends the generated file as stores do (whole invoices
per request); the count stops once every sink has written every accepted line and the server has
shut down cleanly (its last flushes included).

The same table shows the per-line design of the original Lambda pipeline, computed from the
same lines: one PutRecord per line (one payload unit each: every line is far below 25 KiB) and
two UpdateItem calls per line (the invoice and the customer look-up).

Usage: python3 scripts/bench/bench_aws_api.py [--lines 1000000] [--stores 4] [--batch 500]
    [--shards 4] [--no-build | --bin PATH]
Needs `scripts/local/aws-local.sh install` (moto, kinesalite). Builds the release binary. Writes
bench-out/aws-api.json and prints a Markdown table. The call figures are counts, not timings: they
do not depend on the machine's speed, only on the data and the batching settings.
"""

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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

ENV = dict(
    os.environ,
    AWS_ACCESS_KEY_ID="test",
    AWS_SECRET_ACCESS_KEY="test",
    AWS_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
    AWS_REQUEST_CHECKSUM_CALCULATION="when_required",
    AWS_RESPONSE_CHECKSUM_VALIDATION="when_required",
)
PAYLOAD_UNIT = 25 * 1024
IDLE_SECONDS = 30

PUT_RECORDS = "Kinesis_20131202.PutRecords"
GET_RECORDS = "Kinesis_20131202.GetRecords"
BATCH_WRITE = "DynamoDB_20120810.BatchWriteItem"
# Single-item DynamoDB writes: mostly the line-id index (src/stream/kinesis/line_index.rs: a
# conditional PutItem claims each new line, an UpdateItem commits it once its record landed, a
# DeleteItem releases a claim whose record did not; a BatchGetItem per request looks the lines
# up first), the rest leases and checkpoints. The proxy counts by operation, not by table.
LINE_INDEX_WRITES = tuple(f"DynamoDB_20120810.{op}" for op in ("PutItem", "UpdateItem", "DeleteItem"))
LINE_INDEX_READS = "DynamoDB_20120810.BatchGetItem"
PUT_RECORD_BATCH = "Firehose_20150804.PutRecordBatch"
S3_PUT_CLASS = ("PutObject", "UploadPart", "CreateMultipartUpload", "CompleteMultipartUpload")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A background process whose output goes to a log file in the work folder."""

    def __init__(self, name, args, work, **kw):
        self.log_path = os.path.join(work, name + ".log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=ENV,
                                     cwd=ROOT, **kw)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_port_file(path, what, proc, limit=30):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            pass
        if proc.proc.poll() is not None:
            sys.exit(f"{what} exited; see {proc.log_path}")
        time.sleep(0.1)
    sys.exit(f"{what} did not start within {limit} s; see {proc.log_path}")


def start_moto(work):
    port = free_port()
    p = Proc("moto", ["moto_server", "-H", "127.0.0.1", "-p", str(port)], work)
    start = time.monotonic()
    while time.monotonic() - start < 30:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2)
            return p, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    sys.exit(f"moto_server did not start; see {p.log_path}")


def start_kinesalite(work):
    port_file = os.path.join(work, "kinesalite.port")
    p = Proc("kinesalite", ["node", "scripts/local/kinesalite/server.js", "0", "--port-file", port_file],
             work)
    return p, f"http://127.0.0.1:{wait_port_file(port_file, 'kinesalite', p)}"


def start_proxy(work, name, upstream):
    port_file = os.path.join(work, name + ".port")
    p = Proc(name, [sys.executable, "scripts/testing/fault_proxy.py", "--listen", "127.0.0.1:0",
                    "--upstream", upstream, "--port-file", port_file], work)
    return p, f"http://127.0.0.1:{wait_port_file(port_file, name, p)}"


def proxy_call(url, path, method="GET"):
    req = urllib.request.Request(url + path, method=method, data=b"{}" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def cpu_seconds(pid):
    """User + system CPU time process `pid` has used so far (utime and stime of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status(url):
    with urllib.request.urlopen(read_request(url + "/v1/status"), timeout=10) as r:
        return json.load(r)


def written_per_sink(st):
    out = {}
    for s in st.get("shards", []):
        out[s["sink"]] = out.get(s["sink"], 0) + s.get("lines_written", 0)
    return out


def config_text(moto_proxy, kinesis_proxy, shards):
    return f"""
[server]
max_inflight_ingest = 64
[stream]
backend = "aws"
[stream.kinesis]
stream_name = "bench-lines"
shards = {shards}
leases_table = "bench-leases"
lease_duration = "10s"
[archive]
backend = "aws"
[archive.s3]
bucket = "bench-archive"
[operational]
backend = "aws"
[operational.dynamodb]
invoices_table = "bench-invoices"
[warehouse]
backend = "aws"
[warehouse.firehose]
delivery_stream = "bench-sales"
role_arn = "arn:aws:iam::123456789012:role/firehose-local"
prefix = "warehouse/"
[dead_letter]
backend = "aws"
[sinks]
shard_refresh = "2s"
[aws]
region = "us-east-1"
endpoint_url = "{moto_proxy}"
kinesis_endpoint_url = "{kinesis_proxy}"
"""


def per_line_reference(file):
    """The Lambda design's calls for the lines of `file`: one PutRecord per line (its JSON with
    the invoice number as key) and two UpdateItem per line."""
    lines = 0
    units = 0
    with open(file, "rb") as f:
        next(f)
        for raw in f:
            lines += 1
            # A line as one record: its fields as JSON are about twice the CSV row; still one
            # 25 KiB unit unless a row were over 12 KiB, which none is.
            units += max(1, math.ceil(2 * len(raw) / PAYLOAD_UNIT))
    return lines, units


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--stores", type=int, default=4)
    ap.add_argument("--batch", type=int, default=500, help="lines per request of the stores")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--no-build", action="store_true", help="use the release binary as it is")
    ap.add_argument("--bin", help="a shopstream binary to measure instead of building this tree's")
    args = ap.parse_args()
    binary = os.path.abspath(args.bin) if args.bin else BIN

    os.makedirs(OUT, exist_ok=True)
    if not (args.no_build or args.bin):
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "shopstream"],
                       cwd=ROOT, check=True)
    data = os.path.join(OUT, f"aws-api-{args.lines}.csv")
    if not os.path.exists(data):
        subprocess.run([binary, "generate", "--lines", str(args.lines), "--output", data], check=True)

    work = tempfile.mkdtemp(prefix="shopstream-bench-aws-")
    procs = []
    try:
        moto, moto_url = start_moto(work)
        procs.append(moto)
        kl, kl_url = start_kinesalite(work)
        procs.append(kl)
        mp, moto_proxy = start_proxy(work, "moto-proxy", moto_url)
        procs.append(mp)
        kp, kinesis_proxy = start_proxy(work, "kinesis-proxy", kl_url)
        procs.append(kp)
        cfg = os.path.join(work, "bench.toml")
        with open(cfg, "w") as f:
            f.write(config_text(moto_proxy, kinesis_proxy, args.shards))
        subprocess.run([binary, "--config", cfg, "aws", "init"], check=True, env=ENV,
                       stdout=subprocess.DEVNULL)
        for url in (moto_proxy, kinesis_proxy):
            proxy_call(url, "/__fault_proxy/reset", "POST")

        server = Proc("serve", [binary, "--config", cfg, "serve", "--data-dir",
                                os.path.join(work, "data"), "--port", "0"], work)
        procs.append(server)
        server.log.close()
        url = None
        start = time.monotonic()
        while url is None and time.monotonic() - start < 60:
            with open(server.log_path) as f:
                m = re.search(r"shopstream listening on (http://\S+)", f.read())
            url = m.group(1) if m else None
            time.sleep(0.2)
        if url is None:
            sys.exit(f"the server did not start; see {server.log_path}")

        cpu_before = cpu_seconds(server.proc.pid)
        print(f"sending {args.lines:,} lines from {args.stores} stores ...", file=sys.stderr)
        t0 = time.monotonic()
        rep = subprocess.run([binary, "replay", data, "--url", url, "--key", KEY, "--json",
                              "--stores", str(args.stores), "--batch", str(args.batch)],
                             check=True, capture_output=True, text=True, env=ENV)
        summary = json.loads(rep.stdout[rep.stdout.index("{"):])
        accepted = summary["lines_accepted"]
        print(f"accepted {accepted:,} lines in {time.monotonic() - t0:.0f} s; waiting for the "
              "sinks ...", file=sys.stderr)
        last = None
        while True:
            w = written_per_sink(status(url))
            if len(w) == 3 and all(v >= accepted for v in w.values()):
                break
            if w != last:
                print(f"  written: {w}", file=sys.stderr)
                last = w
            time.sleep(2)
        cpu_used = cpu_seconds(server.proc.pid) - cpu_before
        elapsed_busy = time.monotonic() - t0
        # What the server costs with nothing to do (polling GetRecords, renewing leases), to tell
        # the per-line work from the time-bound work in a run as slow as the local servers.
        idle_from = cpu_seconds(server.proc.pid)
        time.sleep(IDLE_SECONDS)
        idle_per_s = (cpu_seconds(server.proc.pid) - idle_from) / IDLE_SECONDS
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(60)
        elapsed = time.monotonic() - t0
        k = proxy_call(kinesis_proxy, "/__fault_proxy/stats")
        m = proxy_call(moto_proxy, "/__fault_proxy/stats")
    finally:
        for p in reversed(procs):
            p.stop()

    ref_lines, ref_units = per_line_reference(data)
    kops, mops = k["operations"], m["operations"]
    put = kops.get(PUT_RECORDS, {})
    bwi = mops.get(BATCH_WRITE, {})
    prb = mops.get(PUT_RECORD_BATCH, {})
    s3_put = sum(m.get("s3", {}).get(kind, {}).get("requests", 0) for kind in S3_PUT_CLASS)
    scale = 1_000_000 / accepted

    def per_m(v):
        return round(v * scale)

    ours = {
        "kinesis_put_records_calls": put.get("calls", 0),
        "kinesis_records": put.get("entries", 0),
        "kinesis_put_payload_units": put.get("payload_units", 0),
        "kinesis_get_records_calls": kops.get(GET_RECORDS, {}).get("calls", 0),
        "dynamodb_batch_write_item_calls": bwi.get("calls", 0),
        "dynamodb_items_written": bwi.get("entries", 0),
        "dynamodb_single_item_write_calls": sum(mops.get(op, {}).get("calls", 0)
                                               for op in LINE_INDEX_WRITES),
        "dynamodb_line_index_batch_get_calls": mops.get(LINE_INDEX_READS, {}).get("calls", 0),
        "firehose_put_record_batch_calls": prb.get("calls", 0),
        "firehose_records": prb.get("entries", 0),
        "firehose_billed_5k_units": prb.get("billed_units_5k", 0),
        "s3_put_class_requests": s3_put,
    }
    result = {
        "lines_generated": args.lines,
        "lines_accepted": accepted,
        "seconds_to_all_sinks": round(elapsed, 1),
        "server_cpu_us_per_line": round(cpu_used * 1e6 / accepted, 1),
        "server_idle_cpu_ms_per_s": round(idle_per_s * 1e3, 1),
        "server_cpu_us_per_line_less_idle": round(
            max(0.0, cpu_used - idle_per_s * elapsed_busy) * 1e6 / accepted, 1),
        "settings": {"stores": args.stores, "batch": args.batch, "shards": args.shards},
        "ours": ours,
        "ours_per_million_lines": {k2: per_m(v) for k2, v in ours.items()},
        "per_line_lambda_per_million_lines": {
            "kinesis_put_record_calls": per_m(ref_lines),
            "kinesis_put_payload_units": per_m(ref_units),
            "dynamodb_update_item_calls": per_m(2 * ref_lines),
            # Not part of that design (it had no Firehose): what one record per line would cost.
            "firehose_records_one_per_line": per_m(ref_lines),
            "firehose_billed_5k_units_one_per_line": per_m(ref_lines),
        },
        "proxy_stats": {"kinesis": k, "moto": m},
    }
    with open(os.path.join(OUT, "aws-api.json"), "w") as f:
        json.dump(result, f, indent=2)

    o = result["ours_per_million_lines"]
    r = result["per_line_lambda_per_million_lines"]
    items_per_call = ours["dynamodb_items_written"] / max(1, ours["dynamodb_batch_write_item_calls"])
    lines_per_record = accepted / max(1, ours["kinesis_records"])
    rows = [
        ("Kinesis PutRecord(s) calls", o["kinesis_put_records_calls"], r["kinesis_put_record_calls"]),
        ("Kinesis records", o["kinesis_records"], r["kinesis_put_record_calls"]),
        ("Kinesis PUT payload units (25 KiB)", o["kinesis_put_payload_units"],
         r["kinesis_put_payload_units"]),
        ("DynamoDB write calls (BatchWriteItem / UpdateItem)", o["dynamodb_batch_write_item_calls"],
         r["dynamodb_update_item_calls"]),
        ("DynamoDB items written", o["dynamodb_items_written"], r["dynamodb_update_item_calls"]),
        ("DynamoDB single-item writes (line-id claims, leases, checkpoints)",
         o["dynamodb_single_item_write_calls"], None),
        ("DynamoDB line-id index BatchGetItem calls", o["dynamodb_line_index_batch_get_calls"],
         None),
        ("Firehose PutRecordBatch calls", o["firehose_put_record_batch_calls"], None),
        ("Firehose records", o["firehose_records"], r["firehose_records_one_per_line"]),
        ("Firehose billed 5 KiB units", o["firehose_billed_5k_units"],
         r["firehose_billed_5k_units_one_per_line"]),
        ("S3 PUT-class requests (archive)", o["s3_put_class_requests"], None),
    ]
    print(f"\nAPI calls per 1,000,000 lines ({accepted:,} lines sent by {args.stores} stores in "
          f"requests of {args.batch}, {args.shards} shards; all sinks done in "
          f"{elapsed:.0f} s):\n")
    print("| Per 1M lines | shopstream | Per-line Lambda design | Ratio |")
    print("| --- | ---: | ---: | ---: |")
    for name, ours_v, ref_v in rows:
        ratio = f"{ref_v / ours_v:.0f}x fewer" if ref_v and ours_v else ""
        print(f"| {name} | {ours_v:,} | {'' if ref_v is None else f'{ref_v:,}'} | {ratio} |")
    print(f"\nMean lines per Kinesis record {lines_per_record:.1f}; mean items per BatchWriteItem "
          f"{items_per_call:.1f}. The Firehose figures of the per-line column are what one record "
          "per line would cost (the Lambda design had no Firehose). GetRecords calls depend on "
          f"time, not lines: {ours['kinesis_get_records_calls']:,} in this run of {elapsed:.0f} s "
          f"over {args.shards} shards (at most 5 per second per shard). Details in "
          "bench-out/aws-api.json.")
    print(f"\nshopstream's CPU per line, end to end on the AWS backends (user + system of the "
          f"server process, from the first request until every sink had every line): "
          f"{result['server_cpu_us_per_line']} us ({cpu_used:.1f} s for {accepted:,} lines in "
          f"{elapsed_busy:.0f} s). Idle, it uses {result['server_idle_cpu_ms_per_s']} ms of CPU a "
          f"second (measured over {IDLE_SECONDS} s after the sinks caught up); less that for the "
          f"run's length: {result['server_cpu_us_per_line_less_idle']} us a line.")


if __name__ == "__main__":
    main()
