//! Which Postgres the tests, the demo and the benchmark use.
//!
//! In order, the first that works: `DATABASE_URL` / `SYNC_DATABASE_URL` (used
//! as given, never second-guessed); the libpq environment (`PGHOST`,
//! `PGPORT`, `PGUSER`, `PGPASSWORD`, the password file) when any of it is
//! set; `127.0.0.1:5432` as `postgres` (password from the password file) only
//! if it lets us in as a superuser; else a throwaway cluster. When nothing
//! works the error lists every candidate with its reason and the variable
//! to set. A password never appears in a label or a reason.

use std::time::Duration;

use anyhow::Context;

use crate::{pgpass, start_cluster, PgServer};

/// How long a candidate may take to let us in.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A server to try, and how to name it in an error.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub label: String,
    pub config: tokio_postgres::Config,
}

/// Finds a server as the module documentation says, reading `env`.
pub fn discover_with(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<PgServer> {
    let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    for var in ["DATABASE_URL", "SYNC_DATABASE_URL"] {
        if let Some(url) = set(var) {
            let admin = url
                .parse()
                .with_context(|| format!("{var} is not a valid Postgres URL"))?;
            return Ok(PgServer {
                admin,
                cluster_dir: None,
            });
        }
    }
    let mut tried = Vec::new();
    if set("MANA_AI_PG").as_deref() != Some("cluster") {
        let pgpass = pgpass::path(env).and_then(|p| std::fs::read_to_string(p).ok());
        for candidate in candidates(env, pgpass.as_deref()) {
            match probe(&candidate.config) {
                Ok(()) => {
                    return Ok(PgServer {
                        admin: candidate.config,
                        cluster_dir: None,
                    })
                }
                Err(reason) => tried.push(format!("{}: {reason}", candidate.label)),
            }
        }
    }
    match start_cluster(None) {
        Ok(server) => {
            if !tried.is_empty() {
                eprintln!(
                    "mana-ai: using a throwaway Postgres cluster; not usable: {}",
                    tried.join("; ")
                );
            }
            Ok(server)
        }
        Err(e) => {
            tried.push(format!("a throwaway cluster (initdb/pg_ctl): {e:#}"));
            anyhow::bail!(
                "no Postgres to use. Tried:\n  - {}\nSet DATABASE_URL to a superuser URL \
                 (postgres://USER:PASSWORD@HOST:5432/postgres), or PGHOST/PGUSER/PGPASSWORD, \
                 or install the server (Debian: apt-get install postgresql) for a throwaway cluster",
                tried.join("\n  - ")
            )
        }
    }
}

/// The servers to probe, in order, with their passwords looked up.
pub fn candidates(env: &dyn Fn(&str) -> Option<String>, pgpass: Option<&str>) -> Vec<Candidate> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    let mut out = Vec::new();
    if ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD"]
        .iter()
        .any(|k| set(k).is_some())
    {
        let host = set("PGHOST").unwrap_or_else(|| "127.0.0.1".into());
        let port = set("PGPORT").and_then(|p| p.parse().ok()).unwrap_or(5432);
        // libpq's default user is the operating system's.
        let user = set("PGUSER")
            .or_else(|| set("USER"))
            .unwrap_or_else(|| "postgres".into());
        let password = set("PGPASSWORD")
            .or_else(|| pgpass.and_then(|t| pgpass::lookup(t, &host, port, "postgres", &user)));
        out.push(candidate(
            format!("the libpq environment ({host}:{port} as {user})"),
            &host,
            port,
            &user,
            password,
        ));
    }
    let password =
        pgpass.and_then(|t| pgpass::lookup(t, "127.0.0.1", 5432, "postgres", "postgres"));
    out.push(candidate(
        "127.0.0.1:5432 as postgres".into(),
        "127.0.0.1",
        5432,
        "postgres",
        password,
    ));
    out
}

fn candidate(
    label: String,
    host: &str,
    port: u16,
    user: &str,
    password: Option<String>,
) -> Candidate {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(user)
        .connect_timeout(PROBE_TIMEOUT);
    if let Some(password) = password {
        config.password(password);
    }
    Candidate { label, config }
}

/// Connects once and checks that the role may create databases and roles.
/// Runs on a thread of its own: callers may or may not be inside a runtime.
pub fn probe(config: &tokio_postgres::Config) -> Result<(), String> {
    let config = config.clone();
    let attempt = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let connecting = config.connect(tokio_postgres::NoTls);
            let (client, connection) = tokio::time::timeout(PROBE_TIMEOUT, connecting)
                .await
                .map_err(|_| "no answer within 3 s".to_string())?
                .map_err(|e| crate::describe(&e))?;
            tokio::spawn(connection);
            let row = client
                .query_one(
                    "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                    &[],
                )
                .await
                .map_err(|e| crate::describe(&e))?;
            match row.try_get::<_, bool>(0) {
                Ok(true) => Ok(()),
                _ => Err("lets us in, but not as a superuser".to_string()),
            }
        })
    });
    attempt
        .join()
        .unwrap_or_else(|_| Err("the probe panicked".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use testkit::env;

    #[test]
    fn without_libpq_variables_only_the_local_server_is_tried() {
        let found = candidates(&env(&[("USER", "me")]), None);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].label, "127.0.0.1:5432 as postgres");
        assert_eq!(found[0].config.get_password(), None);
    }

    #[test]
    fn libpq_variables_come_first_with_the_password_file_as_fallback() {
        let pgpass = "db.local:6543:postgres:admin:from-file\n*:*:*:postgres:local-pw\n";
        let found = candidates(
            &env(&[
                ("PGHOST", "db.local"),
                ("PGPORT", "6543"),
                ("PGUSER", "admin"),
            ]),
            Some(pgpass),
        );
        assert_eq!(found.len(), 2);
        assert_eq!(
            found[0].label,
            "the libpq environment (db.local:6543 as admin)"
        );
        assert_eq!(found[0].config.get_password(), Some(&b"from-file"[..]));
        assert_eq!(found[1].config.get_password(), Some(&b"local-pw"[..]));
    }

    #[test]
    fn pgpassword_wins_and_never_shows_in_a_label() {
        let found = candidates(&env(&[("PGPASSWORD", "s3cret"), ("USER", "me")]), None);
        assert_eq!(found[0].config.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(found[0].config.get_user(), Some("me"));
        assert!(found.iter().all(|c| !c.label.contains("s3cret")));
    }
}
