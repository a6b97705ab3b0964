//! `FakeResearch`: mana-research's async research on loopback (mana-ai's
//! docs/interfaces.md section 6).
//!
//! `POST /api/v1/internal/research/async` accepts a job and answers
//! `{taskId, status: "queued", providerId, costCredits}` with a fresh task id
//! (`task-1`, `task-2`, ...); `GET .../async/{taskId}` answers the next
//! scripted status of that task (the last one repeats). Like the real one it
//! answers 401 without `X-User-Id` (or with another service key than the one
//! it was started with), 400 for a submit whose `query` is empty or longer
//! than 4,000 JavaScript characters (its request schema), and 404 for a
//! task it does not know. Tests can make
//! it forget its tasks or refuse every poll; every request is recorded.

use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{json, Value};

use crate::http::{FakeReply, RecordedRequest, TestServer};

pub const ASYNC_PATH: &str = "/api/v1/internal/research/async";

/// The provider id the fake reports.
pub const FAKE_PROVIDER_ID: &str = "fake-provider";

#[derive(Default)]
struct State {
    /// Tasks submitted and not forgotten.
    tasks: Vec<String>,
    submitted: usize,
    /// Poll bodies (without `taskId`) in order; the last repeats.
    script: Vec<Value>,
    polls_answered: usize,
    /// Every poll answers this status instead (e.g. 401).
    poll_status_override: Option<u16>,
}

/// A running fake mana-research; stops on drop.
pub struct FakeResearch {
    server: TestServer,
    state: Arc<Mutex<State>>,
}

impl FakeResearch {
    /// Accepts the service key `key`; polls answer `script` in order.
    pub async fn start(key: &str, script: Vec<Value>) -> std::io::Result<FakeResearch> {
        assert!(!script.is_empty(), "a fake needs at least one poll answer");
        let state = Arc::new(Mutex::new(State {
            script,
            ..State::default()
        }));
        let (shared, key) = (Arc::clone(&state), key.to_string());
        let server = TestServer::start(move |request| {
            let reply = answer(&shared, &key, &request);
            reply.into_response()
        })
        .await?;
        Ok(FakeResearch { server, state })
    }

    /// A poll body of a queued task.
    pub fn queued() -> Value {
        json!({"status": "queued"})
    }

    /// A poll body of a running task.
    pub fn running() -> Value {
        json!({"status": "running"})
    }

    /// A poll body of a completed task: `answer` and `citations` as given.
    pub fn completed(answer: &str, citations: Value) -> Value {
        json!({"status": "completed", "result": {"answer": {"answer": answer, "citations": citations}}})
    }

    /// A poll body of a failed task.
    pub fn failed() -> Value {
        json!({"status": "failed", "error": "provider error"})
    }

    /// A poll body of a cancelled task.
    pub fn cancelled() -> Value {
        json!({"status": "cancelled"})
    }

    /// Base URL for `MANA_RESEARCH_URL`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.server.requests()
    }

    /// Submits received (answered or not), oldest first.
    pub fn submits(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == hyper::Method::POST)
            .collect()
    }

    /// Polls received (answered or not), oldest first.
    pub fn polls(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == hyper::Method::GET)
            .collect()
    }

    /// Polls answer `script` from now on, from its start (the last repeats).
    pub fn set_script(&self, script: Vec<Value>) {
        assert!(!script.is_empty(), "a fake needs at least one poll answer");
        let mut state = lock(&self.state);
        state.script = script;
        state.polls_answered = 0;
    }

    /// Forgets every task: polls of them answer 404 from now on.
    pub fn forget_tasks(&self) {
        lock(&self.state).tasks.clear();
    }

    /// Every poll answers `status` from now on (None: the script again).
    pub fn answer_polls_with(&self, status: Option<u16>) {
        lock(&self.state).poll_status_override = status;
    }
}

fn answer(state: &Mutex<State>, key: &str, request: &RecordedRequest) -> FakeReply {
    let authorised = request.header("x-service-key") == Some(key)
        && request.header("x-user-id").is_some_and(|u| !u.is_empty());
    let task = request.path.strip_prefix(ASYNC_PATH);
    let mut state = lock(state);
    match (&request.method, task) {
        (_, Some(_)) if !authorised => FakeReply::json(401, &json!({"error": "unauthorized"})),
        (&hyper::Method::POST, Some("")) if !query_fits(request) => {
            FakeReply::json(400, &json!({"error": "query: 1 to 4000 characters"}))
        }
        (&hyper::Method::POST, Some("")) => {
            state.submitted += 1;
            let task_id = format!("task-{}", state.submitted);
            state.tasks.push(task_id.clone());
            FakeReply::json(
                200,
                &json!({"taskId": task_id, "status": "queued", "providerId": FAKE_PROVIDER_ID, "costCredits": 5}),
            )
        }
        (&hyper::Method::GET, Some(rest)) => {
            let task_id = rest.trim_start_matches('/');
            if let Some(status) = state.poll_status_override {
                return FakeReply::json(status, &json!({"error": "scripted"}));
            }
            if !state.tasks.iter().any(|t| t == task_id) {
                return FakeReply::json(404, &json!({"error": "unknown task"}));
            }
            let at = state.polls_answered.min(state.script.len() - 1);
            state.polls_answered += 1;
            let mut body = state.script[at].clone();
            body["taskId"] = json!(task_id);
            FakeReply::json(200, &body)
        }
        _ => FakeReply::raw(404, "not found"),
    }
}

/// mana-research's `z.string().min(1).max(4000)`: JavaScript counts UTF-16
/// code units.
fn query_fits(request: &RecordedRequest) -> bool {
    let body = request.json().unwrap_or(Value::Null);
    let units = body["query"].as_str().map(|q| q.encode_utf16().count());
    units.is_some_and(|n| (1..=4_000).contains(&n))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
