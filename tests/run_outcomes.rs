//! `mission_runs.outcome` is a closed set (issue 20): the database takes
//! every `RunOutcome` the code writes and refuses any other string, so a
//! renamed or misspelled outcome fails at its first write instead of
//! silently breaking what reads it back (stall detection).

mod common;

use common::setup;
use mana_ai::run_record::{RunOutcome, RunState};

async fn write_outcome(t: &common::TestDb, outcome: &str) -> Result<u64, tokio_postgres::Error> {
    t.admin()
        .await
        .execute(
            "INSERT INTO mana_ai.mission_runs (user_id, mission_id, slot, state, token, claimed_by, outcome)
             VALUES ('u', 'm', gen_random_uuid()::text, $1, gen_random_uuid(), gen_random_uuid(), $2)",
            &[&RunState::Retry, &outcome],
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_takes_every_outcome_and_refuses_others() {
    let t = setup().await;
    for outcome in RunOutcome::all() {
        let written = write_outcome(&t, outcome.as_str()).await;
        assert_eq!(written.ok(), Some(1), "{outcome:?} refused");
    }
    for unknown in ["made-up", "ran", "skipped", "Written", ""] {
        let refused = write_outcome(&t, unknown).await.unwrap_err();
        let code = refused.code().map(|c| c.code());
        assert_eq!(code, Some("23514"), "{unknown:?}: {refused}");
    }
}
