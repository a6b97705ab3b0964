//! A mission's inputs are user input: how many a run reads is bounded, and
//! a record id a user chose reads that user's record or nothing, even where
//! row-level security is off.

mod common;

use common::{eventually, mission_data, plan_answer, setup, write, Change, TestDb};
use serde_json::{json, Value};
use testkit::fake_llm::FakeLlm;

async fn goal(t: &TestDb, user: &str, id: &str, title: &str) {
    let mut client = t.sync_client().await;
    let tx = mana_ai::db::begin_user(&mut client, user).await.unwrap();
    tx.execute(
        "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, field_timestamps, client_id)
         VALUES ('companion', 'companionGoals', $1, $2, 'insert', $3, '{}'::jsonb, 'test-browser')",
        &[&id, &user, &json!({"title": title, "currentValue": 1})],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// Runs `user`'s mission with `inputs` against a fake LLM; returns the prompt.
async fn prompt_of(t: &TestDb, user: &str, inputs: Value, overrides: &[(&str, &str)]) -> String {
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let url = llm.url();
    let mut all = vec![("MANA_LLM_URL", url.as_str())];
    all.extend_from_slice(overrides);
    let lead = t.lead(&all).await;
    let mut sync = t.sync_client().await;
    let mission = mission_data(json!({ "inputs": inputs }));
    write(&mut sync, &[Change::mission(user, "m1", "insert", mission)]).await;
    eventually("the mission is written back", || async {
        t.writebacks(user, "m1").await.len() == 1
    })
    .await;
    lead.settled().await;
    lead.stop().await;
    let prompts = llm.prompts();
    format!("{}\n{}", prompts[0].system, prompts[0].user)
}

fn goals(ids: &[&str]) -> Value {
    ids.iter()
        .map(|id| json!({"module": "goals", "table": "companionGoals", "id": id}))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reads_at_most_max_inputs_the_first_in_the_list() {
    let t = setup().await;
    for (id, title) in [
        ("g1", "Ziel Eins"),
        ("g2", "Ziel Zwei"),
        ("g3", "Ziel Drei"),
    ] {
        goal(&t, "ulla", id, title).await;
    }
    let prompt = prompt_of(
        &t,
        "ulla",
        goals(&["g1", "g2", "g3"]),
        &[("MANA_AI_MAX_INPUTS", "2")],
    )
    .await;
    assert!(
        prompt.contains("Ziel Eins") && prompt.contains("Ziel Zwei"),
        "{prompt}"
    );
    assert!(!prompt.contains("Ziel Drei"), "{prompt}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_naming_another_users_record_reads_nothing_even_without_rls() {
    let t = setup().await;
    goal(&t, "victor", "g-secret", "Geheimes Ziel").await;
    goal(&t, "mallory", "g-own", "Eigenes Ziel").await;
    // A DBA's mistake: row-level security off on the change log.
    t.admin()
        .await
        .batch_execute("ALTER TABLE public.sync_changes DISABLE ROW LEVEL SECURITY")
        .await
        .unwrap();
    let prompt = prompt_of(&t, "mallory", goals(&["g-secret", "g-own"]), &[]).await;
    assert!(prompt.contains("Eigenes Ziel"), "{prompt}");
    assert!(!prompt.contains("Geheimes Ziel"), "{prompt}");
}
