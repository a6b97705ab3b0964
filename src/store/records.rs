//! Reading a run's input records. Today an input is folded from
//! `sync_changes` by the reactor's fold (`run::inputs` calls it); its SQL
//! moves here when the reactor's store is split (`store::history`).
