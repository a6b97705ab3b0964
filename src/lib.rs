//! mana-ai: a reactor that runs mana's AI missions.
//!
//! The modules in the order a change flows through them (see
//! `docs/design.md` for the why):
//!
//! - **triggers** — the DBA kit (`triggers/*.sql`), embedded: an `AFTER
//!   INSERT` trigger on `sync_changes` queues every mission and agent change
//!   in `mana_ai.change_queue` and sends an empty NOTIFY.
//! - **reactor** — the listener (LISTEN on a dedicated connection, wakes the
//!   applier), the applier (claims queue rows in batches, decodes each row,
//!   sets poison aside), the supervisor that restarts them, and the fold
//!   rebuild from history.
//! - **sync** — change rows, the poison checks and the pure fold: field-level
//!   last-writer-wins, as the webapp folds, into the snapshot rows
//!   (`mission_snapshots`, `agent_snapshots`).
//! - **schedule** — the clock (database time), the timer wheel that holds
//!   every armed mission and fires at its `nextRunAt`, and cadences.
//! - **run** — one mission run: the durable slot claim, the agent gates,
//!   inputs (decrypted under the grant, see **crypto**), the planner call
//!   (**planner**: tool catalog, policy, prompt, structured output, parser,
//!   LLM and research clients), and the write-back, committed with the
//!   slot's completion.
//! - **http**, **backend**, **metrics**, **audit** — `/health`, `/metrics`,
//!   `/internal/*` and the audit API over hyper; the service as HTTP sees it;
//!   the Prometheus registry; the decrypt audit read.
//!
//! Around them: **service** is the composition root ([`service::App`] built
//! from a [`config::Config`]; leadership through the advisory lock; the
//! runner's set-up), **config** reads the environment, **db** connects
//! (pool, dedicated connections, TLS, migrations), **privilege** refuses a
//! SUPERUSER or BYPASSRLS role, **retention** prunes old rows, **logging**
//! sets up logs and traces, **backoff** is the one back-off of every retry
//! loop.
//!
//! **store** is the only place with SQL: every statement the running
//! service issues, by table family (besides the migrations in `db::migrate`
//! and the trigger kit in `triggers`).
//!
//! Test and demo support are workspace members of their own, never linked
//! into the service: `crates/pgtemp` (find or start a Postgres, throwaway
//! databases), `crates/testkit` (fake LLM and mana-api), `crates/demo`
//! (`mana-ai-demo`) and `crates/bench` (`reactor-bench`).

pub mod audit;
pub mod backend;
pub mod backoff;
pub mod config;
pub mod crypto;
pub mod db;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod planner;
pub mod privilege;
pub mod reactor;
pub mod retention;
pub mod run;
pub mod run_record;
pub mod schedule;
pub mod service;
pub(crate) mod store;
pub mod sync;
pub mod triggers;
