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
}
