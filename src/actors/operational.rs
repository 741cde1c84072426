//! The operational writer: the [`SinkWriter`] over an [`OperationalStore`].

use async_trait::async_trait;
use std::sync::Arc;

use crate::actors::sink::{SinkFailure, SinkUnit, SinkWriter};
use crate::store::OperationalStore;
use crate::stream::SinkKind;

pub struct OperationalWriter {
    store: Arc<dyn OperationalStore>,
}

impl OperationalWriter {
    pub fn new(store: Arc<dyn OperationalStore>) -> Self {
        OperationalWriter { store }
    }
}

#[async_trait]
impl SinkWriter for OperationalWriter {
    fn kind(&self) -> SinkKind {
        SinkKind::Operational
    }

    async fn write(&self, unit: &SinkUnit<'_>) -> Result<(), SinkFailure> {
        Ok(self.store.upsert(unit.lines).await?)
    }

    async fn health(&self) -> Result<(), String> {
        self.store.health().await.map_err(|e| e.to_string())
    }
}
