//! Input resolvers: turn a mission's `inputs` into text for the planner.
//!
//! Each input names (module, table, id). Its record is folded from
//! `sync_changes` (full replay, inside the user's RLS transaction). `goals`
//! is plaintext; the other modules are end-to-end encrypted and need the
//! run's unwrapped grant key: the allowlist is checked before anything is
//! read, every `enc:1:` field is decrypted, and each attempt leaves an audit
//! note (written by the caller after the reads, so an audit failure cannot
//! break the run). Decrypted text lives only in the returned inputs.

use serde_json::{Map, Value};
use tokio_postgres::Transaction;

use crate::audit::AuditStatus;
use crate::crypto::{decrypt_record_fields, Mdk, MissionGrant};
use crate::planner::ResolvedInput;
use crate::store::{self, audit::NewAuditRow};
use crate::sync::change;
use crate::sync::generation::Generation;

/// Longest single field value shown to the model.
pub const MAX_FIELD_CHARS: usize = 2_000;
/// Longest module or table name an input may carry (bytes); real ones are
/// a few characters. An input with a longer one is left out.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest record id an input may carry (bytes), as for changes.
pub const MAX_ID_BYTES: usize = 512;
/// Change rows of one input record read at most: a record with a longer
/// history is left out rather than read into memory whole.
pub const MAX_HISTORY_ROWS: i64 = 5_000;

/// One entry of a mission's `inputs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRef {
    pub module: String,
    pub table: String,
    pub id: String,
}

/// A mission's inputs as a run reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputRefs {
    /// The first `max` well-formed entries, in list order.
    pub refs: Vec<InputRef>,
    /// Entries left out: malformed (no module, table or id; a name over
    /// [`MAX_NAME_BYTES`] or an id over [`MAX_ID_BYTES`]) or past `max`.
    pub left_out: usize,
}

/// Reads `inputs` leniently, at most `max` of them.
pub fn input_refs(mission: &Map<String, Value>, max: usize) -> InputRefs {
    let Some(Value::Array(list)) = mission.get("inputs") else {
        return InputRefs::default();
    };
    let mut refs: Vec<InputRef> = list.iter().filter_map(input_ref).collect();
    let mut left_out = list.len() - refs.len();
    if refs.len() > max {
        left_out += refs.len() - max;
        refs.truncate(max);
    }
    InputRefs { refs, left_out }
}

fn input_ref(entry: &Value) -> Option<InputRef> {
    let field = |k: &str, limit: usize| {
        entry
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| s.len() <= limit)
            .map(str::to_string)
    };
    Some(InputRef {
        module: field("module", MAX_NAME_BYTES)?,
        table: field("table", MAX_NAME_BYTES)?,
        id: field("id", MAX_ID_BYTES)?,
    })
}

/// How a module's records are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storage {
    Plain(&'static str),
    Encrypted(&'static str),
}

/// The resolver registry: module -> app and storage (contract section 7).
fn storage(module: &str) -> Option<Storage> {
    Some(match module {
        "goals" => Storage::Plain("companion"),
        "notes" => Storage::Encrypted("notes"),
        "tasks" | "todo" => Storage::Encrypted("todo"),
        "calendar" => Storage::Encrypted("calendar"),
        "journal" => Storage::Encrypted("journal"),
        "kontext" => Storage::Encrypted("kontext"),
        "profile" => Storage::Encrypted("profile"),
        _ => return None,
    })
}

/// The run's grant, unwrapped.
pub struct GrantAccess<'a> {
    pub grant: &'a MissionGrant,
    pub mdk: &'a Mdk,
}

/// What an encrypted read did, for `decrypt_audit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditNote {
    pub table_name: String,
    pub record_id: String,
    pub status: AuditStatus,
    pub reason: Option<&'static str>,
}

/// Resolved inputs and the audit notes of the encrypted ones.
#[derive(Debug, Default)]
pub struct Resolved {
    pub inputs: Vec<ResolvedInput>,
    pub audit: Vec<AuditNote>,
    /// Tables of inputs refused by the grant's allowlist.
    pub scope_violations: Vec<String>,
    /// Tables of records decrypted.
    pub decrypted: Vec<String>,
    /// Audit reasons of records that did not decrypt.
    pub decrypt_failures: Vec<&'static str>,
}

/// Resolves every input the registry knows; unknown modules are skipped.
pub async fn resolve(
    tx: &Transaction<'_>,
    generation: Generation,
    user_id: &str,
    refs: &[InputRef],
    access: Option<&GrantAccess<'_>>,
) -> anyhow::Result<Resolved> {
    let mut out = Resolved::default();
    for input in refs {
        let Some(storage) = storage(&input.module) else {
            tracing::debug!(module = %input.module, "no resolver for input module; skipped");
            continue;
        };
        match storage {
            Storage::Plain(app) => {
                if let Some(record) = fold_record(tx, generation, user_id, app, input).await? {
                    out.inputs.push(goal_input(input, &record));
                }
            }
            Storage::Encrypted(app) => {
                let Some(access) = access else {
                    continue;
                };
                if !access.grant.allows(&input.table, &input.id) {
                    out.audit.push(note(
                        input,
                        AuditStatus::ScopeViolation,
                        Some("record-not-in-grant-allowlist"),
                    ));
                    out.scope_violations.push(input.table.clone());
                    continue;
                }
                let Some(mut record) = fold_record(tx, generation, user_id, app, input).await?
                else {
                    continue;
                };
                match decrypt_record_fields(access.mdk, &mut record) {
                    Ok(_) => {
                        out.audit.push(note(input, AuditStatus::Ok, None));
                        out.decrypted.push(input.table.clone());
                        out.inputs.push(record_input(input, &record));
                    }
                    Err(e) => {
                        let reason = e.audit_reason();
                        out.audit
                            .push(note(input, AuditStatus::Failed, Some(reason)));
                        out.decrypt_failures.push(reason);
                    }
                }
            }
        }
    }
    Ok(out)
}

fn note(input: &InputRef, status: AuditStatus, reason: Option<&'static str>) -> AuditNote {
    AuditNote {
        table_name: input.table.clone(),
        record_id: input.id.clone(),
        status,
        reason,
    }
}

/// Folds one record of another app of the run's user; None when it has no
/// rows, is deleted, or has more than [`MAX_HISTORY_ROWS`] rows.
async fn fold_record(
    tx: &Transaction<'_>,
    generation: Generation,
    user_id: &str,
    app: &str,
    input: &InputRef,
) -> anyhow::Result<Option<Map<String, Value>>> {
    let record = store::history::RecordRef {
        generation,
        user_id,
        app_id: app,
        table_name: &input.table,
        record_id: &input.id,
    };
    match store::history::fold_record(tx, &record, MAX_HISTORY_ROWS).await? {
        store::history::Replayed::Folded(f) if !f.deleted => Ok(Some(f.record)),
        store::history::Replayed::TooLong => {
            tracing::warn!(
                module = %input.module,
                limit = MAX_HISTORY_ROWS,
                "an input record's history is longer than the limit; left out"
            );
            Ok(None)
        }
        _ => Ok(None),
    }
}

fn text<'a>(record: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| record.get(*k).and_then(Value::as_str))
        .filter(|s| !s.trim().is_empty())
}

/// `Fortschritt: <currentValue or 0> / <target.value or ?> (<period or unbekannt>)`.
fn goal_input(input: &InputRef, record: &Map<String, Value>) -> ResolvedInput {
    let number = |v: Option<&Value>| match v {
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let current = number(record.get("currentValue")).unwrap_or_else(|| "0".into());
    let target =
        number(record.get("target").and_then(|t| t.get("value"))).unwrap_or_else(|| "?".into());
    let period = record
        .get("target")
        .and_then(|t| t.get("period"))
        .or_else(|| record.get("period"))
        .and_then(Value::as_str)
        .unwrap_or("unbekannt");
    ResolvedInput {
        id: input.id.clone(),
        module: input.module.clone(),
        table: input.table.clone(),
        title: text(record, &["title", "name"])
            .unwrap_or(&input.id)
            .to_string(),
        content: format!("Fortschritt: {current} / {target} ({period})"),
    }
}

/// Fields that say nothing to the planner.
const BOOKKEEPING: &[&str] = &[
    "id",
    "userId",
    "createdAt",
    "updatedAt",
    "deletedAt",
    "fieldTimestamps",
];

/// A decrypted record as `key: value` lines, each value clipped.
fn record_input(input: &InputRef, record: &Map<String, Value>) -> ResolvedInput {
    let mut lines = Vec::new();
    for (key, value) in record {
        if BOOKKEEPING.contains(&key.as_str()) || value.is_null() {
            continue;
        }
        let shown = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let clipped: String = shown.chars().take(MAX_FIELD_CHARS).collect();
        lines.push(format!("{key}: {clipped}"));
    }
    ResolvedInput {
        id: input.id.clone(),
        module: input.module.clone(),
        table: input.table.clone(),
        title: text(record, &["title", "name", "summary"])
            .unwrap_or(&input.id)
            .to_string(),
        content: lines.join("\n"),
    }
}

/// Writes audit notes in their own user-scoped transaction. A failure is
/// logged and counted by the caller; it never fails the run.
pub async fn write_audit(
    client: &mut tokio_postgres::Client,
    user_id: &str,
    mission_id: &str,
    iteration_id: &str,
    notes: &[AuditNote],
) -> anyhow::Result<()> {
    if notes.is_empty() {
        return Ok(());
    }
    let tx = crate::db::begin_user(client, user_id).await?;
    for n in notes {
        let row = NewAuditRow {
            user_id,
            mission_id,
            iteration_id,
            table_name: &n.table_name,
            record_id: change::clip_bytes(&n.record_id, 512),
            status: n.status.as_str(),
            reason: n.reason,
        };
        store::audit::insert(&tx, &row).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn input_refs_skip_incomplete_entries() {
        let mission = json!({"inputs": [
            {"module": "notes", "table": "notes", "id": "n1"},
            {"module": "notes", "id": "n2"},
            "garbage",
        ]});
        let read = input_refs(mission.as_object().unwrap(), 50);
        assert_eq!(read.refs.len(), 1);
        assert_eq!(read.refs[0].id, "n1");
        assert_eq!(read.left_out, 2);
    }

    #[test]
    fn inputs_past_the_cap_or_with_overlong_names_are_left_out() {
        let entry =
            |table: String, id: String| json!({"module": "notes", "table": table, "id": id});
        let mut list: Vec<Value> = (0..60)
            .map(|i| entry("notes".into(), format!("n{i}")))
            .collect();
        list.insert(0, entry("t".repeat(MAX_NAME_BYTES + 1), "x".into()));
        list.insert(1, entry("notes".into(), "i".repeat(MAX_ID_BYTES + 1)));
        let mission = json!({ "inputs": list });
        let read = input_refs(mission.as_object().unwrap(), 50);
        assert_eq!(read.refs.len(), 50);
        assert_eq!(read.refs[0].id, "n0", "the overlong entries are skipped");
        assert_eq!(read.refs[49].id, "n49", "the first ones in list order");
        assert_eq!(read.left_out, 12);
    }

    #[test]
    fn goal_content_matches_the_contract() {
        let input = InputRef {
            module: "goals".into(),
            table: "companionGoals".into(),
            id: "g".into(),
        };
        let record =
            json!({"title": "Wasser", "currentValue": 3, "target": {"value": 8, "period": "day"}});
        let r = goal_input(&input, record.as_object().unwrap());
        assert_eq!(r.title, "Wasser");
        assert_eq!(r.content, "Fortschritt: 3 / 8 (day)");
        let bare = goal_input(&input, json!({}).as_object().unwrap());
        assert_eq!(bare.content, "Fortschritt: 0 / ? (unbekannt)");
    }

    #[test]
    fn records_are_rendered_without_bookkeeping_and_clipped() {
        let input = InputRef {
            module: "notes".into(),
            table: "notes".into(),
            id: "n".into(),
        };
        let long = "x".repeat(5_000);
        let record = json!({"id": "n", "title": "T", "content": long, "updatedAt": "…"});
        let r = record_input(&input, record.as_object().unwrap());
        assert_eq!(r.title, "T");
        assert!(!r.content.contains("updatedAt"));
        assert!(r.content.len() < 2_100);
    }
}
