//! What an applier batch ends with: its error kinds, its counts, and the
//! report of a committed batch (with the instants of its round trips).
//! The applier and the pieces it calls (`read`, `batch`, `backstop`) share
//! these, so they live apart from all of them.

use std::time::Instant;

use crate::sync::change;

/// Why a batch failed, which decides what happens next.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The connection or the server: retry the same rows later.
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// Something in the rows themselves (SQLSTATE classes 22, 23, 54).
    #[error("data: {code}: {message}")]
    Data { code: String, message: String },
}

impl From<tokio_postgres::Error> for ApplyError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) if is_row_specific(db.code().code()) => ApplyError::Data {
                code: db.code().code().to_string(),
                message: change::clip_bytes(db.message(), 200).to_string(),
            },
            _ => ApplyError::Transient(e.into()),
        }
    }
}

impl From<anyhow::Error> for ApplyError {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<tokio_postgres::Error>() {
            Ok(pg) => pg.into(),
            Err(other) => ApplyError::Transient(other),
        }
    }
}

/// Data exceptions, integrity violations, program limits (a value too big for
/// an index): errors one row can cause. Anything else would fail for every
/// row, so setting rows aside for it would only lose work.
fn is_row_specific(sqlstate: &str) -> bool {
    ["22", "23", "54"]
        .iter()
        .any(|class| sqlstate.starts_with(class))
}

/// Counts of what one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    pub claimed: usize,
    pub applied: usize,
    pub poisoned: usize,
}

/// A committed batch, reported after its timers were re-armed.
#[derive(Debug, Clone)]
pub struct Applied {
    pub change_ids: Vec<uuid::Uuid>,
    pub at: Instant,
    /// When each round trip of the batch returned (the benchmark shows
    /// where the time goes).
    pub phases: Phases,
}

/// The instants of one batch: a connection in hand; claimed (with the
/// first user's change rows and snapshots, read in the claim's round
/// trip); read the other users' and checked every change; folded;
/// committed.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    pub started: Instant,
    pub claimed: Instant,
    pub read: Instant,
    pub folded: Instant,
    pub committed: Instant,
}

impl Phases {
    pub(super) fn starting() -> Phases {
        let now = Instant::now();
        Phases {
            started: now,
            claimed: now,
            read: now,
            folded: now,
            committed: now,
        }
    }
}
