//! Shared by the deep research tests (`tests/deep_research*.rs`): the
//! leader with deep research on against a fake mana-research, a fake
//! mana-api and a fake LLM, and metrics read from the rendered exposition,
//! as Prometheus reads them.

use serde_json::{json, Value};
use testkit::fake_api::FakeManaApi;
use testkit::fake_llm::FakeLlm;
use testkit::fake_research::FakeResearch;

use super::{eventually, mission_data, plan_answer, write, Change, Leading, TestDb};

pub const KEY: &str = "test-service-key";
pub const PROVIDER: &str = "test-provider";
pub const ANSWER: &str = "Wärmepumpen-Antwort: Erdwärme lohnt sich ab 120 m².";
pub const CITED: &str = "https://studie.example/erdwaerme";
pub const NEWS_URL: &str = "https://news.example/bienen-2026";

pub async fn seed(t: &TestDb, user: &str, id: &str, extra: Value) {
    let mut sync = t.sync_client().await;
    write(
        &mut sync,
        &[Change::mission(user, id, "insert", mission_data(extra))],
    )
    .await;
}

/// The leader with deep research on (unless `extra` says otherwise).
pub async fn lead(
    t: &TestDb,
    llm: &FakeLlm,
    research: &FakeResearch,
    api: &FakeManaApi,
    extra: &[(&str, &str)],
) -> Leading {
    let (llm_url, research_url, api_url) = (llm.url(), research.url(), api.url());
    let mut all = vec![
        ("MANA_LLM_URL", llm_url.as_str()),
        ("MANA_RESEARCH_URL", research_url.as_str()),
        ("MANA_API_URL", api_url.as_str()),
        ("MANA_AI_RESEARCH_PROVIDER", PROVIDER),
        ("MANA_AI_DEEP_RESEARCH_ENABLED", "true"),
        ("MANA_AI_RESEARCH_POLL_SECS", "1"),
    ];
    all.extend_from_slice(extra);
    t.lead(&all).await
}

pub async fn news_api() -> FakeManaApi {
    FakeManaApi::with_results(
        json!([{"url": "https://feeds.example/bienen.xml", "title": "Bienen"}]),
        json!([{"url": NEWS_URL, "title": "Bienen 2026", "excerpt": "Neu", "publishedAt": "2026-11-20"}]),
    )
    .await
    .unwrap()
}

pub async fn llm() -> FakeLlm {
    FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap()
}

/// A sample's value in the rendered metrics (0 when absent).
pub fn metric(lead: &Leading, series: &str) -> f64 {
    let text = lead.metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Jobs submitted, completed and failed, as the metrics count them.
pub fn job_counts(lead: &Leading) -> (f64, f64, f64) {
    let count = |family| jobs(lead, family);
    (count("submitted"), count("completed"), count("failed"))
}

pub fn jobs(lead: &Leading, family: &str) -> f64 {
    metric(
        lead,
        &format!("mana_ai_research_jobs_{family}_total{{provider=\"{PROVIDER}\"}}"),
    )
}

pub fn pending_skips(lead: &Leading) -> f64 {
    metric(lead, "mana_ai_research_jobs_pending_skips_total")
}

pub async fn job_state(t: &TestDb, mission: &str) -> Option<String> {
    t.admin()
        .await
        .query_opt(
            "SELECT state FROM mana_ai.research_jobs WHERE mission_id = $1",
            &[&mission],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

pub async fn wait_written(t: &TestDb, user: &str, mission: &str) {
    eventually("the mission's iteration is written back", || async {
        t.writebacks(user, mission).await.len() == 1
    })
    .await;
}
