//! Exact money: integer minor units (cents) plus a separately held ISO 4217 currency code.
//!
//! Floating point never touches an amount. Amounts arrive as the text of a JSON number and are
//! parsed digit by digit (`Money::parse_decimal`); stored event payloads carry the integer
//! number of minor units, so replay never re-parses decimals.

use serde::{Deserialize, Serialize};

/// Largest absolute amount, in minor units (1 000 000 000.00). Parsing and the checked
/// arithmetic refuse anything beyond it, which keeps every sum of a few such amounts far away
/// from `i64` overflow.
pub const MAX_ABS_MINOR: i64 = 100_000_000_000;

/// Longest piece of rejected input echoed back in an error message.
const ECHO_MAX_CHARS: usize = 40;

/// Why an amount or a currency code was refused. Always a bad field (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The amount text is empty. (400)
    #[error("amount is empty")]
    Empty,
    /// The amount uses an exponent (`1e3`); only plain decimals are exact enough to accept. (400)
    #[error("amount {0:?} uses an exponent; write it as a plain decimal")]
    Exponent(String),
    /// The amount has more than two decimals (`1.999`); rounding is the caller's decision. (400)
    #[error("amount {0:?} has more than 2 decimals")]
    TooManyDecimals(String),
    /// The amount is not `-?(0|[1-9][0-9]*)(\.[0-9]{1,2})?`. (400)
    #[error("amount {0:?} is not a plain decimal number like 19.99")]
    Malformed(String),
    /// The absolute amount exceeds 1 000 000 000.00. (400)
    #[error("amount {0:?} is outside -1000000000.00..=1000000000.00")]
    OutOfRange(String),
    /// The currency code is not three uppercase ASCII letters. (400)
    #[error("currency must be a 3-letter uppercase ISO 4217 code, got {0:?}")]
    InvalidCurrency(String),
}

impl MoneyError {
    /// Machine-readable snake_case code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            MoneyError::InvalidCurrency(_) => "invalid_currency",
            _ => "invalid_amount",
        }
    }
}

/// Shortens user input before it goes into an error message, so a megabyte of garbage is not
/// echoed back.
fn echo(s: &str) -> String {
    if s.chars().count() <= ECHO_MAX_CHARS {
        s.to_owned()
    } else {
        let mut short: String = s.chars().take(ECHO_MAX_CHARS).collect();
        short.push('…');
        short
    }
}

/// An exact amount in minor units (cents). The currency is kept next to it, not inside it.
///
/// Serializes as the bare integer number of minor units: `Money::from_minor(1999)` is `1999`
/// in a stored payload. Deserializing accepts any `i64` and does not re-apply the input cap,
/// because a stored event must always decode.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Money(i64);

impl Money {
    pub const ZERO: Money = Money(0);

    /// Wraps a number of minor units as is (no range check: for trusted values and tests).
    pub const fn from_minor(minor: i64) -> Money {
        Money(minor)
    }

    /// Wraps a number of minor units, refusing amounts beyond `±MAX_ABS_MINOR`.
    pub fn try_from_minor(minor: i64) -> Result<Money, MoneyError> {
        if minor.unsigned_abs() <= MAX_ABS_MINOR as u64 {
            Ok(Money(minor))
        } else {
            Err(MoneyError::OutOfRange(minor.to_string()))
        }
    }

    /// The amount in minor units.
    pub const fn minor(self) -> i64 {
        self.0
    }

    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// Parses the text of a JSON number exactly, e.g. `"19.99"` → 1999 minor units.
    ///
    /// Accepted grammar: `-?(0|[1-9][0-9]*)(\.[0-9]{1,2})?`, absolute value at most
    /// 1 000 000 000.00. Decisions on the edge cases:
    /// - `"0.1"` is 10 minor units; `"5"` and `"5.00"` are both 500.
    /// - `"-0"` and `"-0.00"` are accepted (JSON allows them) and are zero.
    /// - `"00.5"`, `"01"`, `".5"`, `"5."`, `"+5"`, whitespace and any other character are
    ///   refused as malformed: JSON's number grammar forbids them, so no serializer emits them.
    /// - `"1e3"` / `"1E-2"` are refused even when the value would be exact: a client sending
    ///   exponents is likely rounding through a float.
    /// - `"1.999"` and `"1.990"` are refused: more than two decimals, whatever their value.
    pub fn parse_decimal(text: &str) -> Result<Money, MoneyError> {
        if text.is_empty() {
            return Err(MoneyError::Empty);
        }
        // Only number-like text counts as "uses an exponent"; other text with an `e` in it
        // ("hello") is simply malformed.
        let number_like = text
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
        if number_like && text.contains(['e', 'E']) {
            return Err(MoneyError::Exponent(echo(text)));
        }
        let malformed = || MoneyError::Malformed(echo(text));
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (int_part, frac_part) = match unsigned.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (unsigned, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(int_part) || (int_part.len() > 1 && int_part.starts_with('0')) {
            return Err(malformed());
        }
        let cents = match frac_part {
            None => 0,
            Some(f) if !all_digits(f) => return Err(malformed()),
            Some(f) if f.len() > 2 => return Err(MoneyError::TooManyDecimals(echo(text))),
            Some(f) => {
                let digit = |i: usize| f.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
                // A missing second digit is a zero: "0.1" is 10 cents, not 1.
                digit(0) * 10 + digit(1)
            }
        };
        let out_of_range = || MoneyError::OutOfRange(echo(text));
        // Checked at every digit so a 1000-digit integer part fails cleanly instead of wrapping.
        let units = int_part.bytes().try_fold(0i64, |acc, b| {
            acc.checked_mul(10)?.checked_add(i64::from(b - b'0'))
        });
        let minor = units
            .and_then(|u| u.checked_mul(100))
            .and_then(|u| u.checked_add(cents))
            .filter(|m| *m <= MAX_ABS_MINOR)
            .ok_or_else(out_of_range)?;
        Ok(Money(if negative { -minor } else { minor }))
    }

    /// The amount as a decimal with exactly two decimals: `"19.99"`, `"5.00"`, `"-0.50"`.
    pub fn to_decimal_string(self) -> String {
        // unsigned_abs: `i64::MIN` has no positive counterpart in i64.
        let abs = self.0.unsigned_abs();
        let sign = if self.0 < 0 { "-" } else { "" };
        format!("{sign}{}.{:02}", abs / 100, abs % 100)
    }

    /// `self + other`, or `None` when the result would leave `±MAX_ABS_MINOR`.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0
            .checked_add(other.0)
            .and_then(|m| Money::try_from_minor(m).ok())
    }

    /// `self × factor` (e.g. unit price × quantity), or `None` when the result would leave
    /// `±MAX_ABS_MINOR`.
    pub fn checked_mul(self, factor: u32) -> Option<Money> {
        self.0
            .checked_mul(i64::from(factor))
            .and_then(|m| Money::try_from_minor(m).ok())
    }
}

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_decimal_string())
    }
}

/// A currency code: three uppercase ASCII letters, e.g. `EUR`.
///
/// Only the shape is checked, not membership in the ISO 4217 list: the list changes, and a
/// shop that accepts a currency is a configuration matter, not a domain invariant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Currency(String);

impl Currency {
    pub fn new(code: impl Into<String>) -> Result<Currency, MoneyError> {
        let code = code.into();
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Currency(code))
        } else {
            Err(MoneyError::InvalidCurrency(echo(&code)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::new(s)
    }
}

// Validating on the way in keeps the invariant for every `Currency` value, including ones
// decoded from JSON; stored events only ever hold codes that passed `new`.
impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Currency::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<i64, MoneyError> {
        Money::parse_decimal(s).map(Money::minor)
    }

    #[test]
    fn parses_plain_decimals_exactly() {
        assert_eq!(parse("19.99"), Ok(1999));
        assert_eq!(parse("5"), Ok(500));
        assert_eq!(parse("5.00"), Ok(500));
        assert_eq!(parse("0.1"), Ok(10));
        assert_eq!(parse("0.01"), Ok(1));
        assert_eq!(parse("0.10"), Ok(10));
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("-0"), Ok(0));
        assert_eq!(parse("-0.00"), Ok(0));
        assert_eq!(parse("-0.5"), Ok(-50));
        assert_eq!(parse("-12.34"), Ok(-1234));
        assert_eq!(parse("10000.00"), Ok(1_000_000));
    }

    #[test]
    fn float_artifacts_are_exact() {
        // 0.1 + 0.2 style surprises cannot happen: the digits are read, not converted.
        assert_eq!(parse("0.29"), Ok(29));
        assert_eq!(parse("1.15"), Ok(115));
        assert_eq!(parse("4.35"), Ok(435));
    }

    #[test]
    fn refuses_what_is_not_a_plain_decimal() {
        assert_eq!(parse(""), Err(MoneyError::Empty));
        assert!(matches!(parse("1e3"), Err(MoneyError::Exponent(_))));
        assert!(matches!(parse("1E3"), Err(MoneyError::Exponent(_))));
        assert!(matches!(parse("1.5e-1"), Err(MoneyError::Exponent(_))));
        assert!(matches!(
            parse("1.999"),
            Err(MoneyError::TooManyDecimals(_))
        ));
        assert!(matches!(
            parse("1.990"),
            Err(MoneyError::TooManyDecimals(_))
        ));
        for bad in [
            "+1", "00.5", "01", "-01.00", ".5", "5.", "-", "--1", "1.2.3", " 1", "1 ", "1,00",
            "1_000", "abc", "hello", "NaN", "Infinity", "-.5", "0x10", "١٢", "1.-5",
        ] {
            assert!(
                matches!(parse(bad), Err(MoneyError::Malformed(_))),
                "{bad:?} gave {:?}",
                parse(bad)
            );
        }
    }

    #[test]
    fn caps_the_absolute_amount() {
        assert_eq!(parse("1000000000.00"), Ok(MAX_ABS_MINOR));
        assert_eq!(parse("-1000000000"), Ok(-MAX_ABS_MINOR));
        assert!(matches!(
            parse("1000000000.01"),
            Err(MoneyError::OutOfRange(_))
        ));
        assert!(matches!(
            parse("-1000000000.01"),
            Err(MoneyError::OutOfRange(_))
        ));
        assert!(matches!(
            parse("92233720368547758.07"),
            Err(MoneyError::OutOfRange(_))
        ));
        let huge = "9".repeat(1000);
        match parse(&huge) {
            Err(MoneyError::OutOfRange(echoed)) => assert!(echoed.chars().count() <= 41),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn formats_with_two_decimals() {
        assert_eq!(Money::from_minor(1999).to_decimal_string(), "19.99");
        assert_eq!(Money::from_minor(500).to_decimal_string(), "5.00");
        assert_eq!(Money::from_minor(-50).to_decimal_string(), "-0.50");
        assert_eq!(Money::from_minor(-1).to_decimal_string(), "-0.01");
        assert_eq!(Money::ZERO.to_decimal_string(), "0.00");
        assert_eq!(
            Money::from_minor(i64::MIN).to_decimal_string(),
            "-92233720368547758.08"
        );
        assert_eq!(Money::from_minor(1999).to_string(), "19.99");
        for s in ["19.99", "5.00", "-0.50", "0.00", "1000000000.00"] {
            assert_eq!(Money::parse_decimal(s).unwrap().to_decimal_string(), s);
        }
    }

    #[test]
    fn arithmetic_is_checked_against_the_cap() {
        let a = Money::from_minor(MAX_ABS_MINOR - 1);
        assert_eq!(
            a.checked_add(Money::from_minor(1)),
            Some(Money::from_minor(MAX_ABS_MINOR))
        );
        assert_eq!(a.checked_add(Money::from_minor(2)), None);
        assert_eq!(
            Money::from_minor(i64::MAX).checked_add(Money::from_minor(1)),
            None
        );
        assert_eq!(
            Money::from_minor(250).checked_mul(4),
            Some(Money::from_minor(1000))
        );
        assert_eq!(Money::from_minor(MAX_ABS_MINOR).checked_mul(2), None);
        assert_eq!(Money::from_minor(i64::MAX).checked_mul(u32::MAX), None);
        assert!(Money::try_from_minor(MAX_ABS_MINOR + 1).is_err());
        assert!(Money::try_from_minor(i64::MIN).is_err());
    }

    #[test]
    fn serializes_as_integer_minor_units() {
        assert_eq!(
            serde_json::to_string(&Money::from_minor(1999)).unwrap(),
            "1999"
        );
        assert_eq!(
            serde_json::from_str::<Money>("-50").unwrap(),
            Money::from_minor(-50)
        );
        // A float in a stored payload is a bug, not something to round.
        assert!(serde_json::from_str::<Money>("19.99").is_err());
    }

    #[test]
    fn currency_codes_are_three_uppercase_letters() {
        assert_eq!(Currency::new("EUR").unwrap().as_str(), "EUR");
        for bad in ["eur", "EU", "EURO", "", "E1R", "ÉUR"] {
            assert!(Currency::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            serde_json::to_string(&Currency::new("USD").unwrap()).unwrap(),
            "\"USD\""
        );
        assert!(serde_json::from_str::<Currency>("\"usd\"").is_err());
        assert_eq!(
            MoneyError::InvalidCurrency("x".into()).code(),
            "invalid_currency"
        );
        assert_eq!(MoneyError::Empty.code(), "invalid_amount");
    }
}
