//! The embedded log's [`LineIndex`]: the `claimed_lines` and `idempotency_keys` tables of
//! `stream.sqlite`. Line ids are claimed by the writer in the append's own transaction, so a
//! crash never leaves a claimed id without its record, nor a record without its claims.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use std::collections::HashMap;

use super::EmbeddedStream;
use crate::model::LineId;
use crate::stream::line_index::{
    KeyState, LineClaim, LineIndex, LineKey, StoredAnswer, StoredLine,
    KEY_IN_FLIGHT_ABANDONED_AFTER,
};
use crate::stream::{PutRecord, PutResult, StreamError};

#[async_trait]
impl LineIndex for EmbeddedStream {
    async fn lookup(
        &self,
        lines: &[LineKey<'_>],
    ) -> Result<HashMap<LineId, StoredLine>, StreamError> {
        let keys: Vec<(String, LineId)> = lines
            .iter()
            .map(|l| (l.invoice_no.to_owned(), l.line_id.clone()))
            .collect();
        // One probe of the primary key per line: the lines of a request share few invoices, so
        // the probes read a handful of neighbouring pages.
        let rows = self
            .blocking(move |conn| {
                let mut find = conn.prepare_cached(
                    "SELECT store_id, line FROM claimed_lines WHERE invoice_no = ?1 AND line_id = ?2",
                )?;
                let mut rows = Vec::new();
                for (invoice_no, id) in keys {
                    let found = find
                        .query_row(params![invoice_no, id.as_str()], |row| {
                            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                        })
                        .optional()?;
                    if let Some((store, line)) = found {
                        rows.push((id, store, line));
                    }
                }
                Ok(rows)
            })
            .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for (id, store, line) in rows {
            out.insert(id, StoredLine::decode(store, &line, false)?);
        }
        Ok(out)
    }

    async fn append(
        &self,
        records: Vec<PutRecord>,
        claims: Vec<Vec<LineClaim>>,
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
        self.blocking(move |conn| {
            let tx = rusqlite::Transaction::new_unchecked(
                conn,
                rusqlite::TransactionBehavior::Immediate,
            )?;
            let found: Option<(String, Option<u16>, Option<String>, i64)> = tx
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
                    tx.execute(
                        "INSERT OR REPLACE INTO idempotency_keys
                             (store_id, key, fingerprint, status, answer, started_at_ms)
                         VALUES (?1, ?2, ?3, NULL, NULL, ?4)",
                        params![store_id, key, fingerprint, now],
                    )?;
                    KeyState::Started
                }
            };
            tx.commit()?;
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
        self.blocking(move |conn| {
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
        self.blocking(move |conn| {
            conn.execute(
                "DELETE FROM idempotency_keys WHERE store_id = ?1 AND key = ?2 AND answer IS NULL",
                params![store_id, key],
            )
            .map(|_| ())
        })
        .await
    }
}
