//! Scheduling: cadence (when is the next run) and the timer wheel (fire at it).

pub mod cadence;
