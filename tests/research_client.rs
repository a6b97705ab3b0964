//! `ResearchClient` against `FakeManaApi` on loopback.

use std::time::Duration;

use mana_ai::planner::research::{Article, ResearchClient, ResearchError, ResearchStep};
use serde_json::json;
use testkit::fake_api::{DISCOVER_PATH, SEARCH_PATH};
use testkit::{refused_url, FakeManaApi, FakeReply};

fn client(url: &str, discover: Duration, search: Duration) -> ResearchClient {
    ResearchClient::new(url, discover, search).unwrap()
}

fn generous(url: &str) -> ResearchClient {
    client(url, Duration::from_secs(60), Duration::from_secs(60))
}

#[tokio::test]
async fn discovers_feeds_then_searches_them() {
    let feeds = json!([
        {"url": "https://a.example/feed", "title": "A", "description": "a"},
        {"url": "", "title": "no url"},
        {"url": "https://b.example/rss", "title": "B", "description": null},
    ]);
    let articles = json!([
        {"url": "https://a.example/1", "title": "Eins", "excerpt": "…", "publishedAt": "2025-05-01T08:00:00Z",
         "feedUrl": "https://a.example/feed", "score": 0.9},
        {"url": "https://b.example/2", "title": null},
        "not an article",
    ]);
    let api = FakeManaApi::with_results(feeds, articles).await.unwrap();
    let found = generous(&api.url())
        .research("Neueste KI-Nachrichten")
        .await
        .unwrap();

    assert_eq!(
        api.bodies(DISCOVER_PATH),
        vec![json!({"query": "Neueste KI-Nachrichten", "language": "de", "limit": 5})]
    );
    assert_eq!(
        api.bodies(SEARCH_PATH),
        vec![json!({
            "feeds": ["https://a.example/feed", "https://b.example/rss"],
            "query": "Neueste KI-Nachrichten",
            "limit": 8,
        })]
    );
    assert_eq!(found.len(), 2);
    assert_eq!(
        found[0],
        Article {
            url: "https://a.example/1".into(),
            title: "Eins".into(),
            excerpt: "…".into(),
            published_at: Some("2025-05-01T08:00:00Z".into()),
            feed_url: Some("https://a.example/feed".into()),
            score: Some(0.9),
        }
    );
    assert_eq!(found[1].title, "");
}

#[tokio::test]
async fn no_feeds_means_no_search() {
    let api = FakeManaApi::with_results(json!([]), json!([{"url": "https://never"}]))
        .await
        .unwrap();
    assert_eq!(
        generous(&api.url()).research("news").await.unwrap(),
        Vec::new()
    );
    assert_eq!(api.bodies(DISCOVER_PATH).len(), 1);
    assert!(api.bodies(SEARCH_PATH).is_empty());
}

#[tokio::test]
async fn api_down_fails_at_once_not_at_the_timeout() {
    // Timeouts of a minute: an Unreachable (not Timeout) error proves no waiting.
    let err = generous(&refused_url().await.unwrap())
        .research("news")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ResearchError::Unreachable { step: ResearchStep::Discover, reason } if reason.contains("connect")),
        "{err:?}"
    );
}

#[tokio::test]
async fn slow_discover_times_out() {
    let slow = FakeReply::json(200, &json!({"feeds": []})).delay(Duration::from_secs(60));
    let api = FakeManaApi::start(vec![slow], vec![FakeReply::raw(500, "")])
        .await
        .unwrap();
    let err = client(
        &api.url(),
        Duration::from_millis(200),
        Duration::from_secs(60),
    )
    .research("news")
    .await
    .unwrap_err();
    assert_eq!(
        err,
        ResearchError::Timeout {
            step: ResearchStep::Discover,
            after: Duration::from_millis(200)
        }
    );
}

#[tokio::test]
async fn slow_search_times_out_with_its_own_timeout() {
    let discover = FakeReply::json(200, &json!({"feeds": [{"url": "https://a.example/feed"}]}));
    let slow = FakeReply::json(200, &json!({"articles": []})).delay(Duration::from_secs(60));
    let api = FakeManaApi::start(vec![discover], vec![slow])
        .await
        .unwrap();
    let err = client(
        &api.url(),
        Duration::from_secs(60),
        Duration::from_millis(200),
    )
    .research("news")
    .await
    .unwrap_err();
    assert_eq!(
        err,
        ResearchError::Timeout {
            step: ResearchStep::Search,
            after: Duration::from_millis(200)
        }
    );
}

#[tokio::test]
async fn error_statuses_and_garbage_name_the_step() {
    let discover = FakeReply::json(200, &json!({"feeds": [{"url": "https://a.example/feed"}]}));
    let api = FakeManaApi::start(vec![discover], vec![FakeReply::raw(502, "")])
        .await
        .unwrap();
    let err = generous(&api.url()).research("news").await.unwrap_err();
    assert_eq!(
        err,
        ResearchError::Status {
            step: ResearchStep::Search,
            status: 502
        }
    );

    let api = FakeManaApi::start(
        vec![FakeReply::raw(200, "<html>")],
        vec![FakeReply::raw(500, "")],
    )
    .await
    .unwrap();
    let err = generous(&api.url()).research("news").await.unwrap_err();
    assert!(
        matches!(
            err,
            ResearchError::BadAnswer {
                step: ResearchStep::Discover,
                ..
            }
        ),
        "{err:?}"
    );
}
