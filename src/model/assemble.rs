//! Turning checked drafts into lines, in input order: the day/month order of slash dates and the
//! line ids.
//!
//! Both depend on more than one line. With [`DateOrder::Auto`] a line `1/2/2011` can only be
//! finished once some line of the same input has decided the order, and a content id depends on
//! how many identical lines of the same invoice came before. The [`Assembler`] takes lines in
//! input order, holds them back while the order is undecided, and hands them out in the same order.

use super::datetime::{DateValue, Evidence, SlashDate};
use super::fields::Draft;
use super::{
    DateOrder, InputError, InvoiceLine, LineContent, LineError, LineId, LineOrigin, LinePosition,
    OccurrenceCounter, RequestKey,
};
use std::collections::{HashMap, VecDeque};

/// How far back identical lines are counted as further occurrences of each other.
#[derive(Debug)]
pub(crate) enum Occurrences {
    /// Over the whole body: for request bodies, whose size the server limits.
    Whole(OccurrenceCounter),
    /// Per invoice, for the most recently seen invoices only: for files of any size.
    Recent(RecentInvoices),
}

impl Occurrences {
    pub(crate) fn whole() -> Self {
        Occurrences::Whole(OccurrenceCounter::default())
    }

    fn next(&mut self, content: &LineContent<'_>) -> u32 {
        match self {
            Occurrences::Whole(counter) => counter.next(content),
            Occurrences::Recent(recent) => recent.next(content),
        }
    }
}

/// Occurrence counters of the invoices seen last, so that memory stays bounded on a 5M-row file.
///
/// The counter of an invoice is kept while it is among the `keep` most recently seen invoices
/// (seen = a line of it was read). Once `2 * keep` invoices are held, all but the `keep` most
/// recent are dropped, so a counter lives for at least `keep` and at most `2 * keep` other
/// invoices. Identical lines of one invoice further apart than that count as different
/// occurrences (occurrence 0 again), i.e. get the same id: in real exports an invoice's lines are
/// adjacent, so this only matters for files that repeat an invoice far apart. The rule depends
/// only on the input, so the same file always gives the same ids.
#[derive(Debug)]
pub(crate) struct RecentInvoices {
    keep: usize,
    tick: u64,
    invoices: HashMap<String, (u64, OccurrenceCounter)>,
}

impl RecentInvoices {
    pub(crate) fn new(keep: usize) -> Self {
        RecentInvoices {
            keep: keep.max(1),
            tick: 0,
            invoices: HashMap::new(),
        }
    }

    fn next(&mut self, content: &LineContent<'_>) -> u32 {
        self.tick += 1;
        if !self.invoices.contains_key(content.invoice_no) {
            if self.invoices.len() >= 2 * self.keep {
                self.forget_oldest();
            }
            self.invoices.insert(
                content.invoice_no.to_owned(),
                (0, OccurrenceCounter::default()),
            );
        }
        match self.invoices.get_mut(content.invoice_no) {
            Some((seen, counter)) => {
                *seen = self.tick;
                counter.next(content)
            }
            None => 0,
        }
    }

    fn forget_oldest(&mut self) {
        let mut seen: Vec<u64> = self.invoices.values().map(|(t, _)| *t).collect();
        let cut = seen.len() - self.keep;
        let (_, oldest_kept, _) = seen.select_nth_unstable(cut);
        let oldest_kept = *oldest_kept;
        self.invoices.retain(|_, (t, _)| *t >= oldest_kept);
    }
}

/// What an output of the assembler is: a line, or the error of a line with whatever the caller
/// keeps to report it (the raw CSV row).
pub(crate) type Assembled<X> = Result<InvoiceLine, (LineError, X)>;

struct Held<X> {
    position: LinePosition,
    draft: Result<Draft, LineError>,
    extra: X,
}

/// Finishes drafts into lines in input order; see the module documentation.
pub(crate) struct Assembler<X> {
    order: DateOrder,
    /// For [`DateOrder::Auto`]: the order once a value decided it, with that value and its place.
    decided: Option<(DateOrder, SlashDate, LinePosition)>,
    /// The first value that could be read both ways, for the error if nothing decides.
    first_ambiguous: Option<SlashDate>,
    /// Whether lines with an undecided date are held back (true) or rejected (false).
    hold: bool,
    held: VecDeque<Held<X>>,
    ready: VecDeque<(LineOrigin, Assembled<X>)>,
    occurrences: Occurrences,
    /// Ids of unnumbered lines from the request key and the position, when the request has one.
    request_key: Option<RequestKey>,
}

impl<X> Assembler<X> {
    /// Ids of unnumbered lines come from `key` and their position instead of their content.
    pub(crate) fn keyed(mut self, key: Option<RequestKey>) -> Self {
        self.request_key = key;
        self
    }

    pub(crate) fn new(order: DateOrder, occurrences: Occurrences) -> Self {
        Assembler {
            order,
            decided: None,
            first_ambiguous: None,
            hold: true,
            held: VecDeque::new(),
            ready: VecDeque::new(),
            occurrences,
            request_key: None,
        }
    }

    /// True while an `Auto` order is open: no value has decided it yet.
    pub(crate) fn undecided(&self) -> bool {
        self.order == DateOrder::Auto && self.decided.is_none()
    }

    pub(crate) fn saw_slash_date(&self) -> bool {
        self.first_ambiguous.is_some() || self.decided.is_some()
    }

    /// From now on, reject lines whose date order is undecided instead of holding them back: for
    /// a stream after its bounded look-ahead (see [`super::csv::CsvLines`]).
    pub(crate) fn stop_holding(&mut self) {
        self.hold = false;
    }

    /// Takes the next line of the input. `extra` is called only when the line has to be kept for
    /// later or turns out bad.
    pub(crate) fn push(
        &mut self,
        position: LinePosition,
        draft: Result<Draft, LineError>,
        extra: impl FnOnce() -> X,
    ) {
        if self.undecided() {
            if let Ok(Draft {
                date: DateValue::Slash(s),
                ..
            }) = &draft
            {
                match s.evidence() {
                    Evidence::Only(order) => {
                        self.decided = Some((order, *s, position));
                        while let Some(h) = self.held.pop_front() {
                            self.finish(h.position, h.draft, move || h.extra);
                        }
                    }
                    Evidence::Ambiguous => {
                        self.first_ambiguous.get_or_insert(*s);
                        if self.hold {
                            self.held.push_back(Held {
                                position,
                                draft,
                                extra: extra(),
                            });
                            return;
                        }
                    }
                    Evidence::Same(_) | Evidence::Neither => {}
                }
            }
            if !self.held.is_empty() {
                self.held.push_back(Held {
                    position,
                    draft,
                    extra: extra(),
                });
                return;
            }
        }
        self.finish(position, draft, extra);
    }

    /// The end of the input.
    ///
    /// # Errors
    /// [`InputError::AmbiguousDateOrder`] when lines are still held because no value decided the
    /// order; those lines are dropped, so nothing half-decided comes out.
    pub(crate) fn end(&mut self) -> Result<(), InputError> {
        match (self.held.is_empty(), self.first_ambiguous) {
            (false, Some(example)) => {
                self.held.clear();
                Err(InputError::AmbiguousDateOrder {
                    example: example.to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The next finished line, in input order, with its place in the input.
    pub(crate) fn pop_at(&mut self) -> Option<(LineOrigin, Assembled<X>)> {
        self.ready.pop_front()
    }

    fn finish(
        &mut self,
        position: LinePosition,
        draft: Result<Draft, LineError>,
        extra: impl FnOnce() -> X,
    ) {
        let line_no = draft.as_ref().ok().and_then(|d| d.line_no);
        let line = draft.and_then(|d| {
            let date = self.date_of(position, &d.date)?;
            let occurrence = match (d.line_no, self.request_key) {
                (Some(_), _) | (None, Some(_)) => 0,
                (None, None) => self.occurrences.next(&LineContent {
                    invoice_no: &d.invoice_no,
                    stock_code: &d.stock_code,
                    description: d.description.as_deref(),
                    quantity: d.quantity,
                    invoice_date: date,
                    unit_price: d.unit_price,
                    customer_id: d.customer_id,
                    country: &d.country,
                }),
            };
            let keyed = d.line_no.is_none().then_some(self.request_key).flatten();
            let mut line = InvoiceLine::new(
                d.invoice_no,
                d.stock_code,
                d.description,
                d.quantity,
                date,
                d.unit_price,
                d.customer_id,
                d.country,
                d.line_no,
                occurrence,
            );
            if let Some(key) = keyed {
                let at = match position {
                    LinePosition::Index(i) => i as u64,
                    LinePosition::Row(r) => r,
                };
                line.line_id = LineId::from_request_key(&key, at);
            }
            Ok(line)
        });
        let origin = LineOrigin { position, line_no };
        self.ready
            .push_back((origin, line.map_err(|e| (e, extra()))));
    }

    fn date_of(
        &self,
        position: LinePosition,
        date: &DateValue,
    ) -> Result<chrono::NaiveDateTime, LineError> {
        let slash = match date {
            DateValue::Exact(d) => return Ok(*d),
            DateValue::Slash(s) => s,
        };
        let order = match self.decided {
            Some((order, _, _)) => order,
            None => self.order,
        };
        slash.read_as(order).ok_or_else(|| {
            let reason = match (self.order, self.decided) {
                (DateOrder::Mdy, _) => "is not a real month-first date (M/D/YYYY H:MM, the dataset's order); if the input is day-first, set the date order to dmy".to_owned(),
                (DateOrder::Dmy, _) => "is not a real day-first date (DD/MM/YYYY HH:MM); if the input is month-first, set the date order to mdy".to_owned(),
                (DateOrder::Auto, Some((decided, example, at))) => format!(
                    "is not a real {} date, and the dates of this input are {} ({at} has {example}); fix the value or set the date order explicitly",
                    order_name(decided),
                    order_name(decided),
                ),
                (DateOrder::Auto, None) => match slash.evidence() {
                    Evidence::Neither => "is not a real date read either day-first or month-first".to_owned(),
                    _ => "reads both day-first and month-first and no earlier value decided which; set the date order (mdy or dmy)".to_owned(),
                },
            };
            LineError::field(position, "InvoiceDate", Some(&slash.to_string()), reason)
        })
    }
}

fn order_name(order: DateOrder) -> &'static str {
    match order {
        DateOrder::Mdy => "month-first",
        DateOrder::Dmy => "day-first",
        DateOrder::Auto => "undecided",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::datetime::parse_date;
    use rust_decimal::Decimal;

    fn draft(invoice: &str, date: &str) -> Result<Draft, LineError> {
        Ok(Draft {
            invoice_no: invoice.into(),
            stock_code: "85123A".into(),
            description: None,
            quantity: 1,
            date: parse_date(date).expect("test date"),
            unit_price: Decimal::new(255, 2),
            customer_id: None,
            country: "United Kingdom".into(),
            line_no: None,
        })
    }

    fn drain(a: &mut Assembler<usize>) -> Vec<Assembled<usize>> {
        std::iter::from_fn(|| a.pop_at().map(|(_, line)| line)).collect()
    }

    #[test]
    fn auto_holds_lines_until_a_value_decides() {
        let mut a = Assembler::new(DateOrder::Auto, Occurrences::whole());
        a.push(LinePosition::Row(2), draft("1", "01/02/2011 10:00"), || 2);
        a.push(LinePosition::Row(3), draft("1", "2011-02-01 10:00"), || 3);
        assert!(
            a.pop_at().is_none(),
            "nothing leaves before the order is known"
        );
        a.push(LinePosition::Row(4), draft("1", "13/02/2011 10:00"), || 4);
        // A later contradicting value is that line's error.
        a.push(LinePosition::Row(5), draft("1", "02/13/2011 10:00"), || 5);
        let out = drain(&mut a);
        assert_eq!(out.len(), 4);
        let first = out[0].as_ref().expect("day-first");
        assert_eq!(first.invoice_date.to_string(), "2011-02-01 10:00:00");
        // Same content in the same invoice: the second is occurrence 1, so a different id.
        let second = out[1].as_ref().expect("iso");
        assert_ne!(first.line_id, second.line_id);
        let (e, raw) = out[3].as_ref().expect_err("contradiction");
        assert_eq!(*raw, 5);
        assert!(
            e.reason
                .contains("dates of this input are day-first (row 4 has 13/2/2011"),
            "{e}"
        );
        assert!(a.end().is_ok());
    }

    #[test]
    fn auto_without_a_deciding_value_is_an_input_error() {
        let mut a = Assembler::new(DateOrder::Auto, Occurrences::whole());
        a.push(LinePosition::Index(0), draft("1", "01/02/2011 10:00"), || 0);
        a.push(LinePosition::Index(1), draft("1", "3/3/2011 10:00"), || 1);
        match a.end() {
            Err(InputError::AmbiguousDateOrder { example }) => {
                assert_eq!(example, "1/2/2011 10:00:00")
            }
            other => panic!("{other:?}"),
        }
        assert!(a.pop_at().is_none(), "nothing half-decided comes out");
    }

    #[test]
    fn after_the_look_ahead_undecided_lines_are_rejected() {
        let mut a = Assembler::new(DateOrder::Auto, Occurrences::whole());
        a.stop_holding();
        a.push(LinePosition::Row(2), draft("1", "01/02/2011 10:00"), || 2);
        a.push(LinePosition::Row(3), draft("1", "3/3/2011 10:00"), || 3);
        let out = drain(&mut a);
        assert!(out[0].is_err());
        assert!(out[1].is_ok());
    }

    #[test]
    fn explicit_orders_flow_through() {
        let mut a = Assembler::new(DateOrder::Dmy, Occurrences::whole());
        a.push(LinePosition::Row(2), draft("1", "01/02/2011 10:00"), || 2);
        a.push(LinePosition::Row(3), draft("1", "1/13/2011 10:00"), || 3);
        let out = drain(&mut a);
        let first = out[0].as_ref().expect("day-first");
        assert_eq!(first.invoice_date.to_string(), "2011-02-01 10:00:00");
        assert_eq!(out[1].as_ref().expect_err("month 13").1, 3);
    }

    #[test]
    fn recent_invoices_forget_old_invoices_deterministically() {
        let mut recent = RecentInvoices::new(2);
        let d = parse_date("2011-02-01 10:00").expect("date");
        let DateValue::Exact(date) = d else {
            panic!("exact")
        };
        let content = |invoice: &'static str| LineContent {
            invoice_no: invoice,
            stock_code: "X",
            description: None,
            quantity: 1,
            invoice_date: date,
            unit_price: Decimal::ONE,
            customer_id: None,
            country: "UK",
        };
        assert_eq!(recent.next(&content("a")), 0);
        assert_eq!(recent.next(&content("a")), 1);
        for other in ["b", "c", "d"] {
            recent.next(&content(other));
        }
        // Four invoices held (a, b, c, d): a is still counted.
        assert_eq!(recent.next(&content("a")), 2);
        for other in ["e", "f", "g"] {
            recent.next(&content(other));
        }
        assert!(recent.invoices.len() <= 4);
        assert_eq!(
            recent.next(&content("a")),
            0,
            "a was forgotten: counting restarts"
        );
    }
}
