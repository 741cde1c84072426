//! Settings of the AWS backends.

use serde::Deserialize;

use super::{Backend, ConfigError, Settings};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Region; empty means the default provider chain decides (AWS_REGION, profile, ECS).
    pub region: String,
    /// Kinesis data stream name.
    pub stream_name: String,
    /// S3 bucket of the raw archive and dead letters.
    pub bucket: String,
    /// DynamoDB table of invoice lines (partition key InvoiceNo, sort key line id).
    pub invoices_table: String,
    /// Firehose delivery stream that loads the Redshift `sales` table.
    pub delivery_stream: String,
    /// Endpoint override for every service (local AWS-compatible servers); empty for AWS itself.
    pub endpoint_url: String,
}

impl AwsConfig {
    pub fn validate(&self, all: &Settings) -> Result<(), ConfigError> {
        let uses_aws = all.stream.backend == Backend::Aws
            || all.archive.backend == Backend::Aws
            || all.operational.backend == Backend::Aws
            || all.warehouse.backend == Backend::Aws
            || all.dead_letter.backend == Backend::Aws;
        let need = |key: &'static str, value: &str| {
            if uses_aws && value.is_empty() {
                Err(ConfigError::BadValue {
                    key,
                    reason: "must be set when a stage uses the aws backend".into(),
                })
            } else {
                Ok(())
            }
        };
        if all.stream.backend == Backend::Aws {
            need("aws.stream_name", &self.stream_name)?;
        }
        if all.archive.backend == Backend::Aws || all.dead_letter.backend == Backend::Aws {
            need("aws.bucket", &self.bucket)?;
        }
        if all.operational.backend == Backend::Aws {
            need("aws.invoices_table", &self.invoices_table)?;
        }
        if all.warehouse.backend == Backend::Aws {
            need("aws.delivery_stream", &self.delivery_stream)?;
        }
        Ok(())
    }
}
