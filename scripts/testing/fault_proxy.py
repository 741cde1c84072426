#!/usr/bin/env python3
"""A counting, fault-injecting HTTP proxy in front of one AWS-compatible server (moto, kinesalite).

    python3 scripts/testing/fault_proxy.py --upstream http://127.0.0.1:5000 [--listen 127.0.0.1:0]
        [--port-file PATH] [--fail-rate F] [--throttle-rate F] [--expire-rate F] [--seed N]
        [--refuse TARGET ...] [--refuse-s3-writes BUCKET/PREFIX ...]
        [--delay-puts N --delay-seconds S] [--stats-file PATH] [--verbose]

Point the AWS SDK's endpoint at the proxy instead of the server. Every request is forwarded as it
came (method, path and query, headers, body) and the answer returned as it came, except:

* faults, for the three batch writes shopstream makes (only while a rate is above zero):
  - Kinesis `PutRecords`: a share `--fail-rate` of the entries is not forwarded and comes back
    failed (`ProvisionedThroughputExceededException` and `InternalFailure`, alternately), merged
    in request order with the server's answers for the rest; `FailedRecordCount` recomputed.
  - DynamoDB `BatchWriteItem`: a share of the write requests is not forwarded and comes back in
    `UnprocessedItems` (per table), merged with the server's own unprocessed items.
  - Firehose `PutRecordBatch`: a share of the entries comes back failed with
    `ServiceUnavailableException`; `RequestResponses` in order, `FailedPutCount` recomputed.
  - `--throttle-rate`: that share of those calls is answered with a throttling error and not
    forwarded at all: HTTP 400 `ProvisionedThroughputExceededException` (Kinesis, DynamoDB) or
    HTTP 500 `ServiceUnavailableException` (Firehose, as AWS answers it), with the code in the
    `x-amzn-ErrorType` header and `__type` of the body. The AWS SDKs retry both: the code is on
    their list of throttling errors, and 500 on their list of transient statuses.
  - `--expire-rate`: that share of Kinesis `GetRecords` calls is answered HTTP 400
    `ExpiredIteratorException` without forwarding, as Kinesis answers an iterator older than five
    minutes (what a reader sees after a long sink outage), so a test need not wait five minutes.
  - `--refuse TARGET` (repeatable; e.g. `Kinesis_20131202.ListShards`): every call of that
    operation is answered HTTP 400 `LimitExceededException` without forwarding, as Kinesis answers
    a control-plane call over its rate limit, for as long as the refusal stands.
  - `--refuse-s3-writes BUCKET/PREFIX` (repeatable; e.g. `shopstream-archive/raw/`): every S3
    write (PutObject and the multipart upload calls) of a key under that path-style prefix is
    answered HTTP 503 `SlowDown` without forwarding, as S3 answers a prefix over its request
    rate; reads, listings and writes elsewhere in the bucket pass. The SDKs retry 503.
  - `--delay-puts N --delay-seconds S`: the first N Kinesis `PutRecords` calls are forwarded at
    once (the records land) but answered only S seconds later, so a caller whose timeout is
    shorter gives up on records that are in the stream (and a client resends them). Counted as
    `delayed` of the operation. Applies while no --fail-rate or --throttle-rate is set.
  The local servers do not check SigV4 signatures, which is what lets the proxy rewrite a body.

* counting (always on, thread-safe), the basis of the cost benchmark: calls per `X-Amz-Target`
  operation; entries, failures, bytes and billing units of the batch writes; records returned by
  `GetRecords`; S3 requests by kind (path-style addressing, as shopstream's client uses).
  See `Stats.snapshot` for the exact JSON.

* control endpoints, answered by the proxy itself:
    GET  /__fault_proxy/stats    the counters as JSON
    GET  /__fault_proxy/config   the current rates
    POST /__fault_proxy/config   {"fail_rate": 0.1, "throttle_rate": 0.05} (any key) changes
                                 the rates at run time; tests set both to 0 to let retries drain;
                                 {"refuse": ["Kinesis_20131202.ListShards"]} replaces the refused
                                 operations ([] refuses none), {"refuse_s3_writes": ["b/raw/"]}
                                 the refused S3 write prefixes
    POST /__fault_proxy/reset    zeroes the counters

It listens on loopback only (the servers behind it accept any credentials) and prints
`listening on 127.0.0.1:PORT` once it accepts connections. SIGTERM or SIGINT stops it; the
counters are then written to `--stats-file` if one is given. An unreachable upstream is answered
with HTTP 502 and a JSON body saying which upstream and why.

Standard library only, so it runs wherever Python 3.11 does.
"""

import argparse
import base64
import binascii
import http.client
import http.server
import ipaddress
import json
import os
import random
import signal
import socket
import sys
import threading
import time
import urllib.parse
import uuid
import zlib

# Kinesis bills PUT payload units of 25 KB per record, rounded up ("25 KB" on the pricing page);
# we take 25 KiB = 25,600 bytes, of data blob plus partition key (what Kinesis counts toward a
# record's size). Firehose bills each record rounded up to 5 KB; we take 5 KiB = 5,120 bytes.
KINESIS_PUT_UNIT_BYTES = 25 * 1024
FIREHOSE_BILLING_UNIT_BYTES = 5 * 1024
# DynamoDB on-demand bills one write request unit per started KB of an item; an estimate, since
# the size is taken from the JSON the client sent (names plus value texts).
DYNAMODB_WRITE_UNIT_BYTES = 1024

PUT_RECORDS = "Kinesis_20131202.PutRecords"
GET_RECORDS = "Kinesis_20131202.GetRecords"
BATCH_WRITE_ITEM = "DynamoDB_20120810.BatchWriteItem"
PUT_RECORD_BATCH = "Firehose_20150804.PutRecordBatch"

# The throttling answer of each batch write: (HTTP status, error code, content type).
THROTTLE = {
    PUT_RECORDS: (400, "ProvisionedThroughputExceededException", "application/x-amz-json-1.1"),
    BATCH_WRITE_ITEM: (400, "ProvisionedThroughputExceededException", "application/x-amz-json-1.0"),
    PUT_RECORD_BATCH: (500, "ServiceUnavailableException", "application/x-amz-json-1.1"),
}
KINESIS_ENTRY_ERRORS = ("ProvisionedThroughputExceededException", "InternalFailure")
INJECTED = "injected by fault_proxy"
# The S3 requests --refuse-s3-writes refuses (kinds of `s3_kind`).
S3_WRITES = frozenset(
    {"PutObject", "UploadPart", "CreateMultipartUpload", "CompleteMultipartUpload"}
)

# Headers that belong to one connection, not to the message: never forwarded either way.
# Content-Length is recomputed for every forwarded body.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)

CONTROL_PREFIX = "/__fault_proxy/"


class UpstreamDown(Exception):
    """The upstream server could not be reached or dropped the connection."""


# ---------------------------------------------------------------------------------------------
# Counting


def _ceil_div(n, d):
    return -(-n // d)


def _b64_len(s):
    """Length of what a padded base64 string decodes to, without decoding it."""
    n = len(s)
    if n == 0:
        return 0
    pad = 2 if s.endswith("==") else 1 if s.endswith("=") else 0
    return n // 4 * 3 - pad if n % 4 == 0 else n * 3 // 4


def _utf8_len(s):
    return len(s) if s.isascii() else len(s.encode("utf-8"))


def kinesis_entry(entry):
    """(bytes, PUT payload units) of one PutRecords entry: data blob plus partition key."""
    size = _b64_len(entry.get("Data", "")) + _utf8_len(entry.get("PartitionKey", ""))
    return size, max(1, _ceil_div(size, KINESIS_PUT_UNIT_BYTES))


def firehose_entry(entry):
    """(bytes, billed 5 KB units) of one PutRecordBatch entry."""
    size = _b64_len(entry.get("Data", ""))
    return size, max(1, _ceil_div(size, FIREHOSE_BILLING_UNIT_BYTES))


# The batch writes with entries answered one by one: (answers key, failure count key, size and
# units of an entry, name of the units counter).
ENTRY_OPS = {
    PUT_RECORDS: ("Records", "FailedRecordCount", kinesis_entry, "payload_units"),
    PUT_RECORD_BATCH: ("RequestResponses", "FailedPutCount", firehose_entry, "billed_units_5k"),
}


def _attr_size(value):
    """Approximate DynamoDB size of one attribute value in the JSON protocol's form."""
    if not isinstance(value, dict) or len(value) != 1:
        return len(json.dumps(value))
    ((kind, v),) = value.items()
    if kind in ("S", "N"):
        return _utf8_len(v)
    if kind == "B":
        return _b64_len(v)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "NS"):
        return sum(_utf8_len(x) for x in v)
    if kind == "BS":
        return sum(_b64_len(x) for x in v)
    if kind == "L":
        return 3 + sum(1 + _attr_size(x) for x in v)
    if kind == "M":
        return 3 + sum(_utf8_len(k) + 1 + _attr_size(x) for k, x in v.items())
    return len(json.dumps(v))


def dynamodb_write_units(write_request):
    """Estimated write request units of one BatchWriteItem entry (a delete counts its key)."""
    body = write_request.get("PutRequest", {}).get("Item") or write_request.get(
        "DeleteRequest", {}
    ).get("Key", {})
    size = sum(_utf8_len(k) + _attr_size(v) for k, v in body.items())
    return max(1, _ceil_div(size, DYNAMODB_WRITE_UNIT_BYTES))


def count_entries(target, req, answer, injected):
    """Counters of one PutRecords or PutRecordBatch call: `req` the client's request, `answer`
    the parsed answer it got (None for an error answer: then no entry was stored), `injected`
    how many entries the proxy failed."""
    result_key, _, measure, units = ENTRY_OPS[target]
    entries = req.get("Records") or []
    sizes = [measure(e) for e in entries]
    results = (answer or {}).get(result_key) or []
    stored = [u for (_, u), res in zip(sizes, results) if "ErrorCode" not in res]
    return {
        "entries": len(entries),
        "bytes": sum(b for b, _ in sizes),
        units: sum(u for _, u in sizes),
        "failed": len(entries) - len(stored),
        "injected_failed": injected,
        "ok_" + units: sum(stored),
    }


def count_batch_write(req, answer, injected):
    """Counters of one BatchWriteItem call (see `count_entries`)."""
    writes = [w for ws in (req.get("RequestItems") or {}).values() for w in ws]
    if answer is None:
        unprocessed = len(writes)
    else:
        unprocessed = sum(len(ws) for ws in (answer.get("UnprocessedItems") or {}).values())
    return {
        "entries": len(writes),
        "entries_per_call": len(writes),
        "unprocessed": unprocessed,
        "injected_unprocessed": injected,
        "write_units_estimate": sum(dynamodb_write_units(w) for w in writes),
    }


def count_call(target, req, answer, injected):
    if target == BATCH_WRITE_ITEM:
        return count_batch_write(req, answer, injected)
    return count_entries(target, req, answer, injected)


def s3_kind(method, path, query):
    """The S3 operation of a path-style request, from its method, path and query keys."""
    _, _, rest = path.lstrip("/").partition("/")
    has_key = bool(rest)
    keys = {kv.partition("=")[0] for kv in query.split("&") if kv} if query else set()
    # The AWS SDKs name the operation in an `x-id` query key (`?x-id=PutObject`); it says
    # nothing the method and the other keys do not.
    keys.discard("x-id")
    if method == "PUT":
        if has_key and "partNumber" in keys and "uploadId" in keys:
            return "UploadPart"
        if has_key and not keys:
            return "PutObject"
        if not has_key and not keys and path.strip("/"):
            return "CreateBucket"
    elif method == "POST":
        if "uploads" in keys:
            return "CreateMultipartUpload"
        if "uploadId" in keys:
            return "CompleteMultipartUpload"
        if "delete" in keys:
            return "DeleteObjects"
    elif method == "GET":
        if has_key and not (keys - {"partNumber", "versionId"}):
            return "GetObject"
        if not has_key and path.strip("/") and (
            not keys or keys & {"list-type", "prefix", "continuation-token", "marker"}
        ):
            return "ListObjects"
    elif method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    elif method == "DELETE":
        if "uploadId" in keys:
            return "AbortMultipartUpload"
        if has_key:
            return "DeleteObject"
    return "other"


class Stats:
    """Every counter of the proxy, behind one lock (one acquisition per request)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self):
        with self._lock:
            self._started = time.monotonic()
            self._requests = 0
            self._upstream_unreachable = 0
            self._ops = {}
            self._s3 = {}

    def op(self, target, **counts):
        """Adds `counts` to operation `target`; a count named `entries_per_call` is a histogram."""
        with self._lock:
            self._requests += 1
            c = self._ops.setdefault(target, {"calls": 0})
            c["calls"] += 1
            for k, v in counts.items():
                if k == "entries_per_call":
                    h = c.setdefault(k, {})
                    h[str(v)] = h.get(str(v), 0) + 1
                else:
                    c[k] = c.get(k, 0) + v

    def s3(self, kind, request_bytes, response_bytes, error, refused=False):
        with self._lock:
            self._requests += 1
            c = self._s3.get(kind)
            if c is None:
                c = self._s3[kind] = {
                    "requests": 0,
                    "request_bytes": 0,
                    "response_bytes": 0,
                    "error_responses": 0,
                }
            c["requests"] += 1
            c["request_bytes"] += request_bytes
            c["response_bytes"] += response_bytes
            c["error_responses"] += error
            if refused:
                c["refused"] = c.get("refused", 0) + 1

    def unreachable(self):
        with self._lock:
            self._upstream_unreachable += 1

    def snapshot(self, faults, upstream):
        """The counters as JSON-ready data:

        {
          "uptime_seconds": 12.5,           since start or the last reset
          "upstream": "http://127.0.0.1:5000",
          "config": {"fail_rate": 0.1, "throttle_rate": 0.0, "seed": 7},
          "requests": 1234,                 proxied requests (control endpoints excluded)
          "upstream_unreachable": 0,        requests answered 502
          "operations": {                   per X-Amz-Target; a counter appears once it is non-zero
            "Kinesis_20131202.PutRecords": {
              "calls", "throttled", "error_responses",
              "entries", "bytes", "payload_units",       (over entries of calls not throttled)
              "failed", "injected_failed",               (failed includes injected)
              "ok_payload_units"},                      (of the entries that were stored)
            "DynamoDB_20120810.BatchWriteItem": {
              "calls", "throttled", "error_responses",
              "entries", "unprocessed", "injected_unprocessed",
              "write_units_estimate", "entries_per_call": {"25": 40, "3": 1}},
            "Firehose_20150804.PutRecordBatch": {
              "calls", "throttled", "error_responses",
              "entries", "bytes", "billed_units_5k", "failed", "injected_failed",
              "ok_billed_units_5k"},
            "Kinesis_20131202.GetRecords": {"calls", "error_responses", "records", "response_bytes",
              "injected_expired"},
            "<any other target>": {"calls", "error_responses", "refused" (calls answered by --refuse)}
          },
          "s3": {                           per kind: PutObject, UploadPart, CreateMultipartUpload,
            "PutObject": {                  CompleteMultipartUpload, AbortMultipartUpload,
              "requests", "request_bytes",  GetObject, ListObjects, HeadBucket, HeadObject,
              "response_bytes",             DeleteObject, DeleteObjects, CreateBucket, other
              "error_responses",
              "refused"}                    (answered 503 SlowDown by --refuse-s3-writes)
          }
        }
        "error_responses" counts answers of HTTP 400 and above from the upstream (not injected).
        """
        with self._lock:
            return {
                "uptime_seconds": round(time.monotonic() - self._started, 3),
                "upstream": upstream,
                "config": faults.config(),
                "requests": self._requests,
                "upstream_unreachable": self._upstream_unreachable,
                "operations": json.loads(json.dumps(self._ops)),
                "s3": json.loads(json.dumps(self._s3)),
            }


# ---------------------------------------------------------------------------------------------
# Fault decisions


class Faults:
    """The fault rates and the random source, shared by all connections."""

    def __init__(self, fail_rate, throttle_rate, seed, expire_rate=0.0, refuse=(), delay_puts=0,
                 delay_seconds=0.0, refuse_s3_writes=(), invalid_if_contains=()):
        self._lock = threading.Lock()
        self.invalid_if_contains = sorted(set(invalid_if_contains))
        self.refuse_s3_writes = sorted(set(refuse_s3_writes))
        self.delay_puts = delay_puts
        self.delay_seconds = delay_seconds
        self.refuse = sorted(set(refuse))
        self.fail_rate = fail_rate
        self.throttle_rate = throttle_rate
        self.expire_rate = expire_rate
        self.seed = seed
        self._rng = random.Random(seed)
        self._kinesis_code = 0

    def config(self):
        return {
            "fail_rate": self.fail_rate,
            "throttle_rate": self.throttle_rate,
            "expire_rate": self.expire_rate,
            "refuse": list(self.refuse),
            "refuse_s3_writes": list(self.refuse_s3_writes),
            "invalid_if_contains": list(self.invalid_if_contains),
            "seed": self.seed,
        }

    def update(self, changes):
        """Applies {"fail_rate": F, "throttle_rate": F, "expire_rate": F, "refuse": [...],
        "refuse_s3_writes": [...], "invalid_if_contains": [...]} (any of them); returns an error
        message or None."""
        if not isinstance(changes, dict):
            return 'the body must be a JSON object such as {"fail_rate": 0.1, "throttle_rate": 0}'
        lists = {"refuse": '["Kinesis_20131202.ListShards"]',
                 "refuse_s3_writes": '["shopstream-archive/raw/"]',
                 "invalid_if_contains": '["POISON PILL"]'}
        unknown = set(changes) - {"fail_rate", "throttle_rate", "expire_rate", *lists}
        if unknown:
            return (
                f"unknown keys {sorted(unknown)}: only fail_rate, throttle_rate, expire_rate, "
                "refuse, refuse_s3_writes and invalid_if_contains can change"
            )
        given = {key: changes.pop(key) for key in lists if key in changes}
        for key, value in given.items():
            if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
                return f"{key} is {value!r}: give a list of strings such as {lists[key]}"
        for key, value in changes.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                return f"{key} is {value!r}: give a number from 0 to 1"
        with self._lock:
            self.fail_rate = float(changes.get("fail_rate", self.fail_rate))
            self.throttle_rate = float(changes.get("throttle_rate", self.throttle_rate))
            self.expire_rate = float(changes.get("expire_rate", self.expire_rate))
            if "refuse" in given:
                self.refuse = sorted(set(given["refuse"]))
            if "refuse_s3_writes" in given:
                self.refuse_s3_writes = sorted(set(given["refuse_s3_writes"]))
            if "invalid_if_contains" in given:
                self.invalid_if_contains = sorted(set(given["invalid_if_contains"]))
        return None

    def refused(self, target):
        return target in self.refuse

    def invalid_text(self, target, body):
        """The first --invalid-if-contains text the request body holds (for a Firehose
        PutRecordBatch, also the decoded data of one of its records), or None."""
        if not self.invalid_if_contains:
            return None
        texts = [body]
        if target == PUT_RECORD_BATCH:
            try:
                texts += [base64.b64decode(r.get("Data", ""))
                          for r in json.loads(body).get("Records") or []]
            except (ValueError, TypeError, AttributeError, binascii.Error):
                pass
        for text in self.invalid_if_contains:
            if any(text.encode() in t for t in texts):
                return text
        return None

    def s3_write_refused(self, kind, path):
        """Whether S3 request `kind` on path-style `path` (`/bucket/key`) is a refused write."""
        key = path.lstrip("/")
        return kind in S3_WRITES and any(key.startswith(p) for p in self.refuse_s3_writes)

    def active(self):
        return self.fail_rate > 0 or self.throttle_rate > 0

    def throttle(self):
        return self._draw(self.throttle_rate)

    def put_delay(self):
        """Seconds to hold the answer of this PutRecords call (0 once the delayed calls are used)."""
        with self._lock:
            if self.delay_puts <= 0:
                return 0.0
            self.delay_puts -= 1
            return self.delay_seconds

    def expire(self):
        return self._draw(self.expire_rate)

    def _draw(self, rate):
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def pick(self, n):
        """The set of indices, out of `n` entries, to fail."""
        rate = self.fail_rate
        if rate <= 0 or n == 0:
            return frozenset()
        with self._lock:
            rnd = self._rng.random
            return frozenset(i for i in range(n) if rnd() < rate)

    def kinesis_error_code(self):
        with self._lock:
            self._kinesis_code ^= 1
            return KINESIS_ENTRY_ERRORS[self._kinesis_code ^ 1]


# ---------------------------------------------------------------------------------------------
# The server


def answer_of(r):
    """The parsed JSON of a successful answer, None for an error answer."""
    return json.loads(r.body) if r.status == 200 and r.body else None


def _compact(obj):
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


class Response:
    """An answer to send to the client: status, header list, body."""

    __slots__ = ("status", "reason", "headers", "body")

    def __init__(self, status, reason, headers, body):
        self.status, self.reason, self.headers, self.body = status, reason, headers, body

    def with_body(self, body):
        """The same answer with a new body; a DynamoDB `x-amz-crc32` is recomputed to match."""
        headers = [
            (k, str(zlib.crc32(body) & 0xFFFFFFFF)) if k.lower() == "x-amz-crc32" else (k, v)
            for k, v in self.headers
        ]
        return Response(self.status, self.reason, headers, body)


def synthetic(status, content_type, obj, crc=False):
    """An answer the proxy makes itself, shaped like the service's."""
    body = _compact(obj)
    reason = http.client.responses.get(status, "")
    headers = [("Content-Type", content_type), ("x-amzn-RequestId", str(uuid.uuid4()))]
    if crc:
        headers.append(("x-amz-crc32", str(zlib.crc32(body) & 0xFFFFFFFF)))
    return Response(status, reason, headers, body)


# S3's answer to a prefix over its request rate (an XML error body, as S3 sends).
S3_SLOW_DOWN = Response(
    503,
    "Slow Down",
    [("Content-Type", "application/xml"), ("x-amz-request-id", "fault-proxy")],
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate. (refused by fault_proxy)</Message>"
    b"<RequestId>fault-proxy</RequestId></Error>",
)


class ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address, upstream, faults, verbose):
        super().__init__(address, Handler)
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = upstream
        self.upstream_host = parsed.hostname
        self.upstream_port = parsed.port or 80
        self.upstream_netloc = parsed.netloc
        self.faults = faults
        self.stats = Stats()
        self.verbose = verbose


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fault_proxy"
    disable_nagle_algorithm = True
    server: ProxyServer

    # One upstream connection per client connection (each runs on its own thread).
    _upstream = None

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        if self.server.verbose:
            sys.stderr.write("fault_proxy: %s %s\n" % (self.address_string(), format % args))

    def finish(self):
        super().finish()
        if self._upstream is not None:
            self._upstream.close()

    def log(self, message):
        if self.server.verbose:
            sys.stderr.write(f"fault_proxy: {message}\n")

    # -- plumbing ------------------------------------------------------------------------------

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _connection(self):
        if self._upstream is None:
            self._upstream = http.client.HTTPConnection(
                self.server.upstream_host, self.server.upstream_port, timeout=120
            )
        return self._upstream

    def forward(self, body):
        """Sends the client's request, with `body`, upstream; the answer, read in full."""
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]
        if "Host" not in self.headers:
            headers.append(("Host", self.server.upstream_netloc))
        send_length = bool(body) or self.command in ("POST", "PUT", "PATCH")
        for attempt in (1, 2):
            conn = self._connection()
            reused = conn.sock is not None
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers:
                    conn.putheader(k, v)
                if send_length:
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body if body else None)
                resp = conn.getresponse()
                data = resp.read()
                return Response(resp.status, resp.reason, resp.getheaders(), data)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                # An idle keep-alive connection the upstream had closed: nothing reached it, so
                # one resend on a new connection is safe.
                if reused and attempt == 1:
                    continue
                raise UpstreamDown(f"the connection was closed: {e}") from e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise UpstreamDown(str(e) or type(e).__name__) from e
        raise AssertionError("unreachable")

    def send(self, r):
        if self.server.verbose:
            self.log_request(r.status)
        self.send_response_only(r.status, r.reason)
        length = None
        for k, v in r.headers:
            low = k.lower()
            if low == "content-length":
                length = v
            elif low not in HOP_BY_HOP:
                self.send_header(k, v)
        if self.command == "HEAD" or r.status in (204, 304) or r.status < 200:
            if length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
        else:
            self.send_header("Content-Length", str(len(r.body)))
            self.end_headers()
            self.wfile.write(r.body)

    def send_json(self, status, obj):
        self.send(synthetic(status, "application/json", obj))

    # -- dispatch ------------------------------------------------------------------------------

    def handle_any(self):
        try:
            body = self._read_body()
        except (ValueError, OSError) as e:
            self.close_connection = True
            self.send_json(400, {"error": f"fault_proxy could not read the request body: {e}"})
            return
        if self.path.startswith(CONTROL_PREFIX):
            self.control(body)
            return
        target = self.headers.get("X-Amz-Target")
        try:
            if target is None:
                self.s3(body)
            elif self.server.faults.refused(target):
                self.server.stats.op(target, refused=1)
                self.send_refusal(target)
                self.log(f"{target}: refused (LimitExceededException)")
            elif (text := self.server.faults.invalid_text(target, body)) is not None:
                # Firehose's name for an invalid request; DynamoDB's and Kinesis' is this one.
                code = ("InvalidArgumentException" if target.startswith("Firehose_")
                        else "ValidationException")
                self.server.stats.op(target, invalid=1)
                self.send_refusal(
                    target,
                    code,
                    "One or more parameter values were invalid "
                    f"(refused by fault_proxy: the request holds {text!r})",
                )
                self.log(f"{target}: refused as invalid ({code})")
            elif target in THROTTLE and self.server.faults.active():
                self.faulty(target, body)
            elif target == GET_RECORDS and self.server.faults.expire():
                self.server.stats.op(target, injected_expired=1)
                self.send_kinesis_error("ExpiredIteratorException", "Iterator expired (injected)")
                self.log(f"{target}: answered ExpiredIteratorException")
            else:
                self.counted(target, body)
        except UpstreamDown as e:
            self.server.stats.unreachable()
            self.send_json(
                502,
                {
                    "__type": "BadGateway",
                    "message": f"fault_proxy could not reach its upstream "
                    f"{self.server.upstream}: {e}; is the server running?",
                },
            )
        except Exception as e:  # a bug of the proxy: say so instead of hanging the client
            import traceback

            traceback.print_exc()
            self.close_connection = True
            self.send_json(500, {"__type": "FaultProxyError", "message": f"fault_proxy: {e!r}"})

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = handle_any

    def send_kinesis_error(self, code, message):
        """Answers as Kinesis answers a refused call: HTTP 400, the code in header and body."""
        r = synthetic(
            400, "application/x-amz-json-1.1", {"__type": code, "message": message}, crc=False
        )
        r.headers.append(("x-amzn-ErrorType", code))
        self.send(r)

    def send_refusal(self, target, code="LimitExceededException",
                     message="Rate exceeded (refused by fault_proxy)"):
        """Answers `target` HTTP 400 with error `code`, in its service's JSON protocol
        (DynamoDB's 1.0 with its CRC32 header, the others' 1.1)."""
        dynamodb = target.startswith("DynamoDB_")
        r = synthetic(
            400,
            "application/x-amz-json-1.0" if dynamodb else "application/x-amz-json-1.1",
            {"__type": code, "message": message},
            crc=dynamodb,
        )
        r.headers.append(("x-amzn-ErrorType", code))
        self.send(r)

    def control(self, body):
        srv = self.server
        name = self.path[len(CONTROL_PREFIX) :].split("?", 1)[0].rstrip("/")
        if name == "stats" and self.command == "GET":
            self.send_json(200, srv.stats.snapshot(srv.faults, srv.upstream))
        elif name == "config" and self.command == "GET":
            self.send_json(200, srv.faults.config())
        elif name == "config" and self.command == "POST":
            try:
                changes = json.loads(body or b"{}")
            except ValueError as e:
                self.send_json(400, {"error": f"the config body is not JSON ({e})"})
                return
            error = srv.faults.update(changes)
            if error:
                self.send_json(400, {"error": error})
            else:
                self.log(f"config now {srv.faults.config()}")
                self.send_json(200, srv.faults.config())
        elif name == "reset" and self.command == "POST":
            srv.stats.reset()
            self.send_json(200, {"reset": True})
        else:
            self.send_json(
                404,
                {
                    "error": f"no control endpoint {self.command} {self.path}; there are "
                    "GET /__fault_proxy/stats, GET|POST /__fault_proxy/config, "
                    "POST /__fault_proxy/reset"
                },
            )

    def s3(self, body):
        path, _, query = self.path.partition("?")
        kind = s3_kind(self.command, path, query)
        if self.server.faults.s3_write_refused(kind, path):
            self.server.stats.s3(kind, len(body), len(S3_SLOW_DOWN.body), False, refused=True)
            self.send(S3_SLOW_DOWN)
            self.log(f"S3 {kind} {path}: refused (503 SlowDown)")
            return
        r = self.forward(body)
        # Counted before answering, so a client that reads the stats right after its call sees it.
        self.server.stats.s3(kind, len(body), len(r.body), r.status >= 400)
        self.send(r)

    def counted(self, target, body):
        """Forwards unchanged, counting what the operation's answer or request says."""
        r = self.forward(body)
        delay = self.server.faults.put_delay() if target == PUT_RECORDS else 0.0
        if delay > 0:
            self.log(f"{target}: forwarded; holding the answer {delay} s")
            time.sleep(delay)
        ok = r.status < 300
        counts = {"error_responses": int(not ok)}
        if delay > 0:
            counts["delayed"] = 1
        try:
            if target == GET_RECORDS:
                counts["response_bytes"] = len(r.body)
                # Base64 data cannot hold a quote, so each record has exactly one such key.
                counts["records"] = r.body.count(b'"SequenceNumber"') if ok else 0
            elif target in THROTTLE:
                counts.update(count_call(target, json.loads(body), answer_of(r), 0))
        except (ValueError, KeyError, TypeError, AttributeError):
            counts["unparsed"] = 1
        # Counted before answering: a caller that gave up on a held answer has closed the
        # connection by then, and the call still happened.
        self.server.stats.op(target, **counts)
        self.send(r)

    # -- faults --------------------------------------------------------------------------------

    def faulty(self, target, body):
        try:
            req = json.loads(body)
        except ValueError:
            self.counted(target, body)  # not JSON (CBOR?): forwarded untouched
            return
        faults = self.server.faults
        if faults.throttle():
            status, code, content_type = THROTTLE[target]
            r = synthetic(
                status,
                content_type,
                {"__type": code, "message": "injected throttle"},
                crc=target == BATCH_WRITE_ITEM,
            )
            r.headers.append(("x-amzn-ErrorType", code))
            # Counted before answering (as everywhere here): a client's next attempt, or a test
            # reading the counts, may come the moment the answer is out.
            self.server.stats.op(target, throttled=1)
            self.send(r)
            self.log(f"{target}: throttled the whole call ({code})")
            return
        if target == BATCH_WRITE_ITEM:
            self.fail_batch_write(req, body)
        else:
            self.fail_entries(target, req, body)

    def fail_entries(self, target, req, body):
        """PutRecords, PutRecordBatch: forward the entries not picked to fail, answer for every
        entry in request order."""
        result_key, failed_key, _, _ = ENTRY_OPS[target]
        entries = req.get("Records") or []
        fail = self.server.faults.pick(len(entries))
        if not fail:
            self.counted(target, body)
            return
        keep = [e for i, e in enumerate(entries) if i not in fail]
        sent = self.forward_kept(
            target, req, "Records", keep, lambda a: len(a.get(result_key) or []) == len(keep)
        )
        if sent is None:
            return
        r, answer = sent
        upstream = iter(answer.get(result_key) or [])
        merged = [
            self.failed_entry(target) if i in fail else next(upstream) for i in range(len(entries))
        ]
        answer[result_key] = merged
        answer[failed_key] = sum(1 for m in merged if "ErrorCode" in m)
        if target == PUT_RECORD_BATCH:
            answer.setdefault("Encrypted", False)
        self.answer_merged(
            target, r, answer, req, len(fail), f"failed {len(fail)} of {len(entries)} entries"
        )

    def failed_entry(self, target):
        if target == PUT_RECORDS:
            return {"ErrorCode": self.server.faults.kinesis_error_code(), "ErrorMessage": INJECTED}
        return {"ErrorCode": "ServiceUnavailableException", "ErrorMessage": INJECTED}

    def fail_batch_write(self, req, body):
        """BatchWriteItem: forward the write requests not picked; the picked ones join the
        server's own UnprocessedItems."""
        items = req.get("RequestItems") or {}
        flat = [(table, w) for table, ws in items.items() for w in ws]
        fail = self.server.faults.pick(len(flat))
        if not fail:
            self.counted(BATCH_WRITE_ITEM, body)
            return
        keep, injected = {}, {}
        for i, (table, w) in enumerate(flat):
            (injected if i in fail else keep).setdefault(table, []).append(w)
        sent = self.forward_kept(BATCH_WRITE_ITEM, req, "RequestItems", keep, lambda a: True)
        if sent is None:
            return
        r, answer = sent
        unprocessed = answer.get("UnprocessedItems") or {}
        for table, ws in injected.items():
            unprocessed.setdefault(table, []).extend(ws)
        answer["UnprocessedItems"] = unprocessed
        self.answer_merged(
            BATCH_WRITE_ITEM, r, answer, req, len(fail),
            f"left {len(fail)} of {len(flat)} write requests unprocessed",
        )

    def forward_kept(self, target, req, field, kept, valid):
        """Forwards `req` with `field` narrowed to `kept`: (response, parsed answer), or
        (None, {}) when nothing is kept (the server is not called). An error answer of the
        server, or one `valid` refuses, is relayed to the client as it came: then None."""
        if not kept:
            return None, {}
        r = self.forward(_compact({**req, field: kept}))
        answer = answer_of(r)
        if answer is None or not valid(answer):
            self.server.stats.op(target, error_responses=1, **count_call(target, req, None, 0))
            self.send(r)
            return None
        return r, answer

    def answer_merged(self, target, r, answer, req, injected, what):
        """Sends `answer` in the server's response `r` (or a made-up one if it was not called)."""
        if r is None:
            content_type = THROTTLE[target][2]
            r = synthetic(200, content_type, answer, crc=target == BATCH_WRITE_ITEM)
        else:
            r = r.with_body(_compact(answer))
        self.server.stats.op(target, **count_call(target, req, answer, injected))
        self.send(r)
        self.log(f"{target}: {what}")


# ---------------------------------------------------------------------------------------------
# Command line


def loopback_address(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:0)")
    host = host.strip("[]")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{host!r} is not an IP address: give a loopback one such as 127.0.0.1"
        ) from None
    if not ip.is_loopback or ip.version != 4:
        raise argparse.ArgumentTypeError(
            f"{host} is not an IPv4 loopback address: the proxy injects faults in front of servers "
            "that accept any credentials, so it listens on 127.0.0.1 only"
        )
    return host, int(port)


def upstream_url(text):
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme != "http" or not parsed.hostname or parsed.path not in ("", "/"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an http://HOST:PORT URL (e.g. http://127.0.0.1:5000)"
        )
    return f"http://{parsed.netloc}"


def rate(text):
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share from 0 to 1 (e.g. 0.1)")
    return v


def write_atomically(path, text):
    tmp = os.path.join(
        os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.tmp"
    )
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Counting, fault-injecting HTTP proxy in front of one AWS-compatible server.",
    )
    p.add_argument("--listen", type=loopback_address, default=("127.0.0.1", 0),
                   help="loopback HOST:PORT to listen on (default 127.0.0.1:0, a free port)")
    p.add_argument("--upstream", type=upstream_url, required=True,
                   help="the server to forward to, e.g. http://127.0.0.1:5000")
    p.add_argument("--port-file", help="write the bound port here once listening (atomically)")
    p.add_argument("--fail-rate", type=rate, default=0.0,
                   help="share of the entries of each batch write to fail (default 0)")
    p.add_argument("--throttle-rate", type=rate, default=0.0,
                   help="share of batch-write calls answered with a throttling error (default 0)")
    p.add_argument("--expire-rate", type=rate, default=0.0,
                   help="share of GetRecords calls answered ExpiredIteratorException (default 0)")
    p.add_argument("--seed", type=int, default=None, help="seed of the fault choices")
    p.add_argument("--refuse", action="append", default=[], metavar="TARGET",
                   help="answer every call of this X-Amz-Target operation with "
                   "LimitExceededException (repeatable)")
    p.add_argument("--refuse-s3-writes", action="append", default=[], metavar="BUCKET/PREFIX",
                   help="answer every S3 write of a key under this path-style prefix with 503 "
                   "SlowDown (repeatable)")
    p.add_argument("--invalid-if-contains", action="append", default=[], metavar="TEXT",
                   help="answer a JSON-protocol call (DynamoDB, Firehose, Kinesis) whose request "
                   "body (or a Firehose record's decoded data) holds TEXT with "
                   "ValidationException (Firehose: InvalidArgumentException), as a service "
                   "answers an invalid item (repeatable)")
    p.add_argument("--delay-puts", type=int, default=0,
                   help="hold the answers of the first N PutRecords calls (after forwarding them)")
    p.add_argument("--delay-seconds", type=float, default=0.0,
                   help="how long --delay-puts holds each answer")
    p.add_argument("--stats-file", help="write the counters here as JSON when stopping")
    p.add_argument("--verbose", action="store_true",
                   help="log each request and each injected fault on stderr")
    args = p.parse_args(argv)

    faults = Faults(args.fail_rate, args.throttle_rate, args.seed, args.expire_rate, args.refuse,
                    args.delay_puts, args.delay_seconds, args.refuse_s3_writes,
                    args.invalid_if_contains)
    try:
        server = ProxyServer(args.listen, args.upstream, faults, args.verbose)
    except OSError as e:
        sys.exit(f"fault_proxy: cannot listen on {args.listen[0]}:{args.listen[1]}: {e}")
    port = server.server_address[1]

    def stop(signum, frame):
        # shutdown() waits for serve_forever to return, so it must run on another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.port_file:
        write_atomically(args.port_file, f"{port}\n")
    print(f"listening on 127.0.0.1:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        if args.stats_file:
            write_atomically(
                args.stats_file,
                json.dumps(server.stats.snapshot(faults, args.upstream), indent=2) + "\n",
            )
        server.server_close()


if __name__ == "__main__":
    main()
