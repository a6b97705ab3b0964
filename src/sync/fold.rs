//! Field-level last-writer-wins fold (contract section 2).
