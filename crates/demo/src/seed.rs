//! What a browser would have written: an agent, a goal, an encrypted note,
//! and a mission that lists both, with a grant over the note; and the
//! service's grant key, made for this run.

use anyhow::Context;
use chrono::Utc;
use mana_ai::crypto::{derive_mdk, encrypt_value, mint_grant, GrantKey};
use mana_ai::sync::fold::iso_millis;
use pgtemp::{TempDb, SYNC_ROLE};
use serde_json::{json, Value};

pub const USER: &str = "demo-user";
pub const AGENT: &str = "agent-recherche";
pub const MISSION: &str = "mission-wochenplan";

/// A fresh 2048-bit RSA key pair as PKCS#8 PEM, made for this run only:
/// the demo ships no key, and this one is gone when the demo ends.
pub fn make_key() -> anyhow::Result<String> {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
        .context("making the demo's grant key")?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .context("encoding the demo's grant key")?;
    Ok(pem.as_str().to_owned())
}

async fn insert(
    db: &TempDb,
    app: &str,
    table: &str,
    record: &str,
    data: Value,
) -> anyhow::Result<()> {
    let mut client = db.connect_as(SYNC_ROLE).await?;
    let tx = mana_ai::db::begin_user(&mut client, USER).await?;
    tx.execute(
        "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, client_id)
         VALUES ($1, $2, $3, $4, 'insert', $5, 'demo-browser')",
        &[&app, &table, &record, &USER, &data],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Seeds the demo user; the mission is due at `due_at`.
pub async fn seed(
    db: &TempDb,
    key: &GrantKey,
    due_at: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    let master: [u8; 32] = rand::random();
    let (tables, ids) = (["notes"], ["notes:note-1"]);
    let mdk = derive_mdk(&master, MISSION, &tables, &ids);
    let text = encrypt_value(
        &mdk,
        &json!("Montag: Zahnarzt 9 Uhr. Mittwoch: Abgabe Steuererklärung."),
        rand::random(),
    );
    let title = encrypt_value(&mdk, &json!("Termine dieser Woche"), rand::random());
    let now = Utc::now();
    let grant = mint_grant(
        &key.public_key(),
        &master,
        MISSION,
        &tables,
        &ids,
        now,
        now + chrono::Duration::hours(1),
    )
    .map_err(|_| anyhow::anyhow!("wrapping the demo grant failed"))?;
    insert(db, "ai", "agents", AGENT, json!({"name": "Recherche-Assistentin", "role": "Hilft bei der Wochenplanung", "state": "active", "maxConcurrentMissions": 1})).await?;
    insert(db, "companion", "companionGoals", "goal-1", json!({"title": "Jeden Tag 30 Minuten lesen", "currentValue": 3, "target": {"value": 7, "period": "week"}})).await?;
    insert(
        db,
        "notes",
        "notes",
        "note-1",
        json!({"title": title, "content": text}),
    )
    .await?;
    insert(
        db,
        "ai",
        "aiMissions",
        MISSION,
        json!({
            "title": "Wochenplanung",
            "conceptMarkdown": "Jeden Montag die Woche planen.",
            "objective": "Eine ruhige, machbare Woche planen",
            "state": "active",
            "agentId": AGENT,
            "cadence": {"kind": "weekly", "dayOfWeek": 1, "atHour": 8},
            "nextRunAt": iso_millis(due_at),
            "iterations": [],
            "inputs": [
                {"module": "goals", "table": "companionGoals", "id": "goal-1"},
                {"module": "notes", "table": "notes", "id": "note-1"}
            ],
            "grant": serde_json::to_value(&grant)?,
            "createdAt": iso_millis(now),
        }),
    )
    .await
}
