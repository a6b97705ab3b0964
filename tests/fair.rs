//! Fair scheduling of due runs (issue 9): users served in turn, an agent's
//! `maxConcurrentMissions` waited out in the queue, one run for many missed
//! slots, and catch-up slots after on-time ones. Real Postgres and a fake LLM
//! on loopback; LLM requests identify their mission by its title.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, iso_in, mission_data, plan_answer, setup, write, Change, TestDb};
use serde_json::{json, Value};
use testkit::fake_llm::FakeLlm;

fn mission(user: &str, id: &str, extra: Value) -> Change<'static> {
    let (user, id) = (leak(user), leak(id));
    let mut data = mission_data(json!({"title": format!("fair {user} {id}")}));
    if let (Some(data), Value::Object(extra)) = (data.as_object_mut(), extra) {
        data.extend(extra);
    }
    Change::mission(user, id, "insert", data)
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// The user of each LLM request, in arrival order.
fn request_users(llm: &FakeLlm) -> Vec<String> {
    llm.prompts()
        .iter()
        .filter_map(|p| {
            let at = p.user.find("fair ")?;
            let rest = &p.user[at + 5..];
            Some(rest.split_whitespace().next()?.to_string())
        })
        .collect()
}

async fn written(t: &TestDb, user: &str, ids: &[String]) -> usize {
    let mut n = 0;
    for id in ids {
        n += t.writebacks(user, id).await.len();
    }
    n
}

/// On main all 20 light users were served after the 200 (requests 201-220).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_backlog_does_not_delay_other_users_by_more_than_a_round() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![
        FakeLlm::answer(&plan_answer()).delay(Duration::from_millis(50))
    ])
    .await
    .unwrap();
    let mut sync = t.sync_client().await;
    let heavy: Vec<Change> = (0..200)
        .map(|i| mission("heavy", &format!("h{i}"), json!({})))
        .collect();
    write(&mut sync, &heavy).await;
    let lead = t
        .lead(&[
            ("MANA_LLM_URL", &llm.url()),
            ("MANA_AI_MAX_CONCURRENT_RUNS", "4"),
        ])
        .await;
    eventually("the heavy backlog started", || async {
        !llm.requests().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let light: Vec<Change> = (0..20)
        .map(|i| mission(&format!("light{i}"), "m1", json!({})))
        .collect();
    for change in &light {
        write(&mut sync, std::slice::from_ref(change)).await;
    }
    let light_served = || {
        let users = request_users(&llm);
        users.iter().filter(|u| u.starts_with("light")).count()
    };
    eventually("every light user served", || async { light_served() == 20 }).await;
    let users = request_users(&llm);
    let last_light = users.iter().rposition(|u| u.starts_with("light")).unwrap();
    let heavy_before = users[..last_light].iter().filter(|u| *u == "heavy").count();
    // Light missions arrive within a few hundred ms while the heavy user's
    // 200 need seconds: at most a few rounds of heavy runs go first.
    assert!(
        heavy_before < 100,
        "{heavy_before} heavy runs before the last light one: {users:?}"
    );
    lead.stop().await;
}

/// On main: started at 3, 33, 33, 63, ... 213 s (retried every 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_held_back_by_their_agent_start_when_its_running_mission_ends() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let mut sync = t.sync_client().await;
    let mut agent = Change::mission(
        "ida",
        "solo",
        "insert",
        json!({"name": "Solo", "maxConcurrentMissions": 1}),
    );
    agent.table = "agents";
    write(&mut sync, &[agent]).await;
    let ids: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let missions: Vec<Change> = ids
        .iter()
        .map(|id| mission("ida", id, json!({"agentId": "solo"})))
        .collect();
    write(&mut sync, &missions).await;
    let started = Instant::now();
    let lead = t.lead(&[("MANA_LLM_URL", &llm.url())]).await;
    let deadline = started + Duration::from_secs(20);
    while written(&t, "ida", &ids).await < 10 {
        assert!(
            Instant::now() < deadline,
            "{} of 10 written after 20 s",
            written(&t, "ida", &ids).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(llm.requests().len(), 10, "one LLM call per mission");
    let waits = lead.metrics.run_queue_wait.get_sample_count();
    assert!(waits >= 10, "every run waited in the queue: {waits}");
    lead.stop().await;
}

/// On main the on-time mission's request came after every catch-up one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_missed_slots_run_once_and_catch_up_goes_after_on_time() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![
        FakeLlm::answer(&plan_answer()).delay(Duration::from_millis(500))
    ])
    .await
    .unwrap();
    let every_minute = json!({"kind": "interval", "everyMinutes": 1});
    let mut sync = t.sync_client().await;
    for i in 0..5 {
        let overdue = json!({"nextRunAt": iso_in(-7200), "cadence": every_minute});
        write(&mut sync, &[mission(&format!("late{i}"), "m1", overdue)]).await;
    }
    let lead = t
        .lead(&[
            ("MANA_LLM_URL", &llm.url()),
            ("MANA_AI_MAX_CONCURRENT_RUNS", "1"),
        ])
        .await;
    // Falls due while the first catch-up run holds the only place and the
    // other four wait.
    eventually("the first catch-up run started", || async {
        !llm.requests().is_empty()
    })
    .await;
    let on_time = json!({"nextRunAt": iso_in(-1)});
    write(&mut sync, &[mission("punctual", "m1", on_time)]).await;
    eventually("all six written", || async {
        let mut n = t.writebacks("punctual", "m1").await.len();
        for i in 0..5 {
            n += t.writebacks(&format!("late{i}"), "m1").await.len();
        }
        n == 6
    })
    .await;
    let users = request_users(&llm);
    let punctual = users.iter().position(|u| u == "punctual");
    assert!(
        punctual.is_some_and(|p| p <= 2),
        "the on-time run goes before the catch-up runs still waiting: {users:?}"
    );
    // Two hours of a 1-minute interval: one run each, then on from now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..5 {
        let user = format!("late{i}");
        let rows = t.writebacks(&user, "m1").await;
        assert_eq!(rows.len(), 1, "{user}: one run for all its missed slots");
        let data: Value = rows[0].get(0);
        let next =
            mana_ai::schedule::wheel::parse_next_run(data["nextRunAt"].as_str().unwrap()).unwrap();
        let ahead = next - chrono::Utc::now();
        assert!(
            ahead > chrono::Duration::seconds(30),
            "{user}: next in {ahead}"
        );
    }
    lead.settled().await;
    let missed = lead.metrics.missed_slots.get();
    assert!(
        (5 * 118..=5 * 121).contains(&missed),
        "missed_slots_total {missed}"
    );
    lead.stop().await;
}
