//! Where a run is, in the webapp's words: a failed iteration's
//! `errorDetails.phase` (contract section 3) and `mission_runs.outcome` of
//! an attempt that failed. Defined with the other values `mission_runs`
//! records, in `run_record`.

pub use crate::run_record::Phase;
