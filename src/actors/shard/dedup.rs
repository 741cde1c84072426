//! Consumer-side dedup: each (sink, shard) worker drops a line whose id it has written recently.
//!
//! Kinesis cannot deduplicate: a client that resends a request whose PutRecords calls partly
//! succeeded (503 after a timeout mid-retry) puts the same lines in the stream twice, in two
//! records. Ingest's line-id index stops most of these before the stream; this window is the
//! second line of defence and works on its own. It holds the ids of the last
//! `sinks.dedup_window_lines` lines the worker read, oldest evicted first, and is saved with a
//! checkpoint (at most every `sinks.dedup_save_interval`, and when the worker stops) as an object
//! `dedup-window/<sink>/<shard>` in the dead-letter store. A saved window only ever holds lines at
//! or before the checkpoint saved with it, all of them written, so dropping one of them on a
//! re-read after a restart loses nothing; a window older than the checkpoint (a crash between
//! saves) only dedups less.

use bytes::Bytes;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use crate::model::LineId;
use crate::object_store::{ObjectStore, ObjectStoreError};
use crate::stream::{ShardId, SinkKind};

/// A line id as the window keeps it: 16 bytes of its BLAKE3 hash.
type Key = [u8; 16];

fn key(id: &LineId) -> Key {
    let mut k = [0u8; 16];
    k.copy_from_slice(&blake3::hash(id.to_string().as_bytes()).as_bytes()[..16]);
    k
}

/// The ids of the last `capacity` lines seen, in arrival order.
#[derive(Debug, Clone, Default)]
pub struct LineWindow {
    capacity: usize,
    order: VecDeque<Key>,
    seen: HashSet<Key>,
    /// Changed since it was last saved.
    dirty: bool,
}

impl LineWindow {
    /// An empty window of `capacity` line ids (0: no dedup).
    pub fn new(capacity: usize) -> Self {
        LineWindow {
            capacity,
            ..LineWindow::default()
        }
    }

    /// A window of `capacity` restored from [`LineWindow::to_bytes`]; the newest ids are kept
    /// when the capacity shrank.
    ///
    /// # Errors
    /// When `bytes` is not a whole number of ids.
    pub fn from_bytes(capacity: usize, bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() % 16 != 0 {
            return Err(format!(
                "{} bytes is not a whole number of 16-byte line keys",
                bytes.len()
            ));
        }
        let mut window = LineWindow::new(capacity);
        for chunk in bytes.chunks_exact(16) {
            let mut k = [0u8; 16];
            k.copy_from_slice(chunk);
            window.insert_key(k);
        }
        window.dirty = false;
        Ok(window)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.order.iter().flatten().copied().collect()
    }

    pub fn is_enabled(&self) -> bool {
        self.capacity > 0
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    pub fn mark_saved(&mut self) {
        self.dirty = false;
    }

    /// Adds the line id; false when it was in the window already (a duplicate).
    pub fn insert(&mut self, id: &LineId) -> bool {
        if self.capacity == 0 {
            return true;
        }
        self.insert_key(key(id))
    }

    fn insert_key(&mut self, k: Key) -> bool {
        if self.capacity == 0 || !self.seen.insert(k) {
            return false;
        }
        self.order.push_back(k);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.dirty = true;
        true
    }
}

/// Where the workers keep their windows: objects `dedup-window/<sink>/<shard>` of an object store.
#[derive(Clone)]
pub struct DedupWindows {
    store: Arc<dyn ObjectStore>,
}

impl DedupWindows {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        DedupWindows { store }
    }

    fn key(sink: SinkKind, shard: &ShardId) -> String {
        format!("dedup-window/{sink}/{shard}")
    }

    /// The saved window, if any.
    pub async fn load(
        &self,
        sink: SinkKind,
        shard: &ShardId,
    ) -> Result<Option<Bytes>, ObjectStoreError> {
        match self.store.get(&Self::key(sink, shard)).await {
            Ok(body) => Ok(Some(body)),
            Err(ObjectStoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn save(
        &self,
        sink: SinkKind,
        shard: &ShardId,
        window: &LineWindow,
    ) -> Result<(), ObjectStoreError> {
        self.store
            .put(&Self::key(sink, shard), Bytes::from(window.to_bytes()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> LineId {
        crate::model::LineId::from_line_no("536365", u64::from(n))
    }

    #[test]
    fn a_line_seen_within_the_window_is_a_duplicate() {
        let mut w = LineWindow::new(3);
        assert!(w.insert(&id(1)) && w.insert(&id(2)));
        assert!(!w.insert(&id(1)));
        assert!(w.insert(&id(3)) && w.insert(&id(4)));
        // Line 1 was evicted by line 4: the window is bounded.
        assert!(w.insert(&id(1)));
        assert!(!w.insert(&id(4)));
    }

    #[test]
    fn a_window_survives_a_round_trip_in_order() {
        let mut w = LineWindow::new(3);
        for n in 1..=4 {
            w.insert(&id(n));
        }
        let back = LineWindow::from_bytes(3, &w.to_bytes()).unwrap();
        assert!(!back.is_dirty());
        let mut back2 = back.clone();
        assert!(!back2.insert(&id(2)) && !back2.insert(&id(4)));
        assert!(back2.insert(&id(1)));
        // A smaller capacity keeps the newest.
        let mut small = LineWindow::from_bytes(1, &w.to_bytes()).unwrap();
        assert!(!small.insert(&id(4)) && small.insert(&id(3)));
        assert!(LineWindow::from_bytes(3, &[0u8; 17]).is_err());
    }

    #[test]
    fn a_zero_capacity_window_dedups_nothing() {
        let mut w = LineWindow::new(0);
        assert!(!w.is_enabled());
        assert!(w.insert(&id(1)) && w.insert(&id(1)));
        assert!(w.to_bytes().is_empty());
    }
}
