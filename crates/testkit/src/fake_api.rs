//! `FakeManaApi`: mana-api's news-research endpoints on loopback.
//!
//! `POST /api/v1/news-research/discover` and `.../search` each answer from
//! their own [`Script`]; every request is recorded. For "mana-api is down",
//! use [`super::http::refused_url`], where connections are refused.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::http::{FakeReply, RecordedRequest, Script, TestServer};

pub const DISCOVER_PATH: &str = "/api/v1/news-research/discover";
pub const SEARCH_PATH: &str = "/api/v1/news-research/search";

/// A running fake mana-api; stops on drop.
pub struct FakeManaApi {
    server: TestServer,
}

impl FakeManaApi {
    pub async fn start(
        discover: Vec<FakeReply>,
        search: Vec<FakeReply>,
    ) -> std::io::Result<FakeManaApi> {
        let discover = Arc::new(Script::new(discover));
        let search = Arc::new(Script::new(search));
        let server = TestServer::start(move |request| {
            let reply = match (request.method == hyper::Method::POST, request.path.as_str()) {
                (true, DISCOVER_PATH) => discover.next_reply(),
                (true, SEARCH_PATH) => search.next_reply(),
                _ => FakeReply::raw(404, "not found"),
            };
            reply.into_response()
        })
        .await?;
        Ok(FakeManaApi { server })
    }

    /// Answers discover with `{feeds}` and search with `{articles}`, both 200.
    pub async fn with_results(feeds: Value, articles: Value) -> std::io::Result<FakeManaApi> {
        Self::start(
            vec![FakeReply::json(200, &json!({ "feeds": feeds }))],
            vec![FakeReply::json(200, &json!({ "articles": articles }))],
        )
        .await
    }

    /// Base URL for `MANA_API_URL`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.server.requests()
    }

    /// Bodies of the requests to `path`, oldest first.
    pub fn bodies(&self, path: &str) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| r.path == path)
            .filter_map(RecordedRequest::json)
            .collect()
    }
}
