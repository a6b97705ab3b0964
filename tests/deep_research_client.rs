//! `DeepResearchClient` against `FakeResearch` (and a slow server) on
//! loopback: the wire format, the headers, 401 and 404 as "gone", and the
//! timeouts that keep a slow mana-research from holding a run.

use std::time::Duration;

use mana_ai::config::Secret;
use mana_ai::planner::deep_research::client::Call;
use mana_ai::planner::deep_research::{DeepResearchClient, DeepResearchError, PollStatus};
use serde_json::json;
use testkit::fake_research::{FakeResearch, FAKE_PROVIDER_ID};
use testkit::{refused_url, FakeReply, TestServer};

const KEY: &str = "k-1";

fn client(url: &str, key: &str, timeouts: (Duration, Duration)) -> DeepResearchClient {
    DeepResearchClient::new(url, Secret::new(key), "prov", timeouts).unwrap()
}

fn generous(url: &str) -> DeepResearchClient {
    client(url, KEY, (Duration::from_secs(60), Duration::from_secs(60)))
}

#[tokio::test]
async fn submits_then_polls_with_the_service_headers() {
    let done = FakeResearch::completed("A", json!([{"url": "https://a.example", "title": "T"}]));
    let fake = FakeResearch::start(KEY, vec![FakeResearch::running(), done])
        .await
        .unwrap();
    let research = generous(&fake.url());
    let job = research.submit("u-7", "Tiefe Recherche X").await.unwrap();
    assert_eq!(job.task_id, "task-1");
    assert_eq!(job.provider_id, FAKE_PROVIDER_ID);
    let submit = &fake.submits()[0];
    assert_eq!(
        submit.json().unwrap(),
        json!({"query": "Tiefe Recherche X", "provider": "prov"})
    );
    for (name, value) in [
        ("x-service-key", KEY),
        ("x-user-id", "u-7"),
        ("x-app-id", "mana-ai"),
    ] {
        assert_eq!(submit.header(name), Some(value), "{name}");
    }
    assert_eq!(
        research.poll("u-7", "task-1").await.unwrap(),
        PollStatus::Running
    );
    let PollStatus::Completed(answer) = research.poll("u-7", "task-1").await.unwrap() else {
        panic!("completed")
    };
    assert_eq!(answer.answer, "A");
    assert_eq!(answer.citations[0].url, "https://a.example");
    let polls = fake.polls();
    assert_eq!(polls[0].path, "/api/v1/internal/research/async/task-1");
    assert!(polls.iter().all(|p| p.header("x-user-id") == Some("u-7")));
}

#[tokio::test]
async fn unknown_tasks_and_refusals_are_gone_and_ids_stay_one_path_segment() {
    let fake = FakeResearch::start(KEY, vec![FakeResearch::queued()])
        .await
        .unwrap();
    let research = generous(&fake.url());
    // A task id with a slash stays one segment: the fake does not know it.
    let e = research.poll("u", "task-1/../x").await.unwrap_err();
    assert!(e.is_gone(), "{e}");
    assert_eq!(
        fake.polls()[0].path,
        "/api/v1/internal/research/async/task-1%2F..%2Fx"
    );
    let e = client(
        &fake.url(),
        "wrong-key",
        (Duration::from_secs(60), Duration::from_secs(60)),
    )
    .submit("u", "q")
    .await
    .unwrap_err();
    assert_eq!(
        e,
        DeepResearchError::Status {
            call: Call::Submit,
            status: 401
        }
    );
    let e = research.poll("", "task-1").await.unwrap_err();
    assert!(e.is_gone(), "no user id: 401, {e}");
    // A server error is not "gone": the job is polled again later.
    fake.answer_polls_with(Some(503));
    let e = research.poll("u", "task-1").await.unwrap_err();
    assert!(!e.is_gone(), "{e}");
}

#[tokio::test]
async fn a_slow_or_absent_service_fails_within_the_timeouts() {
    let slow = TestServer::start(|_| {
        FakeReply::json(200, &json!({"taskId": "t", "status": "queued"}))
            .delay(Duration::from_secs(30))
            .into_response()
    })
    .await
    .unwrap();
    let short = Duration::from_millis(200);
    let research = client(&slow.url(), KEY, (short, short));
    let e = research.submit("u", "q").await.unwrap_err();
    assert_eq!(
        e,
        DeepResearchError::Timeout {
            call: Call::Submit,
            after: short
        }
    );
    let e = research.poll("u", "t").await.unwrap_err();
    assert_eq!(
        e,
        DeepResearchError::Timeout {
            call: Call::Poll,
            after: short
        }
    );
    assert!(!e.is_gone());
    let refused = refused_url().await.unwrap();
    let e = generous(&refused).submit("u", "q").await.unwrap_err();
    assert!(
        matches!(
            e,
            DeepResearchError::Unreachable {
                call: Call::Submit,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn unusable_answers_are_errors_not_jobs() {
    let server = TestServer::start(|request| {
        let reply = if request.method == hyper::Method::POST {
            FakeReply::json(200, &json!({"status": "queued"}))
        } else {
            FakeReply::json(200, &json!({"status": "exploded"}))
        };
        reply.into_response()
    })
    .await
    .unwrap();
    let research = generous(&server.url());
    let e = research.submit("u", "q").await.unwrap_err();
    assert!(
        matches!(
            e,
            DeepResearchError::BadAnswer {
                call: Call::Submit,
                ..
            }
        ),
        "{e}"
    );
    let e = research.poll("u", "t").await.unwrap_err();
    assert!(
        matches!(
            e,
            DeepResearchError::BadAnswer {
                call: Call::Poll,
                ..
            }
        ),
        "{e}"
    );
}
