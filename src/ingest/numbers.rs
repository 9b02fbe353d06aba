//! Numbers in a body are stored exactly or refused: serde_json keeps integers in the 64-bit
//! range and otherwise an `f64`, which would silently change `123456789012345678901234567890`
//! into `1.2345678901234568e29`. This finds the first number an `f64` does not hold exactly.
//!
//! Design: a byte scan over raw JSON text (strings skipped), no allocation on the fast path;
//! `arbitrary_precision` was not used because it changes every crate's `serde_json::Number`
//! (the MCP client and the sink too) and costs memory per number.

/// Significant digits that any decimal in `f64`'s normal range keeps exactly (`DBL_DIG`).
const SAFE_DIGITS: usize = 15;

/// The first number token in the JSON text `raw` whose value serde_json would change, if any.
/// `raw` must be well-formed JSON (it is only scanned, never validated).
pub fn first_inexact(raw: &[u8]) -> Option<&str> {
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'"' => {
                i += 1;
                while i < raw.len() && raw[i] != b'"' {
                    i += if raw[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < raw.len()
                    && matches!(raw[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let token = std::str::from_utf8(&raw[start..i]).unwrap_or("");
                if !exact(token) {
                    return Some(token);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Whether serde_json reads `token` (a JSON number) as exactly the value it denotes.
fn exact(token: &str) -> bool {
    let is_integer = !token.contains(['.', 'e', 'E']);
    if is_integer {
        return token.parse::<i64>().is_ok() || token.parse::<u64>().is_ok();
    }
    let Some(written) = Decimal::parse(token) else {
        return false;
    };
    if written.digits.len() <= SAFE_DIGITS && (-300..=290).contains(&written.exponent) {
        return true;
    }
    match token.parse::<f64>() {
        // Rust's `{:e}` is the shortest text that reads back as the same f64, as serde_json's.
        Ok(v) if v.is_finite() => Decimal::parse(&format!("{v:e}")) == Some(written),
        _ => false,
    }
}

/// A decimal as `digits × 10^exponent`, without leading or trailing zeros (zero: no digits).
#[derive(Debug, PartialEq)]
struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Decimal {
    fn parse(text: &str) -> Option<Self> {
        let (negative, text) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match text.split_once(['e', 'E']) {
            Some((m, e)) => (m, e.trim_start_matches('+').parse::<i64>().ok()?),
            None => (text, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all = format!("{int}{frac}");
        let trimmed = all.trim_start_matches('0');
        let digits = trimmed.trim_end_matches('0');
        let exponent = exponent
            .checked_sub(frac.len() as i64)?
            .checked_add((trimmed.len() - digits.len()) as i64)?;
        Some(if digits.is_empty() {
            Self {
                negative: false,
                digits: String::new(),
                exponent: 0,
            }
        } else {
            Self {
                negative,
                digits: digits.to_owned(),
                exponent,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_numbers_pass() {
        let raw = br#"{"a":[0,-0,1,-9223372036854775808,18446744073709551615,0.1,-2.5e-3,1e2,
            1.7976931348623157e308,5e-324,0.30000000000000004,3.141592653589793,1.0,"1e999"]}"#;
        assert_eq!(first_inexact(raw), None);
    }

    #[test]
    fn changed_numbers_are_found() {
        for (raw, token) in [
            (
                r#"{"n":123456789012345678901234567890}"#,
                "123456789012345678901234567890",
            ),
            (r#"[18446744073709551616]"#, "18446744073709551616"),
            (r#"[-9223372036854775809]"#, "-9223372036854775809"),
            (
                r#"{"x":"9","n":1.00000000000000000001}"#,
                "1.00000000000000000001",
            ),
            (r#"[1e-400]"#, "1e-400"),
            (r#"[1e400]"#, "1e400"),
            (r#"[0.1234567890123456789]"#, "0.1234567890123456789"),
        ] {
            assert_eq!(first_inexact(raw.as_bytes()), Some(token), "{raw}");
        }
    }

    #[test]
    fn strings_are_skipped() {
        assert_eq!(
            first_inexact(br#"["12345678901234567890123", "a\"99999999999999999999"]"#),
            None
        );
    }
}
