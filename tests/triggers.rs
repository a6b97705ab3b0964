//! The DBA trigger kit run the way a DBA runs it (`psql -f`), and the
//! `mana-ai triggers verify` / `migrate` commands.

mod common;

use std::process::Command;

use common::{psql, write, Change};
use mana_ai::sync::generation::Generation;
use pgtemp::{TempDb, SERVICE_ROLE, SYNC_ROLE};
use serde_json::json;

both_generations!(
    bare: install_is_idempotent_backfills_once_and_ignores_other_apps,
    the_history_backfill_does_not_block_sync_writes_and_queues_each_change_once,
);

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn install_is_idempotent_backfills_once_and_ignores_other_apps(generation: Generation) {
    let db = common::bare_db(generation).await;
    let admin = db.admin().await.unwrap();
    let mut sync = db.connect_as(SYNC_ROLE).await.unwrap();
    // History written before the install.
    write(
        &mut sync,
        &[
            Change::mission("u1", "m1", "insert", json!({"title": "a"})),
            Change::mission("u1", "m1", "update", json!({"title": "b"})),
        ],
    )
    .await;

    let (ok, err) = psql(&db, "verify.sql", Some(SERVICE_ROLE));
    assert!(!ok, "verify fails before the install");
    assert!(
        err.contains("enabled trigger mana_ai_enqueue on public.sync_changes"),
        "{err}"
    );
    assert!(err.contains("schema mana_ai"), "{err}");

    let (ok, err) = psql(&db, "install.sql", Some(SERVICE_ROLE));
    assert!(ok, "{err}");
    assert_eq!(
        count(&admin, "SELECT count(*) FROM mana_ai.change_queue").await,
        2,
        "history queued"
    );
    let (ok, err) = psql(&db, "install.sql", Some(SERVICE_ROLE));
    assert!(ok, "{err}");
    let shown = match generation {
        Generation::V06 => "public.sync_changes is v0.6 (field_timestamps)",
        Generation::Current => "public.sync_changes is current (field_meta)",
    };
    assert!(err.contains(shown), "install names the generation: {err}");
    assert_eq!(
        count(&admin, "SELECT count(*) FROM mana_ai.change_queue").await,
        2,
        "queued once"
    );
    assert_eq!(
        count(
            &admin,
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'mana_ai_enqueue'"
        )
        .await,
        1
    );
    let (ok, err) = psql(&db, "verify.sql", Some(SERVICE_ROLE));
    assert!(ok, "{err}");
    assert!(err.contains(shown), "verify names the generation: {err}");
    // Queue ids must be drawn in time order (the claim relies on it).
    admin
        .batch_execute("ALTER TABLE mana_ai.change_queue ALTER COLUMN id SET CACHE 20")
        .await
        .unwrap();
    let (ok, err) = psql(&db, "verify.sql", Some(SERVICE_ROLE));
    assert!(!ok && err.contains("CACHE must be 1"), "{err}");
    admin
        .batch_execute("ALTER TABLE mana_ai.change_queue ALTER COLUMN id SET CACHE 1")
        .await
        .unwrap();

    // Only mission and agent rows of app ai are queued.
    let tx = mana_ai::db::begin_user(&mut sync, "u1").await.unwrap();
    for (app, table) in [
        ("notes", "notes"),
        ("todo", "tasks"),
        ("ai", "somethingElse"),
        ("ai", "agents"),
    ] {
        tx.execute(
            "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, client_id)
             VALUES ($1, $2, 'r', 'u1', 'insert', '{}', 'c')",
            &[&app, &table],
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(
        count(&admin, "SELECT count(*) FROM mana_ai.change_queue").await,
        3
    );

    // The function is SECURITY DEFINER with a pinned search_path, not callable by PUBLIC.
    let row = admin
        .query_one(
            "SELECT prosecdef, proconfig::text, has_function_privilege('public', oid, 'EXECUTE')
             FROM pg_proc WHERE oid = 'mana_ai.enqueue_change()'::regprocedure",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(
        row.get::<_, String>(1),
        "{\"search_path=pg_catalog, pg_temp\"}"
    );
    assert!(!row.get::<_, bool>(2));

    // The service role got exactly: schema USAGE+CREATE, queue SELECT+DELETE,
    // sync_changes SELECT+INSERT; nothing else on those tables.
    let grants: Vec<String> = admin
        .query(
            "SELECT table_name || ':' || privilege_type FROM information_schema.role_table_grants
             WHERE grantee = $1 AND table_catalog = current_database()
             ORDER BY 1",
            &[&SERVICE_ROLE],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        grants,
        [
            "change_queue:DELETE",
            "change_queue:SELECT",
            "sync_changes:INSERT",
            "sync_changes:SELECT"
        ]
    );

    let (ok, err) = psql(&db, "uninstall.sql", None);
    assert!(ok, "{err}");
    let (ok, err) = psql(&db, "verify.sql", Some(SERVICE_ROLE));
    assert!(!ok);
    assert!(err.contains("table mana_ai.change_queue"), "{err}");
    assert!(err.contains("function mana_ai.enqueue_change()"), "{err}");
}

#[tokio::test]
async fn install_without_a_role_or_for_an_unknown_role_fails_clearly() {
    let db = TempDb::create(common::server(), "mana_ai_t").await.unwrap();
    let (ok, err) = psql(&db, "install.sql", None);
    assert!(!ok);
    assert!(err.contains("no service role given"), "{err}");
    let (ok, err) = psql(&db, "install.sql", Some("no_such_role_here"));
    assert!(!ok);
    assert!(
        err.contains("role no_such_role_here does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn the_cli_verifies_and_migrates_as_the_service_role() {
    let db = TempDb::create(common::server(), "mana_ai_t").await.unwrap();
    let bin = env!("CARGO_BIN_EXE_mana-ai");
    let url = db.url_as(SERVICE_ROLE);
    let run = move |args: &[&str]| {
        Command::new(bin)
            .args(args)
            .env("SYNC_DATABASE_URL", &url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = run(&["triggers", "verify"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing:") && stderr.contains("mana_ai_enqueue"),
        "{stderr}"
    );

    let out = run(&["migrate"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("triggers/install.sql"), "{stderr}");

    let printed = Command::new(bin)
        .args(["triggers", "print"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&printed.stdout),
        mana_ai::triggers::INSTALL_SQL
    );

    mana_ai::triggers::install(&db.admin().await.unwrap(), SERVICE_ROLE)
        .await
        .unwrap();
    let out = run(&["triggers", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Two instances migrating at once: each migration runs once.
    let (a, b) = tokio::join!(
        tokio::task::spawn_blocking({
            let run = run.clone();
            move || run(&["migrate"])
        }),
        tokio::task::spawn_blocking(move || run(&["migrate"])),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        a.status.success() && b.status.success(),
        "{}{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    let admin = db.admin().await.unwrap();
    let rows = count(&admin, "SELECT count(*) FROM mana_ai.schema_migrations").await;
    assert_eq!(rows as usize, mana_ai::db::migrate::MIGRATIONS.len());
}

/// The history backfill runs in chunks before the trigger's short lock: a
/// sync write while a chunk is in progress is not blocked, and every
/// change, that one included, is queued exactly once.
async fn the_history_backfill_does_not_block_sync_writes_and_queues_each_change_once(
    generation: Generation,
) {
    let db = common::bare_db(generation).await;
    let admin = db.admin().await.unwrap();
    admin
        .batch_execute(
            "INSERT INTO public.sync_changes (app_id, table_name, record_id, user_id, op, data, client_id)
             SELECT CASE WHEN g % 10 = 0 THEN 'todo' ELSE 'ai' END, 'aiMissions', 'm' || g,
                    'u' || (g % 7), 'insert', '{\"state\": \"active\"}', 'history'
             FROM generate_series(1, 1000) AS g",
        )
        .await
        .unwrap();
    admin
        .execute(
            "SELECT set_config('mana_ai.service_role', $1, false)",
            &[&SERVICE_ROLE],
        )
        .await
        .unwrap();
    let body = mana_ai::triggers::body(mana_ai::triggers::INSTALL_SQL);
    let steps: Vec<String> = mana_ai::triggers::steps(body)
        .into_iter()
        .map(str::to_string)
        .collect();
    admin.batch_execute(&steps[0]).await.unwrap();

    // Hold the chunk in progress: it waits for its staging table.
    let mut blocker = db.admin().await.unwrap();
    let hold = blocker.transaction().await.unwrap();
    hold.batch_execute("LOCK TABLE mana_ai.install_backfill IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let backfill = tokio::spawn(async move {
        admin.batch_execute(&steps[1]).await.unwrap();
        admin.batch_execute(&steps[2]).await.unwrap();
    });
    let watcher = db.admin().await.unwrap();
    common::eventually("the chunk waits for its staging table", || async {
        count(
            &watcher,
            "SELECT count(*) FROM pg_stat_activity
             WHERE query LIKE 'CALL mana_ai.backfill_history%' AND wait_event_type = 'Lock'",
        )
        .await
            == 1
    })
    .await;
    let mut sync = db.connect_as(SYNC_ROLE).await.unwrap();
    sync.batch_execute("SET lock_timeout = '2s'").await.unwrap();
    write(
        &mut sync,
        &[Change::mission(
            "u1",
            "during",
            "insert",
            json!({"state": "active"}),
        )],
    )
    .await;
    hold.commit().await.unwrap();
    backfill.await.unwrap();

    let queued = "SELECT count(*) FROM mana_ai.change_queue";
    let distinct = "SELECT count(DISTINCT change_id) FROM mana_ai.change_queue";
    assert_eq!(
        count(&watcher, queued).await,
        901,
        "900 of history and one during"
    );
    assert_eq!(count(&watcher, distinct).await, 901);
    assert_eq!(
        count(
            &watcher,
            "SELECT count(*) FROM pg_class WHERE relname = 'install_backfill'"
        )
        .await,
        0,
        "the staging table is gone"
    );
}
