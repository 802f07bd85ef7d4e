//! Kubernetes resource quantities (`500m`, `0.5`, `64Mi`, `1e6`) as integers.
//!
//! # Design
//! A quantity is a non-negative decimal number followed by at most one
//! suffix: a binary one (`Ki` to `Ei`, powers of 1024), a decimal one (`n`,
//! `u`, `m`, `k`, `M`, `G`, `T`, `P`, `E`) or an exponent (`e6`, `E-3`). The
//! value is computed exactly in `u128` (mantissa, power of ten, power of two)
//! and rounded up once, as Kubernetes' `Value()` and `MilliValue()` do, so
//! `0.1m` CPU is 1 millicore and no float rounding ever creeps in.

/// Why a quantity was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum QuantityError {
    /// Not a number with an optional suffix.
    Malformed,
    /// A leading `-`.
    Negative,
    /// More than fits in a `u64` of the unit.
    TooLarge,
    /// Memory with the `m` (milli) suffix: thousandths of a byte.
    MilliBytes,
}

/// A CPU quantity in millicores, rounded up: `500m`, `0.5` -> 500; `2` -> 2000.
pub(super) fn cpu_millis(text: &str) -> Result<u64, QuantityError> {
    scaled(text, 1000)
}

/// A memory quantity in bytes, rounded up: `64Mi` -> 67108864, `1e6` ->
/// 1000000. The `m` suffix is refused (see the module's limitations).
pub(super) fn memory_bytes(text: &str) -> Result<u64, QuantityError> {
    let bytes = scaled(text, 1)?;
    if text.ends_with('m') {
        return Err(QuantityError::MilliBytes);
    }
    Ok(bytes)
}

/// `ceil(quantity * scale)`.
fn scaled(text: &str, scale: u128) -> Result<u64, QuantityError> {
    if text.starts_with('-') {
        return Err(QuantityError::Negative);
    }
    let unsigned = text.strip_prefix('+').unwrap_or(text);
    let number_len = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(QuantityError::Malformed);
    }
    let fraction = fraction.trim_end_matches('0');
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| QuantityError::TooLarge)?
    };
    let fraction_len = i64::try_from(fraction.len()).map_err(|_| QuantityError::TooLarge)?;
    let (power_of_ten, power_of_two) = suffix_powers(suffix)?;
    let exponent = power_of_ten.saturating_sub(fraction_len);

    let value = mantissa
        .checked_mul(1u128 << power_of_two)
        .and_then(|v| v.checked_mul(scale))
        .ok_or(QuantityError::TooLarge)?;
    let value = if value == 0 {
        0
    } else if exponent >= 0 {
        u32::try_from(exponent)
            .ok()
            .and_then(|e| 10u128.checked_pow(e))
            .and_then(|p| value.checked_mul(p))
            .ok_or(QuantityError::TooLarge)?
    } else {
        match u32::try_from(-exponent)
            .ok()
            .and_then(|e| 10u128.checked_pow(e))
        {
            Some(divisor) => value.div_ceil(divisor),
            // Below 1 in the unit (the divisor exceeds any u128 value).
            None => 1,
        }
    };
    u64::try_from(value).map_err(|_| QuantityError::TooLarge)
}

/// The power of ten and the power of two a suffix stands for.
fn suffix_powers(suffix: &str) -> Result<(i64, u32), QuantityError> {
    Ok(match suffix {
        "" => (0, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        _ => {
            let exponent = suffix
                .strip_prefix(['e', 'E'])
                .ok_or(QuantityError::Malformed)?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(QuantityError::Malformed);
            }
            // Any exponent beyond i64 is far beyond every u64 anyway.
            (exponent.parse().map_err(|_| QuantityError::TooLarge)?, 0)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_become_millicores() {
        let table = [
            ("500m", 500),
            ("1", 1000),
            ("2", 2000),
            ("0.5", 500),
            (".5", 500),
            ("1.5", 1500),
            ("+1", 1000),
            ("0", 0),
            ("0.0001", 1),
            ("0.1m", 1),
            ("100000u", 100),
            ("1500000000n", 1500),
            ("1k", 1_000_000),
            ("1e3", 1_000_000),
            ("1E-3", 1),
            ("2.50", 2500),
            ("007", 7000),
        ];
        for (text, millis) in table {
            assert_eq!(cpu_millis(text), Ok(millis), "{text}");
        }
    }

    #[test]
    fn memory_quantities_become_bytes() {
        let table = [
            ("64Mi", 64 << 20),
            ("1Gi", 1 << 30),
            ("512Ki", 512 << 10),
            ("1.5Gi", 3 << 29),
            ("128M", 128_000_000),
            ("1G", 1_000_000_000),
            ("1k", 1000),
            ("1000000", 1_000_000),
            ("1e6", 1_000_000),
            ("1E6", 1_000_000),
            ("1e+6", 1_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("1Ei", 1 << 60),
            ("0.5", 1),
            ("0", 0),
        ];
        for (text, bytes) in table {
            assert_eq!(memory_bytes(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn malformed_quantities_are_refused() {
        for text in [
            "", "abc", "1 Mi", " 1", "1mi", "1MB", "1KB", "1Ki ", "1.2.3", ".", "1e", "1e+",
            "1ee6", "1e6Mi", "Mi", "1K", "0x10", "1_000",
        ] {
            assert_eq!(
                memory_bytes(text),
                Err(QuantityError::Malformed),
                "{text:?}"
            );
        }
        assert_eq!(cpu_millis("1 core"), Err(QuantityError::Malformed));
    }

    #[test]
    fn negative_quantities_are_refused() {
        assert_eq!(cpu_millis("-1"), Err(QuantityError::Negative));
        assert_eq!(memory_bytes("-64Mi"), Err(QuantityError::Negative));
    }

    #[test]
    fn quantities_beyond_u64_are_refused() {
        assert_eq!(memory_bytes("16Ei"), Err(QuantityError::TooLarge));
        assert_eq!(memory_bytes("1e20"), Err(QuantityError::TooLarge));
        assert_eq!(
            memory_bytes("1e99999999999999999999"),
            Err(QuantityError::TooLarge)
        );
        assert_eq!(cpu_millis("20E"), Err(QuantityError::TooLarge));
        assert_eq!(memory_bytes("15Ei"), Ok(15 << 60));
        // A huge negative exponent is a tiny positive amount: one unit.
        assert_eq!(memory_bytes("1e-99999"), Ok(1));
        assert_eq!(memory_bytes("0e99999"), Ok(0));
    }

    #[test]
    fn milli_suffix_on_memory_is_refused() {
        assert_eq!(memory_bytes("128m"), Err(QuantityError::MilliBytes));
        assert_eq!(cpu_millis("128m"), Ok(128));
        assert_eq!(memory_bytes("1em"), Err(QuantityError::Malformed));
    }
}
