//! The applier's claim never skips a committed change, whatever order the
//! sync server's transactions take their ids and commit in
//! (docs/design.md, "Why the claim cannot skip a change").
//!
//! The tests of this file take one lock: each reasons about which
//! transaction ids are running, and a neighbour's transactions would blur
//! that (they would not make a test fail, only make it weaker).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mana_ai::reactor::{self, applier::Applied, Hooks};
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::{mpsc, Notify};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A sync transaction held open by hand, as a slow sync request holds it.
struct OpenTx {
    client: tokio_postgres::Client,
}

impl OpenTx {
    async fn begin(t: &TestDb, user: &str) -> OpenTx {
        let client = t.sync_client().await;
        client.batch_execute("BEGIN").await.unwrap();
        client
            .execute(
                "SELECT set_config('app.current_user_id', $1, true)",
                &[&user],
            )
            .await
            .unwrap();
        OpenTx { client }
    }

    /// Inserts one change; returns its id (the queue's `change_id`).
    async fn insert(&self, app: &str, table: &str, record: &str) -> uuid::Uuid {
        let data = json!({"title": record, "state": "active", "nextRunAt": iso_in(3600)});
        self.client
            .query_one(
                "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, field_timestamps, client_id)
                 VALUES ($1, $2, $3, current_setting('app.current_user_id'), 'insert', $4, '{}', 'slow-browser')
                 RETURNING id",
                &[&app, &table, &record, &data],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn mission(&self, record: &str) -> uuid::Uuid {
        self.insert("ai", "aiMissions", record).await
    }

    /// A change of another app: it takes a transaction id, nothing more.
    async fn other_app(&self) -> uuid::Uuid {
        self.insert("todo", "tasks", "t1").await
    }

    async fn commit(self) {
        self.client.batch_execute("COMMIT").await.unwrap();
    }

    async fn rollback(self) {
        self.client.batch_execute("ROLLBACK").await.unwrap();
    }
}

async fn committed_mission(t: &TestDb, user: &str, record: &str) -> uuid::Uuid {
    let tx = OpenTx::begin(t, user).await;
    let id = tx.mission(record).await;
    tx.commit().await;
    id
}

/// Waits up to `secs` for a mission's snapshot; false if it never came.
async fn snapshot_within(t: &TestDb, user: &str, record: &str, secs: u64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if t.mission(user, record).await.is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The order: A takes its xid first, C one after it and stays open,
/// B a later one and draws the lower queue id, A draws the higher one and
/// commits. The claim that takes A's row sees B neither committed nor below
/// the snapshot's `xmax`; B must still be applied when it commits seconds
/// later, however many claims pass it by meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_with_a_later_xid_and_an_earlier_queue_id_is_applied() {
    let _serial = SERIAL.lock().await;
    let t = setup().await;
    let mut run = t.start(&[]).await;
    committed_mission(&t, "erin", "m0").await;
    run.processed(1).await;

    let a = OpenTx::begin(&t, "erin").await;
    a.other_app().await;
    let c = OpenTx::begin(&t, "erin").await;
    c.other_app().await;
    let b = OpenTx::begin(&t, "erin").await;
    b.mission("mb").await;
    a.mission("ma").await;
    a.commit().await;
    run.processed(2).await;
    c.commit().await;
    // Other changes are applied while B stays open, 4.5 s as in the issue.
    for (n, record) in ["m3", "m4", "m5"].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        committed_mission(&t, "erin", record).await;
        run.processed(3 + n as u64).await;
    }
    assert!(t.mission("erin", "mb").await.is_none());
    b.commit().await;
    assert!(
        snapshot_within(&t, "erin", "mb", 10).await,
        "B's committed change was never applied"
    );
    run.reactor.stop().await;
}

/// Holds the applier after a claim until the test lets it go: the next
/// claim once armed, or the n-th with `countdown`.
#[derive(Default)]
struct Gate {
    armed: AtomicBool,
    countdown: AtomicUsize,
    reached: Notify,
    release: Notify,
}

impl Gate {
    fn hook(self: &Arc<Self>) -> reactor::AfterClaim {
        let gate = self.clone();
        Arc::new(move || {
            let gate = gate.clone();
            Box::pin(async move {
                let counted =
                    gate.countdown
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        == Ok(1);
                if gate.armed.swap(false, Ordering::SeqCst) || counted {
                    gate.reached.notify_one();
                    gate.release.notified().await;
                }
            })
        })
    }
}

/// A transaction that commits while a claim that did not see it is still
/// in flight (held there by a failpoint) is applied by a later claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_lands_while_a_claim_is_in_flight_is_applied() {
    let _serial = SERIAL.lock().await;
    let t = setup().await;
    let gate = Arc::new(Gate::default());
    let hooks = Hooks {
        after_claim: Some(gate.hook()),
        ..Hooks::default()
    };
    let mut run = t.start_with(&[], hooks).await;
    committed_mission(&t, "erin", "m0").await;
    run.processed(1).await;

    let b = OpenTx::begin(&t, "erin").await;
    b.mission("mb").await;
    committed_mission(&t, "erin", "ma").await;
    run.processed(2).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    gate.armed.store(true, Ordering::SeqCst);
    committed_mission(&t, "erin", "m3").await;
    tokio::time::timeout(Duration::from_secs(30), gate.reached.notified())
        .await
        .expect("the applier claims m3");
    b.commit().await;
    gate.release.notify_one();
    run.processed(3).await;
    assert!(
        snapshot_within(&t, "erin", "mb", 10).await,
        "the change committed during the claim was never applied"
    );
    run.reactor.stop().await;
}

/// A row that fails alone is set aside, and only that row: another user's
/// change that commits below it while it fails is applied, not set aside
/// in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_row_that_failed_is_set_aside_not_the_one_below_it() {
    let _serial = SERIAL.lock().await;
    let t = setup().await;
    t.admin()
        .await
        .batch_execute(
            "ALTER TABLE mana_ai.mission_snapshots
               ADD CONSTRAINT test_no_bad CHECK (record->>'title' IS DISTINCT FROM 'bad')",
        )
        .await
        .unwrap();
    let gate = Arc::new(Gate::default());
    let hooks = Hooks {
        after_claim: Some(gate.hook()),
        ..Hooks::default()
    };
    let mut run = t.start_with(&[], hooks).await;
    let innocent = OpenTx::begin(&t, "frank").await;
    innocent.mission("fine").await;
    // The batch claims "bad" and fails; the batch of one claims it again,
    // and the innocent change commits while that claim is in flight.
    gate.countdown.store(2, Ordering::SeqCst);
    committed_mission(&t, "erin", "bad").await;
    tokio::time::timeout(Duration::from_secs(30), gate.reached.notified())
        .await
        .expect("the applier claims the bad row alone");
    innocent.commit().await;
    gate.release.notify_one();
    run.processed(2).await;
    assert!(
        snapshot_within(&t, "frank", "fine", 10).await,
        "the innocent change was lost"
    );
    let dead = t
        .pool
        .get()
        .await
        .unwrap()
        .query("SELECT user_id FROM mana_ai.dead_changes", &[])
        .await
        .unwrap();
    let users: Vec<String> = dead.iter().map(|r| r.get(0)).collect();
    assert_eq!(users, ["erin"]);
    run.reactor.stop().await;
}

/// The DBA reinstalls the kit while the service runs: the queue and its
/// identity start again at 1, below everything claimed so far.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kit_reinstalled_under_a_running_service_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let t = setup().await;
    let mut run = t.start(&[]).await;
    // Failed sync requests use up queue ids.
    for _ in 0..20 {
        let tx = OpenTx::begin(&t, "erin").await;
        tx.mission("lost").await;
        tx.rollback().await;
    }
    committed_mission(&t, "erin", "m1").await;
    run.processed(1).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    committed_mission(&t, "erin", "m2").await;
    run.processed(2).await;

    let (ok, err) = psql(&t.db, "uninstall.sql", Some(pgtemp::SERVICE_ROLE));
    assert!(ok, "{err}");
    let (ok, err) = psql(&t.db, "install.sql", Some(pgtemp::SERVICE_ROLE));
    assert!(ok, "{err}");
    committed_mission(&t, "erin", "m3").await;
    assert!(
        snapshot_within(&t, "erin", "m3", 15).await,
        "a change queued after the reinstall was never applied"
    );
    run.reactor.stop().await;
}

/// A queue row the claim can never reach (the identity set back by hand
/// below the ids already claimed, in the same queue) is found by the
/// backstop pass, applied, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_below_the_claim_is_recovered_by_the_backstop_and_counted() {
    let _serial = SERIAL.lock().await;
    let t = setup().await;
    let mut run = t.start(&[("MANA_AI_SWEEP_INTERVAL_SECS", "1")]).await;
    for record in ["m1", "m2", "m3"] {
        committed_mission(&t, "erin", record).await;
    }
    run.processed(3).await;
    // Two sweeps' claims close the hole before id 1 (claims from the start
    // would reach any id).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    t.admin()
        .await
        .batch_execute(
            "SELECT setval(pg_get_serial_sequence('mana_ai.change_queue', 'id'), 1, false)",
        )
        .await
        .unwrap();
    committed_mission(&t, "erin", "m4").await;
    assert!(
        snapshot_within(&t, "erin", "m4", 15).await,
        "the row below the claim was never applied"
    );
    eventually("the recovered row is counted", || async {
        run.metrics
            .render()
            .contains("mana_ai_changes_recovered_total 1")
    })
    .await;
    run.reactor.stop().await;
}

/// Several writers hold transactions open for random times, take queue ids
/// in random interleavings, and commit or roll back in random order: every
/// committed change is applied exactly once, no rolled-back one ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_change_is_applied_exactly_once_whatever_the_commit_order() {
    let _serial = SERIAL.lock().await;
    let t = Arc::new(setup().await);
    let (applied_tx, mut applied_rx) = mpsc::unbounded_channel::<Applied>();
    let hooks = Hooks {
        applied: Some(applied_tx),
        ..Hooks::default()
    };
    let run = t.start_with(&[], hooks).await;
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");

    let writers = (0..5u64).map(|w| {
        let t = t.clone();
        tokio::spawn(async move { writer(&t, seed.wrapping_add(w), w).await })
    });
    let mut committed: Vec<uuid::Uuid> = Vec::new();
    let mut rolled_back: Vec<uuid::Uuid> = Vec::new();
    for w in writers {
        let (c, r) = w.await.unwrap();
        committed.extend(c);
        rolled_back.extend(r);
    }

    let mut seen: HashMap<uuid::Uuid, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while committed.iter().any(|id| !seen.contains_key(id)) {
        let batch = tokio::time::timeout_at(deadline, applied_rx.recv())
            .await
            .unwrap_or_else(|_| {
                let missing = committed.iter().filter(|id| !seen.contains_key(id));
                panic!(
                    "seed {seed}: never applied: {:?}",
                    missing.collect::<Vec<_>>()
                )
            })
            .expect("the applier runs");
        for id in batch.change_ids {
            *seen.entry(id).or_default() += 1;
        }
    }
    // Anything applied twice would arrive within a sweep of the last one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(batch) = applied_rx.try_recv() {
        for id in batch.change_ids {
            *seen.entry(id).or_default() += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "seed {seed}: applied twice: {twice:?}");
    let ghosts: Vec<_> = rolled_back
        .iter()
        .filter(|id| seen.contains_key(id))
        .collect();
    assert!(
        ghosts.is_empty(),
        "seed {seed}: rolled back yet applied: {ghosts:?}"
    );
    assert_eq!(seen.len(), committed.len(), "seed {seed}");
    assert_eq!(
        t.count("SELECT count(*) FROM mana_ai.change_queue").await,
        0
    );
    let Running { reactor, .. } = run;
    reactor.stop().await;
}

/// One writer: 12 transactions of 1 to 3 changes (missions, agents, other
/// apps), random pauses between inserts, some held for up to 1.5 s, one in
/// eight rolled back. Returns the change ids committed and rolled back.
async fn writer(t: &TestDb, seed: u64, w: u64) -> (Vec<uuid::Uuid>, Vec<uuid::Uuid>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let user = format!("writer{w}");
    let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
    for i in 0..12 {
        let tx = OpenTx::begin(t, &user).await;
        let mut ids = Vec::new();
        for j in 0..rng.random_range(1..=3) {
            let record = format!("r{}", rng.random_range(0..6));
            match rng.random_range(0..4) {
                0 => {
                    tx.other_app().await;
                }
                1 => ids.push(tx.insert("ai", "agents", &record).await),
                _ => ids.push(tx.mission(&format!("{record}-{i}-{j}")).await),
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
        }
        if rng.random_bool(0.3) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
        }
        if rng.random_bool(0.125) {
            tx.rollback().await;
            rolled_back.extend(ids);
        } else {
            tx.commit().await;
            committed.extend(ids);
        }
    }
    (committed, rolled_back)
}
