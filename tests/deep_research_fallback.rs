//! Deep research jobs that end without an answer (issue 19 item 3): failed,
//! unknown to mana-research (404), refused (401), or pending past
//! `MANA_AI_RESEARCH_JOB_MAX_HOURS`: each is dropped and the run falls back
//! to the news research, even for an objective without a news trigger word.

mod common;

use common::research::*;
use common::{eventually, setup, TestDb};
use serde_json::json;
use testkit::fake_api::FakeManaApi;
use testkit::fake_llm::FakeLlm;
use testkit::fake_research::FakeResearch;

// --------------------------------------------------------------- fall-backs

/// Runs `mission` (an objective no news trigger word matches) to its
/// write-back and checks it fell back to the news research.
async fn assert_fell_back(t: &TestDb, llm: &FakeLlm, api: &FakeManaApi, mission: &str) {
    wait_written(t, "ana", mission).await;
    let prompts = llm.prompts();
    let user = &prompts.last().expect("planned").user;
    assert!(
        user.contains(NEWS_URL),
        "news research in the prompt:\n{user}"
    );
    assert!(!user.contains(ANSWER));
    assert_eq!(api.requests().len(), 2, "discover and search");
    assert_eq!(job_state(t, mission).await.as_deref(), Some("dropped"));
}

const BEES: &str = "Hintergrundrecherche zu Wildbienen";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_falls_back_to_the_news_research() {
    let t = setup().await;
    let (llm, api) = (llm().await, news_api().await);
    let script = vec![FakeResearch::running(), FakeResearch::failed()];
    let research = FakeResearch::start(KEY, script).await.unwrap();
    seed(&t, "ana", "bees", json!({"objective": BEES})).await;
    let lead = lead(&t, &llm, &research, &api, &[]).await;
    assert_fell_back(&t, &llm, &api, "bees").await;
    lead.settled().await;
    assert_eq!(research.polls().len(), 2);
    assert_eq!(
        (jobs(&lead, "submitted"), jobs(&lead, "failed")),
        (1.0, 1.0)
    );
    assert_eq!(jobs(&lead, "completed"), 0.0);
    lead.stop().await;
}

/// A job mana-research no longer answers for (`gone`, after the submit)
/// is dropped: the run falls back, the job counts as failed, and the slot
/// gets no second job.
async fn a_gone_job_is_dropped(gone: fn(&FakeResearch)) {
    let t = setup().await;
    let (llm, api) = (llm().await, news_api().await);
    let research = FakeResearch::start(KEY, vec![FakeResearch::queued()])
        .await
        .unwrap();
    seed(&t, "ana", "bees", json!({"objective": BEES})).await;
    let lead = lead(&t, &llm, &research, &api, &[]).await;
    eventually("submitted", || async { jobs(&lead, "submitted") >= 1.0 }).await;
    gone(&research);
    assert_fell_back(&t, &llm, &api, "bees").await;
    lead.settled().await;
    assert_eq!(jobs(&lead, "failed"), 1.0);
    assert_eq!(research.submits().len(), 1, "no second job for the slot");
    lead.stop().await;
}

/// The original counts a 404 as pending for ever; here it ends the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_mana_research_forgets_is_dropped_and_the_run_falls_back() {
    a_gone_job_is_dropped(|research| research.forget_tasks()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_refused_with_401_drops_the_job_and_the_run_falls_back() {
    a_gone_job_is_dropped(|research| research.answer_polls_with(Some(401))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_pending_past_the_maximum_age_is_dropped_without_a_poll() {
    let t = setup().await;
    let (llm, api) = (llm().await, news_api().await);
    let research = FakeResearch::start(KEY, vec![FakeResearch::queued()])
        .await
        .unwrap();
    // A job submitted seven hours ago (the default maximum is six).
    t.admin()
        .await
        .execute(
            "INSERT INTO mana_ai.research_jobs (user_id, mission_id, slot, task_id, provider_id, state, submitted_at)
             VALUES ('ana', 'bees', 'an earlier slot', 'task-old', 'p', 'pending', now() - interval '7 hours')",
            &[],
        )
        .await
        .unwrap();
    seed(&t, "ana", "bees", json!({"objective": BEES})).await;
    let lead = lead(&t, &llm, &research, &api, &[]).await;
    assert_fell_back(&t, &llm, &api, "bees").await;
    lead.settled().await;
    assert!(
        research.requests().is_empty(),
        "neither polled nor submitted again"
    );
    assert_eq!(jobs(&lead, "failed"), 1.0);
    lead.stop().await;
}
