//! The DBA trigger kit (`triggers/*.sql`), embedded so the binary can print
//! it, and run for `mana-ai triggers install|verify` and the tests.
//!
//! The files are written for `psql -f`: a short psql prologue turns
//! `-v service_role=...` into the setting `mana_ai.service_role`; everything
//! after the `-- @@body` line is plain SQL, which this module runs after
//! setting that value itself. One source, two ways to run it.

use anyhow::Context;

pub const INSTALL_SQL: &str = include_str!("../triggers/install.sql");
pub const VERIFY_SQL: &str = include_str!("../triggers/verify.sql");
pub const UNINSTALL_SQL: &str = include_str!("../triggers/uninstall.sql");

/// The plain-SQL part of a kit file (after the `-- @@body` line).
pub fn body(sql: &str) -> &str {
    let start = sql
        .find("-- @@body")
        .expect("every kit file has a -- @@body marker");
    let rest = &sql[start..];
    let line_end = rest.find('\n').map_or(rest.len(), |i| i + 1);
    &rest[line_end..]
}

async fn set_role_setting(client: &tokio_postgres::Client, role: &str) -> anyhow::Result<()> {
    client
        .execute(
            "SELECT set_config('mana_ai.service_role', $1, false)",
            &[&role],
        )
        .await?;
    Ok(())
}

/// The steps of a kit file's body (split at `-- @@step` lines): each is
/// sent on its own, so a step may `CALL` a procedure that commits, which a
/// multi-statement query (one implicit transaction) would refuse.
pub fn steps(body: &str) -> Vec<&str> {
    let mut parts = body.split("\n-- @@step");
    let first = parts.next().into_iter();
    // Each later part starts with the rest of its marker line.
    let rest = parts.map(|part| part.split_once('\n').map_or("", |(_, sql)| sql));
    first.chain(rest).filter(|s| !s.trim().is_empty()).collect()
}

/// Installs the kit as the connected (super)user, granting `service_role`.
pub async fn install(client: &tokio_postgres::Client, service_role: &str) -> anyhow::Result<()> {
    set_role_setting(client, service_role).await?;
    for step in steps(body(INSTALL_SQL)) {
        client
            .batch_execute(step)
            .await
            .map_err(describe)
            .context("running triggers/install.sql")?;
    }
    Ok(())
}

/// Removes the trigger, its function, the queue and the restrictive policy,
/// and revokes what install granted: from `service_role`, or (None) from the
/// roles the policy names and those that may delete from the queue.
pub async fn uninstall(
    client: &tokio_postgres::Client,
    service_role: Option<&str>,
) -> anyhow::Result<()> {
    set_role_setting(client, service_role.unwrap_or("")).await?;
    client
        .batch_execute(body(UNINSTALL_SQL))
        .await
        .map_err(describe)
        .context("running triggers/uninstall.sql")
}

/// Runs verify.sql's checks; the error names everything that is missing.
/// `service_role` None checks the grants of the connected role.
pub async fn verify(
    client: &tokio_postgres::Client,
    service_role: Option<&str>,
) -> anyhow::Result<()> {
    let role = match service_role {
        Some(r) => r.to_string(),
        None => client
            .query_one("SELECT current_user::text AS role", &[])
            .await?
            .try_get("role")?,
    };
    set_role_setting(client, &role).await?;
    client
        .batch_execute(body(VERIFY_SQL))
        .await
        .map_err(describe)
}

/// Turns a server error into its message and hint (the Display of
/// tokio_postgres::Error alone says only "db error").
fn describe(e: tokio_postgres::Error) -> anyhow::Error {
    match e.as_db_error() {
        Some(db) => match db.hint() {
            Some(hint) => anyhow::anyhow!("{} (hint: {hint})", db.message()),
            None => anyhow::anyhow!("{}", db.message()),
        },
        None => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_body_has_three_steps_without_their_marker_lines() {
        let steps = steps(body(INSTALL_SQL));
        assert_eq!(steps.len(), 3);
        assert!(steps[1]
            .trim_start()
            .starts_with("CALL mana_ai.backfill_history("));
        assert!(steps.iter().all(|s| !s.contains("@@step")));
    }

    #[test]
    fn bodies_skip_the_psql_prologue() {
        for sql in [INSTALL_SQL, VERIFY_SQL, UNINSTALL_SQL] {
            let b = body(sql);
            assert!(!b.contains("\\if") && !b.contains("\\set") && !b.contains(":'service_role'"));
            assert!(!b.trim().is_empty());
        }
    }
}
