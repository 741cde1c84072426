//! `shopstream aws ...`: set up the AWS resources the backends use.

use clap::{Args, Subcommand};
use std::fmt;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TableStatus,
};

use crate::aws::{describe, error_code, AwsClients};
use crate::config::Settings;

#[derive(Debug, Args)]
pub struct AwsArgs {
    #[command(subcommand)]
    pub command: AwsCommand,
}

#[derive(Debug, Subcommand)]
pub enum AwsCommand {
    /// Creates what is missing of the Kinesis stream, the S3 bucket, the DynamoDB invoices table
    /// (with its customers index), lease table and line-id table, and the Firehose delivery stream (only with
    /// `warehouse.firehose.role_arn` set: S3 destination, for the local servers). Existing resources
    /// are left as they are, so running it again is safe. Prints what it created or found.
    Init,
}

/// Runs `shopstream aws ...`.
///
/// # Errors
/// Settings that do not load, or a resource that can neither be found nor created.
pub fn run(args: AwsArgs, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let settings = super::load_settings(config)?;
    super::init_logging(&settings);
    let runtime = tokio::runtime::Runtime::new()?;
    match args.command {
        AwsCommand::Init => runtime.block_on(async {
            let clients = AwsClients::from_config(&settings.aws).await;
            let steps = init(&clients, &settings, Duration::from_secs(300)).await?;
            for step in steps {
                out!("{step}");
            }
            Ok(())
        }),
    }
}

/// What `init` did with one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Found,
    /// Not there and not created here, with what to do about it.
    Missing(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitStep {
    /// Kind and name, e.g. `kinesis stream shopstream-lines`.
    pub resource: String,
    pub outcome: Outcome,
}

impl fmt::Display for InitStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Created => write!(f, "created {}", self.resource),
            Outcome::Found => write!(f, "found   {}", self.resource),
            Outcome::Missing(why) => write!(f, "missing {}: {why}", self.resource),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot check or create {resource}: {reason}")]
    Aws { resource: String, reason: String },
    #[error("{resource} is not ACTIVE after {secs} s; look at it in the AWS console, then run `shopstream aws init` again")]
    NotActive { resource: String, secs: u64 },
}

fn aws_err(resource: &str, e: impl std::error::Error + 'static) -> InitError {
    InitError::Aws {
        resource: resource.to_owned(),
        reason: describe(&e),
    }
}

/// Creates what is missing, in dependency order (the delivery stream writes into the bucket),
/// waiting up to `wait` for each new stream or table to become ACTIVE.
///
/// # Errors
/// The first resource that can neither be found nor created, or that does not become ACTIVE.
pub async fn init(
    clients: &AwsClients,
    cfg: &Settings,
    wait: Duration,
) -> Result<Vec<InitStep>, InitError> {
    Ok(vec![
        kinesis_stream(clients, cfg, wait).await?,
        bucket(clients, cfg).await?,
        invoices_table(clients, cfg, wait).await?,
        leases_table(clients, cfg, wait).await?,
        line_index_table(clients, cfg, wait).await?,
        delivery_stream(clients, cfg, wait).await?,
    ])
}

/// Polls `is_active` once a second until it answers true or `wait` passes.
async fn until_active<F, Fut>(
    resource: &str,
    wait: Duration,
    mut is_active: F,
) -> Result<(), InitError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, InitError>>,
{
    let deadline = Instant::now() + wait;
    loop {
        if is_active().await? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(InitError::NotActive {
                resource: resource.to_owned(),
                secs: wait.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn kinesis_stream(
    c: &AwsClients,
    cfg: &Settings,
    wait: Duration,
) -> Result<InitStep, InitError> {
    use aws_sdk_kinesis::types::StreamStatus;
    let resource = format!("kinesis stream {}", cfg.stream.kinesis.stream_name);
    let status = || async {
        match c
            .kinesis
            .describe_stream_summary()
            .stream_name(&cfg.stream.kinesis.stream_name)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .stream_description_summary()
                .map(|s| s.stream_status().clone())),
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(aws_err(&resource, e)),
        }
    };
    let outcome = match status().await? {
        Some(_) => Outcome::Found,
        None => {
            c.kinesis
                .create_stream()
                .stream_name(&cfg.stream.kinesis.stream_name)
                .shard_count(cfg.stream.kinesis.shards as i32)
                .send()
                .await
                .map_err(|e| aws_err(&resource, e))?;
            Outcome::Created
        }
    };
    until_active(&resource, wait, || async {
        Ok(matches!(
            status().await?,
            Some(StreamStatus::Active | StreamStatus::Updating)
        ))
    })
    .await?;
    let resource = match outcome {
        Outcome::Created => format!("{resource} ({} shards)", cfg.stream.kinesis.shards),
        _ => resource,
    };
    Ok(InitStep { resource, outcome })
}

async fn bucket(c: &AwsClients, cfg: &Settings) -> Result<InitStep, InitError> {
    use aws_sdk_s3::types::{
        AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketLocationConstraint,
        CreateBucketConfiguration, ExpirationStatus, LifecycleRule, LifecycleRuleFilter,
    };
    let resource = format!("s3 bucket {}", cfg.archive.s3.bucket);
    match c
        .s3
        .head_bucket()
        .bucket(&cfg.archive.s3.bucket)
        .send()
        .await
    {
        Ok(_) => {
            return Ok(InitStep {
                resource,
                outcome: Outcome::Found,
            })
        }
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {}
        Err(e) => return Err(aws_err(&resource, e)),
    }
    let region =
        c.s3.config()
            .region()
            .map(|r| r.to_string())
            .unwrap_or_default();
    let mut create = c.s3.create_bucket().bucket(&cfg.archive.s3.bucket);
    // us-east-1 is the one region that refuses an explicit location constraint.
    if !region.is_empty() && region != "us-east-1" {
        create = create.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region.as_str()))
                .build(),
        );
    }
    create.send().await.map_err(|e| aws_err(&resource, e))?;
    // Parts of a multipart upload that could not even be aborted stop costing after a day.
    let rule = LifecycleRule::builder()
        .id("abort-incomplete-multipart-uploads")
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("").build())
        .abort_incomplete_multipart_upload(
            AbortIncompleteMultipartUpload::builder()
                .days_after_initiation(1)
                .build(),
        )
        .build()
        .map_err(|e| aws_err(&resource, e))?;
    c.s3.put_bucket_lifecycle_configuration()
        .bucket(&cfg.archive.s3.bucket)
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .rules(rule)
                .build()
                .map_err(|e| aws_err(&resource, e))?,
        )
        .send()
        .await
        .map_err(|e| aws_err(&resource, e))?;
    Ok(InitStep {
        resource,
        outcome: Outcome::Created,
    })
}

fn key(
    name: &str,
    kind: KeyType,
) -> Result<KeySchemaElement, aws_smithy_types::error::operation::BuildError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
}

fn attr(
    name: &str,
    kind: ScalarAttributeType,
) -> Result<AttributeDefinition, aws_smithy_types::error::operation::BuildError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
}

/// Creates a pay-per-request table when it does not exist and waits until it is ACTIVE.
async fn table(
    c: &AwsClients,
    name: &str,
    build: impl FnOnce(
        aws_sdk_dynamodb::operation::create_table::builders::CreateTableFluentBuilder,
    ) -> Result<
        aws_sdk_dynamodb::operation::create_table::builders::CreateTableFluentBuilder,
        aws_smithy_types::error::operation::BuildError,
    >,
    wait: Duration,
) -> Result<InitStep, InitError> {
    let resource = format!("dynamodb table {name}");
    let status = || async {
        match c.dynamodb.describe_table().table_name(name).send().await {
            Ok(out) => Ok(out.table().and_then(|t| t.table_status()).cloned()),
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(aws_err(&resource, e)),
        }
    };
    let outcome = match status().await? {
        Some(_) => Outcome::Found,
        None => {
            let create = c
                .dynamodb
                .create_table()
                .table_name(name)
                .billing_mode(BillingMode::PayPerRequest);
            build(create)
                .map_err(|e| aws_err(&resource, e))?
                .send()
                .await
                .map_err(|e| aws_err(&resource, e))?;
            Outcome::Created
        }
    };
    until_active(&resource, wait, || async {
        Ok(matches!(
            status().await?,
            Some(TableStatus::Active | TableStatus::Updating)
        ))
    })
    .await?;
    Ok(InitStep { resource, outcome })
}

async fn invoices_table(
    c: &AwsClients,
    cfg: &Settings,
    wait: Duration,
) -> Result<InitStep, InitError> {
    let mut step = table(
        c,
        &cfg.operational.dynamodb.invoices_table,
        |t| {
            Ok(t.key_schema(key("InvoiceNo", KeyType::Hash)?)
                .key_schema(key("LineId", KeyType::Range)?)
                .attribute_definitions(attr("InvoiceNo", ScalarAttributeType::S)?)
                .attribute_definitions(attr("LineId", ScalarAttributeType::S)?)
                .attribute_definitions(attr("CustomerID", ScalarAttributeType::N)?)
                .attribute_definitions(attr("InvoiceDate", ScalarAttributeType::S)?)
                .global_secondary_indexes(
                    GlobalSecondaryIndex::builder()
                        .index_name(&cfg.operational.dynamodb.customers_index)
                        .key_schema(key("CustomerID", KeyType::Hash)?)
                        .key_schema(key("InvoiceDate", KeyType::Range)?)
                        .projection(
                            Projection::builder()
                                .projection_type(ProjectionType::All)
                                .build(),
                        )
                        .build()?,
                ))
        },
        wait,
    )
    .await?;
    step.resource = format!(
        "{} (index {})",
        step.resource, cfg.operational.dynamodb.customers_index
    );
    Ok(step)
}

async fn leases_table(
    c: &AwsClients,
    cfg: &Settings,
    wait: Duration,
) -> Result<InitStep, InitError> {
    table(
        c,
        &cfg.stream.kinesis.leases_table,
        |t| {
            Ok(t.key_schema(key("ShardId", KeyType::Hash)?)
                .attribute_definitions(attr("ShardId", ScalarAttributeType::S)?))
        },
        wait,
    )
    .await
}

/// The line-id and idempotency-key table, with its TTL on `ExpiresAt`
/// (`stream.kinesis.line_index_retention`).
async fn line_index_table(
    c: &AwsClients,
    cfg: &Settings,
    wait: Duration,
) -> Result<InitStep, InitError> {
    let name = &cfg.stream.kinesis.line_index_table;
    let step = table(
        c,
        name,
        |t| {
            Ok(t.key_schema(key("Id", KeyType::Hash)?)
                .attribute_definitions(attr("Id", ScalarAttributeType::S)?))
        },
        wait,
    )
    .await?;
    if step.outcome == Outcome::Created {
        let resource = format!("dynamodb table {name} (time to live)");
        let ttl = aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name("ExpiresAt")
            .build()
            .map_err(|e| aws_err(&resource, e))?;
        c.dynamodb
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(ttl)
            .send()
            .await
            .map_err(|e| aws_err(&resource, e))?;
    }
    Ok(step)
}

async fn delivery_stream(
    c: &AwsClients,
    cfg: &Settings,
    wait: Duration,
) -> Result<InitStep, InitError> {
    use aws_sdk_firehose::types::{
        BufferingHints, CompressionFormat, DeliveryStreamStatus, DeliveryStreamType,
        ExtendedS3DestinationConfiguration,
    };
    let resource = format!(
        "firehose delivery stream {}",
        cfg.warehouse.firehose.delivery_stream
    );
    let status = || async {
        match c
            .firehose
            .describe_delivery_stream()
            .delivery_stream_name(&cfg.warehouse.firehose.delivery_stream)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .delivery_stream_description()
                .map(|d| d.delivery_stream_status().clone())),
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(aws_err(&resource, e)),
        }
    };
    let outcome = match status().await? {
        Some(_) => Outcome::Found,
        None if cfg.warehouse.firehose.role_arn.is_empty() => {
            return Ok(InitStep {
                resource,
                outcome: Outcome::Missing(
                    "create it from the templates in deploy/ (Redshift destination), or set \
                     warehouse.firehose.role_arn to create one that writes to the bucket"
                        .into(),
                ),
            })
        }
        None => {
            let destination = ExtendedS3DestinationConfiguration::builder()
                .role_arn(&cfg.warehouse.firehose.role_arn)
                .bucket_arn(format!("arn:aws:s3:::{}", cfg.archive.s3.bucket))
                .prefix(&cfg.warehouse.firehose.prefix)
                // Explicit: some servers require it, and the warehouse loader reads plain NDJSON.
                .compression_format(CompressionFormat::Uncompressed)
                .buffering_hints(
                    BufferingHints::builder()
                        .size_in_mbs(64)
                        .interval_in_seconds(60)
                        .build(),
                )
                .build()
                .map_err(|e| aws_err(&resource, e))?;
            c.firehose
                .create_delivery_stream()
                .delivery_stream_name(&cfg.warehouse.firehose.delivery_stream)
                .delivery_stream_type(DeliveryStreamType::DirectPut)
                .extended_s3_destination_configuration(destination)
                .send()
                .await
                .map_err(|e| aws_err(&resource, e))?;
            Outcome::Created
        }
    };
    until_active(&resource, wait, || async {
        Ok(matches!(
            status().await?,
            Some(DeliveryStreamStatus::Active)
        ))
    })
    .await?;
    Ok(InitStep { resource, outcome })
}
