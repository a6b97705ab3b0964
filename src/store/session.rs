//! User-scoped (RLS) transactions: the first statement sets
//! `app.current_user_id` for this transaction only, which every row-level
//! security policy of `sync_changes` and the service's tables reads.

use tokio_postgres::Transaction;

/// Refused before touching the database: RLS with an empty user id would
/// silently match nothing, which hides bugs.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("refusing a user-scoped transaction for an empty user id")]
    EmptyUserId,
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
}

/// Starts a transaction scoped to `user_id` by row-level security.
pub async fn begin_user<'a>(
    client: &'a mut tokio_postgres::Client,
    user_id: &str,
) -> Result<Transaction<'a>, ScopeError> {
    if user_id.is_empty() {
        return Err(ScopeError::EmptyUserId);
    }
    let tx = client.transaction().await?;
    set_user(&tx, user_id).await?;
    Ok(tx)
}

/// Switches an open transaction to another user's RLS scope.
pub async fn set_user(tx: &Transaction<'_>, user_id: &str) -> Result<(), ScopeError> {
    if user_id.is_empty() {
        return Err(ScopeError::EmptyUserId);
    }
    tx.execute(
        "SELECT set_config('app.current_user_id', $1, true)",
        &[&user_id],
    )
    .await?;
    Ok(())
}
