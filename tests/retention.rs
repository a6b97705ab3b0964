//! Retention: the leader prunes `token_usage` past the 24 h budget window and
//! `mission_runs` / `dead_changes` past `MANA_AI_RETENTION_DAYS`, in batches,
//! on start and on every safety sweep; never a slot still `running`.

mod common;

use common::{eventually, setup, TestDb};

/// Rows of every kind, old and recent, as the service role.
async fn seed(t: &TestDb) {
    let client = t.pool.get().await.unwrap();
    client
        .batch_execute(
            "INSERT INTO mana_ai.token_usage (user_id, agent_id, mission_id, tokens_used, ts)
             SELECT 'u1', 'a1', 'm-old', 10, now() - interval '25 hours' - make_interval(secs => n)
             FROM generate_series(1, 2500) AS n;
             INSERT INTO mana_ai.token_usage (user_id, agent_id, mission_id, tokens_used, ts)
             SELECT 'u1', 'a1', 'm-recent', 10, now() - interval '23 hours'
             FROM generate_series(1, 3);

             INSERT INTO mana_ai.mission_runs
               (user_id, mission_id, slot, state, token, claimed_by, claimed_at, finished_at, retry_at)
             VALUES
               ('u1', 'old-done', 's', 'done', gen_random_uuid(), gen_random_uuid(),
                now() - interval '31 days', now() - interval '31 days', NULL),
               ('u1', 'old-retry', 's', 'retry', gen_random_uuid(), gen_random_uuid(),
                now() - interval '40 days', NULL, now() - interval '40 days'),
               ('u1', 'old-running', 's', 'running', gen_random_uuid(), gen_random_uuid(),
                now() - interval '90 days', NULL, NULL),
               ('u1', 'recent-done', 's', 'done', gen_random_uuid(), gen_random_uuid(),
                now() - interval '40 days', now() - interval '2 days', NULL),
               ('u1', 'recent-retry', 's', 'retry', gen_random_uuid(), gen_random_uuid(),
                now() - interval '1 day', NULL, now() + interval '1 hour');

             INSERT INTO mana_ai.dead_changes
               (queue_id, change_id, user_id, table_name, reason, detail, dead_at)
             VALUES
               (1, gen_random_uuid(), 'u1', 'aiMissions', 'data-not-object', 'old', now() - interval '31 days'),
               (2, gen_random_uuid(), 'u1', 'aiMissions', 'data-not-object', 'recent', now() - interval '12 hours');",
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_prunes_old_rows_in_batches_and_keeps_recent_ones_and_running_slots() {
    let t = setup().await;
    seed(&t).await;
    let lead = t.lead(&[("MANA_AI_SWEEP_INTERVAL_SECS", "1")]).await;

    eventually("old rows pruned", || async {
        t.count("SELECT count(*) FROM mana_ai.token_usage").await == 3
            && t.count("SELECT count(*) FROM mana_ai.mission_runs").await == 3
            && t.count("SELECT count(*) FROM mana_ai.dead_changes").await == 1
    })
    .await;
    assert_eq!(
        t.count("SELECT count(*) FROM mana_ai.token_usage WHERE mission_id = 'm-recent'")
            .await,
        3
    );
    let kept: Vec<String> = t
        .pool
        .get()
        .await
        .unwrap()
        .query(
            "SELECT mission_id FROM mana_ai.mission_runs ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kept, ["old-running", "recent-done", "recent-retry"]);
    assert_eq!(
        t.count("SELECT count(*) FROM mana_ai.dead_changes WHERE detail = 'recent'")
            .await,
        1
    );
    let text = lead.metrics.render();
    for line in [
        "mana_ai_rows_pruned_total{table=\"token_usage\"} 2500",
        "mana_ai_rows_pruned_total{table=\"mission_runs\"} 2",
        "mana_ai_rows_pruned_total{table=\"dead_changes\"} 1",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }

    // The next sweep prunes what aged since.
    t.pool
        .get()
        .await
        .unwrap()
        .batch_execute(
            "UPDATE mana_ai.dead_changes SET dead_at = now() - interval '45 days';
             UPDATE mana_ai.mission_runs SET finished_at = now() - interval '45 days'
             WHERE mission_id = 'recent-done'",
        )
        .await
        .unwrap();
    eventually("aged rows pruned on a later sweep", || async {
        t.count("SELECT count(*) FROM mana_ai.dead_changes").await == 0
            && t.count("SELECT count(*) FROM mana_ai.mission_runs").await == 2
    })
    .await;
    lead.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_days_are_configurable_and_the_counters_start_at_zero() {
    let t = setup().await;
    seed(&t).await;
    let lead = t.lead(&[("MANA_AI_RETENTION_DAYS", "1")]).await;
    eventually("rows older than a day pruned", || async {
        t.count("SELECT count(*) FROM mana_ai.dead_changes").await == 1
            && t.count("SELECT count(*) FROM mana_ai.mission_runs").await == 2
    })
    .await;
    // Retention is one of the leader's supervised tasks.
    let up = |m: &mana_ai::metrics::Metrics| m.task_up.with_label_values(&["retention"]).get();
    assert_eq!(up(&lead.metrics), 1);
    let metrics = lead.metrics.clone();
    lead.stop().await;
    assert_eq!(up(&metrics), 0, "down once the term stopped");

    let fresh = mana_ai::metrics::Metrics::new().render();
    for table in ["token_usage", "mission_runs", "dead_changes"] {
        let line = format!("mana_ai_rows_pruned_total{{table=\"{table}\"}} 0");
        assert!(fresh.contains(&line), "missing {line} in\n{fresh}");
    }
}

/// `decrypt_audit` has a retention of its own (`MANA_AI_AUDIT_RETENTION_DAYS`,
/// default a year), over every user's rows although the table forces
/// row-level security; the service role still reads only its user's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decrypt_audit_is_pruned_past_its_own_retention() {
    let t = setup().await;
    t.admin()
        .await
        .batch_execute(
            "INSERT INTO mana_ai.decrypt_audit (user_id, mission_id, table_name, record_id, status, ts)
             SELECT u, 'm', 'notes', age::text, 'ok', now() - make_interval(days => age)
             FROM unnest(ARRAY['u1', 'u2']) AS u, unnest(ARRAY[400, 100, 10]) AS age",
        )
        .await
        .unwrap();
    let all = "SELECT count(*) FROM mana_ai.decrypt_audit";
    let lead = t.lead(&[]).await;
    eventually("rows older than a year pruned", || async {
        t.count_as_admin(all).await == 4
    })
    .await;
    lead.stop().await;
    assert!(
        audit_rows_kept(&t, "100").await,
        "a 100-day row is kept by default"
    );

    let lead = t.lead(&[("MANA_AI_AUDIT_RETENTION_DAYS", "90")]).await;
    eventually("rows older than 90 days pruned", || async {
        t.count_as_admin(all).await == 2
    })
    .await;
    assert!(lead
        .metrics
        .render()
        .contains("mana_ai_rows_pruned_total{table=\"decrypt_audit\"} 2"));
    lead.stop().await;
    // Outside the prune, the service role sees one user's rows only.
    let mut client = t.pool.get().await.unwrap();
    let tx = mana_ai::db::begin_user(&mut client, "u1").await.unwrap();
    let seen: i64 = tx.query_one(all, &[]).await.unwrap().get(0);
    assert_eq!(seen, 1);
}

/// Whether the audit rows of age `age` days are still there (both users).
async fn audit_rows_kept(t: &TestDb, age: &str) -> bool {
    let sql = format!("SELECT count(*) FROM mana_ai.decrypt_audit WHERE record_id = '{age}'");
    t.count_as_admin(&sql).await == 2
}

/// `research_jobs` keeps a mission's job only while the mission runs: a
/// row not submitted or polled for `MANA_AI_RETENTION_DAYS` (a deleted or
/// paused mission's, whatever its state) is pruned, every user's, although
/// the table forces row-level security; outside the prune the service role
/// sees one user's jobs only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn research_jobs_not_touched_for_the_retention_are_pruned() {
    let t = setup().await;
    // Per user: one submitted 40 days ago, one submitted then but polled
    // yesterday, one submitted 10 days ago.
    t.admin()
        .await
        .batch_execute(
            "INSERT INTO mana_ai.research_jobs
                 (user_id, mission_id, slot, task_id, provider_id, state, submitted_at, last_polled_at)
             SELECT u, m, 's', 't', 'p', 'pending', now() - make_interval(days => age), polled
             FROM unnest(ARRAY['u1', 'u2']) AS u,
                  (VALUES ('old', 40, NULL::timestamptz),
                          ('polled', 40, now() - interval '1 day'),
                          ('recent', 10, NULL)) AS job(m, age, polled)",
        )
        .await
        .unwrap();
    let all = "SELECT count(*) FROM mana_ai.research_jobs";
    assert_eq!(t.count_as_admin(all).await, 6);
    let lead = t.lead(&[]).await;
    eventually("jobs untouched for 30 days pruned", || async {
        t.count_as_admin(all).await == 4
    })
    .await;
    assert!(lead
        .metrics
        .render()
        .contains("mana_ai_rows_pruned_total{table=\"research_jobs\"} 2"));
    lead.stop().await;
    let kept =
        "SELECT count(*) FROM mana_ai.research_jobs WHERE mission_id IN ('recent', 'polled')";
    assert_eq!(
        t.count_as_admin(kept).await,
        4,
        "recent and recently polled jobs stay"
    );
    let mut client = t.pool.get().await.unwrap();
    let tx = mana_ai::db::begin_user(&mut client, "u1").await.unwrap();
    let seen: i64 = tx.query_one(all, &[]).await.unwrap().get(0);
    assert_eq!(seen, 2);
    // Without the prune's setting, the service role deletes nothing of
    // another user's.
    let gone = tx
        .execute(
            "DELETE FROM mana_ai.research_jobs WHERE user_id = 'u2'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(gone, 0);
}
