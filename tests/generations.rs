//! The generation of `public.sync_changes` is read from the catalog at
//! start: a v0.6 database is served and says so on `/health` and
//! `/metrics`; a database of today's generation (fixtures/mana_sync_current.sql)
//! is refused at once with a message that names what was found, instead of
//! failing on a missing column forever; a table of neither shape is refused
//! naming its columns.

mod common;

use std::time::Duration;

use common::serve::Serve;
use common::setup;
use pgtemp::SERVICE_ROLE;

const CURRENT: &str = include_str!("../fixtures/mana_sync_current.sql");

async fn get(port: u16, path: &str) -> String {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://127.0.0.1:{port}{path}");
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// Also: a setting of the original that no longer applies is named in a
/// warning at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v06_database_is_served_and_its_generation_shown() {
    let t = setup().await;
    let mut serve = Serve::start(&t.db.url_as(SERVICE_ROLE), &[("TICK_INTERVAL_MS", "60000")]);
    serve.answers_within(Duration::from_secs(30)).await;
    let health = get(serve.port, "/health").await;
    assert!(
        health.contains(r#""syncLog":"v0.6 (field_timestamps)""#),
        "{health}"
    );
    let metrics = get(serve.port, "/metrics").await;
    assert!(
        metrics.contains(r#"mana_ai_sync_log_info{generation="v0.6"} 1"#),
        "{metrics}"
    );
    let log = serve.log();
    assert!(log.contains("sync_changes generation"), "{log}");
    assert!(
        log.contains("TICK_INTERVAL_MS is set but not read"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_todays_generation_is_refused_at_once_saying_why() {
    let t = setup().await;
    let admin = t.admin().await;
    admin
        .batch_execute("DROP TABLE public.sync_changes CASCADE")
        .await
        .unwrap();
    admin.batch_execute(CURRENT).await.unwrap();
    let mut serve = Serve::start(&t.db.url_as(SERVICE_ROLE), &[]);
    let status = serve.exit_within(Duration::from_secs(30)).await;
    let log = serve.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("current mana generation, current (field_meta, origin, space_id)"),
        "{log}"
    );
    assert!(
        !log.contains("column c.field_timestamps does not exist"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_neither_shape_is_refused_naming_its_columns() {
    let t = setup().await;
    t.admin()
        .await
        .batch_execute("ALTER TABLE public.sync_changes RENAME COLUMN field_timestamps TO stamps")
        .await
        .unwrap();
    let mut serve = Serve::start(&t.db.url_as(SERVICE_ROLE), &[]);
    let status = serve.exit_within(Duration::from_secs(30)).await;
    let log = serve.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("neither field_timestamps nor field_meta"),
        "{log}"
    );
    assert!(log.contains("stamps"), "{log}");
}

/// The DBA kit serves both generations (it reads no stamp column) and says
/// which one it found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kit_installs_on_todays_generation_and_names_it() {
    let db = pgtemp::TempDb::create(common::server(), "mana_ai_t")
        .await
        .unwrap();
    let admin = db.admin().await.unwrap();
    admin
        .batch_execute("DROP TABLE public.sync_changes CASCADE")
        .await
        .unwrap();
    admin.batch_execute(CURRENT).await.unwrap();
    admin
        .batch_execute(&format!(
            "GRANT SELECT, INSERT ON public.sync_changes TO {}",
            pgtemp::SYNC_ROLE
        ))
        .await
        .unwrap();
    let (ok, err) = common::psql(&db, "install.sql", Some(SERVICE_ROLE));
    assert!(ok, "{err}");
    assert!(
        err.contains("public.sync_changes is current (field_meta)"),
        "{err}"
    );
    let (ok, err) = common::psql(&db, "verify.sql", Some(SERVICE_ROLE));
    assert!(ok, "{err}");
    assert!(
        err.contains("ok; public.sync_changes is current (field_meta)"),
        "{err}"
    );
}
