#!/usr/bin/env python3
"""Independent read-back of shopstream's AWS sinks, compared with the input file(s).

    python3 scripts/ops/readback.py --endpoint http://127.0.0.1:5000 --bucket B --invoices-table T \\
        --input tests/fixtures/online-retail-sample-873-iso.csv [--input MORE.csv.gz ...] \\
        [--archive-prefix raw/] [--firehose-prefix warehouse/] [--region us-east-1] \\
        [--s3-endpoint URL] [--dynamodb-endpoint URL] [--allow-duplicates firehose] \\
        [--skip SINK] [--json]

It computes, from the input CSV files, the lines shopstream accepts, and reads with boto3 what
each sink holds:

  dynamodb  every item of the invoices table (Scan, strongly consistent, all pages)
  archive   every object under s3://BUCKET/ARCHIVE_PREFIX (gzip NDJSON, one line per object line)
  firehose  every object under s3://BUCKET/FIREHOSE_PREFIX (NDJSON, gzip or not), what Firehose
            delivered (to S3 here; to Redshift in production through S3 too)

A line is compared by its content: (InvoiceNo, StockCode, Quantity, UnitPrice as an exact
normalized decimal, CustomerID or none). The input and every sink must hold the same multiset of
these; each sink's line ids must be distinct, except in a sink named with --allow-duplicates
(Firehose delivers at least once: a line id seen twice there is reported, counted once, and does
not fail the check). Revenue (sum of Quantity x UnitPrice) is exact: money is never a float here.

The input is read as shopstream reads it: the header names the columns (any order, dataset names
or snake_case, any case; unknown columns ignored), the delimiter (comma, semicolon or tab) comes
from the header, each row is UTF-8 if all its fields are, else Windows-1252 (a superset of
ISO-8859-1); .gz files are gunzipped. A row whose field count differs from the header's is
skipped and listed, as shopstream rejects it; so is a row whose InvoiceNo, StockCode, Quantity,
UnitPrice, CustomerID or Country shopstream would refuse (dates are not parsed here: a row
rejected for its date alone shows up as missing from every sink).

Exit status: 0 when every sink matches the input, 1 when one does not (the summary names the sink
and what differs), 2 when the input or a sink cannot be read (the message says which).
--json prints the report as JSON instead (see `report_json` for its shape).
"""

import argparse
import collections
import concurrent.futures
import csv
import decimal
import gzip
import io
import json
import os
import re
import sys
from decimal import Decimal

SINKS = ("dynamodb", "archive", "firehose")
EXAMPLES = 5
LISTED_ROWS = 100

# Column names as shopstream knows them (src/model/fields.rs), by field.
COLUMNS = {
    "InvoiceNo": "invoice_no",
    "StockCode": "stock_code",
    "Description": "description",
    "Quantity": "quantity",
    "InvoiceDate": "invoice_date",
    "UnitPrice": "unit_price",
    "CustomerID": "customer_id",
    "Country": "country",
    "LineNo": "line_no",
}
REQUIRED = ("InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "Country")
MISSING_MARKERS = ("", "NaN", "nan", "NA")
MAX_PRICE_SCALE = 6
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")

decimal.getcontext().prec = 60  # sums of a billion lines stay exact


class ReadError(Exception):
    """The input or a sink could not be read; the message says which and why."""


# ---------------------------------------------------------------------------------------------
# Lines


class Line(collections.namedtuple("Line", "invoice_no stock_code quantity unit_price customer_id")):
    """The content of one line that every sink keeps."""

    __slots__ = ()

    def show(self):
        customer = "no customer" if self.customer_id is None else f"customer {self.customer_id}"
        return (
            f"invoice {self.invoice_no} stock {self.stock_code} qty {self.quantity} "
            f"price {money(self.unit_price)} {customer}"
        )

    def as_json(self):
        return {
            "invoice_no": self.invoice_no,
            "stock_code": self.stock_code,
            "quantity": self.quantity,
            "unit_price": money(self.unit_price),
            "customer_id": self.customer_id,
        }


def money(d):
    """An exact decimal as plain text, without trailing zeros or exponent."""
    text = format(d.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def exact_decimal(text):
    if not NUMBER.fullmatch(text):
        raise ValueError(f"{text!r} is not a decimal number")
    return Decimal(text)


def whole(text):
    """A whole number written as 6, -2, 6.0 or 1.785e4 (as shopstream accepts), else ValueError."""
    d = exact_decimal(text)
    if d != d.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number")
    return int(d)


def price(text):
    d = exact_decimal(text).normalize()
    if -d.as_tuple().exponent > MAX_PRICE_SCALE:
        raise ValueError(f"{text!r} has more than {MAX_PRICE_SCALE} decimal places")
    return d


def given(value):
    """A field's text without surrounding blanks, or None when it is one of the missing markers."""
    if value is None:
        return None
    value = value.strip()
    return None if value in MISSING_MARKERS else value


def line_from_fields(f):
    """The Line of one input row's fields (by dataset name), or ValueError naming the field."""
    for name in REQUIRED:
        if given(f.get(name)) is None:
            raise ValueError(f"{name} is missing")
    invoice_no = given(f["InvoiceNo"])
    digits = invoice_no.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    if len(invoice_no) > 20 or not digits.isdigit() or not digits.isascii():
        raise ValueError(f"InvoiceNo {invoice_no!r} is not letters then digits")
    try:
        quantity = whole(given(f["Quantity"]))
    except ValueError as e:
        raise ValueError(f"Quantity: {e}") from None
    try:
        unit_price = price(given(f["UnitPrice"]))
    except ValueError as e:
        raise ValueError(f"UnitPrice: {e}") from None
    customer = given(f.get("CustomerID"))
    if customer is not None:
        try:
            customer = whole(customer)
        except ValueError as e:
            raise ValueError(f"CustomerID: {e}") from None
        if customer < 0:
            raise ValueError(f"CustomerID {customer} is negative")
    return Line(invoice_no, given(f["StockCode"]), quantity, unit_price, customer)


# ---------------------------------------------------------------------------------------------
# Input


def read_bytes(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ReadError(f"cannot read --input {path}: {e.strerror}") from None
    if path.endswith(".gz") or data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise ReadError(f"--input {path} is not valid gzip: {e}") from None
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


def detect_delimiter(text):
    """The most frequent of comma, semicolon and tab outside quotes in the header; comma on a tie."""
    header = text.lstrip().split("\n", 1)[0]
    counts = {",": 0, ";": 0, "\t": 0}
    quoted = False
    for ch in header:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in counts:
            counts[ch] += 1
    return max((",", ";", "\t"), key=lambda c: (counts[c], c == ","))


def decode_row(raw_fields, mapped):
    """Text of each field: UTF-8 when every mapped field is, else Windows-1252 (bytes Windows-1252
    leaves undefined read as ISO-8859-1, as shopstream's decoder does)."""
    as_bytes = [field.encode("latin-1") for field in raw_fields]
    try:
        for i in mapped:
            as_bytes[i].decode("utf-8")
        return [b.decode("utf-8", errors="replace") for b in as_bytes]
    except UnicodeDecodeError:
        return ["".join(bytes([c]).decode("cp1252", errors="ignore") or chr(c) for c in b)
                for b in as_bytes]


class Expected:
    """What the input files say the sinks must hold."""

    def __init__(self):
        self.files = []
        self.rows = 0
        self.lines = collections.Counter()
        self.revenue = Decimal(0)
        self.ragged = []  # {"file", "line", "fields", "header_fields"}
        self.invalid = []  # {"file", "line", "reason"}
        self.ragged_count = 0
        self.invalid_count = 0

    def read(self, path):
        self.files.append(path)
        # Latin-1 maps every byte to one character, so the csv module sees the original bytes and
        # each row is decoded on its own afterwards.
        text = read_bytes(path).decode("latin-1")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=detect_delimiter(text))
        header = next((row for row in reader if row), None)
        if header is None:
            raise ReadError(f"--input {path} has no header row")
        header = decode_row(header, range(len(header)))
        by_name = {}
        for name, snake in COLUMNS.items():
            for i, h in enumerate(header):
                if h.strip().lower() in (name.lower(), snake):
                    by_name[name] = i
        missing = [n for n in REQUIRED if n not in by_name]
        if missing:
            raise ReadError(
                f"--input {path}: the header lacks {', '.join(missing)} "
                f"(found {', '.join(h.strip() for h in header)})"
            )
        mapped = sorted(by_name.values())
        name = os.path.basename(path)
        for row in reader:
            if not row:
                continue  # a blank line, skipped by shopstream's reader too
            self.rows += 1
            if len(row) != len(header):
                self.ragged_count += 1
                if len(self.ragged) < LISTED_ROWS:
                    self.ragged.append({"file": name, "line": reader.line_num,
                                        "fields": len(row), "header_fields": len(header)})
                continue
            fields = decode_row(row, mapped)
            try:
                line = line_from_fields({n: fields[i] for n, i in by_name.items()})
            except ValueError as e:
                self.invalid_count += 1
                if len(self.invalid) < LISTED_ROWS:
                    self.invalid.append({"file": name, "line": reader.line_num, "reason": str(e)})
                continue
            self.lines[line] += 1
            self.revenue += line.quantity * line.unit_price


# ---------------------------------------------------------------------------------------------
# Sinks


class SinkContent:
    """What one sink holds: its lines, by line id, and what could not be read."""

    def __init__(self, name, source):
        self.name = name
        self.source = source
        self.objects = None
        self.by_id = collections.defaultdict(list)  # line id -> [Line, ...]
        self.unreadable = []

    def add(self, line_id, line):
        self.by_id[line_id].append(line)

    def bad(self, where, why):
        if len(self.unreadable) < LISTED_ROWS:
            self.unreadable.append(f"{where}: {why}")


def line_from_json(obj):
    """The Line of one NDJSON line of the archive or the Firehose output."""
    customer = obj.get("customer_id")
    return Line(
        str(obj["invoice_no"]),
        str(obj["stock_code"]),
        int(obj["quantity"]),
        Decimal(str(obj["unit_price"])).normalize(),
        None if customer is None else int(customer),
    )


def line_from_item(item):
    """The Line of one DynamoDB item (attribute names of src/store/operational/dynamodb.rs)."""
    customer = item.get("CustomerID")
    return Line(
        item["InvoiceNo"]["S"],
        item["StockCode"]["S"],
        whole(item["Quantity"]["N"]),
        Decimal(item["UnitPrice"]["S"]).normalize(),
        None if customer is None else whole(customer["N"]),
    )


def client_error(e, what):
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return ReadError(f"cannot read {what}: {err.get('Code')}: {err.get('Message')}")
    if isinstance(e, BotoCoreError):
        return ReadError(f"cannot read {what}: {e}")
    return e


def read_dynamodb(dynamodb, table):
    sink = SinkContent("dynamodb", f"table {table}")
    try:
        pages = dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
        for page in pages:
            for item in page["Items"]:
                line_id = item.get("LineId", {}).get("S", "<no LineId>")
                try:
                    sink.add(line_id, line_from_item(item))
                except (KeyError, ValueError, decimal.InvalidOperation) as e:
                    sink.bad(f"item {item.get('InvoiceNo', {}).get('S')}/{line_id}",
                             f"bad or missing {e}")
    except Exception as e:
        raise client_error(e, f"DynamoDB table {table}") from None
    return sink


def read_objects(s3, bucket, prefix, name):
    """Every NDJSON line of every object under `prefix`, gunzipped when gzip."""
    sink = SinkContent(name, f"s3://{bucket}/{prefix}")
    try:
        keys = [
            obj["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
        ]

        def fetch(key):
            return key, s3.get_object(Bucket=bucket, Key=key)["Body"].read()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(fetch, keys))
    except Exception as e:
        raise client_error(e, f"s3://{bucket}/{prefix}") from None
    sink.objects = len(keys)
    for key, body in bodies:
        if body[:2] == b"\x1f\x8b":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError) as e:
                sink.bad(key, f"not valid gzip ({e})")
                continue
        for n, raw in enumerate(body.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw, parse_float=Decimal)
                sink.add(str(obj["line_id"]), line_from_json(obj))
            except (ValueError, KeyError, TypeError, decimal.InvalidOperation) as e:
                sink.bad(f"{key} line {n}", f"{type(e).__name__}: {e}")
    return sink


# ---------------------------------------------------------------------------------------------
# Comparison


def compare(sink, expected, duplicates_allowed):
    """The per-sink report (see `report_json`)."""
    items = sum(len(v) for v in sink.by_id.values())
    dup_ids = {i: v for i, v in sink.by_id.items() if len(v) > 1}
    if duplicates_allowed:
        counted = collections.Counter(v[0] for v in sink.by_id.values())
    else:
        counted = collections.Counter(line for v in sink.by_id.values() for line in v)
    revenue = sum((line.quantity * line.unit_price * n for line, n in counted.items()), Decimal(0))
    missing = expected.lines - counted
    extra = counted - expected.lines
    conflicting = [i for i, v in dup_ids.items() if len(set(v)) > 1]
    problems = []
    if missing:
        problems.append(
            f"{sum(missing.values())} line(s) of the input are missing, e.g. "
            + "; ".join(f"{line.show()} (x{n})" for line, n in missing.most_common(EXAMPLES))
        )
    if extra:
        problems.append(
            f"{sum(extra.values())} line(s) are not in the input, e.g. "
            + "; ".join(f"{line.show()} (x{n})" for line, n in extra.most_common(EXAMPLES))
        )
    if dup_ids and not duplicates_allowed:
        problems.append(
            f"{len(dup_ids)} line id(s) are stored more than once, e.g. "
            + ", ".join(sorted(dup_ids)[:EXAMPLES])
            + f" (pass --allow-duplicates {sink.name} if this sink is at-least-once)"
        )
    if conflicting:
        problems.append(
            f"{len(conflicting)} line id(s) hold different contents in their copies, e.g. "
            + ", ".join(sorted(conflicting)[:EXAMPLES])
        )
    if sink.unreadable:
        problems.append(
            f"{len(sink.unreadable)} record(s) could not be read, e.g. "
            + "; ".join(sink.unreadable[:EXAMPLES])
        )
    return {
        "source": sink.source,
        "objects": sink.objects,
        "items": items,
        "distinct_line_ids": len(sink.by_id),
        "duplicate_line_ids": len(dup_ids),
        "duplicate_copies": sum(len(v) - 1 for v in dup_ids.values()),
        "duplicates_allowed": duplicates_allowed,
        "revenue": money(revenue),
        "missing": sum(missing.values()),
        "extra": sum(extra.values()),
        "missing_examples": [dict(l.as_json(), count=n) for l, n in missing.most_common(EXAMPLES)],
        "extra_examples": [dict(l.as_json(), count=n) for l, n in extra.most_common(EXAMPLES)],
        "duplicate_examples": sorted(dup_ids)[:EXAMPLES],
        "unreadable": len(sink.unreadable),
        "ok": not problems,
        "problems": problems,
    }


def report_json(expected, sinks):
    """The whole report:

    {
      "ok": true,                          every sink matches the input
      "input": {
        "files": ["a.csv"], "rows": 873,   data rows read (header and blank lines excluded)
        "lines": 869,                      rows shopstream accepts: what every sink must hold
        "revenue": "12345.67",             exact, as text
        "ragged": 4, "ragged_rows": [{"file", "line", "fields", "header_fields"}],  (first 100)
        "invalid": 0, "invalid_rows": [{"file", "line", "reason"}]                  (first 100)
      },
      "sinks": {
        "dynamodb" | "archive" | "firehose": {
          "source": "table T" | "s3://B/raw/", "objects": 12 (null for the table),
          "items": 870,                    lines read, copies included
          "distinct_line_ids": 869, "duplicate_line_ids": 1, "duplicate_copies": 1,
          "duplicates_allowed": true,
          "revenue": "12345.67",           over the lines compared (one per id where allowed)
          "missing": 0, "extra": 0,        lines of the input not in the sink, and the reverse
          "missing_examples": [{"invoice_no", "stock_code", "quantity", "unit_price",
                                "customer_id", "count"}], "extra_examples": [...],   (first 5)
          "duplicate_examples": ["<line id>"], "unreadable": 0,
          "ok": true, "problems": ["human sentences"]
        }
      }
    }
    """
    return {
        "ok": all(s["ok"] for s in sinks.values()),
        "input": {
            "files": expected.files,
            "rows": expected.rows,
            "lines": sum(expected.lines.values()),
            "revenue": money(expected.revenue),
            "ragged": expected.ragged_count,
            "ragged_rows": expected.ragged,
            "invalid": expected.invalid_count,
            "invalid_rows": expected.invalid,
        },
        "sinks": sinks,
    }


def human(report):
    inp = report["input"]
    out = [
        f"input: {len(inp['files'])} file(s), {inp['rows']} rows: {inp['lines']} lines to find "
        f"(revenue {inp['revenue']}), {inp['ragged']} ragged and {inp['invalid']} invalid rows "
        "skipped"
    ]
    for r in inp["ragged_rows"][:20]:
        out.append(f"  ragged: {r['file']} line {r['line']}: {r['fields']} fields, the header has "
                   f"{r['header_fields']}")
    for r in inp["invalid_rows"][:20]:
        out.append(f"  invalid: {r['file']} line {r['line']}: {r['reason']}")
    for name, s in report["sinks"].items():
        objects = f", {s['objects']} objects" if s["objects"] is not None else ""
        dups = ""
        if s["duplicate_line_ids"]:
            dups = (f", {s['duplicate_line_ids']} ids more than once"
                    + (" (allowed)" if s["duplicates_allowed"] else ""))
        verdict = "OK" if s["ok"] else "MISMATCH"
        out.append(
            f"{name} ({s['source']}{objects}): {s['items']} lines, {s['distinct_line_ids']} line "
            f"ids{dups}, revenue {s['revenue']}: {verdict}"
        )
        out += [f"  - {p}" for p in s["problems"]]
    bad = [n for n, s in report["sinks"].items() if not s["ok"]]
    out.append("result: every sink matches the input" if not bad
               else f"result: MISMATCH in {', '.join(bad)}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Read back shopstream's DynamoDB table, S3 archive and Firehose output "
        "with boto3 and compare them to the input CSV file(s).",
    )
    p.add_argument("--endpoint", help="endpoint of every service (e.g. http://127.0.0.1:5000); "
                   "default: AWS's own")
    p.add_argument("--s3-endpoint", help="endpoint of S3 only (overrides --endpoint)")
    p.add_argument("--dynamodb-endpoint", help="endpoint of DynamoDB only (overrides --endpoint)")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--bucket", help="the bucket of the archive and the Firehose output")
    p.add_argument("--invoices-table", help="the DynamoDB invoices table")
    p.add_argument("--archive-prefix", default="raw/")
    p.add_argument("--firehose-prefix", default="warehouse/")
    p.add_argument("--input", action="append", required=True, metavar="FILE.csv[.gz]",
                   help="an input file (repeatable)")
    p.add_argument("--allow-duplicates", action="append", default=[], choices=SINKS,
                   metavar="SINK", help="a sink that may hold a line twice (at least once): "
                   f"{', '.join(SINKS)}; repeatable")
    p.add_argument("--skip", action="append", default=[], choices=SINKS, metavar="SINK",
                   help="a sink not to check; repeatable")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)

    checked = [s for s in SINKS if s not in args.skip]
    if not checked:
        p.error("every sink is skipped: nothing to check")
    if "dynamodb" in checked and not args.invoices_table:
        p.error("--invoices-table is required to check dynamodb (or pass --skip dynamodb)")
    if ("archive" in checked or "firehose" in checked) and not args.bucket:
        p.error("--bucket is required to check the archive and firehose (or --skip them)")

    try:
        expected = Expected()
        for path in args.input:
            expected.read(path)

        import boto3
        from botocore.config import Config

        cfg = Config(retries={"total_max_attempts": 5, "mode": "standard"},
                     s3={"addressing_style": "path"}, max_pool_connections=16)
        session = boto3.session.Session(region_name=args.region)
        if session.get_credentials() is None and (
            args.endpoint or args.s3_endpoint or args.dynamodb_endpoint
        ):
            # A local server accepts any credentials; AWS itself needs real ones.
            session = boto3.session.Session(
                region_name=args.region, aws_access_key_id="test", aws_secret_access_key="test"
            )
        sinks = {}
        if "dynamodb" in checked:
            dynamodb = session.client(
                "dynamodb", endpoint_url=args.dynamodb_endpoint or args.endpoint, config=cfg
            )
            sinks["dynamodb"] = compare(
                read_dynamodb(dynamodb, args.invoices_table), expected,
                "dynamodb" in args.allow_duplicates,
            )
        s3 = None
        for name, prefix in (("archive", args.archive_prefix), ("firehose", args.firehose_prefix)):
            if name not in checked:
                continue
            s3 = s3 or session.client("s3", endpoint_url=args.s3_endpoint or args.endpoint,
                                      config=cfg)
            sinks[name] = compare(read_objects(s3, args.bucket, prefix, name), expected,
                                  name in args.allow_duplicates)
    except ReadError as e:
        print(f"readback: {e}", file=sys.stderr)
        return 2

    report = report_json(expected, sinks)
    print(json.dumps(report, indent=2) if args.json else human(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
