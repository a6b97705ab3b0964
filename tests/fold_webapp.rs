//! The fold as the webapp folds (contract section 2, issue 8), end to end:
//! sync_changes insert -> trigger -> queue -> applier -> snapshot -> wheel,
//! the replay of one record, and the rebuild of snapshots migration 0003
//! lists.

mod common;

use common::{iso_in, setup, write, Change, TestDb};
use mana_ai::schedule::wheel::parse_next_run;
use serde_json::{json, Value};
use uuid::Uuid;

/// Inserts `(id, op, data, stamps)` rows of one mission in ONE transaction,
/// in this order, with the given change ids (so that id order and written
/// order differ on purpose).
async fn write_with_ids(
    t: &TestDb,
    user: &str,
    mission: &str,
    rows: &[(u128, &str, Value, Value)],
) {
    let mut sync = t.sync_client().await;
    let tx = mana_ai::db::begin_user(&mut sync, user).await.unwrap();
    for (id, op, data, stamps) in rows {
        tx.execute(
            "INSERT INTO sync_changes (id, app_id, table_name, record_id, user_id, op, data, field_timestamps, client_id)
             VALUES ($1, 'ai', 'aiMissions', $2, $3, $4, $5, $6, 'test-browser')",
            &[&Uuid::from_u128(*id), &mission, &user, op, data, stamps],
        )
        .await
        .unwrap();
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

/// A batch `state: active` -> `done` -> `active` without field stamps, the
/// ids in the opposite order: written order wins, so the mission ends active
/// (and armed); by id it would end `done`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactions_updates_of_one_field_fold_in_written_order() {
    let t = setup().await;
    let mut run = t.start(&[]).await;
    let next = iso_in(3600);
    let none = json!({});
    write_with_ids(
        &t,
        "alice",
        "m1",
        &[
            (
                0xc0,
                "insert",
                json!({"title": "T", "state": "active", "nextRunAt": next}),
                none.clone(),
            ),
            (0xff, "update", json!({"state": "done"}), none.clone()),
            (0x01, "update", json!({"state": "active"}), none.clone()),
        ],
    )
    .await;
    run.processed(3).await;
    let (record, deleted, count) = t.mission("alice", "m1").await.expect("snapshot");
    assert_eq!(record["state"], "active", "{record}");
    assert!(!deleted);
    assert_eq!(count, 3);
    assert_eq!(
        run.reactor.wheel.armed_at("alice", "m1").await,
        parse_next_run(&next)
    );
    // The replay of a record (how other apps' inputs are read) agrees.
    let folded = replayed(&t, "alice", "m1").await;
    assert_eq!(Value::Object(folded.record), record);

    // The other way round ends `done` and disarmed.
    write_with_ids(
        &t,
        "alice",
        "m1",
        &[
            (0x02, "update", json!({"state": "active"}), none.clone()),
            (0x03, "update", json!({"state": "done"}), none),
        ],
    )
    .await;
    run.processed(5).await;
    assert_eq!(t.mission("alice", "m1").await.unwrap().0["state"], "done");
    assert_eq!(run.reactor.wheel.armed_at("alice", "m1").await, None);
    run.reactor.stop().await;
}

/// Trashed by `deletedAt`, then restored by a newer row clearing it: the
/// mission is live again and re-armed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mission_deleted_by_deleted_at_and_restored_is_armed_again() {
    let t = setup().await;
    let mut run = t.start(&[]).await;
    let mut sync = t.sync_client().await;
    let next = iso_in(3600);
    let data = json!({"title": "T", "state": "active", "nextRunAt": next});
    write(&mut sync, &[Change::mission("bob", "m1", "insert", data)]).await;
    run.processed(1).await;
    assert!(run.reactor.wheel.armed_at("bob", "m1").await.is_some());

    let trash = json!({"deletedAt": "2026-01-01T00:00:00.000Z"});
    write(&mut sync, &[Change::mission("bob", "m1", "update", trash)]).await;
    run.processed(2).await;
    assert!(t.mission("bob", "m1").await.unwrap().1, "deleted");
    assert_eq!(run.reactor.wheel.armed_at("bob", "m1").await, None);

    let restore = json!({"deletedAt": null});
    write(
        &mut sync,
        &[Change::mission("bob", "m1", "update", restore)],
    )
    .await;
    run.processed(3).await;
    let (record, deleted, _) = t.mission("bob", "m1").await.unwrap();
    assert!(!deleted, "restored: {record}");
    assert_eq!(
        run.reactor.wheel.armed_at("bob", "m1").await,
        parse_next_run(&next)
    );
    assert!(!replayed(&t, "bob", "m1").await.deleted);

    // op delete stays final: a later restore does not revive it.
    write(
        &mut sync,
        &[Change::mission("bob", "m1", "delete", json!(null))],
    )
    .await;
    write(
        &mut sync,
        &[Change::mission(
            "bob",
            "m1",
            "update",
            json!({"deletedAt": null}),
        )],
    )
    .await;
    run.processed(5).await;
    assert!(t.mission("bob", "m1").await.unwrap().1);
    assert_eq!(run.reactor.wheel.armed_at("bob", "m1").await, None);
    run.reactor.stop().await;
}

/// The first row's `field_timestamps` seed the stamps of fields it does not
/// carry: a later unstamped value older than that stamp loses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_rows_stamps_seed_fields_it_does_not_carry() {
    let t = setup().await;
    let mut run = t.start(&[]).await;
    let mut sync = t.sync_client().await;
    let mut first = Change::mission("carol", "m1", "insert", json!({"title": "T"}));
    first.stamps =
        json!({"title": "2026-01-01T00:00:00.000Z", "objective": "2999-01-01T00:00:00.000Z"});
    write(&mut sync, &[first]).await;
    let later = Change::mission(
        "carol",
        "m1",
        "update",
        json!({"objective": "older than its stamp"}),
    );
    write(&mut sync, &[later]).await;
    run.processed(2).await;
    let (record, _, count) = t.mission("carol", "m1").await.unwrap();
    assert_eq!(count, 2);
    assert_eq!(record.get("objective"), None, "{record}");
    assert_eq!(
        Value::Object(replayed(&t, "carol", "m1").await.record),
        record
    );

    let mut newer = Change::mission("carol", "m1", "update", json!({"objective": "newer"}));
    newer.stamps = json!({"objective": "2999-01-01T00:00:00.000Z"});
    write(&mut sync, &[newer]).await;
    run.processed(3).await;
    assert_eq!(
        t.mission("carol", "m1").await.unwrap().0["objective"],
        "newer"
    );
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
    write(&mut sync, &[Change::mission("dave", "m1", "insert", data)]).await;
    run.processed(1).await;
    let c = t.pool.get().await.unwrap();
    let row = c
        .query_one(
            "SELECT (s.record->'score') = (c.data->'score'), (s.record->'weights') = (c.data->'weights'),
                    s.record->>'score'
             FROM mana_ai.mission_snapshots s, (SELECT '{\"score\": 0.024451889831603846, \"weights\": [1.7976931348623157e308, 5e-324, 0.30000000000000004]}'::jsonb AS data) c
             WHERE s.user_id = 'dave' AND s.mission_id = 'm1'",
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

/// Migration 0003 lists users whose snapshots were folded by the old rule;
/// the leader rebuilds them from history at start, before arming anything,
/// and leaves the rows still queued to the applier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_users_are_rebuilt_from_history_at_start() {
    let t = setup().await;
    let mut run = t.start(&[]).await;
    let next = iso_in(3600);
    let none = json!({});
    write_with_ids(
        &t,
        "erin",
        "m1",
        &[
            (0xc0, "insert", json!({"title": "T", "state": "active", "nextRunAt": next, "score": 0.024451889831603846}), none.clone()),
            (0xff, "update", json!({"state": "done"}), none.clone()),
            (0x01, "update", json!({"state": "active"}), none.clone()),
        ],
    )
    .await;
    write_with_ids(
        &t,
        "erin",
        "m1",
        &[(
            0x10,
            "update",
            json!({"deletedAt": "2026-01-01T00:00:00.000Z"}),
            none.clone(),
        )],
    )
    .await;
    write_with_ids(
        &t,
        "erin",
        "m1",
        &[(0x11, "update", json!({"deletedAt": null}), none.clone())],
    )
    .await;
    run.processed(5).await;
    let good = t.mission("erin", "m1").await.unwrap();
    run.reactor.stop().await;

    // What the old fold left: deleted for good, a tie lost, a digit lost.
    let c = t.pool.get().await.unwrap();
    c.execute(
        "UPDATE mana_ai.mission_snapshots
         SET record = record || '{\"state\": \"done\", \"score\": 0.02445188983160385}',
             deleted = true, fold_state = '{\"d\": true, \"n\": 5}'
         WHERE user_id = 'erin'",
        &[],
    )
    .await
    .unwrap();
    // A change committed while no leader ran: still queued at the rebuild.
    write_with_ids(
        &t,
        "erin",
        "m1",
        &[(0x12, "update", json!({"title": "U"}), none)],
    )
    .await;
    c.execute(
        "INSERT INTO mana_ai.fold_rebuild (user_id) VALUES ('erin')",
        &[],
    )
    .await
    .unwrap();

    let mut run = t.start(&[]).await;
    run.processed(1).await;
    let (record, deleted, count) = t.mission("erin", "m1").await.unwrap();
    assert!(!deleted, "{record}");
    assert_eq!(record["state"], "active");
    assert_eq!(record["title"], "U");
    assert_eq!(record["score"], good.0["score"]);
    assert_eq!(count, 6, "each row folded once");
    assert_eq!(
        run.reactor.wheel.armed_at("erin", "m1").await,
        parse_next_run(&next)
    );
    let left: i64 = c
        .query_one("SELECT count(*) FROM mana_ai.fold_rebuild", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
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
    // One transaction: four ~1.9 kB rows fill a new page, then a ~0.8 kB row.
    let mut sync = t.sync_client().await;
    let pad = |n: usize| "p".repeat(n);
    let mut rows: Vec<Change> = (0..4)
        .map(|i| {
            Change::mission(
                "fay",
                "m1",
                if i == 0 { "insert" } else { "update" },
                json!({"state": "done", "pad": pad(1770)}),
            )
        })
        .collect();
    rows.push(Change::mission(
        "fay",
        "m1",
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
    assert_eq!(replayed(&t, "fay", "m1").await.record["state"], "active");
}
