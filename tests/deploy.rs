//! The deployment files agree with the code: the CloudFormation template creates the resources
//! `config/aws.toml` names, with the keys the backends use, and gives shopstream time to shut down.

use serde_json::Value;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn template() -> Value {
    let text = std::fs::read_to_string(root().join("deploy/cloudformation.json")).unwrap();
    serde_json::from_str(&text).expect("deploy/cloudformation.json is valid JSON")
}

fn resource<'a>(t: &'a Value, name: &str, kind: &str) -> &'a Value {
    let r = &t["Resources"][name];
    assert_eq!(r["Type"], kind, "resource {name}");
    &r["Properties"]
}

#[test]
fn template_creates_what_the_aws_config_names() {
    let settings =
        shopstream::config::Settings::load(Some(&root().join("config/aws.toml"))).unwrap();
    let t = template();
    assert_eq!(
        resource(&t, "Lines", "AWS::Kinesis::Stream")["Name"],
        settings.stream.kinesis.stream_name.as_str()
    );
    let dynamodb = &settings.operational.dynamodb;
    let invoices = resource(&t, "Invoices", "AWS::DynamoDB::Table");
    assert_eq!(invoices["TableName"], dynamodb.invoices_table.as_str());
    let keys: Vec<(&str, &str)> = invoices["KeySchema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["AttributeName"].as_str().unwrap(),
                k["KeyType"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(keys, [("InvoiceNo", "HASH"), ("LineId", "RANGE")]);
    let index = &invoices["GlobalSecondaryIndexes"][0];
    assert_eq!(index["IndexName"], dynamodb.customers_index.as_str());
    assert_eq!(index["KeySchema"][0]["AttributeName"], "CustomerID");
    assert_eq!(index["KeySchema"][1]["AttributeName"], "InvoiceDate");
    let leases = resource(&t, "Leases", "AWS::DynamoDB::Table");
    assert_eq!(
        leases["TableName"],
        settings.stream.kinesis.leases_table.as_str()
    );
    assert_eq!(leases["KeySchema"][0]["AttributeName"], "ShardId");
    let line_ids = resource(&t, "LineIds", "AWS::DynamoDB::Table");
    assert_eq!(
        line_ids["TableName"],
        settings.stream.kinesis.line_index_table.as_str()
    );
    assert_eq!(line_ids["KeySchema"][0]["AttributeName"], "Id");
    assert_eq!(
        line_ids["TimeToLiveSpecification"]["AttributeName"],
        "ExpiresAt"
    );
    assert_eq!(
        resource(&t, "Sales", "AWS::KinesisFirehose::DeliveryStream")["DeliveryStreamName"],
        settings.warehouse.firehose.delivery_stream.as_str()
    );
}

#[test]
fn the_task_runs_the_aws_config_and_has_time_to_shut_down() {
    let settings =
        shopstream::config::Settings::load(Some(&root().join("config/aws.toml"))).unwrap();
    let t = template();
    let container = &resource(&t, "Task", "AWS::ECS::TaskDefinition")["ContainerDefinitions"][0];
    let stop = container["StopTimeout"].as_u64().unwrap();
    assert!(
        settings.server.shutdown_deadline.as_secs() < stop,
        "server.shutdown_deadline must end before ECS kills the task"
    );
    let env: Vec<(&str, &Value)> = container["Environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["Name"].as_str().unwrap(), &e["Value"]))
        .collect();
    let config = env
        .iter()
        .find(|(k, _)| *k == "SHOPSTREAM_CONFIG")
        .unwrap()
        .1;
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!(
            "COPY config/aws.toml {}",
            config.as_str().unwrap()
        )),
        "the image holds the config the task names"
    );
    assert!(env
        .iter()
        .any(|(k, _)| *k == "SHOPSTREAM__ARCHIVE__S3__BUCKET"));
    assert_eq!(
        container["PortMappings"][0]["ContainerPort"],
        settings.server.port
    );
    // /metrics on a port of its own, which only the monitoring network reaches; the API and
    // the health check stay on the main port.
    let ops_port = settings
        .server
        .ops_port
        .expect("config/aws.toml sets server.ops_port");
    let mapped: Vec<&Value> = container["PortMappings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["ContainerPort"])
        .collect();
    assert!(mapped.contains(&&Value::from(ops_port)), "{mapped:?}");
    let ingress = resource(&t, "TaskSecurityGroup", "AWS::EC2::SecurityGroup")
        ["SecurityGroupIngress"]
        .as_array()
        .unwrap();
    let opened_to = |port: u16| -> Vec<&Value> {
        ingress
            .iter()
            .filter(|r| r["FromPort"] == port && r["ToPort"] == port)
            .map(|r| &r["CidrIp"]["Ref"])
            .collect()
    };
    assert_eq!(opened_to(ops_port), [&Value::from("MetricsCidr")]);
    assert_eq!(
        opened_to(settings.server.port),
        [&Value::from("AllowedCidr")]
    );
    assert!(container["HealthCheck"]["Command"][1]
        .as_str()
        .unwrap()
        .contains(&format!(":{}/health/ready", settings.server.port)));
}

/// The merge of `deploy/redshift.sql`, run on SQLite (it uses only what both dialects share):
/// copies of one line in staging, with different `ingested_at`, end as one row in `sales`, and a
/// line already in `sales` is not added again.
#[test]
fn the_redshift_merge_keeps_each_line_id_once() {
    let sql = std::fs::read_to_string(root().join("deploy/redshift.sql")).unwrap();
    let statement = |start: &str| -> String {
        let from = sql
            .find(start)
            .unwrap_or_else(|| panic!("{start} in redshift.sql"));
        let len = sql[from..].find(';').unwrap();
        sql[from..from + len].to_owned()
    };
    let staging = statement("CREATE TABLE IF NOT EXISTS sales_staging");
    let merge = statement("INSERT INTO sales");
    let empty = statement("DELETE FROM sales_staging");
    let db = rusqlite::Connection::open_in_memory().unwrap();
    db.execute_batch(&staging).unwrap();
    db.execute_batch(&staging.replace("sales_staging", "sales"))
        .unwrap();
    let stage = |line_id: &str, ingested_at: &str| {
        db.execute(
            "INSERT INTO sales_staging VALUES (?1, '536365', '85123A', NULL, 6, \
             '2010-12-01 08:26:00', 2.55, 15.30, 15300000, 17850, 'United Kingdom', 0, \
             'store-1', ?2, 'stream')",
            rusqlite::params![line_id, ingested_at],
        )
        .unwrap();
    };
    let line = |n: u32| format!("{n:032x}");
    // Line 1 twice in one load (a client's resend), line 2 once.
    stage(&line(1), "2026-12-04 10:00:00");
    stage(&line(1), "2026-12-04 10:00:07");
    stage(&line(2), "2026-12-04 10:00:01");
    db.execute_batch(&format!("{merge}; {empty};")).unwrap();
    // Line 1 again in a later load (Firehose redelivers), line 3 new.
    stage(&line(1), "2026-12-04 10:05:00");
    stage(&line(3), "2026-12-04 10:05:00");
    db.execute_batch(&format!("{merge}; {empty};")).unwrap();
    let rows: Vec<(String, String)> = db
        .prepare("SELECT line_id, ingested_at FROM sales ORDER BY line_id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        [
            (line(1), "2026-12-04 10:00:00".to_owned()),
            (line(2), "2026-12-04 10:00:01".to_owned()),
            (line(3), "2026-12-04 10:05:00".to_owned()),
        ]
    );
    let staged: i64 = db
        .query_row("SELECT COUNT(*) FROM sales_staging", [], |r| r.get(0))
        .unwrap();
    assert_eq!(staged, 0);
}

/// No IAM statement grants every action of a service or every resource, except where AWS allows
/// nothing narrower; each such statement carries a `Sid` that deploy/README.md explains. Managed
/// policies are not used: what they grant is not in the template to check.
#[test]
fn iam_grants_no_wildcards_but_the_documented_ones() {
    let t = template();
    let readme = std::fs::read_to_string(root().join("deploy/README.md")).unwrap();
    let mut statements = 0;
    for (name, r) in t["Resources"].as_object().unwrap() {
        if r["Type"] != "AWS::IAM::Role" {
            continue;
        }
        let props = &r["Properties"];
        assert!(
            props.get("ManagedPolicyArns").is_none(),
            "{name}: managed policies hide what they grant; write the statements inline"
        );
        for policy in props["Policies"].as_array().unwrap() {
            for s in policy["PolicyDocument"]["Statement"].as_array().unwrap() {
                statements += 1;
                let actions: Vec<&str> = match &s["Action"] {
                    Value::String(a) => vec![a.as_str()],
                    Value::Array(a) => a.iter().map(|a| a.as_str().unwrap()).collect(),
                    other => panic!("{name}: Action {other}"),
                };
                for a in actions {
                    assert!(
                        a != "*" && !a.ends_with(":*"),
                        "{name}: action {a} grants a whole service"
                    );
                }
                assert!(s.get("NotAction").is_none() && s.get("NotResource").is_none());
                let resources = match &s["Resource"] {
                    Value::Array(r) => r.clone(),
                    r => vec![r.clone()],
                };
                if resources.iter().any(|r| r == "*") {
                    let sid = s["Sid"].as_str().unwrap_or_else(|| {
                        panic!("{name}: a statement on every resource needs a Sid saying why: {s}")
                    });
                    assert!(
                        readme.contains(&format!("`{sid}`")),
                        "{name}: deploy/README.md does not explain `{sid}`"
                    );
                }
            }
        }
    }
    assert!(statements >= 8, "the roles' statements were not found");
}

/// The keys the task serves with come from Secrets Manager, each from its own secret named by a
/// parameter: a store key as `SHOPSTREAM__AUTH__STORES__<id>` and a reader key as
/// `SHOPSTREAM__AUTH__READERS__<name>` (`auth.readers`), and the execution role, which ECS
/// fetches them with, may read each secret and only those.
#[test]
fn store_and_reader_keys_come_from_their_own_secrets() {
    let t = template();
    let container = &resource(&t, "Task", "AWS::ECS::TaskDefinition")["ContainerDefinitions"][0];
    let secrets: Vec<(&str, &str)> = container["Secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["Name"]["Fn::Sub"].as_str().unwrap(),
                s["ValueFrom"]["Fn::Sub"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        secrets,
        [
            (
                "SHOPSTREAM__AUTH__STORES__${DemoStoreId}",
                "${StoreKeysSecretArn}:${DemoStoreId}::"
            ),
            (
                "SHOPSTREAM__AUTH__READERS__${ReaderName}",
                "${ReaderKeysSecretArn}:${ReaderName}::"
            ),
        ]
    );
    for parameter in ["StoreKeysSecretArn", "ReaderKeysSecretArn"] {
        assert!(
            t["Parameters"][parameter]["Description"].is_string(),
            "{parameter}"
        );
    }
    // The name is part of an environment variable's name and a settings key: letters, digits
    // and underscores, lower case as settings keys are spelled.
    assert_eq!(
        t["Parameters"]["ReaderName"]["AllowedPattern"],
        "^[a-z0-9_]+$"
    );

    let role = resource(&t, "ExecutionRole", "AWS::IAM::Role");
    let mut readable: Vec<&Value> = Vec::new();
    for policy in role["Policies"].as_array().unwrap() {
        for s in policy["PolicyDocument"]["Statement"].as_array().unwrap() {
            if s["Action"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == "secretsmanager:GetSecretValue")
            {
                readable.push(&s["Resource"]["Ref"]);
            }
        }
    }
    assert_eq!(
        readable,
        [
            &Value::from("StoreKeysSecretArn"),
            &Value::from("ReaderKeysSecretArn")
        ]
    );
    let task_role = serde_json::to_string(resource(&t, "TaskRole", "AWS::IAM::Role")).unwrap();
    assert!(
        !task_role.contains("secretsmanager"),
        "the task itself reads no secret: ECS hands the keys over as environment variables"
    );
}
