#!/usr/bin/env python3
"""Self-test of scripts/testing/fault_proxy.py against a real moto_server on loopback.

    python3 scripts/testing/test_fault_proxy.py [-v]

Starts moto_server and kinesalite (`scripts/local/aws-local.sh install` installs both) and the proxy
on free 127.0.0.1 ports, sends the three batch writes shopstream makes through the proxy with boto3 (no
SDK retries, so the proxy's raw answers are seen), and checks the merged answers against what
the server really stored, the throttling answers, the counters, the S3 request kinds and the
control endpoints; and the proxy in front of kinesalite, whose SplitShard keeps the parent's
records. Nothing is skipped: without moto_server or kinesalite the test fails. About 10 s.
"""

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = os.path.dirname(os.path.abspath(__file__))
PROXY = os.path.join(HERE, "fault_proxy.py")
CREDENTIALS = dict(region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url, proc, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before answering {url}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered {url} within {seconds} s")


def start_moto():
    """moto_server on a free loopback port: (process, endpoint)."""
    if shutil.which("moto_server") is None:
        raise RuntimeError("moto_server is not on PATH: run `scripts/local/aws-local.sh install` first")
    port = free_port()
    proc = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    wait_for_http(endpoint + "/moto-api/", proc)
    return proc, endpoint


def start_proxy(upstream, workdir, *args):
    """The proxy in front of `upstream`: (process, endpoint, stats file)."""
    port_file = os.path.join(workdir, f"proxy-{time.monotonic_ns()}.port")
    stats_file = port_file.replace(".port", ".stats.json")
    proc = subprocess.Popen(
        [sys.executable, PROXY, "--upstream", upstream, "--port-file", port_file,
         "--stats-file", stats_file, *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    proc.stdout.close()
    if not line.startswith("listening on 127.0.0.1:"):
        proc.kill()
        raise RuntimeError(f"the proxy did not start: {line!r}")
    port = int(line.rsplit(":", 1)[1])
    with open(port_file) as f:
        assert int(f.read()) == port, "the port file and stdout disagree"
    return proc, f"http://127.0.0.1:{port}", stats_file


def start_kinesalite():
    """scripts/local/kinesalite/server.js on a free loopback port: (process, endpoint)."""
    server = os.path.join(os.path.dirname(HERE), "local", "kinesalite", "server.js")
    if shutil.which("node") is None or not os.path.isdir(
        os.path.join(os.path.dirname(HERE), "local", "kinesalite", "node_modules", "kinesalite")
    ):
        raise RuntimeError("kinesalite is not installed: run `scripts/local/aws-local.sh install` first")
    proc = subprocess.Popen(["node", server, "0"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    proc.stdout.close()
    if not line.startswith("listening on 127.0.0.1:"):
        proc.kill()
        raise RuntimeError(f"kinesalite did not start: {line!r}")
    return proc, "http://" + line.split()[-1]


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_json(method, url, body=None):
    """(status, parsed JSON body) of a plain HTTP request."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


class S3KindTest(unittest.TestCase):
    def test_the_sdk_operation_key_does_not_hide_the_operation(self):
        sys.path.insert(0, HERE)
        sys.dont_write_bytecode = True
        from fault_proxy import s3_kind

        # The Rust SDK sends PutObject as `PUT /bucket/key?x-id=PutObject`.
        self.assertEqual(s3_kind("PUT", "/b/raw/k.gz", "x-id=PutObject"), "PutObject")
        self.assertEqual(s3_kind("GET", "/b/raw/k.gz", "x-id=GetObject"), "GetObject")
        self.assertEqual(
            s3_kind("PUT", "/b/k", "partNumber=1&uploadId=u&x-id=UploadPart"), "UploadPart"
        )
        self.assertEqual(s3_kind("PUT", "/b/k", "tagging"), "other")


class FaultProxyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="fault-proxy-test-")
        cls.moto, cls.moto_endpoint = start_moto()
        cls.proxy, cls.endpoint, cls.stats_file = start_proxy(
            cls.moto_endpoint, cls.workdir, "--seed", "7"
        )
        # total_max_attempts counts the first call; botocore's max_attempts counts only retries.
        cfg = Config(retries={"total_max_attempts": 1, "mode": "standard"})
        cls.kinesis = cls.client("kinesis", cfg)
        cls.dynamodb = cls.client("dynamodb", cfg)
        cls.firehose = cls.client("firehose", cfg)
        cls.s3 = cls.client("s3", cfg)
        # Read-backs go straight to moto, so they are not counted.
        cls.direct_kinesis = boto3.client("kinesis", endpoint_url=cls.moto_endpoint, **CREDENTIALS)
        cls.direct_dynamodb = boto3.client(
            "dynamodb", endpoint_url=cls.moto_endpoint, **CREDENTIALS
        )
        cls.direct_s3 = boto3.client("s3", endpoint_url=cls.moto_endpoint, **CREDENTIALS)

    @classmethod
    def tearDownClass(cls):
        stop(cls.proxy)
        stop(cls.moto)
        shutil.rmtree(cls.workdir, ignore_errors=True)

    @classmethod
    def client(cls, service, config):
        return boto3.client(service, endpoint_url=cls.endpoint, config=config, **CREDENTIALS)

    def setUp(self):
        self.configure(fail_rate=0, throttle_rate=0, expire_rate=0, refuse=[], refuse_s3_writes=[],
                       invalid_if_contains=[])
        status, _ = http_json("POST", self.endpoint + "/__fault_proxy/reset")
        self.assertEqual(status, 200)

    def configure(self, **rates):
        status, body = http_json("POST", self.endpoint + "/__fault_proxy/config", rates)
        self.assertEqual(status, 200, body)

    def stats(self):
        status, body = http_json("GET", self.endpoint + "/__fault_proxy/stats")
        self.assertEqual(status, 200)
        return body

    # -- helpers -------------------------------------------------------------------------------

    def stream(self, name, shards=1):
        self.direct_kinesis.create_stream(StreamName=name, ShardCount=shards)
        return name

    def stream_data(self, name):
        """Every record's data in the stream, by shard, from the start."""
        out = []
        for shard in self.direct_kinesis.list_shards(StreamName=name)["Shards"]:
            it = self.direct_kinesis.get_shard_iterator(
                StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            while it:
                page = self.direct_kinesis.get_records(ShardIterator=it, Limit=10000)
                out += [r["Data"] for r in page["Records"]]
                if not page["Records"]:
                    break
                it = page.get("NextShardIterator")
        return out

    def table(self, name):
        self.direct_dynamodb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        return name

    def table_keys(self, name):
        items = self.direct_dynamodb.scan(TableName=name, ConsistentRead=True)["Items"]
        return sorted(i["k"]["S"] for i in items)

    def delivery_stream(self, name, bucket):
        self.direct_s3.create_bucket(Bucket=bucket)
        firehose = boto3.client("firehose", endpoint_url=self.moto_endpoint, **CREDENTIALS)
        firehose.create_delivery_stream(
            DeliveryStreamName=name,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": "arn:aws:iam::123456789012:role/firehose-local",
                "BucketARN": f"arn:aws:s3:::{bucket}",
                "Prefix": "warehouse/",
                "CompressionFormat": "UNCOMPRESSED",
            },
        )

    def delivered(self, bucket):
        """The concatenated bodies of every object under warehouse/ (moto delivers at once)."""
        out = b""
        listing = self.direct_s3.list_objects_v2(Bucket=bucket, Prefix="warehouse/")
        for obj in listing.get("Contents", []):
            out += self.direct_s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        return out

    # -- tests ---------------------------------------------------------------------------------

    def test_get_records_can_be_answered_with_an_expired_iterator(self):
        name = self.stream("expire")
        shard = self.kinesis.list_shards(StreamName=name)["Shards"][0]["ShardId"]
        it = self.kinesis.get_shard_iterator(
            StreamName=name, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        self.configure(expire_rate=1)
        with self.assertRaises(ClientError) as e:
            self.kinesis.get_records(ShardIterator=it)
        self.assertEqual(e.exception.response["Error"]["Code"], "ExpiredIteratorException")
        self.configure(expire_rate=0)
        self.assertEqual(self.kinesis.get_records(ShardIterator=it)["Records"], [])
        ops = self.stats()["operations"]["Kinesis_20131202.GetRecords"]
        self.assertEqual((ops["calls"], ops["injected_expired"]), (2, 1))

    def test_a_refused_operation_is_answered_limit_exceeded_until_lifted(self):
        name = self.stream("refuse")
        self.configure(refuse=["Kinesis_20131202.ListShards"])
        with self.assertRaises(ClientError) as e:
            self.kinesis.list_shards(StreamName=name)
        self.assertEqual(e.exception.response["Error"]["Code"], "LimitExceededException")
        # Other operations pass.
        self.assertEqual(
            self.kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
                "StreamName"
            ],
            name,
        )
        self.configure(refuse=[])
        self.assertEqual(len(self.kinesis.list_shards(StreamName=name)["Shards"]), 1)
        ops = self.stats()["operations"]["Kinesis_20131202.ListShards"]
        self.assertEqual((ops["calls"], ops["refused"]), (2, 1))
        status, body = http_json(
            "POST", self.endpoint + "/__fault_proxy/config", {"refuse": "ListShards"}
        )
        self.assertEqual(status, 400)
        self.assertIn("refuse", body["error"])

    def test_a_refused_dynamodb_call_is_answered_in_dynamodb_json(self):
        t = self.table("refused")
        self.configure(refuse=["DynamoDB_20120810.BatchWriteItem"])
        with self.assertRaises(ClientError) as e:
            self.dynamodb.batch_write_item(
                RequestItems={t: [{"PutRequest": {"Item": {"k": {"S": "a"}}}}]}
            )
        err = e.exception.response
        self.assertEqual(err["Error"]["Code"], "LimitExceededException")
        self.assertEqual(
            err["ResponseMetadata"]["HTTPHeaders"]["content-type"], "application/x-amz-json-1.0"
        )
        self.assertEqual(self.table_keys(t), [])

    def test_a_dynamodb_write_holding_the_text_is_refused_as_invalid(self):
        t = self.table("invalid")
        self.configure(invalid_if_contains=["POISON PILL"])
        with self.assertRaises(ClientError) as e:
            self.dynamodb.batch_write_item(
                RequestItems={t: [
                    {"PutRequest": {"Item": {"k": {"S": "a"}}}},
                    {"PutRequest": {"Item": {"k": {"S": "b"}, "d": {"S": "POISON PILL MUG"}}}},
                ]}
            )
        err = e.exception.response
        self.assertEqual(err["Error"]["Code"], "ValidationException")
        self.assertIn("POISON PILL", err["Error"]["Message"])
        self.assertEqual(self.table_keys(t), [])
        # A call without the text goes through.
        self.dynamodb.batch_write_item(
            RequestItems={t: [{"PutRequest": {"Item": {"k": {"S": "a"}}}}]}
        )
        self.assertEqual(self.table_keys(t), ["a"])
        ops = self.stats()["operations"]["DynamoDB_20120810.BatchWriteItem"]
        self.assertEqual((ops["calls"], ops["invalid"]), (2, 1))

    def test_s3_writes_under_a_refused_prefix_are_answered_slow_down_until_lifted(self):
        self.direct_s3.create_bucket(Bucket="slow")
        self.direct_s3.put_object(Bucket="slow", Key="raw/old", Body=b"old")
        self.configure(refuse_s3_writes=["slow/raw/"])
        for write in (
            lambda: self.s3.put_object(Bucket="slow", Key="raw/a", Body=b"a"),
            lambda: self.s3.create_multipart_upload(Bucket="slow", Key="raw/big"),
        ):
            with self.assertRaises(ClientError) as e:
                write()
            err = e.exception.response
            self.assertEqual(err["Error"]["Code"], "SlowDown")
            self.assertEqual(err["ResponseMetadata"]["HTTPStatusCode"], 503)
        # Reads under the prefix and writes elsewhere in the bucket pass.
        self.assertEqual(self.s3.get_object(Bucket="slow", Key="raw/old")["Body"].read(), b"old")
        self.s3.put_object(Bucket="slow", Key="dead-letter/x", Body=b"x")
        listing = self.direct_s3.list_objects_v2(Bucket="slow")["Contents"]
        self.assertEqual(sorted(o["Key"] for o in listing), ["dead-letter/x", "raw/old"])
        self.configure(refuse_s3_writes=[])
        self.s3.put_object(Bucket="slow", Key="raw/a", Body=b"a")
        kinds = self.stats()["s3"]
        self.assertEqual((kinds["PutObject"]["requests"], kinds["PutObject"]["refused"]), (3, 1))
        self.assertEqual(kinds["CreateMultipartUpload"]["refused"], 1)
        self.assertNotIn("refused", kinds["GetObject"])
        status, body = http_json(
            "POST", self.endpoint + "/__fault_proxy/config", {"refuse_s3_writes": "slow/raw/"}
        )
        self.assertEqual(status, 400)
        self.assertIn("refuse_s3_writes", body["error"])

    def test_delayed_puts_land_at_once_and_are_answered_late(self):
        proxy, endpoint, _ = start_proxy(
            self.moto_endpoint, self.workdir, "--delay-puts", "1", "--delay-seconds", "1.5"
        )
        try:
            kinesis = boto3.client(
                "kinesis",
                endpoint_url=endpoint,
                config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
                **CREDENTIALS,
            )
            name = self.stream("delayed")
            records = [{"Data": b"x", "PartitionKey": "k"}]
            started = time.monotonic()
            kinesis.put_records(StreamName=name, Records=records)
            self.assertGreaterEqual(time.monotonic() - started, 1.5)
            started = time.monotonic()
            kinesis.put_records(StreamName=name, Records=records)
            self.assertLess(time.monotonic() - started, 1.5)
            self.assertEqual(len(self.stream_data(name)), 2)
            ops = http_json("GET", endpoint + "/__fault_proxy/stats")[1]["operations"]
            self.assertEqual(ops["Kinesis_20131202.PutRecords"]["delayed"], 1)
        finally:
            stop(proxy)

    def test_put_records_passthrough_counts_bytes_units_and_reads(self):
        name = self.stream("passthrough")
        records = [{"Data": b"x" * 100, "PartitionKey": f"k{i}"} for i in range(498)]
        # 25,590 data bytes + 10 key bytes = 25,600: exactly one 25 KiB unit; one byte more is two.
        records.append({"Data": b"y" * 25_590, "PartitionKey": "0123456789"})
        records.append({"Data": b"y" * 25_591, "PartitionKey": "0123456789"})
        out = self.kinesis.put_records(StreamName=name, Records=records)
        self.assertEqual(out["FailedRecordCount"], 0)
        self.assertEqual(len(self.stream_data(name)), 500)
        shard = self.kinesis.list_shards(StreamName=name)["Shards"][0]["ShardId"]
        it = self.kinesis.get_shard_iterator(
            StreamName=name, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        got = self.kinesis.get_records(ShardIterator=it, Limit=10000)["Records"]
        ops = self.stats()["operations"]
        put = ops["Kinesis_20131202.PutRecords"]
        self.assertEqual(put["calls"], 1)
        self.assertEqual(put["entries"], 500)
        self.assertEqual(put["failed"], 0)
        self.assertEqual(put["payload_units"], 498 + 1 + 2)
        self.assertEqual(put["ok_payload_units"], 501)
        self.assertEqual(
            put["bytes"], 498 * 100 + sum(len(f"k{i}") for i in range(498)) + 2 * 25_600 + 1
        )
        self.assertEqual(ops["Kinesis_20131202.GetRecords"]["records"], len(got))
        self.assertEqual(ops["Kinesis_20131202.ListShards"]["calls"], 1)

    def test_put_records_faults_merge_in_order(self):
        name = self.stream("faulty", shards=2)
        self.configure(fail_rate=0.4)
        records = [{"Data": f"r{i}".encode(), "PartitionKey": str(i)} for i in range(300)]
        out = self.kinesis.put_records(StreamName=name, Records=records)
        results = out["Records"]
        self.assertEqual(len(results), 300)
        failed = [i for i, r in enumerate(results) if "ErrorCode" in r]
        self.assertEqual(out["FailedRecordCount"], len(failed))
        self.assertTrue(60 < len(failed) < 180, len(failed))
        codes = {results[i]["ErrorCode"] for i in failed}
        self.assertEqual(codes, {"ProvisionedThroughputExceededException", "InternalFailure"})
        self.assertTrue(all(results[i]["ErrorMessage"] == "injected by fault_proxy" for i in failed))
        self.assertTrue(all("SequenceNumber" in r for r in results if "ErrorCode" not in r))
        # What the server stored is exactly the entries answered as stored.
        stored = sorted(self.stream_data(name))
        self.assertEqual(stored, sorted(f"r{i}".encode() for i in range(300) if i not in failed))
        put = self.stats()["operations"]["Kinesis_20131202.PutRecords"]
        self.assertEqual((put["failed"], put["injected_failed"]), (len(failed), len(failed)))

        # Every entry picked: the server is not called, the answer is still well formed.
        self.configure(fail_rate=1)
        out = self.kinesis.put_records(StreamName=name, Records=records[:5])
        self.assertEqual(out["FailedRecordCount"], 5)
        self.assertEqual(len(self.stream_data(name)), 300 - len(failed))

    def test_batch_write_item_faults_become_unprocessed_items(self):
        a, b = self.table("bwi-a"), self.table("bwi-b")
        self.configure(fail_rate=0.5)
        requests = {
            t: [{"PutRequest": {"Item": {"k": {"S": f"{t}-{i}"}, "v": {"N": "1"}}}}
                for i in range(n)]
            for t, n in ((a, 15), (b, 10))
        }
        out = self.dynamodb.batch_write_item(RequestItems=requests)
        unprocessed = {
            t: sorted(w["PutRequest"]["Item"]["k"]["S"] for w in ws)
            for t, ws in out["UnprocessedItems"].items()
        }
        n_unprocessed = sum(len(v) for v in unprocessed.values())
        self.assertTrue(0 < n_unprocessed < 25, n_unprocessed)
        for t, n in ((a, 15), (b, 10)):
            every = sorted(f"{t}-{i}" for i in range(n))
            stored = self.table_keys(t)
            self.assertEqual(sorted(stored + unprocessed.get(t, [])), every)
        bwi = self.stats()["operations"]["DynamoDB_20120810.BatchWriteItem"]
        self.assertEqual(bwi["entries"], 25)
        self.assertEqual(bwi["entries_per_call"], {"25": 1})
        self.assertEqual(bwi["unprocessed"], n_unprocessed)
        self.assertEqual(bwi["injected_unprocessed"], n_unprocessed)

        # All picked: no server call, every request comes back, with a matching x-amz-crc32
        # (botocore checks it on DynamoDB answers).
        self.configure(fail_rate=1)
        out = self.dynamodb.batch_write_item(RequestItems={a: requests[a][:3]})
        self.assertEqual(len(out["UnprocessedItems"][a]), 3)
        self.assertIn("x-amz-crc32", out["ResponseMetadata"]["HTTPHeaders"])

    def test_a_firehose_record_holding_the_text_is_refused_as_invalid(self):
        self.delivery_stream("inv", "inv-bucket")
        self.configure(invalid_if_contains=['"d":"POISON"'])
        with self.assertRaises(ClientError) as e:
            self.firehose.put_record_batch(
                DeliveryStreamName="inv",
                Records=[{"Data": b'{"d":"ok"}\n'}, {"Data": b'{"d":"POISON"}\n'}],
            )
        self.assertEqual(e.exception.response["Error"]["Code"], "InvalidArgumentException")
        out = self.firehose.put_record_batch(
            DeliveryStreamName="inv", Records=[{"Data": b'{"d":"ok"}\n'}]
        )
        self.assertEqual(out["FailedPutCount"], 0)
        self.assertEqual(self.delivered("inv-bucket").decode().splitlines(), ['{"d":"ok"}'])

    def test_put_record_batch_faults_merge_in_order(self):
        self.delivery_stream("prb", "prb-bucket")
        self.configure(fail_rate=0.5)
        records = [{"Data": f'{{"n":{i}}}\n'.encode()} for i in range(40)]
        out = self.firehose.put_record_batch(DeliveryStreamName="prb", Records=records)
        results = out["RequestResponses"]
        failed = [i for i, r in enumerate(results) if "ErrorCode" in r]
        self.assertEqual(out["FailedPutCount"], len(failed))
        self.assertTrue(0 < len(failed) < 40)
        self.assertEqual({results[i]["ErrorCode"] for i in failed}, {"ServiceUnavailableException"})
        self.assertTrue(all("RecordId" in r for r in results if "ErrorCode" not in r))
        delivered = self.delivered("prb-bucket").decode().splitlines()
        self.assertEqual(
            sorted(delivered), sorted(f'{{"n":{i}}}' for i in range(40) if i not in failed)
        )
        prb = self.stats()["operations"]["Firehose_20150804.PutRecordBatch"]
        self.assertEqual((prb["entries"], prb["failed"]), (40, len(failed)))
        self.assertEqual(prb["billed_units_5k"], 40)

    def test_throttles_are_retried_by_the_sdk(self):
        name = self.stream("throttled")
        t = self.table("throttled")
        self.delivery_stream("throttled", "throttled-bucket")
        self.configure(throttle_rate=1)
        calls = [
            ("Kinesis_20131202.PutRecords", 400, "ProvisionedThroughputExceededException",
             lambda c: c("kinesis").put_records(
                 StreamName=name, Records=[{"Data": b"x", "PartitionKey": "k"}])),
            ("DynamoDB_20120810.BatchWriteItem", 400, "ProvisionedThroughputExceededException",
             lambda c: c("dynamodb").batch_write_item(
                 RequestItems={t: [{"PutRequest": {"Item": {"k": {"S": "1"}}}}]})),
            ("Firehose_20150804.PutRecordBatch", 500, "ServiceUnavailableException",
             lambda c: c("firehose").put_record_batch(
                 DeliveryStreamName="throttled", Records=[{"Data": b"x\n"}])),
        ]
        retrying = Config(retries={"total_max_attempts": 3, "mode": "standard"})
        for target, status, code, call in calls:
            with self.assertRaises(ClientError) as e:
                call(lambda service: self.client(service, retrying))
            err = e.exception.response
            self.assertEqual(err["Error"]["Code"], code)
            self.assertEqual(err["ResponseMetadata"]["HTTPStatusCode"], status)
            self.assertEqual(err["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"], code)
            # Retried: the SDK classes the answer as throttling or transient.
            self.assertEqual(err["ResponseMetadata"]["RetryAttempts"], 2, target)
            op = self.stats()["operations"][target]
            self.assertEqual((op["calls"], op["throttled"]), (3, 3), target)
            self.assertNotIn("entries", op)
        self.assertEqual(self.stream_data(name), [])
        self.assertEqual(self.table_keys(t), [])

    def test_s3_requests_are_counted_by_kind(self):
        s3 = self.s3
        s3.create_bucket(Bucket="kinds")
        s3.head_bucket(Bucket="kinds")
        s3.put_object(Bucket="kinds", Key="raw/a.ndjson.gz", Body=b"a" * 1000)
        up = s3.create_multipart_upload(Bucket="kinds", Key="raw/big")
        part = s3.upload_part(
            Bucket="kinds", Key="raw/big", UploadId=up["UploadId"], PartNumber=1, Body=b"b" * 10
        )
        s3.complete_multipart_upload(
            Bucket="kinds", Key="raw/big", UploadId=up["UploadId"],
            MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
        )
        s3.list_objects_v2(Bucket="kinds", Prefix="raw/")
        self.assertEqual(s3.get_object(Bucket="kinds", Key="raw/big")["Body"].read(), b"b" * 10)
        s3.head_object(Bucket="kinds", Key="raw/a.ndjson.gz")
        s3.delete_object(Bucket="kinds", Key="raw/a.ndjson.gz")
        kinds = self.stats()["s3"]
        for kind in ("CreateBucket", "HeadBucket", "PutObject", "CreateMultipartUpload",
                     "UploadPart", "CompleteMultipartUpload", "ListObjects", "GetObject",
                     "HeadObject", "DeleteObject"):
            self.assertEqual(kinds.get(kind, {}).get("requests"), 1, (kind, kinds))
        self.assertEqual(kinds["PutObject"]["request_bytes"], 1000)
        self.assertEqual(kinds["GetObject"]["response_bytes"], 10)
        self.assertNotIn("other", kinds)

    def test_control_endpoints_refuse_bad_input(self):
        status, body = http_json("POST", self.endpoint + "/__fault_proxy/config", {"fail_rate": 2})
        self.assertEqual(status, 400)
        self.assertIn("fail_rate", body["error"])
        status, body = http_json("POST", self.endpoint + "/__fault_proxy/config", {"fail": 0.1})
        self.assertEqual(status, 400)
        self.assertIn("unknown keys", body["error"])
        status, body = http_json("GET", self.endpoint + "/__fault_proxy/nothing")
        self.assertEqual(status, 404)
        self.assertIn("/__fault_proxy/stats", body["error"])
        self.assertEqual(http_json("GET", self.endpoint + "/__fault_proxy/config")[1]["seed"], 7)

    def test_down_upstream_is_a_502_and_sigterm_writes_the_stats_file(self):
        proxy, endpoint, stats_file = start_proxy(f"http://127.0.0.1:{free_port()}", self.workdir)
        try:
            kinesis = boto3.client(
                "kinesis", endpoint_url=endpoint,
                config=Config(retries={"total_max_attempts": 1}), **CREDENTIALS,
            )
            with self.assertRaises(ClientError) as e:
                kinesis.list_streams()
            self.assertEqual(e.exception.response["ResponseMetadata"]["HTTPStatusCode"], 502)
            self.assertIn("could not reach its upstream", str(e.exception))
        finally:
            proxy.send_signal(signal.SIGTERM)
            self.assertEqual(proxy.wait(10), 0)
        with open(stats_file) as f:
            self.assertEqual(json.load(f)["upstream_unreachable"], 1)

    def test_in_front_of_kinesalite_which_splits_shards_as_kinesis_does(self):
        server, upstream = start_kinesalite()
        proxy, endpoint, _ = start_proxy(upstream, self.workdir, "--fail-rate", "0.5", "--seed", "3")
        try:
            kinesis = boto3.client(
                "kinesis", endpoint_url=endpoint,
                config=Config(retries={"total_max_attempts": 1}), **CREDENTIALS,
            )
            kinesis.create_stream(StreamName="split", ShardCount=1)
            kinesis.get_waiter("stream_exists").wait(
                StreamName="split", WaiterConfig={"Delay": 0.1, "MaxAttempts": 100}
            )
            records = [{"Data": f"r{i}".encode(), "PartitionKey": str(i)} for i in range(50)]
            out = kinesis.put_records(StreamName="split", Records=records)
            ok = [i for i, r in enumerate(out["Records"]) if "SequenceNumber" in r]
            self.assertEqual(out["FailedRecordCount"], 50 - len(ok))
            self.assertTrue(0 < len(ok) < 50)
            parent = kinesis.list_shards(StreamName="split")["Shards"][0]["ShardId"]
            kinesis.split_shard(
                StreamName="split", ShardToSplit=parent, NewStartingHashKey=str(2**127)
            )
            # kinesalite applies the split a moment later (a timer of 0 ms), as Kinesis does
            # after UPDATING: wait for the children.
            deadline = time.monotonic() + 10
            while True:
                shards = kinesis.list_shards(StreamName="split")["Shards"]
                if len(shards) == 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            self.assertEqual(len(shards), 3)
            it = kinesis.get_shard_iterator(
                StreamName="split", ShardId=parent, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            # The parent keeps its records (moto 5.2.1 would have moved them to the children).
            got = kinesis.get_records(ShardIterator=it, Limit=1000)["Records"]
            self.assertEqual(sorted(r["Data"] for r in got), sorted(f"r{i}".encode() for i in ok))
            self.assertIn("EndingSequenceNumber", shards[0]["SequenceNumberRange"])
            self.assertEqual({s.get("ParentShardId") for s in shards[1:]}, {parent})
            stats = http_json("GET", endpoint + "/__fault_proxy/stats")[1]["operations"]
            self.assertEqual(stats["Kinesis_20131202.GetRecords"]["records"], len(ok))
        finally:
            stop(proxy)
            stop(server)

    def test_refuses_to_listen_beyond_loopback(self):
        out = subprocess.run(
            [sys.executable, PROXY, "--upstream", self.moto_endpoint, "--listen", "0.0.0.0:0"],
            capture_output=True, text=True, timeout=30,
        )
        self.assertEqual(out.returncode, 2)
        self.assertIn("listens on 127.0.0.1 only", out.stderr)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        unittest.main()
