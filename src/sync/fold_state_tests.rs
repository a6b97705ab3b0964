//! Unit tests of the incremental fold's refusals (a late row, a stored
//! state of another shape) and of its stored shape.

use super::*;
use uuid::Uuid;

/// A row at or before the last one folded is refused (the record must be
/// replayed), and changes nothing.
#[test]
fn a_late_row_asks_for_a_replay() {
    let (a, b) = (ins(1, 0, json!({"x": 1})), ins(2, 1_000, json!({"x": 2})));
    let (mut state, mut record) = (FoldState::default(), Map::new());
    assert_eq!(state.apply(ID, &mut record, &b), Ok(true));
    let before = (state.clone(), record.clone());
    assert_eq!(state.apply(ID, &mut record, &a), Err(ReplayNeeded::Late));
    assert_eq!(state.apply(ID, &mut record, &b), Err(ReplayNeeded::Late));
    assert_eq!((state, record), before);
}

/// A stored state of the rule before (no version) or one that does not
/// decode is never folded into: it asks for a replay.
#[test]
fn a_stored_state_of_another_shape_asks_for_a_replay() {
    let old =
        json!({"f": {"x": {"s": "2025-01-01T00:00:00.000Z", "t": 1, "c": Uuid::nil()}}, "n": 1});
    let row = upd(
        1,
        0,
        json!({"x": 1}),
        json!({"x": "2026-01-01T00:00:00.000Z"}),
    );
    for stored in [
        old,
        json!({}),
        json!({"v": 2, "s": 5}),
        json!({"v": 1, "e": true}),
    ] {
        let mut state = FoldState::decode(stored.clone());
        assert!(state.is_stale(), "{stored}");
        let mut record = map(json!({"id": ID, "x": 0}));
        assert_eq!(state.apply(ID, &mut record, &row), Err(ReplayNeeded::Stale));
        assert_eq!(record["x"], 0);
    }
}

/// Past the replay limit a late row is folded as if it came last; a stale
/// state is then taken as the record it has.
#[test]
fn apply_as_last_folds_a_late_row_on_top() {
    let (a, b) = (
        ins(1, 0, json!({"x": 1})),
        upd(
            2,
            5,
            json!({"x": 2}),
            json!({"x": "2030-01-01T00:00:00.000Z"}),
        ),
    );
    let (mut state, mut record) = (FoldState::default(), Map::new());
    state.apply(ID, &mut record, &b).unwrap();
    assert!(!state.apply_as_last(ID, &mut record, &a));
    assert_eq!(record["x"], 2);
    let mut stale = FoldState::stale();
    let mut record = map(json!({"id": ID, "x": 0}));
    assert!(stale.apply_as_last(ID, &mut record, &b));
    assert_eq!(
        (record["x"].clone(), stale.is_deleted(&record)),
        (json!(2), false)
    );
    assert_eq!(stale.apply(ID, &mut record, &a), Err(ReplayNeeded::Late));
}

#[test]
fn state_serializes_compactly_and_round_trips() {
    let (mut state, mut record) = (FoldState::default(), Map::new());
    let r = upd(
        7,
        0,
        json!({"x": 1}),
        json!({"x": "2025-01-01T00:00:00.000Z"}),
    );
    state.apply(ID, &mut record, &r).unwrap();
    let text = serde_json::to_string(&state).unwrap();
    assert_eq!(
        text,
        r#"{"v":2,"e":true,"s":{"x":"2025-01-01T00:00:00.000Z"},"l":{"t":1735689600000000,"q":7,"c":"00000000-0000-0000-0000-000000000007"},"n":1}"#
    );
    assert_eq!(
        FoldState::decode(serde_json::from_str(&text).unwrap()),
        state
    );
    assert_eq!(replay_state(ID, &[r]), Some((state, record)));
}
