//! Bounding text that came from outside (TaskRun results, messages, registry errors) without ever
//! splitting a UTF-8 character: `String::truncate` panics inside one.

/// Shortens `s` to at most `max` bytes, cutting at the last character boundary at or before `max`.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
}

/// A copy of `s` of at most `max` bytes, cut at a character boundary.
pub fn bounded(s: &str, max: usize) -> String {
    let mut owned = s.to_string();
    truncate(&mut owned, max);
    owned
}

/// Orders two version strings as people read them: dot-separated parts compared as numbers
/// where both are numbers (2.10 > 2.9), as text otherwise (1.0rc1 vs 1.0); more parts are newer
/// when the shared ones are equal. Good enough to pick the highest of a package's fix versions.
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |v: &str| -> Vec<String> { v.split(['.', '-', '+']).map(str::to_string).collect() };
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let ordering = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            _ => x.cmp(y),
        };
        if ordering.is_ne() {
            return ordering;
        }
    }
    pa.len().cmp(&pb.len())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn multi_byte_characters_are_never_split_at_any_offset() {
        let s = "aé€😀b".repeat(3);
        for max in 0..=s.len() + 1 {
            let cut = bounded(&s, max);
            assert!(cut.len() <= max, "{max}: {cut:?}");
            assert!(s.starts_with(&cut));
            // The longest prefix that fits: one more character would exceed `max`.
            let next = s[cut.len()..].chars().next().map_or(0, char::len_utf8);
            assert!(cut.len() == s.len() || cut.len() + next > max, "{max}");
        }
    }

    proptest! {
        #[test]
        fn any_string_at_any_bound_is_a_valid_prefix(s in ".*", max in 0usize..64) {
            let cut = bounded(&s, max);
            prop_assert!(cut.len() <= max);
            prop_assert!(s.starts_with(&cut));
        }
    }
}
