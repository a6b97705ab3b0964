//! `/health` and `/metrics` cost no query (issue 9): they read queue gauges
//! the backend refreshes on its own, so a probe answers at once even while
//! `mana_ai.change_queue` can't be read.

mod common;

use std::time::{Duration, Instant};

use common::setup;
use mana_ai::backend::{LeaderView, ServiceBackend};
use mana_ai::http::Backend;
use mana_ai::metrics::Metrics;
use mana_ai::reactor::supervisor::TaskStates;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_at_once_while_the_queue_table_is_locked() {
    let t = setup().await;
    let metrics = Metrics::new();
    let (_, standby) = tokio::sync::watch::channel(None);
    let backend = ServiceBackend::new(t.pool.clone(), metrics.clone(), false, standby);
    let health = backend.health().await;
    assert!(health.ok, "{health:?}");
    assert_eq!(health.queue_depth, Some(0));

    // An operator's transaction holds the queue: counting it would wait.
    let mut admin = t.admin().await;
    let lock = admin.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE mana_ai.change_queue IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = Instant::now();
    for _ in 0..10 {
        let probe = Instant::now();
        let health = backend.health().await;
        let text = backend.metrics_text().await;
        assert!(
            probe.elapsed() < Duration::from_millis(500),
            "a probe took {:?}",
            probe.elapsed()
        );
        assert!(health.ok, "{health:?}");
        assert_eq!(health.queue_depth, Some(0));
        assert!(text.lines().any(|l| l == "mana_ai_queue_depth 0"), "{text}");
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    lock.rollback().await.unwrap();
}

/// `/health` reads the term's own state (which tasks are up, whether the
/// listener is registered), not Prometheus gauges: gauges that say all is
/// well do not hide a term whose tasks are down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reads_the_published_term_not_the_gauges() {
    let t = setup().await;
    let metrics = Metrics::new();
    for task in ["listener", "applier", "wheel"] {
        metrics.task_up.with_label_values(&[task]).set(1);
    }
    metrics.listener_connected.set(1);
    let (wheel, _wheel_rx) = mana_ai::schedule::wheel::wheel_channel();
    let (_listening_tx, listening) = tokio::sync::watch::channel(false);
    let term = LeaderView {
        term_id: uuid::Uuid::new_v4(),
        wheel,
        runner: None,
        listening,
        tasks: TaskStates::all_down(),
    };
    let (terms_tx, terms) = tokio::sync::watch::channel(Some(term));
    let backend = ServiceBackend::new(t.pool.clone(), metrics.clone(), false, terms);
    let health = backend.health().await;
    assert!(!health.ok, "{health:?}");
    assert_eq!(
        health.tasks_down,
        ["listener", "applier", "wheel", "retention", "runner"]
    );
    assert!(!health.listener.connected, "{health:?}");
    let body = serde_json::to_value(&health).unwrap();
    assert_eq!(body["role"], "leader", "{body}");

    // The term ends: a standby, whatever the gauges say.
    terms_tx.send_replace(None);
    let health = backend.health().await;
    let body = serde_json::to_value(&health).unwrap();
    assert_eq!(body["role"], "standby", "{body}");
    assert!(health.tasks_down.is_empty());
    assert!(health.ok, "{health:?}");
}
