//! Amounts as an integer count of minor units plus an ISO 4217 currency code.
//!
//! Amounts are never floating-point numbers, so 19.99 EUR travels as
//! `{"minor_units": 1999, "currency": "EUR"}`.

use serde::{Deserialize, Serialize};

use crate::currency::currency_exponent;

/// An amount of money in the minor unit of its currency (cents for EUR, yen for JPY, fils
/// for BHD).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// Amount in minor units. Negative values are valid only for refunds; see
    /// [`crate::validate`] for the bounds.
    pub minor_units: i64,
    /// Uppercase ISO 4217 code listed in [`crate::CURRENCIES`], such as `EUR`.
    pub currency: String,
}

impl Money {
    /// Creates an amount of `minor_units` in `currency`. The values are checked by
    /// [`crate::TransactionEvent::validate`], not here.
    pub fn new(minor_units: i64, currency: impl Into<String>) -> Self {
        Money {
            minor_units,
            currency: currency.into(),
        }
    }

    /// Returns the minor-unit exponent of the currency, or `None` if the code is unknown.
    pub fn exponent(&self) -> Option<u8> {
        currency_exponent(&self.currency)
    }

    /// Formats the amount as a decimal number in the major unit, without the currency:
    /// `-19.99` for -1999 EUR, `1500` for 1500 JPY, `0.005` for 5 BHD.
    ///
    /// Returns `None` if the currency is not in [`crate::CURRENCIES`]. Locale-specific
    /// formatting (grouping, decimal comma, symbol) is left to the renderer.
    pub fn to_decimal_string(&self) -> Option<String> {
        let exponent = usize::from(self.exponent()?);
        let sign = if self.minor_units < 0 { "-" } else { "" };
        let digits = self.minor_units.unsigned_abs().to_string();

        if exponent == 0 {
            return Some(format!("{sign}{digits}"));
        }

        // Left-pad so there is at least one digit before the decimal point.
        let padded = format!("{digits:0>width$}", width = exponent + 1);
        let (major, minor) = padded.split_at(padded.len() - exponent);
        Some(format!("{sign}{major}.{minor}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_string_by_exponent() {
        let cases = [
            (1999, "EUR", "19.99"),
            (-1999, "EUR", "-19.99"),
            (5, "EUR", "0.05"),
            (-5, "EUR", "-0.05"),
            (0, "EUR", "0.00"),
            (1500, "JPY", "1500"),
            (-1500, "JPY", "-1500"),
            (5, "BHD", "0.005"),
            (123_456, "BHD", "123.456"),
            (10_000, "CLF", "1.0000"),
            (i64::MIN, "JPY", "-9223372036854775808"),
            (i64::MIN, "EUR", "-92233720368547758.08"),
        ];
        for (minor_units, currency, expected) in cases {
            let money = Money::new(minor_units, currency);
            assert_eq!(
                money.to_decimal_string().as_deref(),
                Some(expected),
                "{minor_units} {currency}"
            );
        }
    }

    #[test]
    fn decimal_string_unknown_currency() {
        assert_eq!(Money::new(100, "XYZ").to_decimal_string(), None);
    }

    #[test]
    fn serializes_as_minor_units_and_currency() {
        let json = serde_json::to_string(&Money::new(1999, "EUR")).unwrap();
        assert_eq!(json, r#"{"minor_units":1999,"currency":"EUR"}"#);
    }
}
