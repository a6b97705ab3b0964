//! `mana_ai.token_usage`: the tokens each run charged, for the agents'
//! `maxTokensPerDay` budget and the per-user budget of all the user's runs
//! (`MANA_AI_USER_TOKENS_PER_DAY`). A written plan, a failed attempt
//! and an unparseable answer are all charged.

use tokio_postgres::GenericClient;

/// Tokens the agent used in the last 24 hours.
pub(crate) async fn tokens_last_day(
    client: &impl GenericClient,
    user_id: &str,
    agent_id: &str,
) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT least(coalesce(sum(tokens_used), 0), 9223372036854775807)::int8 AS tokens FROM mana_ai.token_usage
             WHERE user_id = $1 AND agent_id = $2 AND ts > now() - interval '24 hours'",
            &[&user_id, &agent_id],
        )
        .await?;
    row.try_get("tokens")
}

/// Tokens all the user's runs (with an agent or without) used in the last
/// 24 hours.
pub(crate) async fn user_tokens_last_day(
    client: &impl GenericClient,
    user_id: &str,
) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT least(coalesce(sum(tokens_used), 0), 9223372036854775807)::int8 AS tokens FROM mana_ai.token_usage
             WHERE user_id = $1 AND ts > now() - interval '24 hours'",
            &[&user_id],
        )
        .await?;
    row.try_get("tokens")
}

/// Charges one run's tokens (inside the write-back's transaction).
pub(crate) async fn record(
    client: &impl GenericClient,
    user_id: &str,
    agent_id: Option<&str>,
    mission_id: &str,
    tokens_used: i64,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO mana_ai.token_usage (user_id, agent_id, mission_id, tokens_used) VALUES ($1, $2, $3, $4)",
            &[&user_id, &agent_id, &mission_id, &tokens_used],
        )
        .await?;
    Ok(())
}
