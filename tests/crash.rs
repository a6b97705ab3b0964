//! A crash of one server process (the OOM killer, a segfault) makes
//! Postgres stop the others and recover from the WAL on disk, keeping its
//! start time. The applier's batches commit without waiting for the WAL
//! flush, so the last ones are lost in such a crash: their queue rows come
//! back, below the claim's mark, and must be applied again at once, not
//! left to the backstop's next sweep.

mod common;

use std::time::Duration;

use common::{eventually, iso_in, mission_data, write, Change};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_lost_in_a_crash_restart_is_applied_again() {
    // Its own cluster: a crash restart of the shared server would cut every
    // other test's connections.
    let server =
        pgtemp::PgServer::start_throwaway().expect("a throwaway cluster (needs initdb and pg_ctl)");
    let t = common::setup_on(&server).await;
    let admin = t.admin().await;
    // The WAL writer flushes asynchronous commits every 10 s instead of
    // every 0.2 s: the batch below stays in memory until the crash.
    for sql in [
        "ALTER SYSTEM SET wal_writer_delay = '10s'",
        "SELECT pg_reload_conf()",
        "CREATE EXTENSION IF NOT EXISTS pageinspect",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    let mut run = t.start(&[("MANA_AI_SWEEP_INTERVAL_SECS", "3600")]).await;
    // Two batches, so that the mark is past the first row (the first claim
    // leaves id 0 open until a later claim sees its own transaction ended).
    let mut sync = t.sync_client().await;
    for (n, id) in [(1, "m1"), (2, "m2")] {
        let data = mission_data(json!({"nextRunAt": iso_in(3600)}));
        write(&mut sync, &[Change::mission("cleo", id, "insert", data)]).await;
        run.processed(n).await;
        assert!(t.mission("cleo", id).await.is_some());
    }
    let unflushed: bool = admin
        .query_one(
            "SELECT pg_current_wal_flush_lsn()
                    < (SELECT lsn FROM page_header(get_raw_page('mana_ai.mission_snapshots', 0)))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(unflushed, "the batch reached the disk before the crash");

    let pid: i32 = admin
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    drop((admin, sync));
    eventually("the server recovered", || async {
        t.db.admin().await.is_ok()
    })
    .await;

    // Claimed again: a second time through the applier, and folded.
    tokio::time::timeout(Duration::from_secs(30), run.reactor.wait_processed(3))
        .await
        .expect("a lost batch's change was claimed again within 30 s");
    eventually("the snapshots are back", || async {
        t.mission("cleo", "m1").await.is_some() && t.mission("cleo", "m2").await.is_some()
    })
    .await;
    assert_eq!(
        run.metrics.changes_recovered.get(),
        0,
        "not by the backstop"
    );
    // A new incarnation is recorded, so a second crash is seen as well.
    eventually("a new incarnation", || async {
        t.count_as_admin("SELECT count(*) FROM mana_ai.server_incarnation")
            .await
            == 1
    })
    .await;
    run.reactor.stop().await;
}
