//! A new leader gives back every slot an earlier term left `running` (a
//! SIGKILLed leader's): a mission that is still due runs again once, and one
//! that is not (deleted meanwhile) no longer holds a `running` claim that
//! nothing would ever take over and retention may not prune.

mod common;

use common::{eventually, setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_term_gives_back_the_slots_a_dead_term_left_running() {
    let t = setup().await;
    // A dead leader's claim of a mission deleted since.
    t.pool
        .get()
        .await
        .unwrap()
        .batch_execute(
            "INSERT INTO mana_ai.mission_runs (user_id, mission_id, slot, state, token, claimed_by, claimed_at)
             VALUES ('olga', 'gone', '2026-01-01T08:00:00.000Z', 'running', gen_random_uuid(),
                     gen_random_uuid(), now() - interval '1 hour')",
        )
        .await
        .unwrap();
    let lead = t.lead(&[]).await;
    let state = "SELECT count(*) FROM mana_ai.mission_runs
                 WHERE mission_id = 'gone' AND state = 'retry' AND outcome = 'abandoned'";
    eventually("the dead term's claim is given back", || async {
        t.count(state).await == 1
    })
    .await;
    assert_eq!(
        t.count("SELECT count(*) FROM mana_ai.mission_runs WHERE state = 'running'")
            .await,
        0
    );
    lead.stop().await;
}
