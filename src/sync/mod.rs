//! The `sync_changes` change log as mana-ai sees it, and the pure LWW fold.

pub mod change;
pub mod fold;
mod fold_state;
pub mod generation;
pub mod row;
