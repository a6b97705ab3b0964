//! Issue 8: the reactor's tasks are supervised. An applier that panics is
//! restarted with back-off and counted, `/health` says 503 naming it while
//! it is down, and nothing queued meanwhile is lost.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, iso_in, setup, write, Change};
use mana_ai::backend::{LeaderView, ServiceBackend};
use mana_ai::http::Backend;
use mana_ai::metrics::Metrics;
use mana_ai::reactor::{self, Hooks};
use mana_ai::schedule::clock::DbClock;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_applier_is_restarted_and_applies_what_queued_meanwhile() {
    let t = setup().await;
    // Armed by the test: the next `panics` drains panic.
    let panics = Arc::new(AtomicU32::new(0));
    let armed = panics.clone();
    let hook = move || {
        let left = armed.load(Ordering::SeqCst);
        if left > 0 {
            armed.store(left - 1, Ordering::SeqCst);
            panic!("injected applier failure");
        }
    };
    let metrics = Metrics::new();
    let (due_tx, _due_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut running = reactor::start(
        &t.config(&[]),
        t.pool.clone(),
        metrics.clone(),
        Arc::new(DbClock::new()),
        due_tx,
        CancellationToken::new(),
        Hooks {
            before_drain: Some(Arc::new(hook)),
            ..Hooks::default()
        },
    )
    .await
    .expect("reactor starts");
    tokio::time::timeout(Duration::from_secs(30), running.wait_listening())
        .await
        .expect("listening");
    let (_terms_tx, terms) = tokio::sync::watch::channel(Some(LeaderView {
        term_id: uuid::Uuid::new_v4(),
        wheel: running.wheel.clone(),
        runner: None,
        listening: running.listening.clone(),
        tasks: running.task_states.clone(),
    }));
    let backend = ServiceBackend::new(t.pool.clone(), metrics.clone(), false, terms);
    let health = backend.health().await;
    assert!(health.ok, "{health:?}");
    assert!(health.tasks_down.is_empty());
    let text = metrics.render();
    for task in ["listener", "applier", "wheel"] {
        assert!(
            text.contains(&format!("mana_ai_task_restarts_total{{task=\"{task}\"}} 0")),
            "{text}"
        );
    }

    // Two panics in a row (down for 0.5 s + 1 s of back-off), set off by
    // the drain of a first change.
    panics.store(2, Ordering::SeqCst);
    let mut sync = t.sync_client().await;
    write(
        &mut sync,
        &[Change::mission(
            "bob",
            "m0",
            "insert",
            json!({"title": "x"}),
        )],
    )
    .await;
    eventually("/health names the applier while it is down", || async {
        let health = backend.health().await;
        !health.ok && health.tasks_down == ["applier"]
    })
    .await;
    let body = serde_json::to_value(backend.health().await).unwrap();
    assert_eq!(body["tasksDown"], json!(["applier"]), "{body}");
    // Written while no applier runs: only a restarted one can apply it.
    let next = iso_in(600);
    write(
        &mut sync,
        &[Change::mission(
            "alice",
            "m1",
            "insert",
            json!({"state": "active", "nextRunAt": next}),
        )],
    )
    .await;
    eventually("the changes are applied after the restart", || async {
        t.mission("alice", "m1").await.is_some() && t.mission("bob", "m0").await.is_some()
    })
    .await;
    assert!(running.wheel.armed_at("alice", "m1").await.is_some());
    let restarts = metrics.task_restarts.with_label_values(&["applier"]).get();
    assert!((1..=2).contains(&restarts), "{restarts} restarts");
    eventually("/health is ok again", || async {
        backend.health().await.ok
    })
    .await;

    // And it keeps going.
    write(
        &mut sync,
        &[Change::mission(
            "bob",
            "m2",
            "insert",
            json!({"title": "x"}),
        )],
    )
    .await;
    eventually("a later change applies", || async {
        t.mission("bob", "m2").await.is_some()
    })
    .await;
    running.stop().await;
    assert_eq!(
        metrics.task_up.with_label_values(&["applier"]).get(),
        0,
        "down after stop"
    );
}

/// Every long-running task runs supervised, in a real process: the
/// leader's five (the runner's loop included) and the process's own two
/// (HTTP and the queue gauges' refresher) are up in `task_up`, each with
/// its restart counter, and `/health` names none of them down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_long_running_task_of_a_process_is_supervised() {
    let t = setup().await;
    let url = t.db.url_as(pgtemp::SERVICE_ROLE);
    let mut serve = common::serve::Serve::start(&url, &[("TICK_ENABLED", "true")]);
    serve.answers_within(Duration::from_secs(30)).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |path: &str| {
        let url = format!("http://127.0.0.1:{}{path}", serve.port);
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    // Every name `TaskName` has (the labels are checked against it).
    let tasks = mana_ai::metrics::labels::TASKS;
    assert_eq!(tasks.len(), 7);
    eventually("every task up", || async {
        let text = get("/metrics").await;
        tasks
            .iter()
            .all(|task| text.contains(&format!("mana_ai_task_up{{task=\"{task}\"}} 1")))
    })
    .await;
    let text = get("/metrics").await;
    for task in tasks {
        let restarts = format!("mana_ai_task_restarts_total{{task=\"{task}\"}} 0");
        assert!(text.contains(&restarts), "{text}");
    }
    let health: serde_json::Value = serde_json::from_str(&get("/health").await).unwrap();
    assert_eq!(health["tasksDown"], json!([]), "{health}");
    assert_eq!(health["role"], "leader", "{health}");
}
