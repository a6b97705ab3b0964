//! Cadence: the next `nextRunAt` of a mission (contract section 4).
