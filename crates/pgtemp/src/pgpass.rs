//! The password file libpq reads (`PGPASSFILE`, else `~/.pgpass`): lines of
//! `hostname:port:database:username:password`, `*` matching anything in the
//! first four fields, `\:` and `\\` escaping, `#` starting a comment. The
//! first matching line wins, as in libpq.

use std::path::PathBuf;

/// Where libpq would look for the file, from the environment `env`.
pub fn path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(file) = env("PGPASSFILE").filter(|f| !f.is_empty()) {
        return Some(PathBuf::from(file));
    }
    env("HOME").map(|home| PathBuf::from(home).join(".pgpass"))
}

/// The password of the first line of `text` that matches.
pub fn lookup(text: &str, host: &str, port: u16, database: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    let wanted = [host, port.as_str(), database, user];
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .map(fields)
        .find(|f| {
            f.len() >= 5
                && f.iter()
                    .zip(wanted)
                    .all(|(field, want)| field == "*" || field == want)
        })
        .map(|mut f| f.swap_remove(4))
}

/// Splits one line at unescaped colons, removing the escapes.
fn fields(line: &str) -> Vec<String> {
    let (mut out, mut field) = (Vec::new(), String::new());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => field.extend(chars.next()),
            // libpq ends the password at an unescaped colon too.
            ':' => out.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    out.push(field);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_line_wins_and_wildcards_match() {
        let text = "# local\n\
                    db.example:5432:*:app:nope\n\
                    127.0.0.1:5432:*:postgres:first\n\
                    *:*:*:postgres:second\n";
        assert_eq!(
            lookup(text, "127.0.0.1", 5432, "postgres", "postgres").as_deref(),
            Some("first")
        );
        assert_eq!(
            lookup(text, "localhost", 5433, "x", "postgres").as_deref(),
            Some("second")
        );
        assert_eq!(lookup(text, "127.0.0.1", 5432, "x", "someone"), None);
    }

    #[test]
    fn escapes_in_fields_and_the_password() {
        let text = r"h\:1:5432:d:u:pa\:s\\s:ignored";
        assert_eq!(
            lookup(text, "h:1", 5432, "d", "u").as_deref(),
            Some(r"pa:s\s")
        );
    }

    #[test]
    fn short_lines_never_match() {
        assert_eq!(lookup("*:*:*:postgres", "h", 1, "d", "postgres"), None);
    }

    #[test]
    fn pgpassfile_overrides_home() {
        let env = |k: &str| match k {
            "PGPASSFILE" => Some("/tmp/pw".to_string()),
            "HOME" => Some("/home/me".to_string()),
            _ => None,
        };
        assert_eq!(path(&env), Some(PathBuf::from("/tmp/pw")));
        let env = |k: &str| (k == "HOME").then(|| "/home/me".to_string());
        assert_eq!(path(&env), Some(PathBuf::from("/home/me/.pgpass")));
    }
}
