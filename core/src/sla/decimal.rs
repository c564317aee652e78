//! Exact decimals: the one parser of the decimal numbers of a contract (availability targets,
//! credit tiers) and the one exact comparison of an availability with such a number, shared
//! by [`super::Target`] and [`super::credits::Percent`].

/// A plain decimal number (`99.95`, `10`, `.5`; no sign, no exponent) as its digits and its
/// number of decimals: `99.95` → (9995, 2). `None` with more than `max_decimals` decimals or
/// more digits than a `u64` holds.
pub(crate) fn parse(text: &str, max_decimals: u32) -> Option<(u64, u32)> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        || frac.len() > max_decimals as usize
    {
        return None;
    }
    let num: u64 = format!("{int}{frac}").parse().ok()?;
    Some((num, frac.len() as u32))
}

/// Whether `good / total` reaches `num / den`, exactly (in integers); an empty window
/// (`total` 0) always does.
pub(crate) fn reaches(good: u64, total: u64, num: u64, den: u64) -> bool {
    total == 0 || u128::from(good) * u128::from(den) >= u128::from(num) * u128::from(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_exactly_and_compare_exactly() {
        assert_eq!(parse("99.95", 9), Some((9995, 2)));
        assert_eq!(parse("10", 9), Some((10, 0)));
        assert_eq!(parse(".5", 9), Some((5, 1)));
        assert_eq!(parse("99.0000001", 6), None);
        for bad in ["", ".", "-1", "1e3", "9 9", "99,9", "99999999999999999999999"] {
            assert_eq!(parse(bad, 9), None, "{bad}");
        }
        // 999 / 1000 reaches 99.9 % exactly, 998 / 1000 does not; an empty window always does.
        assert!(reaches(999, 1000, 999, 1000) && !reaches(998, 1000, 999, 1000));
        assert!(reaches(0, 0, 1, 1));
    }
}
