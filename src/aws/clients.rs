//! One SDK configuration, four clients.

use aws_config::{BehaviorVersion, Region};

use crate::config::{AwsConfig, AwsService};

/// The SDK clients of every AWS backend, built once from the settings and cloned cheaply (each
/// client is an `Arc` inside).
#[derive(Debug, Clone)]
pub struct AwsClients {
    pub kinesis: aws_sdk_kinesis::Client,
    pub s3: aws_sdk_s3::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub firehose: aws_sdk_firehose::Client,
}

impl AwsClients {
    /// Loads credentials and region from the default provider chain (environment, profile, ECS
    /// task role) and applies `region` and each service's endpoint override when set. Nothing is
    /// contacted here: a missing credential shows on the first call (and in each backend's
    /// `health`).
    pub async fn from_config(cfg: &AwsConfig) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if !cfg.region.is_empty() {
            loader = loader.region(Region::new(cfg.region.clone()));
        }
        Self::from_shared(&loader.load().await, cfg)
    }

    /// The clients of `shared` (credentials, region, retry already chosen, e.g. by a test with
    /// static credentials) with each service's endpoint override of `cfg` applied.
    pub fn from_shared(shared: &aws_config::SdkConfig, cfg: &AwsConfig) -> Self {
        let endpoint = |service| Some(cfg.endpoint(service)).filter(|e| !e.is_empty());

        let mut s3 = aws_sdk_s3::config::Builder::from(shared);
        if let Some(url) = endpoint(AwsService::S3) {
            // Local servers answer on one host name (no per-bucket DNS) and do not all check the
            // newer default checksums.
            s3 = s3
                .endpoint_url(url)
                .force_path_style(true)
                .request_checksum_calculation(
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                )
                .response_checksum_validation(
                    aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
                );
        }
        let mut kinesis = aws_sdk_kinesis::config::Builder::from(shared);
        if let Some(url) = endpoint(AwsService::Kinesis) {
            kinesis = kinesis.endpoint_url(url);
        }
        let mut dynamodb = aws_sdk_dynamodb::config::Builder::from(shared);
        if let Some(url) = endpoint(AwsService::DynamoDb) {
            dynamodb = dynamodb.endpoint_url(url);
        }
        let mut firehose = aws_sdk_firehose::config::Builder::from(shared);
        if let Some(url) = endpoint(AwsService::Firehose) {
            firehose = firehose.endpoint_url(url);
        }
        AwsClients {
            kinesis: aws_sdk_kinesis::Client::from_conf(kinesis.build()),
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
            dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb.build()),
            firehose: aws_sdk_firehose::Client::from_conf(firehose.build()),
        }
    }
}
