//! The world the generator draws from, made once from the seed: products with stable codes,
//! descriptions and prices; countries with their customers; and the sampling tables.
//!
//! Every table is a `Vec` or an integer `WeightedIndex`, never a hash map, and all weights are
//! integers, so the same seed gives the same world on every machine.

use rand::distributions::WeightedIndex;
use rand::prelude::*;
use rust_decimal::Decimal;
use std::collections::BTreeSet;

use crate::model::Money;

/// A few thousand stock codes, like the ~4,000 of the UCI dataset.
const PRODUCTS: usize = 3_800;

/// Zipf-Mandelbrot popularity `1 / (rank + OFFSET)`: the offset flattens the head so that the most
/// popular product has about 0.4% of the lines, as `85123A` has in the real data.
const PRODUCT_POPULARITY_OFFSET: u64 = 60;
const CUSTOMER_POPULARITY_OFFSET: u64 = 40;

/// The UCI dataset's customer number range.
const FIRST_CUSTOMER: u64 = 12_346;
const LAST_CUSTOMER: u64 = 18_287;

/// A country's share of invoices never goes below this (out of the 541,909 of `COUNTRIES`), so that
/// a sample of ~100,000 lines still shows the long list of small countries.
const MIN_COUNTRY_WEIGHT: u32 = 430;

/// `(country, lines in the UCI dataset, customers in the UCI dataset)`. The line counts weigh the
/// choice of an invoice's country; Hong Kong has no customer ids in the data, so its invoices are
/// anonymous.
const COUNTRIES: [(&str, u32, usize); 38] = [
    ("United Kingdom", 495_478, 3_950),
    ("Germany", 9_495, 95),
    ("France", 8_557, 87),
    ("EIRE", 8_196, 3),
    ("Spain", 2_533, 31),
    ("Netherlands", 2_371, 9),
    ("Belgium", 2_069, 25),
    ("Switzerland", 2_002, 21),
    ("Portugal", 1_519, 19),
    ("Australia", 1_259, 9),
    ("Norway", 1_086, 10),
    ("Italy", 803, 15),
    ("Channel Islands", 758, 9),
    ("Finland", 695, 12),
    ("Cyprus", 622, 8),
    ("Sweden", 462, 8),
    ("Unspecified", 446, 4),
    ("Austria", 401, 11),
    ("Denmark", 389, 9),
    ("Japan", 358, 8),
    ("Poland", 341, 6),
    ("Israel", 297, 4),
    ("USA", 291, 4),
    ("Hong Kong", 288, 0),
    ("Singapore", 229, 1),
    ("Iceland", 182, 1),
    ("Canada", 151, 4),
    ("Greece", 146, 4),
    ("Malta", 127, 2),
    ("United Arab Emirates", 68, 2),
    ("European Community", 61, 1),
    ("RSA", 58, 1),
    ("Lebanon", 45, 1),
    ("Lithuania", 35, 1),
    ("Brazil", 32, 1),
    ("Czech Republic", 30, 1),
    ("Bahrain", 19, 2),
    ("Saudi Arabia", 10, 1),
];

/// Index of the United Kingdom in `COUNTRIES`.
pub(super) const UK: usize = 0;
/// Index of EIRE in `COUNTRIES`: its customers pay carriage (`C2`) rather than postage.
pub(super) const EIRE: usize = 3;

const COLOURS: [&str; 16] = [
    "RED", "WHITE", "BLUE", "PINK", "GREEN", "IVORY", "BLACK", "CREAM", "SILVER", "GOLD", "PURPLE",
    "ORANGE", "YELLOW", "PASTEL", "ANTIQUE", "NATURAL",
];

const MOTIFS: [&str; 28] = [
    "RETROSPOT",
    "HANGING HEART",
    "VINTAGE",
    "REGENCY",
    "SPACEBOY",
    "DOLLY GIRL",
    "JUMBO",
    "PAISLEY",
    "POLKADOT",
    "SKULLS",
    "WOODLAND",
    "BIRD",
    "FLORAL",
    "STRAWBERRY",
    "LOVE",
    "CHRISTMAS",
    "ENGLISH ROSE",
    "SCANDINAVIAN",
    "PARISIENNE",
    "ROSES",
    "GINGHAM",
    "DOILY",
    "LEAF",
    "STAR",
    "ZINC",
    "GLASS",
    "WICKER",
    "ENAMEL",
];

const ITEMS: [&str; 40] = [
    "T-LIGHT HOLDER",
    "CAKE CASES",
    "LUNCH BAG",
    "HOT WATER BOTTLE",
    "TEACUP AND SAUCER",
    "CAKESTAND",
    "BUNTING",
    "DOORMAT",
    "NOTEBOOK",
    "CANDLE",
    "MUG",
    "JAM JAR",
    "STORAGE TIN",
    "HEART DECORATION",
    "PHOTO FRAME",
    "CHARLOTTE BAG",
    "PAPER NAPKINS",
    "COAT HANGER",
    "CUSHION COVER",
    "LANTERN",
    "WATER BOTTLE",
    "ALARM CLOCK",
    "SHOPPER BAG",
    "GIFT WRAP",
    "PARTY BUNTING",
    "WALL CLOCK",
    "TRINKET BOX",
    "COOKIE CUTTER",
    "TEA TOWEL",
    "PICNIC BASKET",
    "SIGN",
    "BIRD HOUSE",
    "DRAWER KNOB",
    "BAKING SET",
    "PURSE",
    "STICKERS",
    "PENCILS",
    "APRON",
    "EGG CUP",
    "CAKE TIN",
];

/// Words that give some descriptions characters outside ASCII (all within ISO-8859-1), so that the
/// Latin-1 output differs from the UTF-8 one.
const FRENCH: [&str; 7] = [
    "CAFÉ",
    "PÂTISSERIE",
    "NOËL",
    "CRÈME BRÛLÉE",
    "BONNE FÊTE",
    "SOIRÉE",
    "HÔTEL",
];

/// Slogans quoted inside descriptions, so that CSV quote escaping is exercised.
const SLOGANS: [&str; 6] = [
    "HOME SWEET HOME",
    "KEEP CALM",
    "WELCOME",
    "LOVE",
    "HAPPY BIRTHDAY",
    "TEA TIME",
];

/// Catalogue prices in pence with their weights: mostly 0.19-15.00, a thin tail to a few hundred.
const PRICES: [(i64, u32); 40] = [
    (19, 2),
    (21, 2),
    (25, 3),
    (29, 3),
    (39, 4),
    (42, 6),
    (55, 4),
    (65, 5),
    (72, 3),
    (79, 3),
    (85, 8),
    (125, 8),
    (145, 5),
    (165, 10),
    (195, 6),
    (210, 6),
    (250, 6),
    (255, 5),
    (295, 6),
    (325, 3),
    (375, 6),
    (425, 6),
    (495, 6),
    (595, 4),
    (675, 3),
    (795, 4),
    (850, 2),
    (995, 3),
    (1_275, 2),
    (1_495, 2),
    (1_695, 1),
    (1_800, 1),
    (2_495, 1),
    (2_995, 1),
    (3_995, 1),
    (4_995, 1),
    (7_995, 1),
    (12_500, 1),
    (16_500, 1),
    (29_500, 1),
];

/// Gift vouchers of the online shop, with their real stock codes and a `£` in the description.
const VOUCHERS: [u32; 5] = [10, 20, 30, 40, 50];

/// Units on one line: mostly small, often a pack size (12, 24), sometimes wholesale (48, 96, 144+).
const QUANTITIES: [(i64, u32); 21] = [
    (1, 180),
    (2, 120),
    (3, 70),
    (4, 80),
    (5, 30),
    (6, 90),
    (8, 40),
    (10, 50),
    (12, 180),
    (16, 10),
    (20, 10),
    (24, 70),
    (36, 15),
    (48, 20),
    (72, 10),
    (96, 10),
    (100, 5),
    (144, 7),
    (200, 3),
    (288, 2),
    (480, 1),
];

/// Units on an anonymous (web shop) line: consumers buy one or two.
const RETAIL_QUANTITIES: [(i64, u32); 5] = [(1, 60), (2, 25), (3, 8), (4, 4), (6, 3)];

/// One stock item, with the description and price it keeps for the whole dataset.
pub(super) struct Product {
    pub code: String,
    pub description: String,
    pub price: Money,
}

/// A country and the customers who live there (a customer's country never changes).
pub(super) struct Country {
    pub name: String,
    pub customers: Vec<u64>,
    /// Zipf popularity of `customers`; `None` when the country has none.
    popularity: Option<WeightedIndex<u64>>,
}

impl Country {
    /// A customer of this country, the regulars more often; `None` if the country has none.
    pub fn customer(&self, rng: &mut impl Rng) -> Option<u64> {
        let popularity = self.popularity.as_ref()?;
        Some(self.customers[popularity.sample(rng)])
    }
}

/// Everything made from the seed before the first line.
pub(super) struct World {
    pub products: Vec<Product>,
    product_popularity: WeightedIndex<u64>,
    pub countries: Vec<Country>,
    country_weights: WeightedIndex<u32>,
    quantities: WeightedIndex<u32>,
    retail_quantities: WeightedIndex<u32>,
}

impl World {
    pub fn new(rng: &mut impl Rng) -> Self {
        let products = products(rng);
        let product_popularity = zipf(products.len(), PRODUCT_POPULARITY_OFFSET);
        let countries = countries(rng);
        let country_weights = weights(COUNTRIES.iter().map(|c| c.1.max(MIN_COUNTRY_WEIGHT)));
        World {
            products,
            product_popularity,
            countries,
            country_weights,
            quantities: weights(QUANTITIES.iter().map(|q| q.1)),
            retail_quantities: weights(RETAIL_QUANTITIES.iter().map(|q| q.1)),
        }
    }

    /// Index of a product, the popular ones more often.
    pub fn product(&self, rng: &mut impl Rng) -> usize {
        self.product_popularity.sample(rng)
    }

    /// Index of an invoice's country, in proportion to the country's lines in the real data.
    pub fn country(&self, rng: &mut impl Rng) -> usize {
        self.country_weights.sample(rng)
    }

    /// Units for a line: a trade customer's, or a web shop consumer's when `retail`.
    pub fn quantity(&self, rng: &mut impl Rng, retail: bool) -> i64 {
        if retail {
            RETAIL_QUANTITIES[self.retail_quantities.sample(rng)].0
        } else {
            QUANTITIES[self.quantities.sample(rng)].0
        }
    }
}

/// An integer `WeightedIndex` over `weights`, which are never all zero here.
fn weights<X>(weights: impl IntoIterator<Item = X>) -> WeightedIndex<X>
where
    X: rand::distributions::uniform::SampleUniform
        + PartialOrd
        + for<'a> std::ops::AddAssign<&'a X>
        + Clone
        + Default,
{
    WeightedIndex::new(weights).expect("generator tables have positive weights")
}

/// Popularity `1 / (rank + offset)` over `n` ranks, in integers so that sampling is exact.
fn zipf(n: usize, offset: u64) -> WeightedIndex<u64> {
    weights((0..n as u64).map(|rank| 1_000_000_000 / (rank + 1 + offset)))
}

fn products(rng: &mut impl Rng) -> Vec<Product> {
    let mut codes = BTreeSet::new();
    let mut products = Vec::with_capacity(PRODUCTS + VOUCHERS.len());
    while products.len() < PRODUCTS {
        // A quarter of the designs come in colour variants sharing a base code: 84997A, 84997B...
        let base: u32 = rng.gen_range(10_002..=90_214);
        let variants = if rng.gen_ratio(1, 4) {
            rng.gen_range(2..=4u8)
        } else {
            1
        };
        let design = Design::new(rng);
        let price = *PRICES
            .choose_weighted(rng, |p| p.1)
            .expect("price table has weights");
        let first_colour = rng.gen_range(0..COLOURS.len());
        for variant in 0..variants {
            let code = if variants == 1 {
                base.to_string()
            } else {
                format!("{base}{}", char::from(b'A' + variant))
            };
            if codes.insert(code.clone()) {
                let colour = COLOURS[(first_colour + variant as usize) % COLOURS.len()];
                products.push(Product {
                    code,
                    description: design.describe(colour),
                    price: Decimal::new(price.0, 2).normalize(),
                });
            }
        }
    }
    products.truncate(PRODUCTS);
    products.extend(VOUCHERS.iter().map(|&pounds| Product {
        code: format!("gift_0001_{pounds}"),
        description: format!("Dotcomgiftshop Gift Voucher £{pounds}.00"),
        price: Decimal::new(i64::from(pounds) * 85, 2).normalize(),
    }));
    products
}

/// The shape of a product name; colour variants of one design share it.
enum Design {
    Plain {
        motif: &'static str,
        item: &'static str,
    },
    Coloured {
        motif: &'static str,
        item: &'static str,
    },
    Set {
        n: u8,
        motif: &'static str,
        item: &'static str,
    },
    Pack {
        n: u8,
        motif: &'static str,
        item: &'static str,
    },
    WithComma {
        motif: &'static str,
        item: &'static str,
    },
    Quoted {
        slogan: &'static str,
        item: &'static str,
    },
    French {
        word: &'static str,
        item: &'static str,
    },
}

impl Design {
    fn new(rng: &mut impl Rng) -> Self {
        let motif = *MOTIFS.choose(rng).expect("motifs");
        let item = *ITEMS.choose(rng).expect("items");
        match rng.gen_range(0..1000) {
            0..=149 => Design::Plain { motif, item },
            150..=599 => Design::Coloured { motif, item },
            600..=739 => Design::Set {
                n: *[2u8, 3, 4, 6, 10, 12].choose(rng).expect("sizes"),
                motif,
                item,
            },
            740..=849 => Design::Pack {
                n: *[12u8, 20, 24, 60, 72].choose(rng).expect("sizes"),
                motif,
                item,
            },
            850..=939 => Design::WithComma { motif, item },
            940..=979 => Design::Quoted {
                slogan: SLOGANS.choose(rng).expect("slogans"),
                item,
            },
            _ => Design::French {
                word: FRENCH.choose(rng).expect("words"),
                item,
            },
        }
    }

    fn describe(&self, colour: &str) -> String {
        match self {
            Design::Plain { motif, item } => format!("{motif} {item}"),
            Design::Coloured { motif, item } => format!("{colour} {motif} {item}"),
            Design::Set { n, motif, item } => format!("SET OF {n} {colour} {motif} {item}"),
            Design::Pack { n, motif, item } => format!("PACK OF {n} {motif} {item}"),
            Design::WithComma { motif, item } => format!("{item}, {colour} {motif} DESIGN"),
            Design::Quoted { slogan, item } => format!("{colour} {item} \"{slogan}\""),
            Design::French { word, item } => format!("{word} {colour} {item}"),
        }
    }
}

fn countries(rng: &mut impl Rng) -> Vec<Country> {
    let mut ids: Vec<u64> = (FIRST_CUSTOMER..=LAST_CUSTOMER).collect();
    ids.shuffle(rng);
    let mut ids = ids.into_iter();
    COUNTRIES
        .iter()
        .map(|&(name, _, customers)| {
            // The ids were shuffled, so popularity (by position) is unrelated to the id.
            let customers: Vec<u64> = ids.by_ref().take(customers).collect();
            let popularity =
                (!customers.is_empty()).then(|| zipf(customers.len(), CUSTOMER_POPULARITY_OFFSET));
            Country {
                name: name.to_owned(),
                customers,
                popularity,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn catalogue_codes_are_unique_and_prices_exact() {
        let world = World::new(&mut ChaCha8Rng::seed_from_u64(7));
        let codes: BTreeSet<&str> = world.products.iter().map(|p| p.code.as_str()).collect();
        assert_eq!(codes.len(), world.products.len());
        assert!(world.products.len() >= 3_000);
        for p in &world.products {
            assert!(
                p.price > Decimal::ZERO && p.price.scale() <= 2,
                "{}",
                p.price
            );
        }
    }

    #[test]
    fn customers_are_in_range_and_live_in_one_country() {
        let world = World::new(&mut ChaCha8Rng::seed_from_u64(7));
        let mut all: Vec<u64> = world
            .countries
            .iter()
            .flat_map(|c| c.customers.iter().copied())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a customer appears in two countries");
        assert!(all
            .iter()
            .all(|c| (FIRST_CUSTOMER..=LAST_CUSTOMER).contains(c)));
        assert_eq!(world.countries[UK].name, "United Kingdom");
        assert_eq!(world.countries[EIRE].name, "EIRE");
    }
}
