"""The aws-local backend of the chaos run (`run.py --backend aws-local`): local AWS-compatible
servers with the fault proxy in front, the settings that point shopstream at them, and the
independent read-back of what they hold.

kinesalite serves Kinesis and moto_server S3, DynamoDB and Firehose (as in `tests/aws_common`),
each on a free 127.0.0.1 port and each behind its own `scripts/testing/fault_proxy.py`; shopstream
talks only to the proxies, the read-back goes to moto directly. Standard library only: the
read-back runs `scripts/ops/readback.py` (boto3) as a separate process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

# What the AWS SDK needs to talk to the local servers (tests/common's AWS_TEST_ENV).
ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_SESSION_TOKEN": "test",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}

BUCKET = "chaos-archive"
ARCHIVE_PREFIX = "raw"
DEAD_LETTER_PREFIX = "dead-letter"
FIREHOSE_PREFIX = "warehouse/"
INVOICES_TABLE = "chaos-invoices"

BATCH_WRITE_ITEM = "DynamoDB_20120810.BatchWriteItem"
PUT_RECORD_BATCH = "Firehose_20150804.PutRecordBatch"
GET_RECORDS = "Kinesis_20131202.GetRecords"

INSTALL_HINT = "run `scripts/local/aws-local.sh install` first"


class Helper:
    """One helper process (kinesalite, a proxy) that prints `listening on 127.0.0.1:PORT` first."""

    def __init__(self, name: str, argv: list[str], log_path: Path):
        self.name = name
        with open(log_path, "ab") as stderr:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on 127.0.0.1:"):
            self.stop()
            raise SystemExit(f"{name} did not start (it printed {line!r}); see {log_path}")
        self.endpoint = "http://" + line.split()[-1]
        # Never block it on a full pipe.
        self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Proxy(Helper):
    """`fault_proxy.py` in front of `upstream`, with its control endpoints."""

    def __init__(self, name: str, repo: Path, upstream: str, log_path: Path):
        super().__init__(name, [sys.executable, str(repo / "scripts/testing/fault_proxy.py"),
                                "--upstream", upstream, "--seed", "7"], log_path)

    def configure(self, **changes) -> None:
        """POSTs `changes` (e.g. refuse=[...], expire_rate=0.2) to the proxy's config."""
        req = urllib.request.Request(self.endpoint + "/__fault_proxy/config", method="POST",
                                     data=json.dumps(changes).encode())
        try:
            urllib.request.urlopen(req, timeout=10).read()
        except urllib.error.HTTPError as e:
            raise SystemExit(f"{self.name} refused the config {changes}: {e.read()!r}") from None

    def stats(self) -> dict:
        with urllib.request.urlopen(self.endpoint + "/__fault_proxy/stats", timeout=10) as r:
            return json.load(r)


class Emulators:
    """moto_server and kinesalite on free loopback ports, each behind a fault proxy."""

    def __init__(self, repo: Path, work: Path):
        self.repo, self.work = repo, work
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.moto_port = s.getsockname()[1]
        self.helpers: list[Helper] = []
        self.moto_proc: subprocess.Popen | None = None
        self.moto_endpoint = f"http://127.0.0.1:{self.moto_port}"

    def start(self) -> None:
        self.start_moto()
        server = self.repo / "scripts/local/kinesalite/server.js"
        if shutil.which("node") is None or not (server.parent / "node_modules/kinesalite").is_dir():
            raise SystemExit(f"kinesalite is not installed in {server.parent}: {INSTALL_HINT}")
        kinesalite = self.add(Helper("kinesalite", ["node", str(server), "0"],
                                     self.work / "kinesalite.log"))
        # Kinesis through one proxy; S3, DynamoDB and Firehose through the other.
        self.kinesis = self.add(Proxy("the Kinesis proxy", self.repo, kinesalite.endpoint,
                                      self.work / "proxy-kinesis.log"))
        self.moto = self.add(Proxy("the moto proxy", self.repo, self.moto_endpoint,
                                   self.work / "proxy-moto.log"))

    def add(self, helper: Helper) -> Helper:
        self.helpers.append(helper)
        return helper

    def start_moto(self) -> None:
        if shutil.which("moto_server") is None:
            raise SystemExit(f"moto_server is not on PATH: {INSTALL_HINT}")
        log = open(self.work / "moto.log", "ab")
        self.moto_proc = subprocess.Popen(
            ["moto_server", "-H", "127.0.0.1", "-p", str(self.moto_port)],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.moto_proc.poll() is not None:
                raise SystemExit(f"moto_server exited with {self.moto_proc.returncode}; "
                                 f"see {self.work / 'moto.log'}")
            try:
                urllib.request.urlopen(self.moto_endpoint + "/moto-api/", timeout=2).read()
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"moto_server did not answer within 60 s; see {self.work / 'moto.log'}")

    def stop(self) -> None:
        for helper in reversed(self.helpers):
            helper.stop()
        if self.moto_proc and self.moto_proc.poll() is None:
            # moto can take longer than a SIGTERM's grace to let go of a large in-memory state.
            self.moto_proc.terminate()
            try:
                self.moto_proc.wait(10)
            except subprocess.TimeoutExpired:
                self.moto_proc.kill()
                self.moto_proc.wait()


def config_text(data: Path, rate: int, emulators: Emulators, request_lines: int) -> str:
    """Every stage on its aws backend, through the proxies; short leases so a restarted server
    gets its shards back within seconds, the embedded run's fast timers and limits."""
    return f"""
data_dir = "{data}"

[server]
max_inflight_ingest = 4
max_lines_per_request = {request_lines}

[rate_limits]
lines_per_second = {rate}
burst_lines = {request_lines}

[stream]
backend = "aws"

[stream.kinesis]
stream_name = "chaos-lines"
shards = 4
leases_table = "chaos-leases"
line_index_table = "chaos-line-ids"
lease_duration = "6s"

[archive]
backend = "aws"
prefix = "{ARCHIVE_PREFIX}"
flush_age = "1s"

[archive.s3]
bucket = "{BUCKET}"

[operational]
backend = "aws"

[operational.dynamodb]
invoices_table = "{INVOICES_TABLE}"

[warehouse]
backend = "aws"

[warehouse.firehose]
delivery_stream = "chaos-sales"
role_arn = "arn:aws:iam::123456789012:role/chaos-firehose-local"
prefix = "{FIREHOSE_PREFIX}"

[dead_letter]
backend = "aws"
prefix = "{DEAD_LETTER_PREFIX}"

[sinks]
checkpoint_interval = "250ms"
shard_refresh = "2s"

[sinks.retry]
initial_backoff = "50ms"
max_backoff = "2s"
max_attempts = 4

[aws]
region = "us-east-1"
endpoint_url = "{emulators.moto.endpoint}"
kinesis_endpoint_url = "{emulators.kinesis.endpoint}"
partial_retry_initial_backoff = "10ms"
partial_retry_max_backoff = "200ms"

[log]
level = "info"
"""


def aws_init(binary: Path, config: Path) -> str:
    """`shopstream aws init`: creates the stream, bucket, tables and delivery stream."""
    r = subprocess.run([str(binary), "--config", str(config), "aws", "init"], env=env(),
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"shopstream aws init failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def readback(repo: Path, moto_endpoint: str, parts: list[Path], work: Path,
             skip: tuple[str, ...] = (), name: str = "readback") -> dict:
    """`scripts/ops/readback.py --json` against moto itself (not through a proxy): every sink
    but `skip` compared with the input files. Firehose delivers at least once (docs/aws.md), so a
    line id seen twice there is counted once and reported, not failed. The report is kept as
    `<name>.json` in the work folder."""
    argv = [sys.executable, str(repo / "scripts/ops/readback.py"), "--json",
            "--endpoint", moto_endpoint, "--bucket", BUCKET,
            "--invoices-table", INVOICES_TABLE, "--archive-prefix", ARCHIVE_PREFIX + "/",
            "--firehose-prefix", FIREHOSE_PREFIX, "--allow-duplicates", "firehose"]
    for part in parts:
        argv += ["--input", str(part)]
    for sink in skip:
        argv += ["--skip", sink]
    r = subprocess.run(argv, capture_output=True, text=True, env=env())
    (work / f"{name}.json").write_text(r.stdout)
    if r.returncode not in (0, 1):
        raise SystemExit(f"readback.py could not read the sinks ({r.returncode}): {r.stderr}")
    return json.loads(r.stdout)


def dead_letters(moto_endpoint: str) -> list[str]:
    """Keys of the dead letters in the bucket (`dead-letter/<sink>/<shard>/...`), listed with
    plain ListObjectsV2 calls (moto does not check signatures)."""
    keys: list[str] = []
    token = None
    ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
    while True:
        query = {"list-type": "2", "prefix": DEAD_LETTER_PREFIX + "/"}
        if token:
            query["continuation-token"] = token
        url = f"{moto_endpoint}/{BUCKET}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=30) as r:
            root = ET.fromstring(r.read())
        keys += [k.text for k in root.iter(ns + "Key")]
        token = root.findtext(ns + "NextContinuationToken")
        if not token:
            return keys


def dead_letter(moto_endpoint: str, key: str) -> dict:
    """One dead letter, parsed (GetObject with boto3: moto refuses an unsigned one)."""
    import boto3  # as readback.py; only needed once there are dead letters to read

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=ENV["AWS_REGION"],
                      aws_access_key_id=ENV["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=ENV["AWS_SECRET_ACCESS_KEY"])
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def env() -> dict:
    """The environment of a process talking to the local servers (shopstream, readback.py)."""
    return {**os.environ, **ENV}
