//! The warehouse forwarder: the [`SinkWriter`] over a [`Warehouse`].

use async_trait::async_trait;
use std::sync::Arc;

use crate::actors::sink::{SinkFailure, SinkUnit, SinkWriter};
use crate::store::Warehouse;
use crate::stream::SinkKind;

pub struct WarehouseForwarder {
    warehouse: Arc<dyn Warehouse>,
}

impl WarehouseForwarder {
    pub fn new(warehouse: Arc<dyn Warehouse>) -> Self {
        WarehouseForwarder { warehouse }
    }
}

#[async_trait]
impl SinkWriter for WarehouseForwarder {
    fn kind(&self) -> SinkKind {
        SinkKind::Warehouse
    }

    async fn write(&self, unit: &SinkUnit<'_>) -> Result<(), SinkFailure> {
        Ok(self.warehouse.insert(unit.lines).await?)
    }

    async fn health(&self) -> Result<(), String> {
        self.warehouse.health().await.map_err(|e| e.to_string())
    }
}
