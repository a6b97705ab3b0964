//! Property tests: the incremental fold equals the full replay whatever the
//! arrival order and batch split, with the state and record round-tripped
//! through JSON between batches as the snapshot store does. Rows share
//! `created_at` often and their insertion order (`seq`) is independent of
//! their ids; first rows carry stamps for keys they lack; `deletedAt` is
//! set, cleared and stamped like any field.

use super::*;
use chrono::TimeZone;
use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::json;

const ID: &str = "rec-1";
const KEYS: [&str; 5] = ["a", "b", "c", "id", "deletedAt"];

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

fn at_micros(micros: i64) -> DateTime<Utc> {
    base() + chrono::Duration::microseconds(micros)
}

/// How a present field is stamped in `field_timestamps`.
#[derive(Clone, Copy, Debug)]
enum StampKind {
    Missing,
    Explicit,
    /// A non-string entry, which the fold ignores.
    Bogus,
}

/// One row before its times are chosen: op and, per key, value and stamp
/// kind, or (when absent) whether it still carries a stamp for the key.
#[derive(Clone, Debug)]
struct Shape {
    op: Op,
    fields: Vec<Option<(Value, StampKind)>>,
    stamp_only: Vec<bool>,
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => (0..4i64).prop_map(Value::from),
        1 => Just(Value::Null),
        1 => Just(json!(false)),
        1 => Just(json!("")),
    ]
}

fn shape() -> impl Strategy<Value = Shape> {
    let op = prop_oneof![2 => Just(Op::Insert), 6 => Just(Op::Update), 1 => Just(Op::Delete)];
    let kind = prop_oneof![
        Just(StampKind::Missing),
        Just(StampKind::Explicit),
        Just(StampKind::Bogus)
    ];
    let field = proptest::option::weighted(0.5, (value(), kind));
    let stamp_only = vec(proptest::bool::weighted(0.2), KEYS.len());
    (op, vec(field, KEYS.len()), stamp_only).prop_map(|(op, fields, stamp_only)| Shape {
        op,
        fields,
        stamp_only,
    })
}

/// Builds row `i`; `stamp(j)` is the explicit stamp for key `j`. The
/// insertion order `seq` puts `order` above the index, so it is distinct and
/// unrelated to the id's order.
fn build(
    i: usize,
    (id_high, order): (u64, u16),
    shape: &Shape,
    created_at: i64,
    stamp: impl Fn(usize) -> String,
) -> ChangeRow {
    let (mut data, mut field_timestamps) = (Map::new(), Map::new());
    for (j, field) in shape.fields.iter().enumerate() {
        let Some((value, kind)) = field else {
            if shape.stamp_only[j] {
                field_timestamps.insert(KEYS[j].to_owned(), Value::String(stamp(j)));
            }
            continue;
        };
        // deletedAt rarely, so that most records stay alive.
        if KEYS[j] == "deletedAt" && !i.is_multiple_of(3) {
            continue;
        }
        data.insert(KEYS[j].to_owned(), value.clone());
        match kind {
            StampKind::Missing => {}
            StampKind::Explicit => {
                field_timestamps.insert(KEYS[j].to_owned(), Value::String(stamp(j)));
            }
            StampKind::Bogus => {
                field_timestamps.insert(KEYS[j].to_owned(), json!(12));
            }
        }
    }
    ChangeRow {
        // Distinct ids in random order: the index in the low bits.
        id: Uuid::from_u128(u128::from(id_high) << 64 | i as u128),
        seq: i64::from(order) << 8 | i as i64,
        op: shape.op,
        data,
        field_timestamps,
        created_at: at_micros(created_at),
    }
}

/// Rows whose stamps are all distinct: every created_at and every explicit
/// stamp lies in its own millisecond.
fn distinct_rows() -> impl Strategy<Value = Vec<ChangeRow>> {
    (1..12usize).prop_flat_map(|n| {
        let millis = btree_set(0i64..1_000_000, n * (KEYS.len() + 1))
            .prop_map(|set| set.into_iter().collect::<Vec<_>>())
            .prop_shuffle();
        (
            vec(shape(), n),
            millis,
            vec(0i64..1000, n),
            vec(any::<(u64, u16)>(), n),
        )
            .prop_map(|(shapes, millis, sub, ids)| {
                (0..shapes.len())
                    .map(|i| {
                        let explicit = |j: usize| {
                            iso_millis(at_micros(millis[shapes.len() + i * KEYS.len() + j] * 1000))
                        };
                        build(i, ids[i], &shapes[i], millis[i] * 1000 + sub[i], explicit)
                    })
                    .collect()
            })
    })
}

/// Rows crowded into a few milliseconds: shared created_at, explicit stamps
/// equal to each other and to created_at-derived ones.
fn crowded_rows() -> impl Strategy<Value = Vec<ChangeRow>> {
    let row = (
        shape(),
        0i64..4,
        0i64..2,
        vec(0i64..5, KEYS.len()),
        any::<(u64, u16)>(),
    );
    vec(row, 1..12).prop_map(|rows| {
        rows.iter()
            .enumerate()
            .map(|(i, (shape, ms, sub, stamps, id))| {
                build(i, *id, shape, ms * 1000 + sub * 400, |j| {
                    iso_millis(at_micros(stamps[j] * 1000))
                })
            })
            .collect()
    })
}

/// Folds `rows` in arrival order `order`, cutting a batch after position `p`
/// when `cuts[p]`; each batch loads state and record from JSON and stores them.
fn fold_in_batches(
    rows: &[ChangeRow],
    order: &[usize],
    cuts: &[bool],
) -> (FoldState, Map<String, Value>) {
    let mut stored = (String::from("{}"), String::from("{}"));
    let mut pending = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        pending.push(&rows[i]);
        if cuts[pos] || pos + 1 == order.len() {
            let mut state: FoldState = serde_json::from_str(&stored.0).unwrap();
            let mut record: Map<String, Value> = serde_json::from_str(&stored.1).unwrap();
            for row in pending.drain(..) {
                state.apply(ID, &mut record, row);
            }
            stored = (
                serde_json::to_string(&state).unwrap(),
                serde_json::to_string(&record).unwrap(),
            );
        }
    }
    (
        serde_json::from_str(&stored.0).unwrap(),
        serde_json::from_str(&stored.1).unwrap(),
    )
}

fn check(
    rows: Vec<ChangeRow>,
    arrival: &[Index],
    cuts: &[bool],
    again: &[Index],
) -> Result<(), TestCaseError> {
    let expected = replay(ID, &rows).unwrap();
    // A permutation: repeatedly take a random one of the rows left.
    let mut left: Vec<usize> = (0..rows.len()).collect();
    let order: Vec<usize> = arrival
        .iter()
        .take(rows.len())
        .map(|ix| left.remove(ix.index(left.len())))
        .collect();

    let (mut state, mut record) = fold_in_batches(&rows, &order, cuts);
    prop_assert_eq!(
        Folded {
            record: record.clone(),
            deleted: state.is_deleted(&record)
        },
        expected.clone()
    );
    prop_assert_eq!(state.rows_applied(), rows.len() as u64);

    // Re-applying rows already applied changes neither record nor flag.
    for ix in again {
        prop_assert!(!state.apply(ID, &mut record, &rows[ix.index(rows.len())]));
    }
    let deleted = state.is_deleted(&record);
    prop_assert_eq!(Folded { record, deleted }, expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_order_and_batching_equals_replay_with_distinct_stamps(
        rows in distinct_rows(),
        arrival in vec(any::<Index>(), 12),
        cuts in vec(any::<bool>(), 12),
        again in vec(any::<Index>(), 0..4),
    ) {
        check(rows, &arrival, &cuts, &again)?;
    }

    /// Holds without distinct stamps too: the rank breaks stamp ties by
    /// (created_at, id), exactly as the sequential `>=` does.
    #[test]
    fn any_order_and_batching_equals_replay_with_tied_stamps(
        rows in crowded_rows(),
        arrival in vec(any::<Index>(), 12),
        cuts in vec(any::<bool>(), 12),
        again in vec(any::<Index>(), 0..4),
    ) {
        check(rows, &arrival, &cuts, &again)?;
    }

    #[test]
    fn replay_ignores_input_order(rows in crowded_rows(), arrival in vec(any::<Index>(), 12)) {
        let mut left: Vec<usize> = (0..rows.len()).collect();
        let shuffled: Vec<ChangeRow> =
            arrival.iter().take(rows.len()).map(|ix| rows[left.remove(ix.index(left.len()))].clone()).collect();
        prop_assert_eq!(replay(ID, &shuffled), replay(ID, &rows));
    }
}
