//! The embedded log's [`LineIndex`]: the `invoice_claims` and `idempotency_keys` tables of
//! `stream.sqlite`. Line ids are claimed by the writer in the append's own transaction, so a
//! crash never leaves a claimed id without its record, nor a record without its claims.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use std::collections::HashMap;

use super::claims;
use super::schema::records_table;
use super::EmbeddedStream;
use crate::model::LineId;
use crate::stream::line_index::{
    KeyState, LineClaim, LineIndex, LineKey, StoredAnswer, StoredLine,
    KEY_IN_FLIGHT_ABANDONED_AFTER,
};
use crate::stream::{record, PutRecord, PutResult, StreamError};

/// A line's claim: the store that sent the line, and the record that holds it.
struct Claimed {
    store_id: String,
    shard: u32,
    seq: i64,
}

/// Where a record is: its shard and sequence number.
type RecordPlace = (u32, i64);

/// The payloads of the records that hold the lines of `claims`, each read once.
fn claimed_records(
    conn: &rusqlite::Connection,
    claims: &[(LineId, Claimed)],
) -> rusqlite::Result<Vec<(RecordPlace, Vec<u8>)>> {
    let mut places: Vec<RecordPlace> = claims.iter().map(|(_, c)| (c.shard, c.seq)).collect();
    places.sort_unstable();
    places.dedup();
    let mut out = Vec::with_capacity(places.len());
    for (shard, seq) in places {
        let data: Option<Vec<u8>> = conn
            .prepare_cached(&format!(
                "SELECT data FROM {} WHERE seq = ?1",
                records_table(shard)
            ))?
            .query_row([seq], |row| row.get(0))
            .optional()?;
        if let Some(data) = data {
            out.push(((shard, seq), data));
        }
    }
    Ok(out)
}

#[async_trait]
impl LineIndex for EmbeddedStream {
    /// Binary: nothing but shopstream reads the embedded log, and each of its sinks decodes
    /// every record.
    fn record_format(&self) -> record::RecordFormat {
        record::RecordFormat::Binary
    }

    /// The writer looks every claimed id up in the append's own transaction anyway
    /// (`writer::taken_ids`, one look-up per invoice): a look-up before it, on a read connection,
    /// would find nothing for new lines.
    fn optimistic_append(&self) -> bool {
        true
    }

    async fn lookup(
        &self,
        lines: &[LineKey<'_>],
    ) -> Result<HashMap<LineId, StoredLine>, StreamError> {
        // The ids asked for, by invoice: one look-up per invoice finds the rows that claim them.
        // Each id with its bytes, made once however many rows of its invoice are read.
        let mut invoices: HashMap<String, Vec<(LineId, claims::RawId)>> = HashMap::new();
        for l in lines {
            invoices
                .entry(l.invoice_no.to_owned())
                .or_default()
                .push((l.line_id.clone(), l.line_id.to_bytes()));
        }
        // All look-ups in one read transaction (a statement on its own would take and drop the
        // WAL read lock each time).
        let found = self
            .blocking(move |conn| {
                let tx = rusqlite::Transaction::new_unchecked(
                    conn,
                    rusqlite::TransactionBehavior::Deferred,
                )?;
                let mut rows = Vec::new();
                {
                    let mut find = tx.prepare_cached(
                        "SELECT store_id, shard, seq, line_ids FROM invoice_claims
                         WHERE invoice_no = ?1",
                    )?;
                    for (invoice_no, ids) in invoices {
                        let mut found = find.query([invoice_no])?;
                        while let Some(row) = found.next()? {
                            let stored = row.get_ref(3)?.as_blob()?;
                            for (id, bytes) in &ids {
                                if claims::holds(stored, bytes) {
                                    rows.push((
                                        id.clone(),
                                        Claimed {
                                            store_id: row.get(0)?,
                                            shard: row.get(1)?,
                                            seq: row.get(2)?,
                                        },
                                    ));
                                }
                            }
                        }
                    }
                }
                let records = claimed_records(&tx, &rows)?;
                tx.commit()?;
                Ok((rows, records))
            })
            .await?;
        let (rows, records) = found;
        let mut decoded: HashMap<RecordPlace, Vec<crate::model::InvoiceLine>> = HashMap::new();
        for (key, data) in records {
            let batch = record::decode(&data).map_err(|e| {
                StreamError::Backend(format!(
                    "the record of a line claim (shard {}, seq {}) cannot be read: {e}",
                    key.0, key.1
                ))
            })?;
            decoded.insert(key, batch.lines);
        }
        let mut out = HashMap::with_capacity(rows.len());
        for (id, claimed) in rows {
            // The line is in the claim's record; a claim whose record retention removed a moment
            // ago is as good as gone (the writer replaces it).
            let Some(line) = decoded
                .get(&(claimed.shard, claimed.seq))
                .and_then(|lines| lines.iter().find(|l| l.line_id == id))
            else {
                continue;
            };
            let stored = StoredLine {
                store_id: claimed.store_id,
                line: line.clone(),
                pending: false,
            };
            out.insert(id, stored);
        }
        Ok(out)
    }

    async fn append(
        &self,
        records: Vec<PutRecord>,
        claims: Vec<Vec<LineClaim<'_>>>,
    ) -> Result<Vec<PutResult>, StreamError> {
        EmbeddedStream::append(self, records, claims).await
    }

    async fn begin_key(
        &self,
        store_id: &str,
        key: &str,
        fingerprint: &str,
    ) -> Result<KeyState, StreamError> {
        let (store_id, key, fingerprint) =
            (store_id.to_owned(), key.to_owned(), fingerprint.to_owned());
        let now = chrono::Utc::now().timestamp_millis();
        let abandoned_before = now - KEY_IN_FLIGHT_ABANDONED_AFTER.as_millis() as i64;
        // On the writer: the look-up and the insert are one step of its transaction.
        self.write(move |conn| {
            let found: Option<(String, Option<u16>, Option<String>, i64)> = conn
                .query_row(
                    "SELECT fingerprint, status, answer, started_at_ms FROM idempotency_keys
                     WHERE store_id = ?1 AND key = ?2",
                    params![store_id, key],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )
                .optional()?;
            let state = match found {
                Some((stored, _, _, _)) if stored != fingerprint => KeyState::Mismatch,
                Some((_, Some(status), Some(body), _)) => {
                    KeyState::Answered(StoredAnswer { status, body })
                }
                Some((_, _, _, started)) if started >= abandoned_before => KeyState::InFlight,
                _ => {
                    conn.execute(
                        "INSERT OR REPLACE INTO idempotency_keys
                             (store_id, key, fingerprint, status, answer, started_at_ms)
                         VALUES (?1, ?2, ?3, NULL, NULL, ?4)",
                        params![store_id, key, fingerprint, now],
                    )?;
                    KeyState::Started
                }
            };
            Ok(state)
        })
        .await
    }

    async fn finish_key(
        &self,
        store_id: &str,
        key: &str,
        answer: &StoredAnswer,
    ) -> Result<(), StreamError> {
        let (store_id, key, answer) = (store_id.to_owned(), key.to_owned(), answer.clone());
        self.write(move |conn| {
            conn.execute(
                "UPDATE idempotency_keys SET status = ?3, answer = ?4 WHERE store_id = ?1 AND key = ?2",
                params![store_id, key, answer.status, answer.body],
            )
            .map(|_| ())
        })
        .await
    }

    async fn abandon_key(&self, store_id: &str, key: &str) -> Result<(), StreamError> {
        let (store_id, key) = (store_id.to_owned(), key.to_owned());
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM idempotency_keys WHERE store_id = ?1 AND key = ?2 AND answer IS NULL",
                params![store_id, key],
            )
            .map(|_| ())
        })
        .await
    }
}
