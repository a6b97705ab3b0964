//! `/health` and `/metrics` cost no query (issue 9): they read queue gauges
//! the backend refreshes on its own, so a probe answers at once even while
//! `mana_ai.change_queue` can't be read.

mod common;

use std::time::{Duration, Instant};

use common::setup;
use mana_ai::backend::ServiceBackend;
use mana_ai::http::Backend;
use mana_ai::metrics::Metrics;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_at_once_while_the_queue_table_is_locked() {
    let t = setup().await;
    let metrics = Metrics::new();
    let backend = ServiceBackend::new(t.pool.clone(), metrics.clone(), false);
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
