#!/usr/bin/env python3
"""Self-test of scripts/ops/readback.py against a real moto_server on loopback.

    python3 scripts/testing/test_readback.py [-v]

Writes, with boto3, what shopstream would store for a small hand-made CSV (a Latin-1 row, an
exact duplicate row, a line without customer, a cancellation, a ragged row) into a DynamoDB table,
gzip NDJSON archive objects and a Firehose output object; checks that readback.py accepts it,
then that it exits 1 naming the sink when an item is changed or a line id is doubled, and 2 when
a table does not exist. Also checks the fixtures' ragged rows against tests/fixtures/README.md.
Fails (does not skip) without moto_server. About 5 s.
"""

import gzip
import json
import os
import subprocess
import sys
import tempfile
import unittest

import boto3

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in scripts/
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "ops"))
import readback  # noqa: E402
from test_fault_proxy import CREDENTIALS, start_moto, stop  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests", "fixtures")

HEADER = b"InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
ROWS = [
    # Latin-1 (as Excel on Windows writes it), a price with a trailing zero, a float customer id.
    '536365,85123A,"CAF\u00c9 HEART, \u00a32.55",6,2010-12-01 08:26:00,2.550,17850.0,United Kingdom\n'
    .encode("latin-1"),
    # The same row again: a second line (shopstream gives it its own id).
    '536365,85123A,"CAF\u00c9 HEART, \u00a32.55",6,2010-12-01 08:26:00,2.550,17850.0,United Kingdom\n'
    .encode("latin-1"),
    b"536366,22633,HAND WARMER UNION JACK,6,2010-12-01 08:28:00,1.85,,United Kingdom\n",
    b"C536379,D,Discount,-1,2010-12-01 09:41:00,27.50,14527,United Kingdom\n",
    # Seven fields: the comma before the quantity is lost (line 6 of the file).
    b"536381,21175,GIN + TONIC DIET METAL SIGN   2,12/1/10 9:41,2.1,15311,United Kingdom\n",
]
# What shopstream stores for those rows: (line id, invoice, stock code, quantity, price, customer).
STORED = [
    ("a" * 32, "536365", "85123A", 6, "2.55", 17850),
    ("b" * 32, "536365", "85123A", 6, "2.55", 17850),
    ("c" * 32, "536366", "22633", 6, "1.85", None),
    ("d" * 32, "C536379", "D", -1, "27.5", 14527),
]
REVENUE = "14.2"  # 2 x 6 x 2.55 + 6 x 1.85 - 27.5


def ndjson(rows):
    return b"".join(
        json.dumps({
            "line_id": i, "invoice_no": inv, "stock_code": sc, "description": "x",
            "quantity": q, "invoice_date": "2010-12-01T08:26:00", "unit_price": p,
            "customer_id": c, "country": "United Kingdom", "store_id": "demo",
            "ingested_at": "2026-01-01T00:00:00Z",
        }).encode() + b"\n"
        for i, inv, sc, q, p, c in rows
    )


class ReadbackTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.moto, cls.endpoint = start_moto()
        cls.workdir = tempfile.mkdtemp(prefix="readback-test-")
        cls.csv = os.path.join(cls.workdir, "input.csv.gz")
        with gzip.open(cls.csv, "wb") as f:
            f.write(HEADER + b"".join(ROWS))
        cls.dynamodb = boto3.client("dynamodb", endpoint_url=cls.endpoint, **CREDENTIALS)
        cls.s3 = boto3.client("s3", endpoint_url=cls.endpoint, **CREDENTIALS)

    @classmethod
    def tearDownClass(cls):
        stop(cls.moto)

    def setUp(self):
        """Fresh resources per test, holding exactly what shopstream would store."""
        self.table = f"invoices-{self._testMethodName[5:20].replace('_', '-')}"
        self.bucket = f"bkt-{self._testMethodName[5:20].replace('_', '-')}"
        self.dynamodb.create_table(
            TableName=self.table,
            KeySchema=[{"AttributeName": "InvoiceNo", "KeyType": "HASH"},
                       {"AttributeName": "LineId", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "InvoiceNo", "AttributeType": "S"},
                                  {"AttributeName": "LineId", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        for i, inv, sc, q, p, c in STORED:
            item = {"InvoiceNo": {"S": inv}, "LineId": {"S": i}, "StockCode": {"S": sc},
                    "Quantity": {"N": str(q)}, "UnitPrice": {"S": p},
                    "LineTotal": {"S": str(q * float(p))}, "Country": {"S": "United Kingdom"}}
            if c is not None:
                item["CustomerID"] = {"N": str(c)}
            self.dynamodb.put_item(TableName=self.table, Item=item)
        self.s3.create_bucket(Bucket=self.bucket)
        self.put("raw/dt=2026-01-01/shard=0/0001-0002.ndjson.gz", gzip.compress(ndjson(STORED[:2])))
        self.put("raw/dt=2026-01-01/shard=1/0001-0002.ndjson.gz", gzip.compress(ndjson(STORED[2:])))
        # Firehose delivered the first line twice (at least once).
        self.put("warehouse/2026/01/01/00/sales-1", ndjson(STORED + STORED[:1]))

    def put(self, key, body):
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)

    def readback(self, *extra):
        out = subprocess.run(
            [sys.executable, os.path.join(os.path.dirname(HERE), "ops", "readback.py"), "--endpoint", self.endpoint,
             "--bucket", self.bucket, "--invoices-table", self.table, "--input", self.csv, *extra],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"},
        )
        return out.returncode, out.stdout, out.stderr

    def test_matching_sinks_pass_with_duplicates_allowed_where_at_least_once(self):
        code, out, err = self.readback("--allow-duplicates", "firehose", "--json")
        self.assertEqual(code, 0, out + err)
        report = json.loads(out)
        self.assertTrue(report["ok"])
        inp = report["input"]
        self.assertEqual((inp["rows"], inp["lines"], inp["ragged"], inp["invalid"]), (5, 4, 1, 0))
        self.assertEqual(inp["ragged_rows"], [
            {"file": "input.csv.gz", "line": 6, "fields": 7, "header_fields": 8}])
        self.assertEqual(inp["revenue"], REVENUE)
        for name in ("dynamodb", "archive", "firehose"):
            s = report["sinks"][name]
            self.assertTrue(s["ok"], (name, s))
            self.assertEqual((s["distinct_line_ids"], s["revenue"]), (4, REVENUE), name)
        fh = report["sinks"]["firehose"]
        self.assertEqual((fh["items"], fh["duplicate_line_ids"]), (5, 1))
        self.assertEqual(fh["duplicate_examples"], ["a" * 32])
        self.assertEqual(report["sinks"]["archive"]["objects"], 2)

    def test_a_duplicate_fails_where_not_allowed(self):
        code, out, _ = self.readback()
        self.assertEqual(code, 1, out)
        self.assertIn("firehose (s3://", out)
        self.assertIn("1 line id(s) are stored more than once, e.g. " + "a" * 32, out)
        self.assertIn("--allow-duplicates firehose", out)
        self.assertIn("result: MISMATCH in firehose", out)

    def test_a_changed_item_fails_naming_the_sink_and_the_line(self):
        self.dynamodb.update_item(
            TableName=self.table, Key={"InvoiceNo": {"S": "536366"}, "LineId": {"S": "c" * 32}},
            UpdateExpression="SET Quantity = :q", ExpressionAttributeValues={":q": {"N": "7"}},
        )
        code, out, _ = self.readback("--allow-duplicates", "firehose")
        self.assertEqual(code, 1, out)
        self.assertIn("dynamodb (table invoices-", out)
        self.assertIn(
            "1 line(s) of the input are missing, e.g. invoice 536366 stock 22633 qty 6 "
            "price 1.85 no customer (x1)", out)
        self.assertIn("1 line(s) are not in the input, e.g. invoice 536366 stock 22633 qty 7", out)
        self.assertIn("result: MISMATCH in dynamodb\n", out)
        code, out, _ = self.readback("--allow-duplicates", "firehose", "--json")
        dyn = json.loads(out)["sinks"]["dynamodb"]
        self.assertEqual((dyn["missing"], dyn["extra"], dyn["ok"]), (1, 1, False))
        self.assertEqual(dyn["revenue"], "16.05")  # one more 1.85

    def test_a_missing_archive_object_fails(self):
        self.s3.delete_object(Bucket=self.bucket, Key="raw/dt=2026-01-01/shard=1/0001-0002.ndjson.gz")
        code, out, _ = self.readback("--allow-duplicates", "firehose", "--skip", "dynamodb")
        self.assertEqual(code, 1, out)
        self.assertIn("archive (s3://", out)
        self.assertIn("2 line(s) of the input are missing", out)
        self.assertNotIn("dynamodb", out)

    def test_an_unreadable_table_is_exit_2(self):
        code, out, err = self.readback("--invoices-table", "no-such-table")
        self.assertEqual(code, 2, out + err)
        self.assertIn("cannot read DynamoDB table no-such-table: ResourceNotFoundException", err)

    def test_the_fixtures_ragged_rows_are_those_the_readme_names(self):
        e = readback.Expected()
        e.read(os.path.join(FIXTURES, "online-retail-sample-182.csv"))
        self.assertEqual([r["line"] for r in e.ragged], [121, 172, 175, 179])
        self.assertEqual(sum(e.lines.values()), 179)
        utf8, latin1 = readback.Expected(), readback.Expected()
        utf8.read(os.path.join(FIXTURES, "online-retail-sample-182-accents-utf8.csv"))
        latin1.read(os.path.join(FIXTURES, "online-retail-sample-182-accents-latin1.csv"))
        self.assertEqual(utf8.lines, latin1.lines)
        iso = readback.Expected()
        iso.read(os.path.join(FIXTURES, "online-retail-sample-873-iso.csv"))
        self.assertEqual((sum(iso.lines.values()), iso.ragged_count), (873, 0))
        # 17850.0 is customer 17850; an empty cell is no customer.
        self.assertIn(17850, {line.customer_id for line in iso.lines})
        self.assertIn(None, {line.customer_id for line in iso.lines})


if __name__ == "__main__":
    unittest.main()
