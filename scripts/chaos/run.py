#!/usr/bin/env python3
"""A chaos run of the real shopstream binary, in one go, and its check (issue #12).

It generates invoice lines with `shopstream generate`, starts `shopstream serve` on a free loopback
port with its own data folder and settings, sends the lines with three `shopstream replay`s at once
(one store key, four connections each) and, while they run, injects:

1. kill -9 of the server during the replays, twice (early in the outage, and again while the
   archive's disk is full), each time restarted on the same port two seconds later; the replays
   resend what was not acknowledged (connection errors are retried, line ids make that safe);
2. a sink outage of --outage-seconds: `operational.sqlite` held by another process inside
   `BEGIN EXCLUSIVE` (the writer gets SQLITE_BUSY for the whole time); ingest goes on;
3. a poison line: one line of a three-line invoice that the operational store and the warehouse
   refuse as invalid (a SQLite trigger installed in both files raises an ABORT constraint error for
   StockCode `CHAOS-POISON`, the error class the stores treat as "this line cannot be stored");
   it must land in the dead letters of those two sinks, once each, and nothing may wedge;
4. the warehouse locked the same way for a third of the outage, overlapping it;
5. a full disk under the archive folder: the folder is a size-capped tmpfs, filled to ENOSPC with
   a filler file for a third of the outage, then freed;
6. 3x overload: the three replays share one store's rate limit (set so that all the lines take
   90% of the faults' span, so ingest goes on through every fault) and send as fast as they are
   answered on twelve connections against `server.max_inflight_ingest = 4`, so the server
   answers 429 and 503 with Retry-After, which replay honours.

Then it replays every file once more (a resend of anything not acknowledged: it must add nothing
that was acknowledged before), waits until `/v1/status` says every sink caught up, stops the
server with SIGTERM and reads every sink back independently of shopstream: the archive's
`.ndjson.gz` files, `invoice_lines` in `operational.sqlite`, `sales` in `warehouse.sqlite`, and
the dead-letter files. Every generated line must be in every sink exactly once (by line id, and
by content against the CSV), the poison line in the archive and in the dead letters of the two
stores instead of in them; any difference exits 1. It prints a table of counts per sink and per
fault.

With `--backend aws-local` every stage runs on AWS-compatible servers instead: kinesalite
(Kinesis) and moto_server (S3, DynamoDB, Firehose) on free loopback ports, each behind
`scripts/testing/fault_proxy.py`, set up with `shopstream aws init`. The faults keep their
numbers and times but are made by the proxies: 2 every `BatchWriteItem` refused
(LimitExceededException) for the outage, and `GetRecords` answered ExpiredIteratorException as it
ends; 3 every DynamoDB `BatchWriteItem` and Firehose `PutRecordBatch` that holds the poison line
answered as the services answer an invalid item (ValidationException, InvalidArgumentException:
the whole call, naming no line), so the writers must find the line themselves; 4 every Firehose
`PutRecordBatch` refused; 5 every S3 write under the archive's prefix answered 503 SlowDown.
The check reads the bucket and the table back with `scripts/ops/readback.py` (boto3): every line
in the archive and DynamoDB exactly once, in the Firehose objects at least once (Firehose has no
idempotent put, though the dedup windows should leave no second copy), the poison line in the
archive and in the dead letters of the operational and warehouse sinks only.

    python3 scripts/chaos/run.py                       # builds, 100,000 lines, 400 s outage
    python3 scripts/chaos/run.py --quick               # a smoke run: 5,000 lines, 30 s outage
    python3 scripts/chaos/run.py --bin target/release/shopstream --lines 100000
    python3 scripts/chaos/run.py --backend aws-local --quick

Embedded: needs root (or CAP_SYS_ADMIN) to mount the tmpfs; where mounting is refused, fault 5 is
skipped and the table says so. aws-local: needs moto_server, kinesalite and boto3
(`scripts/local/aws-local.sh install`). Python 3 standard library only (readback.py, a separate
process, uses boto3). The record of a run: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import collections
import csv
import gzip
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path

import aws_local

STORE_KEY = "demo-key-change-me"
READER_KEY = "demo-reader-key-change-me"
POISON_INVOICE = "990001"
POISON_STOCK_CODE = "CHAOS-POISON"
POISON_TRIGGERS = {
    "operational.sqlite": "invoice_lines",
    "warehouse.sqlite": "sales",
}
REPLAYS = 3
FULL_DISK = "5 full disk under archive"
STORES_PER_REPLAY = 4
# Lines per replay request, and the most the server takes in one (replay sends an invoice whole,
# so a request may pass BATCH; generated invoices stay far below 1,000 lines). The rate limit's
# burst is that most, the smallest the server allows.
BATCH = 100
MAX_REQUEST_LINES = 1000


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the server ------------------------------------------------------------------------------


class Server:
    """`shopstream serve` on a fixed loopback port, restartable after kill -9."""

    def __init__(self, binary: Path, config: Path, data: Path, port: int, log_path: Path,
                 env: dict | None = None):
        self.binary, self.config, self.data, self.port = binary, config, data, port
        self.log_path, self.env = log_path, env
        self.proc: subprocess.Popen | None = None
        self.base = f"http://127.0.0.1:{port}"
        self.starts = 0

    def start(self) -> None:
        stderr = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "--config", str(self.config), "serve",
             "--data-dir", str(self.data), "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=self.env)
        stderr.close()
        deadline = time.time() + 120
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("shopstream listening on "):
                break
            if not line and self.proc.poll() is not None:
                raise SystemExit(f"shopstream serve exited with {self.proc.returncode} at start; "
                                 f"see {self.log_path}")
        else:
            raise SystemExit(f"shopstream serve did not start within 120 s; see {self.log_path}")
        # Keep reading stdout so that the server never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self.starts += 1

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def get(self, path: str, key: str = READER_KEY, timeout: float = 10):
        req = urllib.request.Request(self.base + path,
                                     headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read().decode()
        return json.loads(body) if path.startswith("/v1") else body

    def post_lines(self, lines: list[dict], patience: float = 120.0) -> tuple[int, dict]:
        """POSTs `lines` as a store does: a busy answer (429, 503) or a refused connection is
        sent again after its Retry-After (the run overloads the server on purpose) until
        `patience` seconds have passed; the last answer."""
        deadline = time.time() + patience
        while True:
            req = urllib.request.Request(
                self.base + "/v1/invoices", data=json.dumps(lines).encode(), method="POST",
                headers={"Authorization": f"Bearer {STORE_KEY}",
                         "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                status, body = e.code, json.loads(e.read() or b"{}")
                wait = float(e.headers.get("Retry-After") or 1)
                if status not in (429, 503) or time.time() + wait > deadline:
                    return status, body
            except (urllib.error.URLError, ConnectionError) as e:
                wait = 1.0
                if time.time() + wait > deadline:
                    return 0, {"error": str(e)}
            time.sleep(wait)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- faults ----------------------------------------------------------------------------------

LOCKER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=120, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


class Lock:
    """Another process holding `BEGIN EXCLUSIVE` on a SQLite file for `seconds`."""

    def __init__(self, db: Path, seconds: float):
        self.proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(db), str(seconds)],
                                     stdout=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline().strip()
        if first != "locked":
            raise SystemExit(f"could not lock {db}: {first!r}")
        self.locked_at = time.time()
        self.ended_at = self.locked_at
        self.ender = threading.Thread(target=self._wait_end, daemon=True)
        self.ender.start()

    def _wait_end(self) -> None:
        self.proc.wait()
        self.ended_at = time.time()

    def wait(self) -> float:
        """Waits for the lock's end; returns how long it was held."""
        self.ender.join()
        return self.ended_at - self.locked_at


def install_poison_triggers(data: Path) -> None:
    """Makes both stores refuse the poison line as a constraint error, as a store refuses a line
    it cannot keep; the archive takes it like any other."""
    for file, table in POISON_TRIGGERS.items():
        conn = sqlite3.connect(data / file, timeout=60, isolation_level=None)
        conn.execute(
            f"CREATE TRIGGER IF NOT EXISTS chaos_poison BEFORE INSERT ON {table} "
            f"WHEN NEW.stock_code = '{POISON_STOCK_CODE}' "
            "BEGIN SELECT RAISE(ABORT, 'chaos poison line'); END")
        conn.close()


def poison_invoice() -> list[dict]:
    """Three lines of one invoice; the middle one is poison."""
    base = {"InvoiceNo": POISON_INVOICE, "InvoiceDate": "12/9/2011 12:50",
            "CustomerID": 12680, "Country": "France"}
    codes = [("22138", "BAKING SET 9 PIECE RETROSPOT", 3, "4.95"),
             (POISON_STOCK_CODE, "A LINE THE STORES REFUSE", 1, "1.25"),
             ("23256", "CHILDRENS CUTLERY SPACEBOY", 4, "4.15")]
    return [dict(base, StockCode=c, Description=d, Quantity=q, UnitPrice=p, LineNo=i)
            for i, (c, d, q, p) in enumerate(codes)]


class FullDisk:
    """A tmpfs mounted on the archive folder, which `fill` fills to ENOSPC and `free` frees."""

    def __init__(self, folder: Path, size_mib: int):
        folder.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "chaos", str(folder)],
                           capture_output=True, text=True)
        self.folder = folder
        self.mounted = r.returncode == 0
        self.why_not = (r.stderr or r.stdout).strip()
        self.filler = folder / ".chaos-filler"

    def fill(self) -> int:
        written = 0
        block = b"\0" * (1 << 20)
        with open(self.filler, "wb", buffering=0) as f:
            try:
                while True:
                    written += f.write(block)
            except OSError:
                pass
            # The last partial megabyte.
            try:
                while True:
                    written += f.write(b"\0" * 4096)
            except OSError:
                pass
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.folder)], check=False)
            self.mounted = False


# --- watching --------------------------------------------------------------------------------

METRIC = re.compile(r'^shopstream_(\w+)\{([^}]*)\} (\S+)$')


class Watcher(threading.Thread):
    """Samples /v1/status and /metrics every two seconds: the peaks the table reports, and the
    last metrics of each server process (counters start again at zero after kill -9)."""

    def __init__(self, server: Server):
        super().__init__(daemon=True)
        self.server = server
        self.stop = threading.Event()
        self.max_backlog: dict[str, int] = collections.Counter()
        self.max_lag: dict[str, float] = collections.Counter()
        self.failing: dict[str, set[str]] = collections.defaultdict(set)
        self.metrics_by_start: dict[int, dict[tuple, float]] = {}
        self.unanswered = 0

    def run(self) -> None:
        while not self.stop.wait(2):
            self.sample()

    def sample(self) -> None:
        try:
            status = self.server.get("/v1/status")
            text = self.server.get("/metrics")
        except (OSError, ValueError):
            self.unanswered += 1
            return
        per_sink: dict[str, int] = collections.Counter()
        for s in status.get("shards", []):
            per_sink[s["sink"]] += s.get("backlog_records") or 0
            self.max_lag[s["sink"]] = max(self.max_lag[s["sink"]], s.get("lag_seconds") or 0)
            if s.get("failing"):
                self.failing[s["sink"]].add(str(s["failing"])[:160])
        for sink, backlog in per_sink.items():
            self.max_backlog[sink] = max(self.max_backlog[sink], backlog)
        metrics = {}
        for line in text.splitlines():
            m = METRIC.match(line)
            if m:
                labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2))))
                metrics[(m.group(1), labels)] = float(m.group(3))
        self.metrics_by_start[self.server.starts] = metrics

    def total(self, name: str, **want: str) -> int:
        """A counter summed over every server process and every label set matching `want`."""
        total = 0.0
        for metrics in self.metrics_by_start.values():
            for (metric, labels), value in metrics.items():
                if metric == name and all((k, v) in labels for k, v in want.items()):
                    total += value
        return int(total)


def wait_caught_up(server: Server, stall: float) -> dict:
    """Waits until every sink has checkpointed every shard; fails once the sinks' figures have
    stood still for `stall` seconds (a slow machine is slower, not red)."""
    last, last_change = None, time.time()
    while True:
        try:
            status = server.get("/v1/status")
        except (OSError, ValueError):
            status = {}
        shards = status.get("shards", [])
        if status.get("caught_up") is True and shards:
            return status
        figures = sorted((s["sink"], s["shard"], s.get("lines_written"), s.get("backlog_records"))
                         for s in shards)
        if figures != last:
            last, last_change = figures, time.time()
        elif time.time() - last_change > stall:
            raise SystemExit(f"the sinks stood still for {stall:.0f} s without catching up: "
                             f"{json.dumps(status)[:2000]}")
        time.sleep(2)


# --- data ------------------------------------------------------------------------------------


def micros(text) -> int:
    return int(Decimal(str(text)) * 1_000_000)


def customer(text) -> int | None:
    if text is None or str(text).strip() == "":
        return None
    return int(Decimal(str(text)))


CSV_COLUMNS = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice",
               "CustomerID", "Country"]


def write_csv(path: Path, lines: list[dict]) -> None:
    """Lines as posted (dicts of the dataset's columns) as a CSV file of those columns."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for line in lines:
            w.writerow([line[c] for c in CSV_COLUMNS])


def split_by_invoice(source: Path, parts: list[Path]) -> collections.Counter:
    """Deals whole invoices round-robin to `parts` (an invoice never spans two files: replay
    numbers lines per invoice and file) and returns the content of every row, as a multiset of
    (invoice, stock code, quantity, unit price in millionths, customer)."""
    expected: collections.Counter = collections.Counter()
    outs = [open(p, "w", newline="", encoding="utf-8") for p in parts]
    with open(source, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        writers = [csv.writer(o) for o in outs]
        for w in writers:
            w.writerow(header)
        col = {name: i for i, name in enumerate(header)}
        where: dict[str, int] = {}
        for row in reader:
            inv = row[col["InvoiceNo"]]
            part = where.setdefault(inv, len(where) % len(parts))
            writers[part].writerow(row)
            expected[(inv, row[col["StockCode"]], int(row[col["Quantity"]]),
                      micros(row[col["UnitPrice"]]), customer(row[col["CustomerID"]]))] += 1
    for o in outs:
        o.close()
    return expected


def replay(binary: Path, base: str, file: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(binary), "replay", str(file), "--url", base, "--key", STORE_KEY, "--json",
         "--stores", str(STORES_PER_REPLAY), "--batch", str(BATCH), "--max-attempts", "60"],
        stdout=open(out, "w"), stderr=subprocess.STDOUT)


def replay_summary(out: Path) -> dict:
    text = out.read_text()
    start = text.find("{")
    if start < 0:
        raise SystemExit(f"replay printed no summary: {text[-2000:]}")
    return json.loads(text[start:text.rfind("}") + 1])


# --- reading the sinks back ------------------------------------------------------------------


def read_archive(folder: Path):
    ids: collections.Counter = collections.Counter()
    content: collections.Counter = collections.Counter()
    for path in sorted(folder.rglob("*.ndjson.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                v = json.loads(line)
                ids[v["line_id"]] += 1
                content[(v["invoice_no"], v["stock_code"], int(v["quantity"]),
                         micros(v["unit_price"]), customer(v.get("customer_id")))] += 1
    return ids, content


def read_sqlite(db: Path, table: str):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    ids: collections.Counter = collections.Counter()
    content: collections.Counter = collections.Counter()
    for line_id, inv, code, qty, price, cust in conn.execute(
            f"SELECT line_id, invoice_no, stock_code, quantity, unit_price, customer_id FROM {table}"):
        ids[line_id] += 1
        content[(inv, code, int(qty), micros(price), customer(cust))] += 1
    conn.close()
    return ids, content


def read_dead_letters(data: Path) -> list[dict]:
    letters = []
    for path in sorted((data / "dead-letter").rglob("*.json")):
        if "dedup-window" in path.parts:
            continue
        try:
            letters.append(dict(json.loads(path.read_text()), _path=str(path)))
        except ValueError:
            letters.append({"_path": str(path), "_undecodable": True})
    return letters


# --- the run ---------------------------------------------------------------------------------


def build(repo: Path) -> Path:
    log("building shopstream (cargo build)")
    subprocess.run(["cargo", "build", "--bin", "shopstream"], cwd=repo, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", repo / "target"))
    return (target if target.is_absolute() else repo / target) / "debug" / "shopstream"


def config_text(data: Path, rate: int) -> str:
    return f"""
data_dir = "{data}"

[server]
max_inflight_ingest = 4
max_lines_per_request = {MAX_REQUEST_LINES}

[rate_limits]
lines_per_second = {rate}
burst_lines = {MAX_REQUEST_LINES}

[archive]
flush_age = "1s"

[sinks]
checkpoint_interval = "250ms"
shard_refresh = "2s"

[sinks.retry]
initial_backoff = "50ms"
max_backoff = "2s"
max_attempts = 4

[log]
level = "info"
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", type=Path, help="shopstream binary (default: cargo build, debug)")
    p.add_argument("--backend", choices=["embedded", "aws-local"], default="embedded",
                   help="embedded (SQLite stores, local archive) or aws-local (kinesalite and "
                   "moto_server behind scripts/testing/fault_proxy.py; see docs/reliability.md)")
    p.add_argument("--outage-seconds", type=float,
                   help="how long the operational store is out (default 400; --quick: 30)")
    p.add_argument("--lines", type=int, help="lines to generate (default 100,000; --quick: 5,000)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run of about two minutes: 5,000 lines and a 30 s outage")
    p.add_argument("--work", type=Path, help="folder for data and logs (default: a new temp one)")
    args = p.parse_args()
    if args.lines is None:
        args.lines = 5_000 if args.quick else 100_000
    if args.outage_seconds is None:
        args.outage_seconds = 30 if args.quick else 400
    repo = Path(__file__).resolve().parents[2]
    binary = (args.bin or build(repo)).resolve()
    work = args.work or Path(tempfile.mkdtemp(prefix="shopstream-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    if data.exists():
        raise SystemExit(f"{data} exists: give --work a new folder")
    log(f"work folder {work}; binary {binary}; backend {args.backend}")
    outage = args.outage_seconds
    side = max(outage / 3, 10)
    # The faults end at 40 + 2 x side (fault 5) or at the outage's end; ingest goes on over 90% of
    # the later of the two (with 10 s to spare).
    span = max(outage, 50 + 2 * side)

    # Data: N generated lines dealt by invoice to three files, one per replay.
    source = work / "lines.csv"
    subprocess.run([str(binary), "generate", "--lines", str(args.lines), "--output", str(source)],
                   check=True, stdout=subprocess.DEVNULL)
    parts = [work / f"part{i}.csv" for i in range(REPLAYS)]
    expected = split_by_invoice(source, parts)
    total = sum(expected.values())
    # The store's rate limit lets all the lines in over 90% of the faults' span, so ingest goes
    # on through every fault; the three replays send as fast as they are answered, on 3x the
    # connections the server admits at once.
    rate = max(int((total - MAX_REQUEST_LINES) / (span * 0.9)), 50)
    if args.backend == "aws-local":
        return run_aws_local(args, repo, binary, work, parts, total, rate, side)
    return run_embedded(args, binary, work, parts, expected, rate, side)


def run_embedded(args, binary: Path, work: Path, parts: list[Path], expected, rate: int,
                 side: float) -> int:
    """The embedded run: SQLite stores and a local archive, faults made on their files."""
    data = work / "data"
    outage = args.outage_seconds
    total = sum(expected.values())
    disk = FullDisk(data / "archive", size_mib=max(64, args.lines // 500))
    config = work / "chaos.toml"
    config.write_text(config_text(data, rate))
    server = Server(binary, config, data, free_port(), work / "server.log")
    faults: dict[str, str] = {}
    try:
        server.start()
        log(f"serving on {server.base}; {total} lines in {REPLAYS} files; rate limit {rate} lines/s")
        install_poison_triggers(data)
        watcher = Watcher(server)
        watcher.start()
        t0 = time.time()
        replays = [replay(binary, server.base, part, work / f"replay{i}.json")
                   for i, part in enumerate(parts)]

        def at(offset: float) -> None:
            time.sleep(max(0.0, t0 + offset - time.time()))

        at(5)
        operational = Lock(data / "operational.sqlite", outage)
        log(f"fault 2: operational.sqlite locked (BEGIN EXCLUSIVE) for {outage:.0f} s")

        kills: list[str] = []

        def kill9(why: str) -> None:
            log(f"fault 1: kill -9 of the server {why}")
            kills.append(f"t+{time.time() - t0:.0f} s ({why})")
            server.kill9()
            time.sleep(2)
            server.start()
            log("server restarted on the same port")

        at(12)
        kill9("during the replays and the outage")

        at(20)
        status, answer = server.post_lines(poison_invoice())
        log(f"fault 3: poison invoice sent: HTTP {status}, accepted {answer.get('accepted')}")
        faults["3 poison line"] = f"HTTP {status}, accepted {answer.get('accepted')} of 3"
        poison_ok = status == 200 and answer.get("accepted") == 3

        at(30)
        warehouse = Lock(data / "warehouse.sqlite", side)
        log(f"fault 4: warehouse.sqlite locked for {side:.0f} s")

        at(40 + side)
        if disk.mounted:
            filled = disk.fill()
            log(f"fault 5: archive tmpfs filled ({filled / 2**20:.1f} MiB filler) for {side:.0f} s")
            at(40 + 1.5 * side)
            kill9("again, with the archive's disk full and the outage on")
            at(40 + 2 * side)
            disk.free()
            log("fault 5: archive tmpfs freed")
            faults[FULL_DISK] = (
                f"tmpfs size-capped, {filled / 2**20:.1f} MiB filler, ENOSPC for {side:.0f} s")
        else:
            faults[FULL_DISK] = f"NOT RUN: mount refused ({disk.why_not})"
            at(40 + 1.5 * side)
            kill9("again, with the outage on")
        faults["1 kill -9 during replay"] = "; ".join(kills) + ", each back 2 s later"

        held = warehouse.wait()
        faults["4 locked warehouse"] = f"BEGIN EXCLUSIVE held {held:.0f} s"
        held = operational.wait()
        log(f"fault 2: operational.sqlite released after {held:.0f} s")
        faults["2 sink outage (operational)"] = f"BEGIN EXCLUSIVE held {held:.0f} s"

        summaries = wait_for_replays(replays, work, t0)
        faults["6 3x overload"] = (
            f"{sum(s['busy_answers'] for s in summaries)} busy answers honoured "
            f"(HTTP 429: {watcher.total('http_requests_total', status='429')}, "
            f"503: {watcher.total('http_requests_total', status='503')})")

        resent = resend_all(binary, server, parts, work)
        code = catch_up_and_stop(server, watcher, stall=180)

        archive_ids, archive_content = read_archive(data / "archive")
        op_ids, op_content = read_sqlite(data / "operational.sqlite", "invoice_lines")
        wh_ids, wh_content = read_sqlite(data / "warehouse.sqlite", "sales")
        letters = read_dead_letters(data)
    finally:
        if server.proc and server.proc.poll() is None:
            server.kill9()
        disk.unmount()

    return report(args, work, expected, summaries, resent, faults, watcher, poison_ok,
                  archive_ids, archive_content, op_ids, op_content, wh_ids, wh_content, letters,
                  code, time.time() - t0)


# --- the aws-local run -----------------------------------------------------------------------

KILL = "1 kill -9 during replay"
OUTAGE = "2 sink outage (operational)"
EXPIRY = "2 expired iterators"
POISON = "3 poison line"
WAREHOUSE_REFUSED = "4 warehouse refused"
ARCHIVE_REFUSED = "5 archive writes refused (S3)"
POISON_DESCRIPTION = "A LINE THE STORES REFUSE"
# What the proxy looks for: the poison line's attribute in a DynamoDB item, and its field in a
# Firehose row. Neither matches the line-id table's claims, which hold the line as escaped JSON.
POISON_TEXTS = [f'"Description":{{"S":"{POISON_DESCRIPTION}"}}',
                f'"description":"{POISON_DESCRIPTION}"']


class AwsChaos:
    """The faults of the aws-local run, made by the two proxies and by kill -9; `events` says
    what was done when, per fault."""

    def __init__(self, emulators, server: Server, t0: float):
        self.moto, self.kinesis = emulators.moto, emulators.kinesis
        self.server, self.t0 = server, t0
        self.refused: set[str] = set()
        self.events: dict[str, list[str]] = collections.defaultdict(list)
        self.poison_ok = False

    def note(self, fault: str, what: str) -> None:
        log(f"fault {fault}: {what}")
        self.events[fault].append(f"{what} at t+{time.time() - self.t0:.0f} s")

    def refuse(self, fault: str, target: str, on: bool) -> None:
        """Refuses (or stops refusing) every call of `target` with LimitExceededException."""
        (self.refused.add if on else self.refused.discard)(target)
        self.moto.configure(refuse=sorted(self.refused))
        self.note(fault, f"{target.split('.')[-1]} {'refused' if on else 'answered again'}")

    def archive(self, fault: str, on: bool) -> None:
        """Answers (or stops answering) every S3 write under the archive's prefix 503 SlowDown."""
        prefix = f"{aws_local.BUCKET}/{aws_local.ARCHIVE_PREFIX}/"
        self.moto.configure(refuse_s3_writes=[prefix] if on else [])
        self.note(fault, f"S3 writes under {prefix} {'answered 503 SlowDown' if on else 'pass again'}")

    def expire(self, fault: str, rate: float) -> None:
        """Answers a share `rate` of GetRecords calls ExpiredIteratorException."""
        self.kinesis.configure(expire_rate=rate)
        self.note(fault, f"{rate:.0%} of GetRecords answered ExpiredIteratorException" if rate
                  else "GetRecords answered as kinesalite answers again")

    def poison(self, fault: str) -> None:
        """Has DynamoDB and Firehose refuse every write call holding the poison line as invalid
        (for the rest of the run), then sends the three-line invoice that holds it."""
        self.moto.configure(invalid_if_contains=POISON_TEXTS)
        status, answer = self.server.post_lines(poison_invoice())
        self.poison_ok = status == 200 and answer.get("accepted") == 3
        self.note(fault, "write calls holding the poison line refused as invalid; poison invoice "
                  f"sent: HTTP {status}, accepted {answer.get('accepted')} of 3")

    def kill9(self, fault: str, why: str) -> None:
        self.note(fault, f"kill -9 of the server {why}")
        self.server.kill9()
        time.sleep(2)
        self.server.start()
        log("server restarted on the same port")


def aws_timeline(outage: float, side: float) -> list[tuple[float, str, tuple]]:
    """(offset from the replays' start, AwsChaos method, its arguments), in time order: the
    embedded run's timeline with each fault made by the proxies instead. Iterators expire (20%
    of reads) over the outage's last half-side and 15 s after it, when the operational reader
    comes back with an iterator as old as the outage (kinesalite also expires iterators older
    than five minutes by itself, which a full run's 400 s outage reaches)."""
    end = 5 + outage
    second_kill = "again, with archive writes refused" + (
        " and the outage on" if 40 + 1.5 * side < end else "")
    events = [
        (5, "refuse", (OUTAGE, aws_local.BATCH_WRITE_ITEM, True)),
        (12, "kill9", (KILL, "during the replays and the outage")),
        (20, "poison", (POISON,)),
        (30, "refuse", (WAREHOUSE_REFUSED, aws_local.PUT_RECORD_BATCH, True)),
        (30 + side, "refuse", (WAREHOUSE_REFUSED, aws_local.PUT_RECORD_BATCH, False)),
        (40 + side, "archive", (ARCHIVE_REFUSED, True)),
        (40 + 1.5 * side, "kill9", (KILL, second_kill)),
        (40 + 2 * side, "archive", (ARCHIVE_REFUSED, False)),
        (end - side / 2, "expire", (EXPIRY, 0.2)),
        (end, "refuse", (OUTAGE, aws_local.BATCH_WRITE_ITEM, False)),
        (end + 15, "expire", (EXPIRY, 0.0)),
    ]
    return sorted(events, key=lambda e: e[0])


def run_aws_local(args, repo: Path, binary: Path, work: Path, parts: list[Path], total: int,
                  rate: int, side: float) -> int:
    """The aws-local run: every stage on kinesalite and moto_server, behind fault proxies."""
    data = work / "data"
    emulators = aws_local.Emulators(repo, work)
    server = None
    try:
        emulators.start()
        config = work / "chaos.toml"
        config.write_text(aws_local.config_text(data, rate, emulators, MAX_REQUEST_LINES))
        log("shopstream aws init: " + aws_local.aws_init(binary, config).strip().replace("\n", "; "))
        server = Server(binary, config, data, free_port(), work / "server.log", aws_local.env())
        server.start()
        log(f"serving on {server.base}; {total} lines in {REPLAYS} files; rate limit {rate} lines/s")
        watcher = Watcher(server)
        watcher.start()
        t0 = time.time()
        replays = [replay(binary, server.base, part, work / f"replay{i}.json")
                   for i, part in enumerate(parts)]
        chaos = AwsChaos(emulators, server, t0)
        for offset, method, fault_args in aws_timeline(args.outage_seconds, side):
            time.sleep(max(0.0, t0 + offset - time.time()))
            getattr(chaos, method)(*fault_args)
        summaries = wait_for_replays(replays, work, t0)
        resent = resend_all(binary, server, parts, work)
        code = catch_up_and_stop(server, watcher, stall=300)
        log("reading every sink back (scripts/ops/readback.py against moto_server)")
        # The poison invoice is in the archive whole, in the stores without its poison line.
        whole, stores = work / "poison-whole.csv", work / "poison-stores.csv"
        write_csv(whole, poison_invoice())
        write_csv(stores, [l for l in poison_invoice() if l["StockCode"] != POISON_STOCK_CODE])
        back = aws_local.readback(repo, emulators.moto_endpoint, parts + [stores], work,
                                  skip=("archive",), name="readback-stores")
        archive = aws_local.readback(repo, emulators.moto_endpoint, parts + [whole], work,
                                     skip=("dynamodb", "firehose"), name="readback-archive")
        back["sinks"]["archive"] = archive["sinks"]["archive"]
        letters = {key: aws_local.dead_letter(emulators.moto_endpoint, key)
                   for key in aws_local.dead_letters(emulators.moto_endpoint)}
        stats = {"moto": emulators.moto.stats(), "kinesis": emulators.kinesis.stats()}
        (work / "proxy-stats.json").write_text(json.dumps(stats, indent=2))
    finally:
        if server and server.proc and server.proc.poll() is None:
            server.kill9()
        emulators.stop()
    expired_logged = server.log_path.read_text(errors="replace").count("shard iterator expired")
    faults = aws_faults(chaos.events, summaries, watcher, stats, expired_logged)
    return report_aws(args, work, total, summaries, resent, faults, watcher, back, letters, stats,
                      code, time.time() - t0, chaos.poison_ok)


def wait_for_replays(replays, work: Path, t0: float) -> list[dict]:
    """Waits for the replays; their summaries."""
    for r in replays:
        r.wait()
    summaries = [replay_summary(work / f"replay{i}.json") for i in range(REPLAYS)]
    log(f"replays done at t+{time.time() - t0:.0f} s")
    return summaries


def resend_all(binary: Path, server: Server, parts: list[Path], work: Path) -> list[dict]:
    """Replays every file once more: what was acknowledged before must come back as already
    stored. The summaries."""
    resend = [replay(binary, server.base, part, work / f"resend{i}.json")
              for i, part in enumerate(parts)]
    for r in resend:
        r.wait()
    resent = [replay_summary(work / f"resend{i}.json") for i in range(REPLAYS)]
    log("resend done; waiting for every sink to catch up")
    return resent


def catch_up_and_stop(server: Server, watcher, stall: float) -> int:
    """Waits until every sink caught up, takes the last metrics sample and stops the server with
    SIGTERM; its exit status."""
    wait_caught_up(server, stall=stall)
    watcher.sample()
    watcher.stop.set()
    code = server.terminate()
    log(f"server stopped with SIGTERM: exit {code}")
    return code


def op_count(stats: dict, op: str, what: str) -> int:
    return int(stats["operations"].get(op, {}).get(what, 0))


def s3_refused(stats: dict) -> int:
    return sum(int(c.get("refused", 0)) for c in stats["s3"].values())


def aws_faults(events, summaries, watcher, stats, expired_logged: int) -> dict[str, str]:
    """The fault table's rows: what was done and what the proxies counted."""
    moto, kinesis = stats["moto"], stats["kinesis"]
    faults = {name: "; ".join(what) for name, what in events.items()}
    faults[OUTAGE] += (f" ({op_count(moto, aws_local.BATCH_WRITE_ITEM, 'refused')} calls "
                       "refused with LimitExceededException)")
    faults[WAREHOUSE_REFUSED] += (f" ({op_count(moto, aws_local.PUT_RECORD_BATCH, 'refused')} "
                                  "calls refused with LimitExceededException)")
    faults[ARCHIVE_REFUSED] += f" ({s3_refused(moto)} S3 writes answered 503 SlowDown)"
    faults[EXPIRY] += (
        f" ({op_count(kinesis, aws_local.GET_RECORDS, 'injected_expired')} injected, "
        f"{op_count(kinesis, aws_local.GET_RECORDS, 'error_responses')} error answers of "
        f"kinesalite itself; the server logged 'shard iterator expired' {expired_logged} times)")
    faults[POISON] += (f" ({op_count(moto, aws_local.BATCH_WRITE_ITEM, 'invalid')} BatchWriteItem "
                       f"and {op_count(moto, aws_local.PUT_RECORD_BATCH, 'invalid')} "
                       "PutRecordBatch calls refused as invalid)")
    faults["6 3x overload"] = (
        f"{sum(s['busy_answers'] for s in summaries)} busy answers honoured "
        f"(HTTP 429: {watcher.total('http_requests_total', status='429')}, "
        f"503: {watcher.total('http_requests_total', status='503')})")
    return faults


# Sink names in shopstream's metrics and dead letters, and in readback.py's report.
AWS_SINKS = [("archive", "archive"), ("operational", "dynamodb"), ("warehouse", "firehose")]


def report_aws(args, work, total, summaries, resent, faults, watcher, back, letters, stats,
               exit_code, seconds, poison_ok) -> int:
    problems: list[str] = []
    dead = collections.Counter(k.split("/")[1] for k in letters)
    dead_poison = collections.Counter(
        k.split("/")[1] for k, l in letters.items()
        if (l.get("line") or {}).get("stock_code") == POISON_STOCK_CODE)
    rows = []
    for sink, name in AWS_SINKS:
        r = back["sinks"][name]
        # The archive keeps the poison line too.
        expected = back["input"]["lines"] + (1 if sink == "archive" else 0)
        rows.append((f"{sink} ({name})", expected, r["items"],
                     r["distinct_line_ids"], r["duplicate_copies"], r["missing"], r["extra"],
                     dead.get(sink, 0), "n/a", round(watcher.max_lag.get(sink, 0)),
                     watcher.total("sink_retries_total", sink=sink),
                     watcher.total("sink_duplicate_lines_total", sink=sink)))
        if not rows[-1][10]:
            problems.append(f"{sink}: its fault did not bite (no write was retried)")
        problems += [f"{name}: {problem}" for problem in r["problems"]]
    # The inputs plus the poison invoice's two good lines.
    if back["input"]["lines"] != total + 2:
        problems.append(f"readback.py counts {back['input']['lines']} input lines, not "
                        f"{total} + 2")
    for sink, expected in [("archive", 0), ("operational", 1), ("warehouse", 1)]:
        if dead.get(sink, 0) != expected or dead_poison.get(sink, 0) != expected:
            problems.append(f"{sink}: {dead.get(sink, 0)} dead letters ({dead_poison.get(sink, 0)} "
                            f"of them the poison line), expected {expected}")
    if not poison_ok:
        problems.append(f"the poison invoice was not accepted whole: {faults[POISON]}")
    moto, kinesis = stats["moto"], stats["kinesis"]
    for fault, count in [(OUTAGE, op_count(moto, aws_local.BATCH_WRITE_ITEM, "refused")),
                         (POISON, op_count(moto, aws_local.BATCH_WRITE_ITEM, "invalid")),
                         (WAREHOUSE_REFUSED, op_count(moto, aws_local.PUT_RECORD_BATCH, "refused")),
                         (ARCHIVE_REFUSED, s3_refused(moto)),
                         (EXPIRY, op_count(kinesis, aws_local.GET_RECORDS, "injected_expired"))]:
        if not count:
            problems.append(f"{fault}: the proxy never answered a call with it")
    problems += replay_problems(summaries, resent, exit_code)
    print_tables(args, work, total, seconds, faults, summaries, resent, watcher, rows)
    firehose_dups = back["sinks"]["firehose"]["duplicate_copies"]
    return verdict(problems, "every acknowledged line is in the archive and DynamoDB exactly "
                   f"once and in the Firehose objects at least once ({firehose_dups} second "
                   "copies, which the Redshift merge by line_id removes); the poison line is in "
                   "the archive and in the two stores' dead letters only")


def report(args, work, expected, summaries, resent, faults, watcher, poison_ok,
           archive_ids, archive_content, op_ids, op_content, wh_ids, wh_content, letters,
           exit_code, seconds) -> int:
    problems: list[str] = []
    poison = (POISON_INVOICE, POISON_STOCK_CODE, 1, micros("1.25"), 12680)
    good = [l for l in poison_invoice() if l["StockCode"] != POISON_STOCK_CODE]
    with_poison_siblings = collections.Counter(expected)
    for l in good:
        with_poison_siblings[(POISON_INVOICE, l["StockCode"], l["Quantity"], micros(l["UnitPrice"]),
                              12680)] += 1
    want_archive = with_poison_siblings + collections.Counter({poison: 1})
    dead = collections.Counter(l.get("sink", "?") for l in letters)
    dead_poison = collections.Counter(
        l.get("sink", "?") for l in letters
        if (l.get("line") or {}).get("stock_code") == POISON_STOCK_CODE)

    rows = []
    for sink, ids, content, want, dead_expected in [
        ("archive", archive_ids, archive_content, want_archive, 0),
        ("operational", op_ids, op_content, with_poison_siblings, 1),
        ("warehouse", wh_ids, wh_content, with_poison_siblings, 1),
    ]:
        stored = sum(ids.values())
        dups = sum(n - 1 for n in ids.values() if n > 1)
        missing = sum((want - content).values())
        extra = sum((content - want).values())
        rows.append((sink, sum(want.values()), stored, len(ids), dups, missing, extra,
                     dead.get(sink, 0), watcher.max_backlog.get(sink, 0),
                     round(watcher.max_lag.get(sink, 0)),
                     watcher.total("sink_retries_total", sink=sink),
                     watcher.total("sink_duplicate_lines_total", sink=sink)))
        if not rows[-1][10] and (sink != "archive" or "NOT RUN" not in faults[FULL_DISK]):
            problems.append(f"{sink}: its fault did not bite (no write was retried)")
        if dups or missing or extra:
            problems.append(f"{sink}: {dups} duplicated, {missing} missing, {extra} unexpected lines")
        if dead.get(sink, 0) != dead_expected or dead_poison.get(sink, 0) != dead_expected:
            problems.append(f"{sink}: {dead.get(sink, 0)} dead letters ({dead_poison.get(sink, 0)} "
                            f"of them the poison line), expected {dead_expected}")
    # The stores hold the same line ids, and the archive those plus the poison line.
    if set(op_ids) != set(wh_ids):
        problems.append(f"operational and warehouse line ids differ: "
                        f"{len(set(op_ids) ^ set(wh_ids))} ids in one only")
    extra_in_archive = set(archive_ids) - set(op_ids)
    if len(extra_in_archive) != 1 or set(op_ids) - set(archive_ids):
        problems.append(f"archive vs stores: {len(extra_in_archive)} ids only in the archive "
                        f"(expected 1, the poison line), "
                        f"{len(set(op_ids) - set(archive_ids))} only in the stores")
    if not poison_ok:
        problems.append(f"the poison invoice was not accepted whole: {faults['3 poison line']}")
    problems += replay_problems(summaries, resent, exit_code)

    print_tables(args, work, sum(expected.values()), seconds, faults, summaries, resent, watcher,
                 rows)
    return verdict(problems, "every acknowledged line is in every sink exactly once; the poison "
                   "line is in the archive and in the two stores' dead letters only")


def replay_problems(summaries: list[dict], resent: list[dict], exit_code: int) -> list[str]:
    """What the replays and the server's stop say is wrong: a line rejected, a line the resend
    could not get acknowledged, an exit status other than 0 after SIGTERM."""
    problems = []
    rejected = sum(s["lines_rejected"] + r["lines_rejected"] for s, r in zip(summaries, resent))
    resend_failed = sum(r["lines_failed"] for r in resent)
    if rejected or resend_failed:
        problems.append(f"replay: {rejected} lines rejected, {resend_failed} not acknowledged "
                        "by the resend")
    if exit_code != 0:
        problems.append(f"SIGTERM exit status {exit_code}")
    return problems


def print_tables(args, work, lines, seconds, faults, summaries, resent, watcher, rows) -> None:
    """The run's report: the faults, the replays' figures, and one row per sink."""
    acked = sum(s["lines_accepted"] + s["lines_duplicate"] for s in summaries)
    print()
    print(f"chaos run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: backend "
          f"{args.backend}, {lines} lines, outage {args.outage_seconds:.0f} s, "
          f"{seconds:.0f} s in all; work folder {work}")
    print()
    print("| fault | what happened |")
    print("| --- | --- |")
    for name in sorted(faults):
        print(f"| {name} | {faults[name]} |")
    print()
    print(f"replays: {acked} lines acknowledged ({sum(s['lines_accepted'] for s in summaries)} "
          f"new, {sum(s['lines_duplicate'] for s in summaries)} already stored), "
          f"{sum(s['lines_failed'] for s in summaries)} not "
          f"acknowledged, {sum(s['retries'] for s in summaries)} retries, "
          f"{sum(s['busy_answers'] for s in summaries)} busy answers; resend: "
          f"{sum(r['lines_accepted'] for r in resent)} new, "
          f"{sum(r['lines_duplicate'] for r in resent)} already stored, "
          f"{sum(r['lines_failed'] for r in resent)} not acknowledged; sink worker restarts "
          f"{watcher.total('sink_actor_restarts_total')}")
    print()
    print("| sink | expected | stored | distinct ids | duplicated | missing | unexpected "
          "| dead letters | peak backlog (records) | peak lag s | retries | dedup drops |")
    print("| --- " * 12 + "|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    for sink in sorted(watcher.failing):
        for f in sorted(watcher.failing[sink])[:3]:
            print(f"  {sink} failing (sampled): {f}")
    print()


def verdict(problems: list[str], ok: str) -> int:
    for problem in problems:
        print(f"FAIL: {problem}")
    if problems:
        return 1
    print(f"OK: {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
