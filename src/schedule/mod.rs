//! Scheduling: cadence (when is the next run), the clock, and the timer wheel
//! (fire at it).

pub mod cadence;
pub mod clock;
pub mod fair;
pub mod wheel;
