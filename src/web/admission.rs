//! Who may send a request body, and how much of them ingest holds at once.
//!
//! A body is read before the request takes one of the ingest permits (`server.max_inflight_ingest`,
//! the parse-and-append slots): a client that trickles its body therefore holds no permit, only
//! the bytes it sent, and only for `server.body_timeout`. What bodies hold in memory is bounded by
//! a byte budget of `max_inflight_ingest x max_body_bytes`, the bound the permits gave before. And
//! no store holds more than `server.max_inflight_per_store` requests (reading or processing), so
//! one store's slow or stuck clients never shut the others out.

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::config::ServerConfig;

/// Bodies are reserved in the byte budget in units of this many bytes.
const UNIT: usize = 1024;

pub struct BodyGate {
    per_store: usize,
    body_timeout: Duration,
    max_body_bytes: usize,
    /// The byte budget, in [`UNIT`]s.
    budget: Arc<Semaphore>,
    budget_units: usize,
    /// Requests per store being read or processed now.
    stores: Mutex<HashMap<String, usize>>,
}

/// One of a store's request slots; given back when dropped.
pub struct StoreSlot {
    gate: Arc<BodyGate>,
    store: String,
}

impl Drop for StoreSlot {
    fn drop(&mut self) {
        let mut stores = self.gate.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = stores.get_mut(&self.store) {
            *n -= 1;
            if *n == 0 {
                stores.remove(&self.store);
            }
        }
    }
}

/// A body read whole, and its share of the byte budget (held until the request is answered).
pub struct HeldBody {
    pub bytes: Bytes,
    _reserved: Option<OwnedSemaphorePermit>,
}

impl BodyGate {
    pub fn new(server: &ServerConfig) -> Arc<Self> {
        let budget_units = server
            .max_inflight_ingest
            .saturating_mul(server.max_body_bytes.div_ceil(UNIT))
            .min(Semaphore::MAX_PERMITS);
        Arc::new(BodyGate {
            per_store: server.per_store_requests(),
            body_timeout: server.body_timeout,
            max_body_bytes: server.max_body_bytes,
            budget: Arc::new(Semaphore::new(budget_units)),
            budget_units,
            stores: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one of `store`'s request slots, or answers 503 when the store holds its share.
    pub fn enter(self: &Arc<Self>, store: &str) -> Result<StoreSlot, ApiError> {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        let n = stores.entry(store.to_owned()).or_default();
        if *n >= self.per_store {
            return Err(ApiError::Busy {
                reason: format!(
                    "store {store:?} has {} ingest requests in progress already, its share (server.max_inflight_per_store); wait for their answers",
                    self.per_store
                ),
                retry_after_secs: 1,
            });
        }
        *n += 1;
        Ok(StoreSlot {
            gate: self.clone(),
            store: store.to_owned(),
        })
    }

    /// Reads the whole body: at most `max_body_bytes` (413), within `body_timeout` from now
    /// (408), and within the byte budget (503 when the bodies held already fill it).
    pub async fn read(
        &self,
        req: &HttpRequest,
        payload: web::Payload,
    ) -> Result<HeldBody, ApiError> {
        let timeout = self.body_timeout;
        match tokio::time::timeout(timeout, self.read_within_budget(req, payload)).await {
            Ok(body) => body,
            Err(_) => Err(ApiError::BodyTimeout { timeout }),
        }
    }

    async fn read_within_budget(
        &self,
        req: &HttpRequest,
        mut payload: web::Payload,
    ) -> Result<HeldBody, ApiError> {
        let limit = self.max_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ApiError::BodyTooLarge { limit });
        }
        let mut reserved: Option<OwnedSemaphorePermit> = None;
        let mut body = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::BadInput(format!("cannot read the body: {e}")))?;
            let len = body.len() + chunk.len();
            if len > limit {
                return Err(ApiError::BodyTooLarge { limit });
            }
            let held = reserved.as_ref().map_or(0, |r| r.num_permits());
            let wanted = len.div_ceil(UNIT);
            if wanted > held {
                let more = self.reserve(wanted - held)?;
                match reserved.as_mut() {
                    Some(r) => r.merge(more),
                    None => reserved = Some(more),
                }
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HeldBody {
            bytes: body.freeze(),
            _reserved: reserved,
        })
    }

    fn reserve(&self, units: usize) -> Result<OwnedSemaphorePermit, ApiError> {
        let busy = || {
            ApiError::Busy {
            reason: format!(
                "request bodies fill ingest's memory budget of {} MiB (server.max_inflight_ingest x server.max_body_bytes)",
                self.budget_units * UNIT / (1024 * 1024)
            ),
            retry_after_secs: 1,
        }
        };
        let units = u32::try_from(units).map_err(|_| busy())?;
        self.budget
            .clone()
            .try_acquire_many_owned(units)
            .map_err(|_| busy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(per_store: usize) -> Arc<BodyGate> {
        let mut server = crate::config::Settings::load(None).unwrap().server;
        server.max_inflight_ingest = 4;
        server.max_inflight_per_store = per_store;
        BodyGate::new(&server)
    }

    #[test]
    fn a_store_holds_at_most_its_share_and_gets_slots_back() {
        let gate = gate(2);
        let a1 = gate.enter("a").unwrap();
        let _a2 = gate.enter("a").unwrap();
        let err = gate.enter("a").err().unwrap();
        assert!(err.to_string().contains("max_inflight_per_store"), "{err}");
        // Another store is not held up by a's.
        let _b = gate.enter("b").unwrap();
        drop(a1);
        let _a3 = gate.enter("a").unwrap();
    }

    #[test]
    fn no_share_given_means_half_the_permits() {
        assert_eq!(gate(0).per_store, 2);
    }
}
