//! The anti-corruption layer between the example legacy shop (`ficus legacy-shop`, the
//! strangler walkthrough's monolith) and the Ficus product domain.
//!
//! The legacy side's model is defined here once, in its own words: a [`LegacyProduct`] is
//! one row of its `products` table (`price_cents` as an integer, `stock` as one number for
//! the whole shop, `updated_at` as RFC 3339 text, ids of `[A-Za-z0-9._-]`). Everything the
//! new side sees of it goes through [`translate`] (a row → the values of a Ficus
//! `CreateProduct`) and [`differences`] (a row against the product Ficus already holds → the
//! commands that make the two agree). Both are pure; a row that cannot be translated is a
//! typed [`Refusal`], never a panic and never a silently "fixed" value.
//!
//! Decisions the translation makes:
//! - The Ficus product id IS the legacy id (the legacy alphabet is a subset of Ficus's), so
//!   the product's stream `product-{id}` is derived from the legacy id deterministically and
//!   routed traffic (`/api/products/{id}` → `/v1/products/{id}`) finds the imported product.
//! - The legacy shop's single stock number goes into one named warehouse,
//!   [`LEGACY_WAREHOUSE`].
//! - Ficus has no command to rename, re-describe, re-categorise or change the currency of a
//!   product, so a later change of those legacy fields is reported ([`Drift`]), not applied.

use ficus_core::Metadata;

use crate::money::{Currency, Money};
use crate::product::{
    Product, ProductCommand, CATEGORY_MAX_CHARS, DESCRIPTION_MAX_CHARS, MAX_PRICE,
    MAX_STOCK_PER_WAREHOUSE, NAME_MAX_CHARS,
};
use crate::service::NewProduct;

/// The warehouse that the legacy shop's one stock figure is kept in on the Ficus side.
pub const LEGACY_WAREHOUSE: &str = "legacy";
/// Longest legacy product id, bytes (the legacy shop's own rule).
pub const LEGACY_ID_MAX_BYTES: usize = 64;
/// The correlation id every imported event carries.
pub const IMPORT_CORRELATION_ID: &str = "import:legacy";

/// One product as the legacy shop stores it (its table `products`, its field names, its units).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyProduct {
    pub id: String,
    pub name: String,
    pub description: String,
    pub category: String,
    /// The price in cents of `currency` (the legacy shop allows 0..=1 000 000).
    pub price_cents: i64,
    pub currency: String,
    /// Units in stock, all locations together.
    pub stock: i64,
    /// When the row was last written, RFC 3339 with milliseconds, UTC.
    pub updated_at: String,
}

/// Why a legacy row cannot become a Ficus product. `code()` is the machine-readable name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The id breaks the legacy id rule (and so cannot name a Ficus stream safely).
    #[error("id {id:?} is not 1-{LEGACY_ID_MAX_BYTES} bytes of A-Z a-z 0-9 - _ .")]
    InvalidId { id: String },
    /// A column holds a value of the wrong type (SQLite columns take anything).
    #[error("column {column} is not {expected}")]
    MalformedColumn {
        column: &'static str,
        expected: &'static str,
    },
    /// A required text field is blank.
    #[error("{field} is blank")]
    BlankField { field: &'static str },
    /// A text field is longer than the Ficus limit.
    #[error("{field} has more than {max_chars} characters")]
    TextTooLong {
        field: &'static str,
        max_chars: usize,
    },
    /// The price is negative or above the Ficus maximum (10 000.00).
    #[error("price_cents {price_cents} is outside 0..={}", MAX_PRICE.minor())]
    PriceOutOfRange { price_cents: i64 },
    /// The currency is not three capital letters.
    #[error("currency {currency:?} is not three capital letters")]
    InvalidCurrency { currency: String },
    /// The stock is negative or above what one Ficus warehouse may hold.
    #[error("stock {stock} is outside 0..={MAX_STOCK_PER_WAREHOUSE}")]
    StockOutOfRange { stock: i64 },
    /// `updated_at` is not an RFC 3339 instant.
    #[error("updated_at {updated_at:?} is not an RFC 3339 instant")]
    InvalidTimestamp { updated_at: String },
}

impl Refusal {
    /// Machine-readable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::InvalidId { .. } => "invalid_id",
            Refusal::MalformedColumn { .. } => "malformed_column",
            Refusal::BlankField { .. } => "blank_field",
            Refusal::TextTooLong { .. } => "text_too_long",
            Refusal::PriceOutOfRange { .. } => "price_out_of_range",
            Refusal::InvalidCurrency { .. } => "invalid_currency",
            Refusal::StockOutOfRange { .. } => "stock_out_of_range",
            Refusal::InvalidTimestamp { .. } => "invalid_timestamp",
        }
    }
}

/// A legacy row in Ficus terms.
#[derive(Debug, Clone)]
pub struct Translated {
    /// The Ficus product id (= the legacy id).
    pub product_id: String,
    /// What `CreateProduct` takes; its stock is `(LEGACY_WAREHOUSE, legacy stock)`.
    pub product: NewProduct,
    /// The legacy `updated_at`, Unix ms UTC: the instant the commands are dated.
    pub at_ms: i64,
}

impl Translated {
    /// Units the legacy shop holds.
    pub fn stock(&self) -> i64 {
        self.product.stock.as_ref().map_or(0, |(_, q)| *q)
    }

    /// The `Create` command for `seller_id`.
    pub fn create_command(&self, seller_id: &str) -> ProductCommand {
        ProductCommand::Create {
            product_id: self.product_id.clone(),
            seller_id: seller_id.to_owned(),
            name: self.product.name.clone(),
            description: self.product.description.clone(),
            category: self.product.category.clone(),
            price: self.product.price,
            currency: self.product.currency.clone(),
            initial_stock: self.product.stock.clone(),
            at_ms: self.at_ms,
        }
    }
}

fn text(field: &'static str, value: &str, required: bool, max_chars: usize) -> Result<(), Refusal> {
    if required && value.trim().is_empty() {
        return Err(Refusal::BlankField { field });
    }
    if value.chars().nth(max_chars).is_some() {
        return Err(Refusal::TextTooLong { field, max_chars });
    }
    Ok(())
}

/// Translates one legacy row, or says precisely why it cannot be.
pub fn translate(row: &LegacyProduct) -> Result<Translated, Refusal> {
    let id_ok = !row.id.is_empty()
        && row.id.len() <= LEGACY_ID_MAX_BYTES
        && row
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !id_ok {
        return Err(Refusal::InvalidId { id: echo(&row.id) });
    }
    text("name", &row.name, true, NAME_MAX_CHARS)?;
    text(
        "description",
        &row.description,
        false,
        DESCRIPTION_MAX_CHARS,
    )?;
    text("category", &row.category, true, CATEGORY_MAX_CHARS)?;
    if !(0..=MAX_PRICE.minor()).contains(&row.price_cents) {
        return Err(Refusal::PriceOutOfRange {
            price_cents: row.price_cents,
        });
    }
    let currency = Currency::new(row.currency.clone()).map_err(|_| Refusal::InvalidCurrency {
        currency: echo(&row.currency),
    })?;
    if !(0..=MAX_STOCK_PER_WAREHOUSE).contains(&row.stock) {
        return Err(Refusal::StockOutOfRange { stock: row.stock });
    }
    let at_ms = ficus_core::time::parse_rfc3339_ms(&row.updated_at).ok_or_else(|| {
        Refusal::InvalidTimestamp {
            updated_at: echo(&row.updated_at),
        }
    })?;
    Ok(Translated {
        product_id: row.id.clone(),
        product: NewProduct {
            name: row.name.clone(),
            description: row.description.clone(),
            category: row.category.clone(),
            price: Money::from_minor(row.price_cents),
            currency,
            stock: Some((LEGACY_WAREHOUSE.to_owned(), row.stock)),
        },
        at_ms,
    })
}

/// A bad value quoted back in a refusal, cut short so a huge one cannot flood a report.
fn echo(value: &str) -> String {
    const ECHO_MAX_CHARS: usize = 40;
    if value.chars().nth(ECHO_MAX_CHARS).is_some() {
        let mut cut: String = value.chars().take(ECHO_MAX_CHARS).collect();
        cut.push('…');
        cut
    } else {
        value.to_owned()
    }
}

/// A legacy field that changed after the import but that no Ficus command can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    Name,
    Description,
    Category,
    Currency,
}

impl Drift {
    pub fn field(self) -> &'static str {
        match self {
            Drift::Name => "name",
            Drift::Description => "description",
            Drift::Category => "category",
            Drift::Currency => "currency",
        }
    }
}

/// What it takes to bring an existing Ficus product in line with its legacy row.
#[derive(Debug, Clone, Default)]
pub struct Differences {
    /// `UpdatePrice` and/or `AdjustStock` on [`LEGACY_WAREHOUSE`], in that order.
    pub commands: Vec<ProductCommand>,
    /// Fields that differ but have no command.
    pub drift: Vec<Drift>,
}

/// The commands (as `actor_id`, the owning seller) that make `current` agree with `target`
/// on price and legacy-warehouse stock, and the fields that differ without a command. An
/// empty answer means the product already matches. `current` must exist.
pub fn differences(current: &Product, target: &Translated, actor_id: &str) -> Differences {
    let mut out = Differences::default();
    let new = &target.product;
    if current.price() != Some(new.price) {
        out.commands.push(ProductCommand::UpdatePrice {
            actor_id: actor_id.to_owned(),
            new_price: new.price,
            at_ms: target.at_ms,
        });
    }
    let delta = target.stock() - current.stock(LEGACY_WAREHOUSE);
    if delta != 0 {
        out.commands.push(ProductCommand::AdjustStock {
            actor_id: actor_id.to_owned(),
            warehouse: LEGACY_WAREHOUSE.to_owned(),
            delta,
            at_ms: target.at_ms,
        });
    }
    let checks = [
        (Drift::Name, current.name() == Some(new.name.as_str())),
        (
            Drift::Description,
            current.description() == Some(new.description.as_str()),
        ),
        (
            Drift::Category,
            current.category() == Some(new.category.as_str()),
        ),
        (Drift::Currency, current.currency() == Some(&new.currency)),
    ];
    out.drift = checks
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(d, _)| d)
        .collect();
    out
}

/// The metadata of every event an import writes for the legacy row `legacy_id`: the
/// correlation id names the import, the causation id the row.
pub fn import_metadata(legacy_id: &str) -> Metadata {
    Metadata {
        correlation_id: Some(IMPORT_CORRELATION_ID.to_owned()),
        causation_id: Some(format!("legacy:{legacy_id}")),
        ..Metadata::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ficus_core::Aggregate;

    fn row() -> LegacyProduct {
        LegacyProduct {
            id: "sku-1.a_b".into(),
            name: "Teapot".into(),
            description: "Blue".into(),
            category: "kitchen".into(),
            price_cents: 1999,
            currency: "EUR".into(),
            stock: 7,
            updated_at: "2024-03-01T10:00:00.000Z".into(),
        }
    }

    fn with(f: impl FnOnce(&mut LegacyProduct)) -> LegacyProduct {
        let mut r = row();
        f(&mut r);
        r
    }

    #[test]
    fn a_good_row_translates_field_for_field() {
        let t = translate(&row()).unwrap();
        assert_eq!(t.product_id, "sku-1.a_b");
        assert_eq!(t.product.name, "Teapot");
        assert_eq!(t.product.description, "Blue");
        assert_eq!(t.product.category, "kitchen");
        assert_eq!(t.product.price, Money::from_minor(1999));
        assert_eq!(t.product.currency.as_str(), "EUR");
        assert_eq!(t.product.stock, Some((LEGACY_WAREHOUSE.to_owned(), 7)));
        assert_eq!(
            Some(t.at_ms),
            ficus_core::time::parse_rfc3339_ms("2024-03-01T10:00:00.000Z")
        );
        // The edges of the ranges are allowed.
        assert!(translate(&with(|r| r.price_cents = 0)).is_ok());
        assert!(translate(&with(|r| r.price_cents = 1_000_000)).is_ok());
        assert!(translate(&with(|r| r.stock = 0)).is_ok());
        assert!(translate(&with(|r| r.description.clear())).is_ok());
    }

    #[test]
    fn ids_follow_the_legacy_rule() {
        for bad in ["", "has space", "a/b", "ü", &"x".repeat(65)] {
            let e = translate(&with(|r| r.id = bad.to_owned())).unwrap_err();
            assert_eq!(e.code(), "invalid_id", "{bad:?}");
        }
        assert!(translate(&with(|r| r.id = "x".repeat(64))).is_ok());
    }

    #[test]
    fn text_limits_and_blanks() {
        let e = translate(&with(|r| r.name = "  ".into())).unwrap_err();
        assert_eq!(e, Refusal::BlankField { field: "name" });
        let e = translate(&with(|r| r.category = String::new())).unwrap_err();
        assert_eq!(e, Refusal::BlankField { field: "category" });
        let e = translate(&with(|r| r.name = "é".repeat(NAME_MAX_CHARS + 1))).unwrap_err();
        assert_eq!(
            e,
            Refusal::TextTooLong {
                field: "name",
                max_chars: NAME_MAX_CHARS
            }
        );
        assert!(translate(&with(|r| r.name = "é".repeat(NAME_MAX_CHARS))).is_ok());
        let e = translate(&with(|r| {
            r.description = "d".repeat(DESCRIPTION_MAX_CHARS + 1)
        }))
        .unwrap_err();
        assert_eq!(e.code(), "text_too_long");
        let e = translate(&with(|r| r.category = "c".repeat(CATEGORY_MAX_CHARS + 1))).unwrap_err();
        assert_eq!(e.code(), "text_too_long");
    }

    #[test]
    fn price_currency_stock_and_time_are_checked() {
        for p in [-1, 1_000_001, i64::MIN, i64::MAX] {
            let e = translate(&with(|r| r.price_cents = p)).unwrap_err();
            assert_eq!(e, Refusal::PriceOutOfRange { price_cents: p });
        }
        for c in ["eur", "EURO", "", "E1R"] {
            let e = translate(&with(|r| r.currency = c.into())).unwrap_err();
            assert_eq!(e.code(), "invalid_currency", "{c:?}");
        }
        for s in [-1, MAX_STOCK_PER_WAREHOUSE + 1] {
            let e = translate(&with(|r| r.stock = s)).unwrap_err();
            assert_eq!(e, Refusal::StockOutOfRange { stock: s });
        }
        for t in ["", "yesterday", "2024-13-01T00:00:00Z"] {
            let e = translate(&with(|r| r.updated_at = t.into())).unwrap_err();
            assert_eq!(e.code(), "invalid_timestamp", "{t:?}");
        }
        // A huge bad value is quoted back short.
        let e = translate(&with(|r| r.currency = "x".repeat(10_000))).unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
    }

    fn created(t: &Translated) -> Product {
        let mut p = Product::default();
        for e in p.decide(&t.create_command("legacy-shop")).unwrap() {
            p.evolve(&e);
        }
        p
    }

    #[test]
    fn differences_are_only_what_changed() {
        let t = translate(&row()).unwrap();
        let p = created(&t);
        let d = differences(&p, &t, "legacy-shop");
        assert!(d.commands.is_empty() && d.drift.is_empty(), "{d:?}");

        let t2 = translate(&with(|r| {
            r.price_cents = 2500;
            r.stock = 3;
            r.name = "Big teapot".into();
        }))
        .unwrap();
        let d = differences(&p, &t2, "legacy-shop");
        assert_eq!(d.drift, vec![Drift::Name]);
        assert_eq!(d.commands.len(), 2);
        assert!(matches!(
            &d.commands[0],
            ProductCommand::UpdatePrice { new_price, actor_id, .. }
                if *new_price == Money::from_minor(2500) && actor_id == "legacy-shop"
        ));
        assert!(matches!(
            &d.commands[1],
            ProductCommand::AdjustStock { delta: -4, warehouse, .. } if warehouse == LEGACY_WAREHOUSE
        ));
        // Applying them converges: no difference is left but the drift.
        let mut p2 = p.clone();
        for c in &d.commands {
            for e in p2.decide(c).unwrap() {
                p2.evolve(&e);
            }
        }
        let d = differences(&p2, &t2, "legacy-shop");
        assert!(d.commands.is_empty());
        assert_eq!(d.drift, vec![Drift::Name]);
    }

    #[test]
    fn metadata_names_the_import_and_the_row() {
        let m = import_metadata("sku-9");
        assert_eq!(m.correlation_id.as_deref(), Some("import:legacy"));
        assert_eq!(m.causation_id.as_deref(), Some("legacy:sku-9"));
    }
}
