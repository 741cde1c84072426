//! Settings of the batch path (bulk CSV imports).

use serde::Deserialize;

use super::ConfigError;
use crate::model::DateOrder;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportConfig {
    /// Day/month order of dates like `01/02/2011` in imported files.
    pub date_order: DateOrder,
}

impl ImportConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}
