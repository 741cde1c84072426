//! Consumer-side dedup: each (sink, shard) worker drops a line whose id it has written recently.
//!
//! Kinesis cannot deduplicate: a client that resends a request whose PutRecords calls partly
//! succeeded (503 after a timeout mid-retry) puts the same lines in the stream twice, in two
//! records. Ingest's line-id index stops most of these before the stream; this window is the
//! second line of defence and works on its own. It holds the ids of the last
//! `sinks.dedup_window_lines` lines the worker read, oldest evicted first.
//!
//! It is saved as an object `dedup-window/<sink>/<shard>` in the dead-letter store, together
//! with the sequence number it *covers*: the window holds exactly the lines up to that record,
//! all of them written. Two rules keep a restart exact:
//! - a window is saved only once the checkpoint has reached what it covers (a snapshot taken
//!   when a unit is written waits for its checkpoint), so a saved window never holds a line that
//!   a restart reads again and must write;
//! - on a restart the worker reads the stream again from what the window covers to its
//!   checkpoint and adds those lines, without writing them: a crash between two saves (at most
//!   `sinks.dedup_save_interval` apart) loses nothing of the window. Only lines the stream no
//!   longer holds (retention, or released on the embedded log) cannot be added back.

use bytes::Bytes;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use crate::model::LineId;
use crate::object_store::{ObjectStore, ObjectStoreError};
use crate::stream::{SequenceNumber, ShardId, SinkKind};

/// The start of a saved window that names what it covers (format 2). A window saved before
/// (format 1) is bare 16-byte keys and covers nothing known.
const MAGIC: &[u8; 5] = b"SSDW\x02";

/// A line id as the window keeps it: 16 bytes of its BLAKE3 hash.
type Key = [u8; 16];

fn key(id: &LineId) -> Key {
    let mut k = [0u8; 16];
    k.copy_from_slice(&blake3::hash(id.as_str().as_bytes()).as_bytes()[..16]);
    k
}

/// The keys are BLAKE3 output already: foldhash (seeded per process) hashes them in a few
/// instructions, where the standard SipHash was a tenth of the window's time in a profile.
type KeySet = HashSet<Key, foldhash::fast::RandomState>;

/// The ids of the last `capacity` lines seen, in arrival order.
#[derive(Debug, Clone, Default)]
pub struct LineWindow {
    capacity: usize,
    order: VecDeque<Key>,
    seen: KeySet,
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

/// A window as saved: its keys and the sequence number it covers (`None` for a window saved by a
/// version that did not record it).
#[derive(Debug, Clone)]
pub struct SavedWindow {
    pub covers: Option<SequenceNumber>,
    pub window: LineWindow,
}

impl SavedWindow {
    /// The bytes of `window`, covering the lines up to `covers`.
    pub fn encode(covers: &SequenceNumber, window: &LineWindow) -> Vec<u8> {
        let seq = covers.as_str().as_bytes();
        let mut out = Vec::with_capacity(MAGIC.len() + 2 + seq.len() + window.order.len() * 16);
        out.extend_from_slice(MAGIC);
        // A sequence number is at most 129 digits (or "shard-end").
        let len = u16::try_from(seq.len()).expect("a sequence number is short");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(seq);
        out.extend(window.order.iter().flatten());
        out
    }

    /// A window of `capacity` from [`SavedWindow::encode`] (or the older bare-keys form).
    ///
    /// # Errors
    /// When the bytes are cut short or name no sequence number.
    pub fn decode(capacity: usize, bytes: &[u8]) -> Result<Self, String> {
        let Some(rest) = bytes.strip_prefix(MAGIC) else {
            return Ok(SavedWindow {
                covers: None,
                window: LineWindow::from_bytes(capacity, bytes)?,
            });
        };
        let (len, rest) = rest
            .split_first_chunk::<2>()
            .ok_or("the window is cut short before its sequence number")?;
        let len = usize::from(u16::from_be_bytes(*len));
        if rest.len() < len {
            return Err("the window is cut short in its sequence number".into());
        }
        let (seq, keys) = rest.split_at(len);
        let covers = std::str::from_utf8(seq)
            .ok()
            .and_then(|s| s.parse::<SequenceNumber>().ok())
            .ok_or("the window names no valid sequence number")?;
        Ok(SavedWindow {
            covers: Some(covers),
            window: LineWindow::from_bytes(capacity, keys)?,
        })
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

    /// Saves a window encoded by [`SavedWindow::encode`].
    pub async fn save(
        &self,
        sink: SinkKind,
        shard: &ShardId,
        encoded: Bytes,
    ) -> Result<(), ObjectStoreError> {
        self.store.put(&Self::key(sink, shard), encoded).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> LineId {
        crate::model::LineId::from_line_no("536365", u64::from(n))
    }

    /// Saved windows hold these keys: the way a key is made from a line id must never change, or
    /// a window saved by an older version would stop catching the copies it covers.
    #[test]
    fn a_line_key_is_the_first_half_of_the_blake3_of_its_id() {
        let id = LineId::parse("0123456789abcdef0123456789abcdef").unwrap();
        let hash = blake3::hash(b"0123456789abcdef0123456789abcdef");
        assert_eq!(key(&id)[..], hash.as_bytes()[..16]);
        let mut saved = LineWindow::from_bytes(4, &hash.as_bytes()[..16]).unwrap();
        assert!(!saved.insert(&id), "a restored key still catches its line");
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
    fn a_saved_window_names_what_it_covers_and_the_older_form_still_loads() {
        let mut w = LineWindow::new(3);
        for n in 1..=2 {
            w.insert(&id(n));
        }
        // A Kinesis sequence number, larger than any machine integer.
        let covers: SequenceNumber = "49590338271490256608559692538361571095921575989136588898"
            .parse()
            .unwrap();
        let saved = SavedWindow::decode(3, &SavedWindow::encode(&covers, &w)).unwrap();
        assert_eq!(saved.covers, Some(covers));
        assert!(!saved.window.clone().insert(&id(2)));
        let old = SavedWindow::decode(3, &w.to_bytes()).unwrap();
        assert_eq!(old.covers, None);
        assert!(!old.window.clone().insert(&id(1)));
        let encoded = SavedWindow::encode(&SequenceNumber::from(7), &w);
        assert!(SavedWindow::decode(3, &encoded[..6]).is_err());
        assert!(SavedWindow::decode(3, &encoded[..encoded.len() - 1]).is_err());
    }

    #[test]
    fn a_zero_capacity_window_dedups_nothing() {
        let mut w = LineWindow::new(0);
        assert!(!w.is_enabled());
        assert!(w.insert(&id(1)) && w.insert(&id(1)));
        assert!(w.to_bytes().is_empty());
    }
}
