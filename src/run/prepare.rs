//! Preparing a run's prompt material: the grant, the inputs (decrypted
//! under it), their audit rows, the research pre-step, and what the demo's
//! prompt observer is told.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::claim::Slot;
use super::inputs::{self, GrantAccess};
use super::{Planner, Runner};
use crate::crypto::{unwrap_grant, GrantSkip, MissionGrant};
use crate::planner::{needs_research, research_input, MissionView, ResolvedInput};

impl Runner {
    /// Inputs, under the grant if there is one (the key lives only here),
    /// their audit rows, and the research pre-step.
    pub(super) async fn gather_inputs(
        &self,
        client: &mut deadpool_postgres::Object,
        slot: &Slot,
        record: &Map<String, Value>,
        iteration_id: &str,
        mission_view: &MissionView<'_>,
        started: DateTime<Utc>,
    ) -> anyhow::Result<Vec<ResolvedInput>> {
        let deps = &self.deps;
        let (user_id, mission_id) = (slot.user_id.as_str(), slot.mission_id.as_str());
        let refs = inputs::input_refs(record);
        let grant = self.grant_of(record, mission_id);
        let mdk =
            grant.as_ref().and_then(
                |g| match unwrap_grant(deps.grant_key.as_ref(), g, started) {
                    Ok(mdk) => Some(mdk),
                    Err(skip) => {
                        self.skip_grant(skip);
                        None
                    }
                },
            );
        let access = match (&grant, &mdk) {
            (Some(grant), Some(mdk)) => Some(GrantAccess { grant, mdk }),
            _ => None,
        };
        let resolved = if refs.is_empty() {
            inputs::Resolved::default()
        } else {
            let tx = crate::db::begin_user(client, user_id).await?;
            let resolved = inputs::resolve(&tx, &refs, access.as_ref()).await?;
            tx.commit().await?;
            resolved
        };
        drop(mdk);
        for table in &resolved.decrypted {
            deps.metrics.count_decrypt(table);
        }
        for table in &resolved.scope_violations {
            deps.metrics.count_scope_violation(table);
            tracing::warn!(table = %table, "mission input outside its grant's allowlist; not decrypted");
        }
        if let Err(e) =
            inputs::write_audit(client, user_id, mission_id, iteration_id, &resolved.audit).await
        {
            deps.metrics.audit_write_failures.inc();
            tracing::warn!(error = %format!("{e:#}"), "writing decrypt_audit rows failed; the run goes on");
        }
        let mut resolved_inputs = resolved.inputs;
        if let Some(research) = &deps.research {
            if needs_research(mission_view.objective, mission_view.concept) {
                match research.research(mission_view.objective).await {
                    Ok(articles) => resolved_inputs.push(research_input(&articles)),
                    Err(e) => {
                        deps.metrics.research_failures.inc();
                        tracing::warn!(error = %e, "research pre-step failed; planning without it");
                    }
                }
            }
        }
        Ok(resolved_inputs)
    }

    /// Tells the prompt observer (the demo) what the run asked, without content.
    pub(super) fn observe_prompt(
        &self,
        mission_id: &str,
        prompt: &crate::planner::Prompt,
        tools: usize,
        inputs: &[ResolvedInput],
    ) {
        if let Some(observer) = &self.deps.prompt_observer {
            let _ = observer.send(super::PromptSummary {
                mission_id: mission_id.to_string(),
                system_chars: prompt.system.chars().count(),
                user_chars: prompt.user.chars().count(),
                tools,
                inputs: inputs
                    .iter()
                    .map(|i| format!("{}/{}: {}", i.module, i.table, i.title))
                    .collect(),
                offline: matches!(self.deps.planner, Planner::Offline),
            });
        }
    }

    fn grant_of(&self, record: &Map<String, Value>, mission_id: &str) -> Option<MissionGrant> {
        let value = record.get("grant").filter(|g| !g.is_null())?;
        match MissionGrant::from_value(value) {
            Ok(g) if g.derivation.mission_id == mission_id => Some(g),
            Ok(_) | Err(_) => {
                self.skip_grant(GrantSkip::Malformed);
                None
            }
        }
    }

    fn skip_grant(&self, skip: GrantSkip) {
        self.deps
            .metrics
            .grant_skips
            .with_label_values(&[skip.as_str()])
            .inc();
        tracing::info!(reason = skip.as_str(), "mission grant not used");
    }
}
