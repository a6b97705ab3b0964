//! The due slot of a run as phase 1 read it, and the views the later
//! phases take of it.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::claim::Slot;
use crate::planner::MissionView;

/// The due slot of an active mission, as the run read it.
pub(super) struct DueRun {
    pub slot: Slot,
    /// When the slot is due.
    pub slot_at: DateTime<Utc>,
    /// The mission record (an object), `iterations` cut to the last three.
    pub record: Value,
    /// How many iterations the whole history holds.
    pub iteration_count: usize,
}

impl DueRun {
    /// The record's fields (checked to be an object when loaded).
    pub fn fields(&self) -> &Map<String, Value> {
        static EMPTY: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);
        self.record.as_object().unwrap_or(&EMPTY)
    }

    /// The mission as the prompt shows it, numbered in the whole history.
    pub fn view(&self) -> MissionView<'_> {
        let mut view = MissionView::from_record(&self.record);
        view.iteration_count = self.iteration_count;
        view
    }
}
