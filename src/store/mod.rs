//! The store layer: every SQL statement the running service issues, by table
//! family. Nothing outside this folder, `db::migrate` (migrations) and
//! `triggers` (the DBA's trigger kit) writes SQL.
//!
//! Each module takes a `tokio_postgres` client or transaction and returns
//! typed rows; callers never index columns by position.

// Queue and change log (owned by the reactor); decoding their rows.
pub(crate) mod batch_read;
pub(crate) mod decode;
pub(crate) mod history;
pub(crate) mod maintenance;
pub(crate) mod notify;
pub(crate) mod queue;
pub(crate) mod snapshots;

// Runs, claims, write-backs, audit and usage (owned by the runner).
pub(crate) mod audit;
pub(crate) mod due;
pub(crate) mod research_jobs;
pub(crate) mod runs;
pub(crate) mod usage;
pub(crate) mod writeback;

// Process-level: leadership and user-scoped (RLS) sessions.
pub(crate) mod leader;
pub(crate) mod session;
pub(crate) mod views;
