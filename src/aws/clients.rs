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

/// The one HTTP client of every SDK client and credential provider: hyper 1 with rustls on ring,
/// trusting the system's certificates. Built here because the SDKs' own default (rustls on
/// aws-lc) costs a C library build; see `Cargo.toml`. Connections are pooled per client.
pub fn https_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

impl AwsClients {
    /// Loads credentials and region from the default provider chain (environment, profile, ECS
    /// task role) and applies `region` and each service's endpoint override when set. Nothing is
    /// contacted here: a missing credential shows on the first call (and in each backend's
    /// `health`).
    pub async fn from_config(cfg: &AwsConfig) -> Self {
        Self::from_shared(&Self::loader(cfg).load().await, cfg)
    }

    /// The SDK settings loader of [`from_config`](Self::from_config): the default provider
    /// chain, [`https_client`], and `region` when set.
    fn loader(cfg: &AwsConfig) -> aws_config::ConfigLoader {
        let loader = aws_config::defaults(BehaviorVersion::latest()).http_client(https_client());
        if cfg.region.is_empty() {
            loader
        } else {
            loader.region(Region::new(cfg.region.clone()))
        }
    }

    /// The clients of `shared` (credentials, region, retry already chosen, e.g. by a test with
    /// static credentials) with each service's endpoint override of `cfg` applied. `shared`
    /// must carry an HTTP client ([`https_client`]): the SDKs are built without a default one.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// The SDKs are built without their own HTTP client, so this checks the one they get: a call
    /// to an `https://` endpoint must open a TLS handshake (the first byte on the wire is a TLS
    /// handshake record, 0x16), not fail for want of a client or speak plain HTTP.
    #[tokio::test]
    async fn sdk_calls_go_out_over_tls_on_the_one_https_client() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        // The first byte of the first connection, or None when no call arrives within 30 s.
        let server = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                let mut first = [0u8; 1];
                conn.read_exact(&mut first).unwrap();
                // Not a TLS answer: the client's handshake fails and the call returns an error.
                let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
                return Some(first[0]);
            }
            None
        });
        let mut cfg = crate::config::Settings::load(None).unwrap().aws;
        cfg.region = "eu-west-2".into();
        cfg.s3_endpoint_url = format!("https://127.0.0.1:{port}");
        // Unsigned: no credentials are needed to see what goes on the wire.
        let shared = AwsClients::loader(&cfg).no_credentials().load().await;
        let clients = AwsClients::from_shared(&shared, &cfg);
        let call = clients.s3.list_buckets().send().await;
        assert!(
            call.is_err(),
            "a server that does not speak TLS cannot answer: {call:?}"
        );
        assert_eq!(
            server.join().unwrap(),
            Some(0x16),
            "the call did not reach the server ({call:?}), or its first byte was not a TLS \
             handshake record"
        );
    }
}
