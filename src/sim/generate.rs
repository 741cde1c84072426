//! A deterministic generator of realistic online-retail data, in the shape of the UCI Online Retail
//! dataset, for tests and benchmarks of the whole pipeline.
//!
//! Rows are made one invoice at a time and streamed: memory stays small whatever the size (a few
//! thousand products and customers, the invoice being built, and a ring of recent invoices that
//! cancellations mirror). The same [`GenerateOptions`] give the same rows, byte for byte once
//! written: all randomness comes from one ChaCha stream seeded from `seed`, every table is a `Vec`,
//! and every weight is an integer.
//!
//! What the data has, as the real data does: invoices of ~21 lines on average with a long tail;
//! ~1.7% cancellation lines (`C536379`, negative quantities, mostly mirroring an earlier invoice);
//! rare `A` bad-debt adjustments; ~25% of lines without a customer (whole invoices); service codes
//! (`POST`, `DOT`, `M`, `C2`, `D`, `BANK CHARGES`, `AMAZONFEE`, `PADS`); stock notes without a
//! description at price 0; descriptions with commas, double quotes and Latin-1 letters; repeated
//! stock codes and ~1% exact duplicate rows within invoices; 38 countries, the United Kingdom near
//! 90%, each customer in one country; times in business hours from 2010-12-01 to 2011-12-09,
//! ascending with the invoice numbers.

mod catalogue;
mod write;

pub use write::{
    write_csv, write_json, write_ndjson, write_rows, DateStyle, Encoding, Format, GenerateError,
    GenerateStats, OutputOptions, CSV_HEADER,
};

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, Weekday};
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;
use rust_decimal::{Decimal, RoundingStrategy};
use std::collections::VecDeque;

use crate::model::{InvoiceLine, Money};
use catalogue::{World, EIRE, UK};

/// Lines in the UCI Online Retail dataset.
pub const DEFAULT_LINES: u64 = 541_909;
/// The seed used when none is given: the dataset's first invoice number.
pub const DEFAULT_SEED: u64 = 536_365;
/// The first invoice number, as in the dataset.
pub const FIRST_INVOICE: u64 = 536_365;

/// What to generate. The same options always give the same rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Number of rows (the last invoice is cut short to fit).
    pub lines: u64,
    /// Seed of every random choice, the catalogue and customers included.
    pub seed: u64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            lines: DEFAULT_LINES,
            seed: DEFAULT_SEED,
        }
    }
}

/// One generated row, with the fields of the dataset in their typed form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedRow {
    pub invoice_no: String,
    pub stock_code: String,
    pub description: Option<String>,
    pub quantity: i64,
    pub invoice_date: NaiveDateTime,
    pub unit_price: Money,
    pub customer_id: Option<u64>,
    pub country: String,
}

impl GeneratedRow {
    /// The row as the pipeline's line, with its content id; `occurrence` is its index among
    /// identical rows before it (see [`crate::model::OccurrenceCounter`]).
    pub fn into_invoice_line(self, occurrence: u32) -> InvoiceLine {
        InvoiceLine::new(
            self.invoice_no.into(),
            self.stock_code.into(),
            self.description.map(Into::into),
            self.quantity,
            self.invoice_date,
            self.unit_price,
            self.customer_id,
            self.country.into(),
            None,
            occurrence,
        )
    }
}

/// The rows of `options`, made lazily.
pub fn rows(options: &GenerateOptions) -> Rows {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let world = World::new(&mut rng);
    Rows {
        world,
        clock: Clock::new(),
        rng,
        remaining: options.lines,
        next_invoice: FIRST_INVOICE,
        pending: VecDeque::new(),
        recent: VecDeque::with_capacity(RECENT_INVOICES),
    }
}

/// How many recent customer invoices cancellations can mirror.
const RECENT_INVOICES: usize = 256;
/// How many items of a recent invoice are kept for mirroring.
const RECENT_ITEMS: usize = 64;

/// Sale invoice sizes: `(smallest, largest, weight out of 10,000)`. Mean about 26 lines; one in
/// 1,600 has more than 200 (the real maximum is 1,114).
const SALE_SIZES: [(usize, usize, u32); 9] = [
    (1, 1, 900),
    (2, 5, 1_500),
    (6, 10, 1_600),
    (11, 20, 2_200),
    (21, 40, 2_300),
    (41, 80, 1_100),
    (81, 200, 340),
    (201, 500, 55),
    (501, 1_100, 5),
];

/// What kind each invoice is, out of 100,000 invoices; the rest are sales.
const CANCELLATIONS: u32 = 15_000;
const STOCK_NOTES: u32 = 7_000;
const SERVICES: u32 = 300;
const ADJUSTMENTS: u32 = 17;

/// Descriptions that warehouse staff typed on stock notes (price 0, negative quantity).
const NOTES: [&str; 8] = [
    "check",
    "damaged",
    "?",
    "wet damaged",
    "found",
    "sold as set on dotcom",
    "Unsaleable, destroyed.",
    "thrown away",
];

/// The iterator returned by [`rows`].
pub struct Rows {
    world: World,
    clock: Clock,
    rng: ChaCha8Rng,
    remaining: u64,
    next_invoice: u64,
    /// The rest of the invoice being emitted.
    pending: VecDeque<GeneratedRow>,
    /// Recent invoices with a customer, for cancellations to mirror.
    recent: VecDeque<PastInvoice>,
}

/// A recent sale, remembered so a cancellation can take back some of its items.
struct PastInvoice {
    customer: u64,
    country: usize,
    items: Vec<Item>,
}

#[derive(Clone, Copy)]
struct Item {
    product: usize,
    quantity: i64,
    price: Money,
}

/// The fields every line of one invoice shares.
struct Header {
    invoice_no: String,
    date: NaiveDateTime,
    customer: Option<u64>,
    country: usize,
}

impl Header {
    fn row(
        &self,
        country: &str,
        code: &str,
        description: Option<&str>,
        quantity: i64,
        price: Money,
    ) -> GeneratedRow {
        GeneratedRow {
            invoice_no: self.invoice_no.clone(),
            stock_code: code.to_owned(),
            description: description.map(str::to_owned),
            quantity,
            invoice_date: self.date,
            unit_price: price,
            customer_id: self.customer,
            country: country.to_owned(),
        }
    }
}

impl Iterator for Rows {
    type Item = GeneratedRow;

    fn next(&mut self) -> Option<GeneratedRow> {
        if self.remaining == 0 {
            return None;
        }
        while self.pending.is_empty() {
            self.next_invoice();
        }
        self.remaining -= 1;
        self.pending.pop_front()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

impl Rows {
    /// Fills `pending` with the lines of the next invoice.
    fn next_invoice(&mut self) {
        let number = self.next_invoice;
        // The real numbers have gaps (45,222 numbers for 25,900 invoices): skip as many.
        self.next_invoice += self.rng.gen_range(1..=2) + u64::from(self.rng.gen_ratio(1, 4));
        let kind = self.rng.gen_range(0..100_000u32);
        if kind < CANCELLATIONS {
            self.cancellation(number);
        } else if kind < CANCELLATIONS + STOCK_NOTES {
            self.stock_note(number);
        } else if kind < CANCELLATIONS + STOCK_NOTES + SERVICES {
            self.service(number);
        } else if kind < CANCELLATIONS + STOCK_NOTES + SERVICES + ADJUSTMENTS {
            self.adjustment(number);
        } else {
            self.sale(number);
        }
    }

    fn header(&mut self, invoice_no: String, customer: Option<u64>, country: usize) -> Header {
        Header {
            invoice_no,
            date: self.clock.next(&mut self.rng, self.remaining),
            customer,
            country,
        }
    }

    fn push(
        &mut self,
        h: &Header,
        code: &str,
        description: Option<&str>,
        quantity: i64,
        price: Money,
    ) {
        let country = &self.world.countries[h.country].name;
        let row = h.row(country, code, description, quantity, price);
        self.pending.push_back(row);
    }

    fn push_item(&mut self, h: &Header, item: Item) {
        // Borrows the catalogue and the queue separately, to copy the strings only once.
        let product = &self.world.products[item.product];
        let country = &self.world.countries[h.country].name;
        let row = h.row(
            country,
            &product.code,
            Some(&product.description),
            item.quantity,
            item.price,
        );
        self.pending.push_back(row);
    }

    /// A manual correction line (`M`): usually small, sometimes a large amount.
    fn push_manual(&mut self, h: &Header, sign: i64) {
        let pence = if self.rng.gen_ratio(9, 10) {
            self.rng.gen_range(10..=2_000)
        } else {
            self.rng.gen_range(10_000..=400_000)
        };
        let quantity = if self.rng.gen_ratio(9, 10) {
            1
        } else {
            self.rng.gen_range(2..=12)
        };
        self.push(
            h,
            "M",
            Some("Manual"),
            sign * quantity,
            pence_to_money(pence),
        );
    }

    fn sale(&mut self, number: u64) {
        let country = self.world.country(&mut self.rng);
        let customer = if self.rng.gen_ratio(1, 4) {
            None
        } else {
            self.world.countries[country].customer(&mut self.rng)
        };
        let h = self.header(number.to_string(), customer, country);
        let retail = customer.is_none();
        let size = sale_size(&mut self.rng);
        // Web shop orders end with the delivery charge; foreign trade customers pay postage.
        let dotcom = retail && country == UK && size >= 5 && self.rng.gen_ratio(1, 4);
        let goods = if dotcom { size - 1 } else { size };
        if customer.is_some() && country != UK && self.rng.gen_ratio(13, 20) {
            if country == EIRE && self.rng.gen_ratio(1, 2) {
                self.push(&h, "C2", Some("CARRIAGE"), 1, Decimal::from(50));
            } else {
                let quantity = self.rng.gen_range(1..=3);
                let price = *[18, 18, 28, 40].choose(&mut self.rng).expect("prices");
                self.push(&h, "POST", Some("POSTAGE"), quantity, Decimal::from(price));
            }
        }
        let mut items: Vec<Item> = Vec::new();
        while self.pending.len() < goods {
            let roll = self.rng.gen_range(0..1_000);
            if roll < 2 && !self.pending.is_empty() {
                // An exact duplicate row. With the repeats that chance makes, about 1% of the
                // rows duplicate an earlier one, as in the real data.
                let copy = self.pending[self.rng.gen_range(0..self.pending.len())].clone();
                self.pending.push_back(copy);
            } else if (2..20).contains(&roll) && !items.is_empty() {
                // The same stock code again on the invoice, with another quantity.
                let earlier = items[self.rng.gen_range(0..items.len())];
                let quantity = self.world.quantity(&mut self.rng, retail);
                let item = Item {
                    quantity,
                    price: line_price(self.world.products[earlier.product].price, quantity, retail),
                    ..earlier
                };
                self.push_item(&h, item);
            } else if roll == 20 {
                self.push_manual(&h, 1);
            } else {
                let product = self.world.product(&mut self.rng);
                let quantity = self.world.quantity(&mut self.rng, retail);
                let price = line_price(self.world.products[product].price, quantity, retail);
                let item = Item {
                    product,
                    quantity,
                    price,
                };
                if items.len() < RECENT_ITEMS {
                    items.push(item);
                }
                self.push_item(&h, item);
            }
        }
        if dotcom {
            let pence = size as i64 * self.rng.gen_range(150..=600);
            self.push(&h, "DOT", Some("DOTCOM POSTAGE"), 1, pence_to_money(pence));
        }
        if let (Some(customer), false) = (customer, items.is_empty()) {
            if self.recent.len() == RECENT_INVOICES {
                self.recent.pop_front();
            }
            self.recent.push_back(PastInvoice {
                customer,
                country,
                items,
            });
        }
    }

    /// A `C` invoice: most take back some items of a recent invoice of the same customer, at the
    /// price paid; the rest cancel items never seen (sold before the data starts).
    fn cancellation(&mut self, number: u64) {
        let invoice_no = format!("C{number}");
        let size = cancellation_size(&mut self.rng);
        let mirrored = !self.recent.is_empty() && self.rng.gen_ratio(17, 20);
        if mirrored {
            let past = &self.recent[self.rng.gen_range(0..self.recent.len())];
            let (customer, country) = (past.customer, past.country);
            let start = self.rng.gen_range(0..past.items.len());
            let taken: Vec<Item> = (0..size.min(past.items.len()))
                .map(|i| past.items[(start + i) % past.items.len()])
                .collect();
            let h = self.header(invoice_no, Some(customer), country);
            for item in taken {
                let quantity = if self.rng.gen_ratio(4, 5) {
                    item.quantity
                } else {
                    self.rng.gen_range(1..=item.quantity)
                };
                self.push_item(
                    &h,
                    Item {
                        quantity: -quantity,
                        ..item
                    },
                );
            }
            self.cancellation_extras(&h);
        } else {
            let country = self.world.country(&mut self.rng);
            let customer = self.world.countries[country].customer(&mut self.rng);
            let h = self.header(invoice_no, customer, country);
            for _ in 0..size {
                let product = self.world.product(&mut self.rng);
                let quantity = self.world.quantity(&mut self.rng, false);
                let price = self.world.products[product].price;
                self.push_item(
                    &h,
                    Item {
                        product,
                        quantity: -quantity,
                        price,
                    },
                );
            }
            self.cancellation_extras(&h);
        }
    }

    /// The odd discount or manual credit on a cancellation.
    fn cancellation_extras(&mut self, h: &Header) {
        if self.rng.gen_ratio(1, 50) {
            let pence = self.rng.gen_range(100..=10_000);
            self.push(h, "D", Some("Discount"), -1, pence_to_money(pence));
        }
        if self.rng.gen_ratio(1, 100) {
            self.push_manual(h, -1);
        }
    }

    /// A one-line stock correction by the warehouse: no customer, price 0, and either no
    /// description or a short note.
    fn stock_note(&mut self, number: u64) {
        let h = self.header(number.to_string(), None, UK);
        let product = self.world.product(&mut self.rng);
        let code = self.world.products[product].code.clone();
        let quantity = self.rng.gen_range(1..=100);
        if self.rng.gen_ratio(7, 10) {
            let sign = if self.rng.gen_ratio(1, 2) { 1 } else { -1 };
            self.push(&h, &code, None, sign * quantity, Decimal::ZERO);
        } else {
            let note = *NOTES.choose(&mut self.rng).expect("notes");
            self.push(&h, &code, Some(note), -quantity, Decimal::ZERO);
        }
    }

    /// A one-line invoice for a fee rather than goods.
    fn service(&mut self, number: u64) {
        let roll = self.rng.gen_range(0..100);
        if roll < 45 {
            // Marketplace fees, booked as credits.
            let h = self.header(format!("C{number}"), None, UK);
            let pence = self.rng.gen_range(10_000..=1_400_000);
            self.push(
                &h,
                "AMAZONFEE",
                Some("AMAZON FEE"),
                -1,
                pence_to_money(pence),
            );
        } else {
            let customer = self.world.countries[UK].customer(&mut self.rng);
            let h = self.header(number.to_string(), customer, UK);
            if roll < 95 {
                self.push(
                    &h,
                    "BANK CHARGES",
                    Some("Bank Charges"),
                    1,
                    Decimal::from(15),
                );
            } else {
                let price = Decimal::new(1, 3);
                self.push(&h, "PADS", Some("PADS TO MATCH ALL CUSHIONS"), 1, price);
            }
        }
    }

    /// A bad-debt write-off (`A563185` in the real data): one line, quantity 1, a large amount.
    fn adjustment(&mut self, number: u64) {
        let h = self.header(format!("A{number}"), None, UK);
        let pence = self.rng.gen_range(100_000..=1_500_000);
        self.push(&h, "B", Some("Adjust bad debt"), 1, pence_to_money(pence));
    }
}

fn sale_size(rng: &mut ChaCha8Rng) -> usize {
    let mut roll = rng.gen_range(0..10_000u32);
    for (smallest, largest, weight) in SALE_SIZES {
        if roll < weight {
            return rng.gen_range(smallest..=largest);
        }
        roll -= weight;
    }
    unreachable!("SALE_SIZES weights add up to 10,000")
}

fn cancellation_size(rng: &mut ChaCha8Rng) -> usize {
    match rng.gen_range(0..100) {
        0..=59 => 1,
        60..=84 => rng.gen_range(2..=3),
        85..=96 => rng.gen_range(4..=10),
        _ => rng.gen_range(11..=40),
    }
}

/// The price on a line: web shop consumers pay the retail price (about 1.95 times the trade
/// price, as in the data), large trade quantities get 15% off.
fn line_price(base: Money, quantity: i64, retail: bool) -> Money {
    let factor = if retail {
        Decimal::new(195, 2)
    } else if quantity >= 48 {
        Decimal::new(85, 2)
    } else {
        return base;
    };
    (base * factor)
        .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
        .max(Decimal::new(1, 2))
        .normalize()
}

fn pence_to_money(pence: i64) -> Money {
    Decimal::new(pence, 2).normalize()
}

/// Invoice times: trading days from 2010-12-01 to 2011-12-09 (no Saturdays, closed from Christmas
/// Eve to 3 January, as in the data), 07:00 to 19:59, never going backwards.
///
/// Each step is paced by the lines still to come, so that any size spreads over the whole year
/// and ends near its last day, whatever the invoices' sizes turned out to be.
struct Clock {
    days: Vec<NaiveDate>,
    /// Position in thousandths of a business minute, so that even billions of lines advance.
    cursor: u64,
    end: u64,
}

/// Business minutes per trading day: 07:00 to 19:59.
const DAY_MINUTES: u64 = 13 * 60;
const OPENING_HOUR: u32 = 7;
/// Average lines per invoice, in thousandths, to pace the clock.
const LINES_PER_INVOICE_MILLI: u64 = 21_000;

impl Clock {
    fn new() -> Self {
        let first = NaiveDate::from_ymd_opt(2010, 12, 1).expect("valid date");
        let last = NaiveDate::from_ymd_opt(2011, 12, 9).expect("valid date");
        let closed = NaiveDate::from_ymd_opt(2010, 12, 24).expect("valid date")
            ..=NaiveDate::from_ymd_opt(2011, 1, 3).expect("valid date");
        let days: Vec<NaiveDate> = first
            .iter_days()
            .take_while(|d| *d <= last)
            .filter(|d| d.weekday() != Weekday::Sat && !closed.contains(d))
            .collect();
        let end = days.len() as u64 * DAY_MINUTES * 1_000 - 1;
        Clock {
            days,
            cursor: 0,
            end,
        }
    }

    /// The time of the next invoice, when `remaining_lines` lines are still to be made.
    fn next(&mut self, rng: &mut ChaCha8Rng, remaining_lines: u64) -> NaiveDateTime {
        let invoices_left = remaining_lines.saturating_mul(1_000) / LINES_PER_INVOICE_MILLI + 1;
        let largest_step = 2 * (self.end - self.cursor) / (invoices_left + 1);
        self.cursor += rng.gen_range(0..=largest_step);
        let minute = self.cursor / 1_000;
        let day = self.days[(minute / DAY_MINUTES) as usize];
        let minute_of_day = (minute % DAY_MINUTES) as i64;
        day.and_hms_opt(OPENING_HOUR, 0, 0).expect("valid time") + Duration::minutes(minute_of_day)
    }
}

#[cfg(test)]
mod tests;
