//! The service refuses to run as a privileged database role.
//!
//! Row-level security is what keeps one user's data from another's run: a
//! SUPERUSER or BYPASSRLS role skips it (and, as a superuser, every grant),
//! so `serve` checks the role it connects as before it does anything else.
//! `MANA_AI_ALLOW_PRIVILEGED=true` overrides the refusal for development
//! and logs a warning that says so.

use std::fmt;

use anyhow::Context;

/// A role attribute that defeats row-level security.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    Superuser,
    BypassRls,
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Attribute::Superuser => "SUPERUSER",
            Attribute::BypassRls => "BYPASSRLS",
        })
    }
}

/// The connected role holds attributes the service must not run with.
#[derive(Debug, thiserror::Error)]
#[error(
    "SYNC_DATABASE_URL connects as role {role:?}, which is {}: row-level security would not \
     separate users. Connect as an ordinary role (CREATE ROLE ... LOGIN NOSUPERUSER NOBYPASSRLS; \
     see README, For DBAs), or set MANA_AI_ALLOW_PRIVILEGED=true for development only",
    join(.attributes)
)]
pub struct PrivilegedRole {
    pub role: String,
    pub attributes: Vec<Attribute>,
}

fn join(attributes: &[Attribute]) -> String {
    attributes
        .iter()
        .map(Attribute::to_string)
        .collect::<Vec<_>>()
        .join(" and ")
}

/// The connected role and its privileged attributes (empty: an ordinary role).
pub async fn role_attributes(
    client: &impl tokio_postgres::GenericClient,
) -> anyhow::Result<(String, Vec<Attribute>)> {
    let row = crate::store::maintenance::current_role(client)
        .await
        .context("reading the attributes of the connected role")?;
    let mut attributes = Vec::new();
    if row.superuser {
        attributes.push(Attribute::Superuser);
    }
    if row.bypass_rls {
        attributes.push(Attribute::BypassRls);
    }
    let role = row.role;
    Ok((role, attributes))
}

/// Refuses a privileged role: every new pooled connection asks this
/// (`db::service_pool`), so a role altered while the service runs is caught.
pub async fn refuse_privileged(client: &impl tokio_postgres::GenericClient) -> anyhow::Result<()> {
    let (role, attributes) = role_attributes(client).await?;
    if attributes.is_empty() {
        return Ok(());
    }
    Err(PrivilegedRole { role, attributes }.into())
}

/// Refuses a privileged role unless `allow`; with `allow` it warns loudly.
pub async fn check_service_role(
    client: &impl tokio_postgres::GenericClient,
    allow: bool,
) -> anyhow::Result<()> {
    let (role, attributes) = role_attributes(client).await?;
    if attributes.is_empty() {
        return Ok(());
    }
    let refusal = PrivilegedRole { role, attributes };
    if !allow {
        return Err(refusal.into());
    }
    tracing::warn!(
        role = %refusal.role,
        attributes = %join(&refusal.attributes),
        "RUNNING AS A PRIVILEGED ROLE ({}) because MANA_AI_ALLOW_PRIVILEGED=true: row-level security \
         does not separate users; development only, never in production",
        join(&refusal.attributes)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_each_attribute_and_the_override() {
        let e = PrivilegedRole {
            role: "postgres".into(),
            attributes: vec![Attribute::Superuser, Attribute::BypassRls],
        };
        let text = e.to_string();
        assert!(
            text.contains("\"postgres\", which is SUPERUSER and BYPASSRLS"),
            "{text}"
        );
        assert!(text.contains("MANA_AI_ALLOW_PRIVILEGED=true"), "{text}");
    }
}
