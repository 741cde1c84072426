//! Which [`Source`] a source named on the command line or in `import.watch` is: the one place
//! that knows every kind of source, so that the sources themselves need not know each other.

use super::s3::S3Source;
use super::source::{LocalSource, Source};
use super::ImportError;

/// A source named on the command line or in `import.watch`: `s3://bucket/prefix` (read with
/// `s3`); anything with `*`, `?` or `[` is a glob; otherwise a file or a folder.
///
/// # Errors
/// [`ImportError::Source`] for an `s3://` source without an S3 client or a malformed one, or a
/// malformed glob.
pub fn parse_source(
    spec: &str,
    s3: Option<&aws_sdk_s3::Client>,
) -> Result<Box<dyn Source>, ImportError> {
    if let Some(rest) = spec.strip_prefix("s3://") {
        // Checked before anything else, so that a bad name never reaches a request.
        let bucket = rest.split_once('/').map_or(rest, |(b, _)| b);
        if !bucket.is_empty() {
            super::s3::check_bucket_name(bucket).map_err(|reason| ImportError::Source {
                source_name: spec.to_owned(),
                reason,
            })?;
        }
        let client = s3.ok_or_else(|| ImportError::Source {
            source_name: spec.to_owned(),
            reason: "no S3 client was set up for this import; this is a bug in the caller".into(),
        })?;
        return Ok(Box::new(S3Source::new(client.clone(), spec)?));
    }
    Ok(Box::new(LocalSource::new(spec)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_source_needs_a_client() {
        assert!(parse_source("s3://bucket/prefix", None).is_err());
    }

    #[test]
    fn a_bucket_name_outside_aws_rules_is_refused_before_any_request() {
        for bad in [
            "s3://../../etc/passwd",
            "s3://../x",
            "s3://ab/x",
            "s3://Upper/x",
            "s3://-lead/x",
            "s3://trail-/x",
            "s3://a..b/x",
            "s3://192.168.1.1/x",
            "s3://under_score",
        ] {
            let err = parse_source(bad, None).err().expect(bad).to_string();
            assert!(err.contains("not a valid name"), "{bad}: {err}");
        }
        for good in ["abc", "my.bucket-1", "0bucket9"] {
            assert!(crate::batch::s3::check_bucket_name(good).is_ok(), "{good}");
        }
    }
}
