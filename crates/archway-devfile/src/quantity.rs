//! Kubernetes resource quantities (`512Mi`, `1.5G`, `500m`, `2e3`), as devfiles write memory
//! and CPU limits and volume sizes:
//!
//! ```text
//! quantity        ::= signedNumber suffix
//! suffix          ::= binarySI | decimalExponent | decimalSI
//! binarySI        ::= Ki | Mi | Gi | Ti | Pi | Ei
//! decimalSI       ::= m | "" | k | M | G | T | P | E
//! decimalExponent ::= "e" signedNumber | "E" signedNumber
//! signedNumber    ::= ["+" | "-"] (digits ["." [digits]] | "." digits)
//! ```
//!
//! Values are rounded up to whole units, as Kubernetes does.

use std::fmt;

/// Why a quantity is not one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuantityError {
    /// Not in the grammar.
    Syntax,
    /// Below zero.
    Negative,
    /// Does not fit 64 bits in the unit asked for.
    TooLarge,
}

impl fmt::Display for QuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuantityError::Syntax => {
                "not a Kubernetes quantity (a number with an optional suffix: Ki, Mi, Gi, Ti, Pi, Ei, m, k, M, G, T, P, E, or an exponent such as e3)"
            }
            QuantityError::Negative => "a quantity cannot be negative",
            QuantityError::TooLarge => "the quantity is too large",
        })
    }
}

impl std::error::Error for QuantityError {}

/// A parsed quantity: `digits × 10^exp10 × 2^exp2`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Quantity {
    digits: u128,
    exp10: i32,
    exp2: u32,
}

fn parse(text: &str) -> Result<Quantity, QuantityError> {
    let s = text.trim();
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(QuantityError::Syntax);
    }
    let mut digits: u128 = 0;
    let mut exp10: i32 = 0;
    for c in int.chars().chain(frac.chars()) {
        let d = u128::from(c.to_digit(10).ok_or(QuantityError::Syntax)?);
        match digits.checked_mul(10).and_then(|v| v.checked_add(d)) {
            Some(v) => digits = v,
            None => return Err(QuantityError::TooLarge),
        }
    }
    exp10 -= i32::try_from(frac.len()).map_err(|_| QuantityError::TooLarge)?;
    let mut exp2 = 0;
    match suffix {
        "" => {}
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        _ => {
            let rest = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))
                .ok_or(QuantityError::Syntax)?;
            let digits_only = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            if digits_only.is_empty() || !digits_only.bytes().all(|b| b.is_ascii_digit()) {
                return Err(QuantityError::Syntax);
            }
            let e: i32 = rest.parse().map_err(|_| QuantityError::TooLarge)?;
            exp10 = exp10.checked_add(e).ok_or(QuantityError::TooLarge)?;
        }
    }
    if negative && digits != 0 {
        return Err(QuantityError::Negative);
    }
    Ok(Quantity {
        digits,
        exp10,
        exp2,
    })
}

impl Quantity {
    /// The value times `10^scale`, rounded up to an integer.
    fn scaled(&self, scale: i32) -> Result<u64, QuantityError> {
        if self.digits == 0 {
            return Ok(0);
        }
        let mut v = self
            .digits
            .checked_mul(1u128 << self.exp2)
            .ok_or(QuantityError::TooLarge)?;
        let exp = self.exp10 + scale;
        if exp >= 0 {
            for _ in 0..exp {
                v = v.checked_mul(10).ok_or(QuantityError::TooLarge)?;
            }
        } else {
            let mut divisor: u128 = 1;
            for _ in 0..(-exp) {
                divisor = match divisor.checked_mul(10) {
                    Some(d) => d,
                    // Dividing by more than any value could hold: the result rounds up to 1.
                    None => return Ok(1),
                };
            }
            v = v.div_ceil(divisor);
        }
        u64::try_from(v).map_err(|_| QuantityError::TooLarge)
    }
}

/// A memory or storage quantity in bytes (`1Gi` → 1073741824), rounded up.
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    parse(text)?.scaled(0)
}

/// A CPU quantity in millicores (`1.5` → 1500, `250m` → 250), rounded up.
pub fn parse_millicores(text: &str) -> Result<u64, QuantityError> {
    parse(text)?.scaled(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory() {
        assert_eq!(parse_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5Gi"), Ok(1_610_612_736));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("128974848"), Ok(128_974_848));
        assert_eq!(parse_bytes("129e6"), Ok(129_000_000));
        assert_eq!(parse_bytes("123E+2"), Ok(12_300));
        assert_eq!(parse_bytes("1e-3"), Ok(1), "rounded up");
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("+2k"), Ok(2000));
        assert_eq!(parse_bytes(".5Ki"), Ok(512));
        assert_eq!(parse_bytes("1."), Ok(1));
        assert_eq!(parse_bytes("7Ei"), Ok(7 << 60));
    }

    #[test]
    fn cpu() {
        assert_eq!(parse_millicores("500m"), Ok(500));
        assert_eq!(parse_millicores("1.5"), Ok(1500));
        assert_eq!(parse_millicores("2"), Ok(2000));
        assert_eq!(parse_millicores("0.1"), Ok(100));
        assert_eq!(parse_millicores("0.0001"), Ok(1));
    }

    #[test]
    fn refused() {
        for bad in [
            "", "Mi", "1MB", "1 Gi", "1.2.3", "e3", "1e", "1e+", "one", "1Mi2", "--1", "1ki",
        ] {
            assert_eq!(parse_bytes(bad), Err(QuantityError::Syntax), "{bad:?}");
        }
        assert_eq!(parse_bytes("-1Gi"), Err(QuantityError::Negative));
        assert_eq!(parse_bytes("16Ei"), Err(QuantityError::TooLarge));
        assert_eq!(parse_bytes("1e30"), Err(QuantityError::TooLarge));
        assert_eq!(
            parse_bytes("1e99999999999999"),
            Err(QuantityError::TooLarge)
        );
        assert_eq!(parse_bytes("1e-99999"), Ok(1));
    }
}
