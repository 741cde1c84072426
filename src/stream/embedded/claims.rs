//! The line claims of `stream.sqlite`: table `invoice_claims`, one row per invoice and record.
//!
//! A row holds the ids of the lines of one invoice that one record carries (`line_ids`: a
//! [`RAW_IDS`] byte, then each id's 16 bytes one after another), with the store that sent them and
//! the record's place. (Rows written before 2026-12-08 hold each id as its 32 hex digits, and no
//! leading byte; they are read as they are. The bytes halve what a claim adds to the file and to
//! every commit's WAL.) The lines themselves stay in the record. An invoice's lines nearly always
//! arrive together, about twenty to an invoice in the dataset, so a request claims its lines with a row
//! per invoice, not per line, and asks whether they are taken with one look-up per invoice: the
//! writer, which every append waits for, does a twentieth of the B-tree work it did with a row
//! per line (table `claimed_lines`, before 2026-12-07).

use crate::model::LineId;
use crate::stream::line_index::LineClaim;
use compact_str::CompactString;
use rusqlite::{params, Transaction};
use std::collections::HashSet;

/// The first byte of a `line_ids` value that holds the ids' bytes (no hex digit is this byte).
const RAW_IDS: u8 = 0x01;

/// Bytes of one id in a `line_ids` value that starts with [`RAW_IDS`].
const RAW_ID_BYTES: usize = 16;

/// Bytes of one id in a `line_ids` value of before 2026-12-08: its hex digits.
const HEX_ID_BYTES: usize = 32;

/// One id in `line_ids`: its 128 bits.
pub(super) type RawId = [u8; RAW_ID_BYTES];

/// The claims of one invoice in one record, as their row holds them.
pub(super) struct InvoiceIds {
    pub invoice_no: CompactString,
    pub store_id: CompactString,
    /// [`RAW_IDS`], then the ids' bytes one after another.
    pub line_ids: Vec<u8>,
}

impl InvoiceIds {
    fn new(invoice_no: CompactString, store_id: CompactString) -> Self {
        let mut line_ids = Vec::with_capacity(1 + RAW_ID_BYTES * 24);
        line_ids.push(RAW_IDS);
        InvoiceIds {
            invoice_no,
            store_id,
            line_ids,
        }
    }

    fn push(&mut self, id: &LineId) {
        self.line_ids.extend_from_slice(&id.to_bytes());
    }

    /// The ids, as their bytes.
    pub fn ids(&self) -> impl Iterator<Item = &RawId> {
        self.line_ids[1..]
            .chunks_exact(RAW_ID_BYTES)
            .map(|id| id.try_into().expect("chunks of RAW_ID_BYTES"))
    }
}

/// The claims of one append, grouped into their rows before the append is queued.
///
/// They are made on the caller's thread (an HTTP worker), so the writer, whose every commit the
/// appends wait for, only looks them up and files them: grouping the lines, checking that the
/// request claims no id twice and dropping the claimed lines were a fifth of the writer's time in
/// a profile of the durable replay.
#[derive(Default)]
pub(super) struct Claims {
    /// Per record (in the append's order), a row per invoice; a record past the end claims nothing.
    pub records: Vec<Vec<InvoiceIds>>,
    /// The ids the append claims more than once: taken, whatever the file holds.
    pub twice: Vec<LineId>,
}

impl Claims {
    pub fn prepare(claims: &[Vec<LineClaim<'_>>]) -> Self {
        let mut seen: HashSet<(&str, &LineId), foldhash::fast::RandomState> = HashSet::default();
        let mut twice = Vec::new();
        let records = claims
            .iter()
            .map(|record| {
                by_invoice(record.iter().filter(|claim| {
                    let first = seen.insert((claim.invoice_no(), claim.line_id()));
                    if !first {
                        twice.push(claim.line_id().clone());
                    }
                    first
                }))
            })
            .collect();
        Claims { records, twice }
    }

    /// The rows of record `i`.
    pub fn of_record(&self, i: usize) -> &[InvoiceIds] {
        self.records.get(i).map_or(&[], Vec::as_slice)
    }
}

/// The claims of one record grouped by invoice, in the order each invoice first appears.
pub(super) fn by_invoice<'a, 'l: 'a>(
    claims: impl IntoIterator<Item = &'a LineClaim<'l>>,
) -> Vec<InvoiceIds> {
    let mut groups: Vec<InvoiceIds> = Vec::new();
    for claim in claims {
        // A request's lines come invoice by invoice, so the group is nearly always the last one.
        let group = match groups
            .iter()
            .rposition(|g| g.invoice_no == claim.invoice_no())
        {
            Some(at) => &mut groups[at],
            None => {
                groups.push(InvoiceIds::new(
                    claim.line.invoice_no.clone(),
                    claim.store_id.into(),
                ));
                groups.last_mut().expect("just pushed")
            }
        };
        group.push(claim.line_id());
    }
    groups
}

/// Whether a `line_ids` value holds the id whose bytes are `id`.
pub(super) fn holds(line_ids: &[u8], id: &RawId) -> bool {
    match line_ids.split_first() {
        Some((&RAW_IDS, ids)) => ids.chunks_exact(RAW_ID_BYTES).any(|stored| stored == id),
        // A value of before 2026-12-08: the ids' hex digits one after another.
        _ => {
            let digits = LineId::from_bytes(id);
            line_ids
                .chunks_exact(HEX_ID_BYTES)
                .any(|stored| stored == digits.as_str().as_bytes())
        }
    }
}

/// A claim row. REPLACE: a record appended again by its dedup key lands on the first one's place,
/// whose claims are gone by then (else the lines would have been taken); a row left of them holds
/// the same ids.
const INSERT_ROW: &str = "
INSERT OR REPLACE INTO invoice_claims (invoice_no, shard, seq, store_id, line_ids, arrived_at_ms)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Files the claims of the record at (`shard`, `seq`): a row per invoice. The lines themselves
/// are not copied: the record holds them, and a look-up reads them from there.
pub(super) fn insert(
    tx: &Transaction<'_>,
    rows: &[InvoiceIds],
    shard: u32,
    seq: i64,
    arrived_at_ms: i64,
) -> rusqlite::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut insert = tx.prepare_cached(INSERT_ROW)?;
    for row in rows {
        insert.execute(params![
            row.invoice_no.as_str(),
            shard,
            seq,
            row.store_id.as_str(),
            row.line_ids,
            arrived_at_ms
        ])?;
    }
    Ok(())
}

/// Moves the claims of a file written by an older version into `invoice_claims`, in the
/// transaction that prepares the file, and drops the old table: `claimed_lines` (a row per
/// line, keyed by invoice and id; 2026-12-05 to 2026-12-06) or `line_ids` (a row per line,
/// keyed by id alone, the invoice read from the line's JSON; before 2026-12-05).
///
/// The JSON copy of a line that claims of before 2026-12-06 carried is not kept: the claim's
/// record holds the line, and a claim whose record retention removed is as good as gone (the
/// writer lets the line be claimed anew), as it is for every claim since.
pub(super) fn migrate(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    for (table, invoice) in [
        ("line_ids", "json_extract(line, '$.invoice_no')"),
        ("claimed_lines", "invoice_no"),
    ] {
        let exists: bool = tx.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |row| row.get(0),
        )?;
        if !exists {
            continue;
        }
        let (lines, rows) = move_claims(tx, table, invoice)?;
        tx.execute_batch(&format!("DROP TABLE {table};"))?;
        tracing::info!(
            table,
            lines,
            rows,
            "Moved the stream's line claims to one row per invoice and record (invoice_claims)."
        );
    }
    Ok(())
}

/// Copies the claims of `table` into `invoice_claims`, grouped by invoice and record; returns the
/// lines and rows written. A claim whose invoice cannot be read is left out (it cannot be looked
/// up by invoice, as a claim must be).
fn move_claims(
    tx: &Transaction<'_>,
    table: &str,
    invoice: &str,
) -> rusqlite::Result<(usize, usize)> {
    let mut read = tx.prepare(&format!(
        "SELECT {invoice}, line_id, store_id, shard, seq, arrived_at_ms FROM {table}
         WHERE {invoice} IS NOT NULL ORDER BY 1, 4, 5"
    ))?;
    let mut write = tx.prepare(INSERT_ROW)?;
    struct Row {
        invoice_no: String,
        shard: i64,
        seq: i64,
        store_id: String,
        line_ids: Vec<u8>,
        arrived_at_ms: i64,
    }
    let flush = |row: &Row, write: &mut rusqlite::Statement<'_>| {
        write.execute(params![
            row.invoice_no,
            row.shard,
            row.seq,
            row.store_id,
            row.line_ids,
            row.arrived_at_ms
        ])
    };
    let (mut lines, mut rows) = (0, 0);
    let mut current: Option<Row> = None;
    let mut found = read.query([])?;
    while let Some(found) = found.next()? {
        let invoice_no: String = found.get(0)?;
        let line_id: String = found.get(1)?;
        let (shard, seq): (i64, i64) = (found.get(3)?, found.get(4)?);
        let Some(line_id) = LineId::parse(&line_id) else {
            continue;
        };
        let same = current
            .as_ref()
            .is_some_and(|c| c.invoice_no == invoice_no && c.shard == shard && c.seq == seq);
        if !same {
            if let Some(done) = current.take() {
                flush(&done, &mut write)?;
                rows += 1;
            }
            current = Some(Row {
                invoice_no,
                shard,
                seq,
                store_id: found.get(2)?,
                line_ids: vec![RAW_IDS],
                arrived_at_ms: found.get(5)?,
            });
        }
        let row = current.as_mut().expect("set above");
        row.line_ids.extend_from_slice(&line_id.to_bytes());
        lines += 1;
    }
    if let Some(done) = current {
        flush(&done, &mut write)?;
        rows += 1;
    }
    Ok((lines, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::line::sample_ingested;

    fn line(invoice_no: &str, n: u64) -> crate::model::InvoiceLine {
        let mut line = sample_ingested(None, 6, "2.55", Some(n)).line;
        line.invoice_no = invoice_no.into();
        line.line_id = LineId::from_line_no(invoice_no, n);
        line
    }

    /// The claims of a record make a row per invoice, holding each of its ids once, in order.
    #[test]
    fn a_record_claims_its_lines_with_a_row_per_invoice() {
        let lines = [
            line("536365", 1),
            line("536365", 2),
            line("536366", 1),
            line("536365", 3),
        ];
        let claims: Vec<LineClaim<'_>> =
            lines.iter().map(|l| LineClaim::new("store-1", l)).collect();
        let groups = by_invoice(&claims);
        let invoices: Vec<&str> = groups.iter().map(|g| g.invoice_no.as_str()).collect();
        assert_eq!(invoices, ["536365", "536366"]);
        let ids: Vec<LineId> = groups[0].ids().map(LineId::from_bytes).collect();
        assert_eq!(
            groups[0].line_ids.len(),
            1 + 3 * 16,
            "a byte, then 16 an id"
        );
        assert_eq!(
            ids,
            [1, 2, 3]
                .map(|n| LineId::from_line_no("536365", n))
                .to_vec()
        );
        assert!(holds(
            &groups[1].line_ids,
            &LineId::from_line_no("536366", 1).to_bytes()
        ));
        assert!(!holds(
            &groups[1].line_ids,
            &LineId::from_line_no("536366", 2).to_bytes()
        ));
    }

    /// A row written before 2026-12-08 holds its ids as hex digits; it is read as it is.
    #[test]
    fn a_row_of_hex_digits_is_still_read() {
        let ids = [1, 2].map(|n| LineId::from_line_no("536365", n));
        let hex: Vec<u8> = ids.iter().flat_map(|id| id.as_str().bytes()).collect();
        let other = LineId::from_line_no("536365", 3);
        for id in &ids {
            assert!(holds(&hex, &id.to_bytes()));
        }
        assert!(!holds(&hex, &other.to_bytes()));
    }

    /// An id's bytes spell its hex digits, and read back to the same id.
    #[test]
    fn an_id_round_trips_through_its_bytes() {
        let id = LineId::from_line_no("C536379", 7);
        let bytes = id.to_bytes();
        assert_eq!(LineId::from_bytes(&bytes), id);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, id.as_str());
        let every_digit = LineId::parse("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(
            every_digit.to_bytes(),
            [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef].repeat(2)[..]
        );
    }
}
