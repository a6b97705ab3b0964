//! Which generation of `public.sync_changes` a database has, read from its
//! catalog at start (never assumed, never taken from a setting):
//!
//! - **v0.6**: per-field stamps in `field_timestamps`;
//! - **current**: per-field stamps in `field_meta` (the same flat map of ISO
//!   strings), with `origin` and `space_id` beside them.
//!
//! Both are in use, and mana-ai serves both: it reads the stamps from
//! whichever column the table has and writes its write-back in the table's
//! own shape (`store::writeback`). A table of neither shape is refused at
//! start naming the columns it has.

use std::fmt;

/// The stamp column's generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Generation {
    #[default]
    V06,
    Current,
}

impl Generation {
    /// The column of per-field stamps.
    pub fn stamps_column(self) -> &'static str {
        match self {
            Generation::V06 => "field_timestamps",
            Generation::Current => "field_meta",
        }
    }

    /// The label of `mana_ai_sync_log_info` and `/health`.
    pub fn as_str(self) -> &'static str {
        match self {
            Generation::V06 => "v0.6",
            Generation::Current => "current",
        }
    }
}

/// What the catalog says about `sync_changes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogShape {
    pub generation: Generation,
    pub origin: bool,
    pub space_id: bool,
}

impl LogShape {
    /// Reads the shape from the table's column names.
    pub fn from_columns<S: AsRef<str>>(columns: &[S]) -> Result<LogShape, ShapeError> {
        let has = |name: &str| columns.iter().any(|c| c.as_ref() == name);
        let generation = match (has("field_timestamps"), has("field_meta")) {
            (true, false) => Generation::V06,
            (false, true) => Generation::Current,
            (both, _) => {
                return Err(ShapeError {
                    columns: columns.iter().map(|c| c.as_ref().to_string()).collect(),
                    both,
                })
            }
        };
        Ok(LogShape {
            generation,
            origin: has("origin"),
            space_id: has("space_id"),
        })
    }
}

impl fmt::Display for LogShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stamps = match self.generation {
            Generation::V06 => "field_timestamps",
            Generation::Current => "field_meta",
        };
        write!(f, "{} ({stamps}", self.generation.as_str())?;
        for (present, column) in [(self.origin, "origin"), (self.space_id, "space_id")] {
            if present {
                write!(f, ", {column}")?;
            }
        }
        f.write_str(")")
    }
}

/// `sync_changes` has neither stamp column, or both.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "public.sync_changes has {}: mana-ai reads per-field stamps from `field_timestamps` \
     (mana v0.6) or `field_meta` (current mana); its columns are: {}",
    if *.both { "both field_timestamps and field_meta" } else { "neither field_timestamps nor field_meta" },
    .columns.join(", ")
)]
pub struct ShapeError {
    pub columns: Vec<String>,
    pub both: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const V06: &[&str] = &["id", "app_id", "data", "field_timestamps", "actor"];
    const CURRENT: &[&str] = &["id", "data", "field_meta", "actor", "origin", "space_id"];

    #[test]
    fn each_generation_is_read_from_its_stamp_column() {
        let v06 = LogShape::from_columns(V06).unwrap();
        assert_eq!(
            (v06.generation, v06.origin, v06.space_id),
            (Generation::V06, false, false)
        );
        assert_eq!(v06.to_string(), "v0.6 (field_timestamps)");
        let current = LogShape::from_columns(CURRENT).unwrap();
        assert_eq!(current.generation, Generation::Current);
        assert_eq!(
            current.to_string(),
            "current (field_meta, origin, space_id)"
        );
    }

    #[test]
    fn neither_or_both_is_refused_naming_the_columns() {
        let neither = LogShape::from_columns(&["id", "data", "stamps"]).unwrap_err();
        let text = neither.to_string();
        assert!(
            text.contains("neither field_timestamps nor field_meta"),
            "{text}"
        );
        assert!(text.contains("its columns are: id, data, stamps"), "{text}");
        let both = LogShape::from_columns(&["field_timestamps", "field_meta"]).unwrap_err();
        assert!(both
            .to_string()
            .contains("both field_timestamps and field_meta"));
    }

    #[test]
    fn each_generation_names_its_stamp_column() {
        assert_eq!(Generation::V06.stamps_column(), "field_timestamps");
        assert_eq!(Generation::Current.stamps_column(), "field_meta");
        assert_eq!(Generation::default(), Generation::V06);
    }
}
