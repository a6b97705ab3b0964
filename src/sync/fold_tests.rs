//! Unit tests of the fold: each rule of contract section 2 on its own, and
//! the incremental fold's refusals (late rows, stale states).

use super::*;
use chrono::{TimeZone, Utc};
use serde_json::json;
use uuid::Uuid;

const ID: &str = "mission-1";

/// A row at `2025-01-01T00:00:00Z` plus `micros`, with id and seq `n`.
fn row(n: u128, micros: i64, op: Op, data: Value, stamps: Value) -> ChangeRow {
    let base = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    let as_map = |v: Value| match v {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    ChangeRow {
        id: Uuid::from_u128(n),
        seq: n as i64,
        op,
        data: as_map(data),
        field_timestamps: as_map(stamps),
        created_at: base + chrono::Duration::microseconds(micros),
    }
}

fn upd(n: u128, micros: i64, data: Value, stamps: Value) -> ChangeRow {
    row(n, micros, Op::Update, data, stamps)
}

fn ins(n: u128, micros: i64, data: Value) -> ChangeRow {
    row(n, micros, Op::Insert, data, json!({}))
}

fn del(n: u128, micros: i64, data: Value) -> ChangeRow {
    row(n, micros, Op::Delete, data, json!({}))
}

/// The replay of `rows`, checked against the incremental fold of the rows
/// in order (state and record through JSON after every row).
fn fold(rows: &[ChangeRow]) -> Folded {
    let replayed = replay(ID, rows).unwrap();
    let mut ordered = rows.to_vec();
    ordered.sort_by_key(ChangeRow::order_key);
    let (mut state, mut record) = (FoldState::default(), Map::new());
    for r in &ordered {
        state.apply(ID, &mut record, r).expect("rows in order");
        state = FoldState::decode(serde_json::to_value(&state).unwrap());
    }
    let deleted = state.is_deleted(&record);
    assert_eq!(replayed, Folded { record, deleted });
    replayed
}

fn map(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn iso_millis_truncates_like_to_iso_string() {
    let t = Utc.with_ymd_and_hms(2025, 3, 9, 7, 5, 3).unwrap()
        + chrono::Duration::microseconds(123_999);
    assert_eq!(iso_millis(t), "2025-03-09T07:05:03.123Z");
    assert_eq!(
        iso_millis(Utc.with_ymd_and_hms(12345, 1, 1, 0, 0, 0).unwrap()),
        "+012345-01-01T00:00:00.000Z"
    );
}

#[test]
fn op_parses_the_three_ops_only() {
    assert_eq!("delete".parse::<Op>(), Ok(Op::Delete));
    assert_eq!("insert".parse::<Op>(), Ok(Op::Insert));
    assert_eq!("update".parse::<Op>(), Ok(Op::Update));
    assert_eq!("upsert".parse::<Op>(), Err(UnknownOp("upsert".into())));
}

/// An update key without a stamp never reaches a browser.
#[test]
fn an_update_key_without_a_stamp_changes_nothing() {
    let insert = ins(1, 0, json!({"title": "a", "state": "active"}));
    let later = upd(
        2,
        1_000,
        json!({"title": "b", "state": "paused"}),
        json!({"state": "2025-01-01T00:00:00.001Z", "title": 7}),
    );
    let folded = fold(&[insert, later]);
    assert_eq!(
        folded.record,
        map(json!({"id": ID, "title": "a", "state": "paused"}))
    );
}

/// An update that delivers nothing does not create the record; one that
/// delivers fields creates it from those fields only.
#[test]
fn an_update_creates_a_missing_record_from_its_delivered_fields_only() {
    let s = "2025-01-01T00:00:00.000Z";
    let nothing = upd(1, 0, json!({"x": 1}), json!({"y": s}));
    let folded = fold(std::slice::from_ref(&nothing));
    assert!(folded.deleted);
    assert_eq!(folded.record, Map::new());
    let some = upd(2, 1, json!({"x": 2, "y": 3}), json!({"x": s}));
    let folded = fold(&[nothing, some]);
    assert!(!folded.deleted);
    assert_eq!(folded.record, map(json!({"id": ID, "x": 2})));
}

/// A delivered field wins on `at >=` its stamp: a tie goes to the later row.
#[test]
fn a_delivered_field_wins_on_an_equal_or_newer_stamp_only() {
    let s = "2025-01-01T00:00:00.500Z";
    let a = upd(1, 0, json!({"x": 1, "y": 1}), json!({"x": s, "y": s}));
    let b = upd(
        2,
        1,
        json!({"x": 2, "y": 2}),
        json!({"x": s, "y": "2025-01-01T00:00:00.499Z"}),
    );
    let folded = fold(&[b, a]);
    assert_eq!(
        (&folded.record["x"], &folded.record["y"]),
        (&json!(2), &json!(1))
    );
}

/// An insert's stamp is its own `updatedAt` (a device's clock), not the
/// server's time and not its stamp map: an insert stamped behind loses
/// to a later edit of another device, one stamped ahead beats it.
#[test]
fn an_insert_is_stamped_with_its_own_updated_at() {
    let edit = upd(
        1,
        0,
        json!({"title": "edited"}),
        json!({"title": "2024-06-01T00:00:00.000Z"}),
    );
    let mut behind = ins(
        2,
        1_000,
        json!({"title": "inserted", "updatedAt": "2024-01-01T00:00:00.000Z"}),
    );
    behind.field_timestamps = map(json!({"title": "2099-01-01T00:00:00.000Z"}));
    let folded = fold(&[edit.clone(), behind]);
    assert_eq!(folded.record["title"], "edited");
    // The insert's updatedAt is inserted with it, at its own time.
    assert_eq!(folded.record["updatedAt"], "2024-01-01T00:00:00.000Z");

    let first = ins(
        3,
        0,
        json!({"title": "inserted", "updatedAt": "2030-01-01T00:00:00.000Z"}),
    );
    let later = upd(
        4,
        1_000,
        json!({"title": "edited"}),
        json!({"title": "2026-01-01T00:00:00.000Z"}),
    );
    assert_eq!(fold(&[first, later]).record["title"], "inserted");
}

/// Without `updatedAt`, an insert's time is its `createdAt`, else the
/// row's `created_at` as `toISOString()` writes it (truncated).
#[test]
fn an_insert_without_updated_at_takes_created_at_then_the_rows_time() {
    let edit = upd(
        1,
        0,
        json!({"title": "edited"}),
        json!({"title": "2025-01-01T00:00:00.124Z"}),
    );
    // createdAt (.200) beats the edit though the row's own time (.000) would not.
    let created = ins(
        2,
        1,
        json!({"title": "c", "createdAt": "2025-01-01T00:00:00.200Z", "updatedAt": 5}),
    );
    assert_eq!(fold(&[edit.clone(), created]).record["title"], "c");
    // .123999 truncates to .123 and loses; rounded it would win.
    let early = ins(3, 123_999, json!({"title": "early"}));
    assert_eq!(fold(&[edit.clone(), early]).record["title"], "edited");
    let late = ins(4, 124_000, json!({"title": "late"}));
    assert_eq!(fold(&[edit, late]).record["title"], "late");
}

/// A delete without `deletedAt` removes the record; a later row re-creates
/// it from its own fields only.
#[test]
fn a_delete_without_deleted_at_removes_the_record_until_a_later_row() {
    let insert = ins(1, 0, json!({"title": "T", "state": "active"}));
    let remove = del(2, 1_000, json!(null));
    let folded = fold(&[insert.clone(), remove.clone()]);
    assert!(folded.deleted);
    assert_eq!(folded.record, Map::new());
    let again = upd(
        3,
        2_000,
        json!({"state": "paused"}),
        json!({"state": "2020-01-01T00:00:00.000Z"}),
    );
    let folded = fold(&[insert, remove, again]);
    assert!(!folded.deleted);
    assert_eq!(folded.record, map(json!({"id": ID, "state": "paused"})));
}

/// A delete of a record that does not exist changes nothing.
#[test]
fn a_delete_of_a_missing_record_does_nothing() {
    let remove = del(1, 0, json!({"deletedAt": "2025-01-01T00:00:00.000Z"}));
    let update = upd(
        2,
        1_000,
        json!({"x": 1}),
        json!({"x": "2020-01-01T00:00:00.000Z"}),
    );
    let folded = fold(&[remove, update]);
    assert!(!folded.deleted);
    assert_eq!(folded.record, map(json!({"id": ID, "x": 1})));
}

/// A soft delete writes `deletedAt` and `updatedAt` by LWW on the stamp
/// of `deletedAt`; an older stamped update after it changes what its
/// stamps beat, and a newer one clearing `deletedAt` restores the record.
#[test]
fn a_soft_delete_is_an_lww_write_of_deleted_at_and_updated_at() {
    let insert = ins(
        1,
        0,
        json!({"title": "T", "updatedAt": "2025-01-01T00:00:00.000Z"}),
    );
    let trash = del(2, 1_000, json!({"deletedAt": "2025-02-01T00:00:00.000Z"}));
    let folded = fold(&[insert.clone(), trash.clone()]);
    assert!(folded.deleted);
    assert_eq!(folded.record["deletedAt"], "2025-02-01T00:00:00.000Z");
    assert_eq!(folded.record["updatedAt"], "2025-02-01T00:00:00.000Z");

    let older = "2025-01-15T00:00:00.000Z";
    let stale_edit = upd(
        3,
        2_000,
        json!({"title": "U", "updatedAt": older, "deletedAt": null}),
        json!({"title": older, "updatedAt": older, "deletedAt": older}),
    );
    let folded = fold(&[insert.clone(), trash.clone(), stale_edit.clone()]);
    assert!(folded.deleted, "{:?}", folded.record);
    assert_eq!(folded.record["title"], "U");
    assert_eq!(folded.record["updatedAt"], "2025-02-01T00:00:00.000Z");

    let restore = upd(
        4,
        3_000,
        json!({"deletedAt": null}),
        json!({"deletedAt": "2025-03-01T00:00:00.000Z"}),
    );
    assert!(!fold(&[insert.clone(), trash.clone(), stale_edit, restore]).deleted);

    // A soft delete older than the current deletedAt stamp loses.
    let newer_trash = del(5, 500, json!({"deletedAt": "2025-04-01T00:00:00.000Z"}));
    let folded = fold(&[insert, newer_trash, trash]);
    assert_eq!(folded.record["deletedAt"], "2025-04-01T00:00:00.000Z");
}

/// A delete whose `deletedAt` is empty (or not a string) removes the
/// record, as the browser tests the value for truth.
#[test]
fn a_delete_with_an_empty_deleted_at_removes_the_record() {
    let insert = ins(1, 0, json!({"title": "T"}));
    for empty in [json!(""), json!(5), json!(null)] {
        let remove = del(2, 1, json!({ "deletedAt": empty }));
        assert_eq!(fold(&[insert.clone(), remove]).record, Map::new());
    }
}

/// Deleted while `deletedAt` is a non-empty string, and only then.
#[test]
fn only_a_non_empty_string_deleted_at_deletes() {
    let insert = ins(1, 0, json!({"title": "T"}));
    let stamp = json!({"deletedAt": "2026-01-01T00:00:00.000Z"});
    for (value, deleted) in [
        (json!("2026-01-01"), true),
        (json!(0), false),
        (json!(true), false),
        (json!(""), false),
        (json!(null), false),
    ] {
        let set = upd(2, 1, json!({ "deletedAt": value }), stamp.clone());
        assert_eq!(fold(&[insert.clone(), set]).deleted, deleted, "{value}");
    }
}

/// The record's id is the change's record id, never a `data.id`.
#[test]
fn the_record_id_is_never_taken_from_data() {
    let insert = ins(1, 0, json!({"id": "other", "title": "T"}));
    let update = upd(
        2,
        1,
        json!({"id": "third"}),
        json!({"id": "2030-01-01T00:00:00.000Z"}),
    );
    assert_eq!(fold(&[insert, update]).record["id"], ID);
}

/// Rows of one transaction share `created_at` and fold in insertion order
/// (`seq`), not by their random ids.
#[test]
fn same_created_at_folds_in_insertion_order_not_id_order() {
    let s = json!({"state": "2025-01-01T00:00:00.000Z"});
    let mut done = upd(9, 0, json!({"state": "done"}), s.clone());
    done.seq = 1;
    let mut active = upd(2, 0, json!({"state": "active"}), s.clone());
    active.seq = 2;
    let mut first = ins(5, -1_000, json!({"title": "t"}));
    first.seq = 0;
    let rows = [active.clone(), done.clone(), first.clone()];
    assert_eq!(fold(&rows).record["state"], json!("active"));
    (done.seq, active.seq) = (2, 1);
    assert_eq!(fold(&[active, done, first]).record["state"], json!("done"));
}

/// Numbers keep every digit an f64 holds (serde_json's `float_roundtrip`),
/// as the browser's JSON.parse/JSON.stringify do.
#[test]
fn numbers_round_trip_exactly() {
    for text in [
        "0.024451889831603846",
        "1.7976931348623157e308",
        "5e-324",
        "0.1",
        "123456789.12345679",
    ] {
        let value: Value = serde_json::from_str(text).unwrap();
        let parsed: f64 = text.parse().unwrap();
        assert_eq!(value.as_f64(), Some(parsed), "{text}");
        let back: Value = serde_json::from_str(&value.to_string()).unwrap();
        assert_eq!(back, value, "{text}");
    }
}

/// The incremental fold's own behaviour: late rows, stale states, the
/// stored shape.
#[path = "fold_state_tests.rs"]
mod state;
