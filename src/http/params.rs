//! Request parameters: percent-decoding and the list queries.
//!
//! Rules: a broken `%` escape or non-UTF-8 result is an error (400), never
//! silently passed on; `limit` defaults to 200 and is clamped to 1..=1000
//! (contract section 9), and only a non-integer is refused.

/// Rows per request: default and upper bound.
const LIMIT_DEFAULT: i64 = 200;
const LIMIT_MAX: i64 = 1000;

/// `?<filter>=&limit=` of a list route: the audit API filters by
/// `missionId`, the dead-changes view by `userId`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ListQuery {
    /// The filter's value; `None` when absent or empty.
    pub(crate) filter: Option<String>,
    /// Clamped to 1..=1000; 200 when absent or empty.
    pub(crate) limit: i64,
}

impl ListQuery {
    /// Parses `query`, taking `filter_key` as the filter; other keys are ignored.
    pub(crate) fn parse(query: Option<&str>, filter_key: &str) -> Result<ListQuery, &'static str> {
        let mut parsed = ListQuery {
            filter: None,
            limit: LIMIT_DEFAULT,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = "query is not valid percent-encoded UTF-8";
            let (key, value) = (
                percent_decode(key, true).ok_or(bad)?,
                percent_decode(value, true).ok_or(bad)?,
            );
            if key == filter_key {
                parsed.filter = Some(value).filter(|v| !v.is_empty());
            } else if key == "limit" {
                parsed.limit = if value.is_empty() {
                    LIMIT_DEFAULT
                } else {
                    parse_limit(&value)?
                };
            }
        }
        Ok(parsed)
    }
}

/// An integer clamped to 1..=1000; integers too large for i64 clamp too.
fn parse_limit(value: &str) -> Result<i64, &'static str> {
    match value.parse::<i64>() {
        Ok(n) => Ok(n.clamp(1, LIMIT_MAX)),
        Err(_) => {
            let digits = value.strip_prefix('-').unwrap_or(value);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                Err("limit must be an integer")
            } else if value.starts_with('-') {
                Ok(1)
            } else {
                Ok(LIMIT_MAX)
            }
        }
    }
}

/// Decodes `%XX` escapes (and `+` as a space in query strings); `None` for a
/// broken escape or bytes that aren't UTF-8.
pub(crate) fn percent_decode(input: &str, plus_is_space: bool) -> Option<String> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (hi, lo) = (hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?);
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2Fc", false).as_deref(), Some("a b/c"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("a+b", true).as_deref(), Some("a b"));
        assert_eq!(percent_decode("%C3%A4", false).as_deref(), Some("ä"));
        assert_eq!(percent_decode("%", false), None);
        assert_eq!(percent_decode("%2", false), None);
        assert_eq!(percent_decode("%+1", false), None);
        assert_eq!(percent_decode("%FF", false), None);
    }

    #[test]
    fn list_query_defaults_and_clamps() {
        let q = |s| ListQuery::parse(Some(s), "missionId");
        assert_eq!(
            ListQuery::parse(None, "missionId").unwrap(),
            ListQuery {
                filter: None,
                limit: 200
            }
        );
        assert_eq!(q("limit=0").unwrap().limit, 1);
        assert_eq!(q("limit=-5").unwrap().limit, 1);
        assert_eq!(q("limit=5000").unwrap().limit, 1000);
        assert_eq!(q("limit=99999999999999999999").unwrap().limit, 1000);
        assert_eq!(q("limit=-99999999999999999999").unwrap().limit, 1);
        assert_eq!(q("limit=").unwrap().limit, 200);
        assert_eq!(
            q("limit=7&missionId=m%201").unwrap(),
            ListQuery {
                filter: Some("m 1".into()),
                limit: 7
            }
        );
        assert_eq!(q("missionId=").unwrap().filter, None);
        assert_eq!(q("userId=u1").unwrap().filter, None, "only its own key");
        assert_eq!(
            ListQuery::parse(Some("userId=u%2B1"), "userId")
                .unwrap()
                .filter,
            Some("u+1".into())
        );
        assert!(q("limit=ten").is_err());
        assert!(q("limit=1.5").is_err());
        assert!(q("limit=-").is_err());
        assert!(q("missionId=%zz").is_err());
    }
}
