//! Kubernetes resource quantities ("500m", "1Gi", "2e3", "1.5Ki"), parsed once for the workspace:
//! the operator reads storage sizes and memory limits with it, the sandbox's kubelet resource
//! fields. The grammar is the API server's: a signed decimal number, then a binary-SI suffix
//! (Ki..Ei), a decimal-SI suffix (n, u, m, k, M..E) or a decimal exponent (e3, E-2).

/// A text that is not a quantity, or not one the caller can use, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct QuantityError {
    pub reason: String,
}

fn error(reason: impl Into<String>) -> QuantityError {
    QuantityError {
        reason: reason.into(),
    }
}

/// The factor a suffix stands for.
fn factor(suffix: &str) -> Result<f64, QuantityError> {
    Ok(match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: i32 = exponent[1..]
                .parse()
                .map_err(|_| error(format!("bad exponent {exponent:?}")))?;
            10f64.powi(power)
        }
        other => return Err(error(format!("unknown suffix {other:?}"))),
    })
}

/// A quantity as a number: "500m" is 0.5, "2Gi" is 2147483648.
pub fn parse(text: &str) -> Result<f64, QuantityError> {
    let text = text.trim();
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let split = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (digits, suffix) = unsigned.split_at(split);
    if digits.is_empty() || digits == "." || digits.matches('.').count() > 1 {
        return Err(error(
            "expected a number, then an optional suffix such as Mi or G",
        ));
    }
    let number: f64 = text[..text.len() - suffix.len()]
        .parse()
        .map_err(|_| error(format!("bad number {digits:?}")))?;
    Ok(number * factor(suffix)?)
}

/// A quantity as a whole, non-negative number of bytes: `1Gi`, `500M`, `2e9`, `1.5Ki`, `4096`.
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    if text.trim().ends_with(['m', 'u', 'n']) {
        return Err(error("milli-units are not whole bytes"));
    }
    let bytes = parse(text)?;
    if bytes < 0.0 {
        return Err(error("a number of bytes cannot be negative"));
    }
    if bytes.fract() != 0.0 {
        return Err(error("not a whole number of bytes"));
    }
    if bytes >= u64::MAX as f64 {
        return Err(error("too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        for (text, value) in [
            ("500m", 0.5),
            ("2Gi", 2.0 * 1024.0 * 1024.0 * 1024.0),
            ("3k", 3000.0),
            ("1e3", 1000.0),
            ("-1.5", -1.5),
            ("+2", 2.0),
            ("250u", 0.00025),
        ] {
            assert_eq!(parse(text), Ok(value), "{text}");
        }
        for bad in ["", "Gi", "1.2.3", "1Q", "12parsecs", ".", "1e", "--1"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn byte_sizes_are_whole_and_never_negative() {
        for (text, bytes) in [
            ("4096", 4096),
            ("1Ki", 1024),
            ("1.5Ki", 1536),
            ("500M", 500_000_000),
            ("2e9", 2_000_000_000),
            ("8Gi", 8 << 30),
            ("1Ti", 1 << 40),
        ] {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
        for bad in ["", "Gi", "1.2.3", "1Q", "0.5", "1e-3", "100m", "-1Gi"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_bytes("100m").unwrap_err().reason,
            "milli-units are not whole bytes"
        );
    }
}
