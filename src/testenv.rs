//! Unit-test support: an environment lookup made of fixed pairs, for the
//! functions that read variables through a lookup instead of the process.

/// A lookup that knows exactly `pairs`.
pub fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }
}
