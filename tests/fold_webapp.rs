//! The fold as the browser folds (contract section 2, issue 18 item 7), end
//! to end and in both generations of `sync_changes` (stamps in
//! `field_timestamps` or `field_meta`): sync_changes insert -> trigger ->
//! queue -> applier -> snapshot -> wheel, the replay of one record, a late
//! row replayed by the applier, and the rebuild migration 0008 asks for.

mod common;

use common::{iso_in, setup, write, Change, Running, TestDb};
use mana_ai::schedule::wheel::parse_next_run;
use serde_json::{json, Value};
use tokio_postgres::GenericClient;
use uuid::Uuid;

both_generations!(
    a_transactions_updates_of_one_field_fold_in_written_order,
    an_update_key_without_a_stamp_does_not_change_the_snapshot,
    an_insert_stamped_with_its_own_older_updated_at_loses_to_a_later_edit,
    a_soft_delete_then_an_older_stamped_update,
    a_late_row_is_folded_by_replaying_the_record,
    a_removed_mission_is_re_created_from_a_later_rows_fields_only,
    migration_0008_rebuilds_snapshots_folded_by_the_old_rule,
);

/// One change row of a mission: (id, op, data, stamps).
type Row<'a> = (u128, &'a str, Value, Value);

/// Inserts one row with `client` (inside a user's scope), the stamps in the
/// generation's column.
async fn insert_row(
    client: &impl GenericClient,
    t: &TestDb,
    user: &str,
    mission: &str,
    row: &Row<'_>,
) {
    let (id, op, data, stamps) = row;
    let sql = format!(
        "INSERT INTO sync_changes (id, app_id, table_name, record_id, user_id, op, data, {}, client_id)
         VALUES ($1, 'ai', 'aiMissions', $2, $3, $4, $5, $6, 'test-browser')",
        t.generation.stamps_column()
    );
    let id = Uuid::from_u128(*id);
    client
        .execute(&sql, &[&id, &mission, &user, op, data, stamps])
        .await
        .unwrap();
}

/// Inserts rows of one mission in ONE transaction, in this order, with the
/// given change ids and stamps exactly as given.
async fn write_rows(t: &TestDb, user: &str, mission: &str, rows: &[Row<'_>]) {
    let mut sync = t.sync_client().await;
    let tx = mana_ai::db::begin_user(&mut sync, user).await.unwrap();
    for row in rows {
        insert_row(&tx, t, user, mission, row).await;
    }
    tx.commit().await.unwrap();
}

/// The record as `store::fold_record` replays it from sync_changes.
async fn replayed(t: &TestDb, user: &str, mission: &str) -> mana_ai::sync::fold::Folded {
    let mut client = t.pool.get().await.unwrap();
    let tx = mana_ai::db::begin_user(&mut client, user).await.unwrap();
    mana_ai::reactor::fold_record(&tx, t.generation, user, "ai", "aiMissions", mission)
        .await
        .unwrap()
        .expect("rows")
}

/// The snapshot (record, deleted) after `n` rows, checked against the replay.
async fn snapshot(
    t: &TestDb,
    run: &mut Running,
    user: &str,
    mission: &str,
    n: u64,
) -> (Value, bool) {
    let (record, deleted) = snapshot_unchecked(t, run, user, mission, n).await;
    let folded = replayed(t, user, mission).await;
    assert_eq!(
        (Value::Object(folded.record), folded.deleted),
        (record.clone(), deleted)
    );
    (record, deleted)
}

fn stamps(keys: &[&str], at: &str) -> Value {
    Value::Object(keys.iter().map(|k| (k.to_string(), json!(at))).collect())
}

/// A batch `state: active` -> `done` -> `active`, all stamped alike, the ids
/// in the opposite order: written order wins, so the mission ends active
/// (and armed); by id it would end `done`.
async fn a_transactions_updates_of_one_field_fold_in_written_order(t: TestDb) {
    let generation = t.generation;
    let mut run = t.start(&[]).await;
    let next = iso_in(3600);
    // After the insert's own time (its transaction's start), so the updates count.
    let s = stamps(&["state"], &iso_in(60));
    let insert = json!({"title": "T", "state": "active", "nextRunAt": next});
    let rows = [
        (0xc0, "insert", insert, json!({})),
        (0xff, "update", json!({"state": "done"}), s.clone()),
        (0x01, "update", json!({"state": "active"}), s.clone()),
    ];
    write_rows(&t, "alice", "m1", &rows).await;
    let (record, deleted) = snapshot(&t, &mut run, "alice", "m1", 3).await;
    assert_eq!((record["state"].as_str(), deleted), (Some("active"), false));
    let armed = run.reactor.wheel.armed_at("alice", "m1").await;
    assert_eq!(armed, parse_next_run(&next), "{generation:?}");
    let rows = [
        (0x02, "update", json!({"state": "active"}), s.clone()),
        (0x03, "update", json!({"state": "done"}), s),
    ];
    write_rows(&t, "alice", "m1", &rows).await;
    let (record, _) = snapshot(&t, &mut run, "alice", "m1", 5).await;
    assert_eq!(record["state"], "done");
    assert_eq!(run.reactor.wheel.armed_at("alice", "m1").await, None);
    run.reactor.stop().await;
}

/// An update key without a stamp never reaches a browser: it changes
/// nothing here either (the mission stays active and armed).
async fn an_update_key_without_a_stamp_does_not_change_the_snapshot(t: TestDb) {
    let generation = t.generation;
    let mut run = t.start(&[]).await;
    let next = iso_in(3600);
    let insert = json!({"title": "T", "state": "active", "nextRunAt": next});
    write_rows(&t, "bob", "m1", &[(1, "insert", insert, json!({}))]).await;
    let edit = json!({"title": "U", "state": "paused"});
    let rows = [(2, "update", edit, stamps(&["title"], &iso_in(0)))];
    write_rows(&t, "bob", "m1", &rows).await;
    let (record, deleted) = snapshot(&t, &mut run, "bob", "m1", 2).await;
    assert_eq!(
        (&record["title"], &record["state"]),
        (&json!("U"), &json!("active"))
    );
    assert!(!deleted);
    let armed = run.reactor.wheel.armed_at("bob", "m1").await;
    assert_eq!(armed, parse_next_run(&next), "{generation:?}");
    run.reactor.stop().await;
}

/// A browser whose clock runs behind stamps its insert with its own
/// `updatedAt`: inserted again (an upsert) after another device's edit, it
/// loses to that edit, though the server received it later.
async fn an_insert_stamped_with_its_own_older_updated_at_loses_to_a_later_edit(t: TestDb) {
    let generation = t.generation;
    let mut run = t.start(&[]).await;
    let behind = iso_in(-3600);
    let insert = json!({"title": "T", "state": "active", "updatedAt": behind});
    write_rows(
        &t,
        "carol",
        "m1",
        &[(1, "insert", insert.clone(), json!({}))],
    )
    .await;
    let edit = json!({"title": "edited"});
    write_rows(
        &t,
        "carol",
        "m1",
        &[(2, "update", edit, stamps(&["title"], &iso_in(0)))],
    )
    .await;
    let again_at = iso_in(-3590);
    let again = json!({"title": "T", "state": "active", "updatedAt": again_at});
    write_rows(&t, "carol", "m1", &[(3, "insert", again, json!({}))]).await;
    let (record, _) = snapshot(&t, &mut run, "carol", "m1", 3).await;
    assert_eq!(record["title"], "edited", "{generation:?}: {record}");
    // Its updatedAt beats the first insert's: only the edit was newer.
    assert_eq!(record["updatedAt"], again_at);
    run.reactor.stop().await;
}

/// A delete carrying `deletedAt` is an LWW write of `deletedAt` and
/// `updatedAt`: an older stamped update after it changes the fields it
/// beats but does not restore the mission; a newer one clearing
/// `deletedAt` restores and re-arms it.
async fn a_soft_delete_then_an_older_stamped_update(t: TestDb) {
    let generation = t.generation;
    let mut run = t.start(&[]).await;
    let next = iso_in(3600);
    let old = "2020-01-01T00:00:00.000Z";
    let insert = json!({"title": "T", "state": "active", "nextRunAt": next, "updatedAt": old});
    write_rows(&t, "dave", "m1", &[(1, "insert", insert, json!({}))]).await;
    let trashed = iso_in(0);
    let trash = json!({"deletedAt": trashed});
    write_rows(&t, "dave", "m1", &[(2, "delete", trash, json!({}))]).await;
    let (record, deleted) = snapshot(&t, &mut run, "dave", "m1", 2).await;
    assert!(deleted, "{record}");
    assert_eq!(
        (&record["deletedAt"], &record["updatedAt"]),
        (&json!(trashed), &json!(trashed))
    );
    assert_eq!(run.reactor.wheel.armed_at("dave", "m1").await, None);

    let older = iso_in(-60);
    let edit = json!({"title": "U", "deletedAt": null});
    let rows = [(3, "update", edit, stamps(&["title", "deletedAt"], &older))];
    write_rows(&t, "dave", "m1", &rows).await;
    let (record, deleted) = snapshot(&t, &mut run, "dave", "m1", 3).await;
    assert!(deleted, "{generation:?}: {record}");
    assert_eq!(record["title"], "U");
    assert_eq!(run.reactor.wheel.armed_at("dave", "m1").await, None);

    let restore = json!({"deletedAt": null});
    let rows = [(4, "update", restore, stamps(&["deletedAt"], &iso_in(1)))];
    write_rows(&t, "dave", "m1", &rows).await;
    let (record, deleted) = snapshot(&t, &mut run, "dave", "m1", 4).await;
    assert!(!deleted, "{record}");
    let armed = run.reactor.wheel.armed_at("dave", "m1").await;
    assert_eq!(armed, parse_next_run(&next));
    run.reactor.stop().await;
}

/// A delete without `deletedAt` removes the mission; a later row re-creates
/// it from its own fields only (no state, no timer).
async fn a_removed_mission_is_re_created_from_a_later_rows_fields_only(t: TestDb) {
    let mut run = t.start(&[]).await;
    let mut sync = t.sync_client().await;
    let data = json!({"title": "T", "state": "active", "nextRunAt": iso_in(3600)});
    write(&mut sync, &[Change::mission("erin", "m1", "insert", data)]).await;
    write(
        &mut sync,
        &[Change::mission("erin", "m1", "delete", json!(null))],
    )
    .await;
    let (record, deleted) = snapshot(&t, &mut run, "erin", "m1", 2).await;
    assert_eq!((record, deleted), (json!({}), true));
    let restore = Change::mission("erin", "m1", "update", json!({"deletedAt": null}));
    write(&mut sync, &[restore]).await;
    let (record, deleted) = snapshot(&t, &mut run, "erin", "m1", 3).await;
    assert_eq!(
        (record, deleted),
        (json!({"id": "m1", "deletedAt": null}), false)
    );
    assert_eq!(run.reactor.wheel.armed_at("erin", "m1").await, None);
    run.reactor.stop().await;
}

/// A row with an earlier `created_at` committed after a later one (two
/// transactions of one record) reaches a snapshot that already folded the
/// later one: the applier replays the record, and the snapshot is what the
/// rows give in `created_at` order (here: removed, then re-created).
async fn a_late_row_is_folded_by_replaying_the_record(t: TestDb) {
    let generation = t.generation;
    let mut run = t.start(&[]).await;
    let insert = json!({"title": "T", "state": "active", "nextRunAt": iso_in(3600)});
    write_rows(&t, "fay", "m1", &[(1, "insert", insert, json!({}))]).await;
    run.processed(1).await;
    // The earlier transaction: a delete, committed last.
    let mut early = t.sync_client().await;
    let tx = mana_ai::db::begin_user(&mut early, "fay").await.unwrap();
    insert_row(&tx, &t, "fay", "m1", &(2, "delete", json!(null), json!({}))).await;
    let iterations = json!([{"id": "it-1", "plan": []}]);
    let edit = json!({"title": "after", "iterations": iterations});
    let rows = [(
        3,
        "update",
        edit,
        stamps(&["title", "iterations"], &iso_in(0)),
    )];
    write_rows(&t, "fay", "m1", &rows).await;
    let (record, _) = snapshot_unchecked(&t, &mut run, "fay", "m1", 2).await;
    assert_eq!(record["state"], "active", "{record}");
    tx.commit().await.unwrap();
    let (record, deleted) = snapshot(&t, &mut run, "fay", "m1", 3).await;
    let expected = json!({"id": "m1", "title": "after", "iterations": iterations});
    assert_eq!((record, deleted), (expected, false), "{generation:?}");
    assert_eq!(run.metrics.fold_replays.get(), 1);
    assert!(run
        .metrics
        .render()
        .contains("mana_ai_fold_replays_over_limit_total 0"));
    assert_eq!(run.reactor.wheel.armed_at("fay", "m1").await, None);
    run.reactor.stop().await;
}

/// The snapshot after `n` rows, not compared with the replay (rows of an
/// open transaction are not in it yet).
async fn snapshot_unchecked(
    t: &TestDb,
    run: &mut Running,
    user: &str,
    mission: &str,
    n: u64,
) -> (Value, bool) {
    run.processed(n).await;
    let (record, deleted, _) = t.mission(user, mission).await.expect("snapshot");
    (record, deleted)
}

/// Migration 0008 lists every user with a snapshot; the leader rebuilds
/// them from history at start (before arming anything), a snapshot folded
/// by the old rule and its old-shaped fold state included, and leaves the
/// rows still queued to the applier.
async fn migration_0008_rebuilds_snapshots_folded_by_the_old_rule(t: TestDb) {
    let generation = t.generation;
    let mut run = t.start(&[]).await;
    let next = iso_in(3600);
    let insert = json!({"title": "T", "state": "active", "nextRunAt": next});
    let rows = [
        (1, "insert", insert, json!({})),
        (2, "update", json!({"state": "paused"}), json!({})),
    ];
    write_rows(&t, "gus", "m1", &rows).await;
    run.processed(2).await;
    run.reactor.stop().await;
    // What the old rule left: the unstamped update applied, its state shape.
    let c = t.pool.get().await.unwrap();
    c.execute(
        "UPDATE mana_ai.mission_snapshots
         SET record = record || '{\"state\": \"paused\"}', state = 'paused',
             fold_state = '{\"f\": {\"state\": {\"s\": \"2026-01-01T00:00:00.000Z\", \"t\": 1, \"c\": \"00000000-0000-0000-0000-000000000002\"}}, \"n\": 2}'
         WHERE user_id = 'gus'",
        &[],
    )
    .await
    .unwrap();
    // A change committed while no leader ran: still queued at the rebuild.
    let rows = [(
        3,
        "update",
        json!({"title": "U"}),
        stamps(&["title"], &iso_in(0)),
    )];
    write_rows(&t, "gus", "m1", &rows).await;
    t.admin()
        .await
        .batch_execute(include_str!("../sql/0008_browser_fold.sql"))
        .await
        .unwrap();
    assert_eq!(
        t.count("SELECT count(*) FROM mana_ai.fold_rebuild").await,
        1
    );

    let mut run = t.start(&[]).await;
    let (record, deleted) = snapshot(&t, &mut run, "gus", "m1", 1).await;
    assert!(!deleted, "{record}");
    assert_eq!(
        (&record["state"], &record["title"]),
        (&json!("active"), &json!("U"))
    );
    let (_, _, count) = t.mission("gus", "m1").await.unwrap();
    assert_eq!(count, 3, "each row folded once");
    let fold: Value = c
        .query_one(
            "SELECT fold_state FROM mana_ai.mission_snapshots WHERE user_id = 'gus'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(fold["v"], mana_ai::sync::fold::FOLD_VERSION, "{fold}");
    let armed = run.reactor.wheel.armed_at("gus", "m1").await;
    assert_eq!(armed, parse_next_run(&next), "{generation:?}");
    assert_eq!(
        t.count("SELECT count(*) FROM mana_ai.fold_rebuild").await,
        0
    );
    assert_eq!(run.metrics.fold_replays.get(), 0);
    run.reactor.stop().await;
}

/// Numbers keep every digit on the way sync_changes -> snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_float_round_trips_through_sync_changes_into_the_snapshot() {
    let t = setup().await;
    let mut run = t.start(&[]).await;
    let mut sync = t.sync_client().await;
    let data: Value =
        serde_json::from_str(r#"{"title": "T", "score": 0.024451889831603846, "weights": [1.7976931348623157e308, 5e-324, 0.30000000000000004]}"#)
            .unwrap();
    write(&mut sync, &[Change::mission("hal", "m1", "insert", data)]).await;
    run.processed(1).await;
    let c = t.pool.get().await.unwrap();
    let row = c
        .query_one(
            "SELECT (s.record->'score') = (c.data->'score'), (s.record->'weights') = (c.data->'weights'),
                    s.record->>'score'
             FROM mana_ai.mission_snapshots s, (SELECT '{\"score\": 0.024451889831603846, \"weights\": [1.7976931348623157e308, 5e-324, 0.30000000000000004]}'::jsonb AS data) c
             WHERE s.user_id = 'hal' AND s.mission_id = 'm1'",
            &[],
        )
        .await
        .unwrap();
    let text: String = row.get(2);
    assert_eq!(text, "0.024451889831603846");
    assert!(row.get::<_, bool>(0));
    assert!(row.get::<_, bool>(1), "the weights keep their digits");
    run.reactor.stop().await;
}

/// Physical order is not insertion order, even in an append-only table:
/// after VACUUM has recorded free space, a row that does not fit the page
/// the transaction is filling goes to an earlier page with room. The replay
/// orders ties by the inserting command (`cmin`) before `ctid`, so it still
/// folds in written order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_folds_in_written_order_where_ctid_order_differs() {
    let t = setup().await;
    let admin = t.admin().await;
    // Pages of five ~1.4 kB rows of another app, each leaving ~1.1 kB free.
    admin
        .batch_execute(
            "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, client_id)
             SELECT 'notes', 'notes', 'n' || g, 'x', 'insert',
                    jsonb_build_object('t', substr(repeat(md5(g::text), 40), 1, 1270)), 'filler'
             FROM generate_series(1, 50) g",
        )
        .await
        .unwrap();
    admin.batch_execute("VACUUM sync_changes").await.unwrap();
    // One transaction: four ~1.9 kB rows fill a new page, then a ~0.8 kB row,
    // all stamped alike (so written order decides).
    let mut sync = t.sync_client().await;
    let pad = |n: usize| "p".repeat(n);
    let at = iso_in(60);
    let change = |op, data: Value| {
        let mut c = Change::mission("ivy", "m1", op, data);
        c.stamps = stamps(&["state", "pad"], &at);
        c
    };
    let mut rows: Vec<Change> = (0..4)
        .map(|i| {
            change(
                if i == 0 { "insert" } else { "update" },
                json!({"state": "done", "pad": pad(1770)}),
            )
        })
        .collect();
    rows.push(change(
        "update",
        json!({"state": "active", "pad": pad(670)}),
    ));
    write(&mut sync, &rows).await;
    let order: Vec<String> = admin
        .query(
            "SELECT data->>'state' FROM sync_changes WHERE record_id = 'm1' ORDER BY created_at, ctid",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        order[0], "active",
        "the last row written is stored first: {order:?}"
    );
    assert_eq!(replayed(&t, "ivy", "m1").await.record["state"], "active");
}
