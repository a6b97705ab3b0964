//! mana-ai: a reactor that runs mana's AI missions.
//!
//! Triggers on `sync_changes` queue each mission/agent change; the reactor
//! folds just that change into snapshot rows and keeps every active mission
//! in a timer wheel that fires at its `nextRunAt`. See `docs/design.md`.

pub mod audit;
pub mod backend;
pub mod config;
pub mod crypto;
pub mod db;
pub mod demo;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod pgenv;
pub mod planner;
pub mod privilege;
pub mod reactor;
pub mod retention;
pub mod run;
pub mod schedule;
pub mod service;
pub(crate) mod store;
pub mod sync;
#[cfg(test)]
mod testenv;
pub mod testkit;
pub mod triggers;
