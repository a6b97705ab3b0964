//! Preparing a run's prompt material: the grant, the inputs (decrypted
//! under it), their audit rows, the research pre-step, and what the demo's
//! prompt observer is told.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::deep::WebResearch;
use super::due::DueRun;
use super::inputs::{self, GrantAccess};
use super::Runner;
use crate::crypto::{unwrap_grant, GrantSkip, MissionGrant};
use crate::planner::{needs_research, research_input, MissionView, ResolvedInput};

impl Runner {
    /// Phase 4: inputs, under the grant if there is one (the key lives only
    /// here), their audit rows, and the research pre-step.
    pub(super) async fn gather_inputs(
        &self,
        client: &mut deadpool_postgres::Object,
        due: &DueRun,
        iteration_id: &str,
        started: DateTime<Utc>,
        web: WebResearch,
    ) -> anyhow::Result<Vec<ResolvedInput>> {
        let (user_id, mission_id) = (due.slot.user_id.as_str(), due.slot.mission_id.as_str());
        let resolved = self.resolve_inputs(client, due, started).await?;
        self.count_reads(&resolved);
        if let Err(e) =
            inputs::write_audit(client, user_id, mission_id, iteration_id, &resolved.audit).await
        {
            self.deps.metrics.audit_write_failures.inc();
            tracing::warn!(error = %format!("{e:#}"), "writing decrypt_audit rows failed; the run goes on");
        }
        let mut resolved_inputs = resolved.inputs;
        let research = match web {
            WebResearch::Deep(answer) => Some(answer),
            WebResearch::Usual => self.research(&due.view(), false).await,
            WebResearch::FallBack => self.research(&due.view(), true).await,
        };
        resolved_inputs.extend(research);
        Ok(resolved_inputs)
    }

    /// Folds (and under the grant decrypts) the mission's inputs in the
    /// user's RLS scope. The unwrapped key is dropped on return.
    async fn resolve_inputs(
        &self,
        client: &mut deadpool_postgres::Object,
        due: &DueRun,
        started: DateTime<Utc>,
    ) -> anyhow::Result<inputs::Resolved> {
        let record = due.fields();
        let inputs::InputRefs { refs, left_out } =
            inputs::input_refs(record, self.deps.cost.max_inputs);
        if left_out > 0 {
            tracing::warn!(
                left_out,
                max = self.deps.cost.max_inputs,
                "mission inputs left out (malformed, or past MANA_AI_MAX_INPUTS)"
            );
        }
        // The grant is checked (and a bad one counted) even without inputs.
        let grant = self.grant_of(record, &due.slot.mission_id);
        let mdk = grant.as_ref().and_then(|g| {
            unwrap_grant(self.deps.grant_key.as_ref(), g, started)
                .map_err(|skip| self.skip_grant(skip))
                .ok()
        });
        if refs.is_empty() {
            return Ok(inputs::Resolved::default());
        }
        let access = match (&grant, &mdk) {
            (Some(grant), Some(mdk)) => Some(GrantAccess { grant, mdk }),
            _ => None,
        };
        let tx = crate::db::begin_user(client, &due.slot.user_id).await?;
        let generation = self.deps.generation;
        let resolved =
            inputs::resolve(&tx, generation, &due.slot.user_id, &refs, access.as_ref()).await?;
        tx.commit().await?;
        Ok(resolved)
    }

    /// Counts decrypted records, records that did not decrypt and scope
    /// violations.
    fn count_reads(&self, resolved: &inputs::Resolved) {
        let metrics = &self.deps.metrics;
        for table in &resolved.decrypted {
            metrics.count_decrypt(table);
        }
        for reason in &resolved.decrypt_failures {
            metrics.decrypt_failures.with_label_values(&[reason]).inc();
            tracing::warn!(reason = %reason, "granted input did not decrypt; left out of the prompt");
        }
        for table in &resolved.scope_violations {
            metrics.count_scope_violation(table);
            tracing::warn!(table = %table, "mission input outside its grant's allowlist; not decrypted");
        }
    }

    /// The research pre-step, when configured and the mission asks for it
    /// (or, `forced`, when its deep research fell back).
    async fn research(&self, mission: &MissionView<'_>, forced: bool) -> Option<ResolvedInput> {
        let research = self.deps.research.as_ref()?;
        if !forced && !needs_research(mission.objective, mission.concept) {
            return None;
        }
        match research.research(mission.objective).await {
            Ok(articles) => Some(research_input(&articles)),
            Err(e) => {
                self.deps.metrics.research_failures.inc();
                tracing::warn!(error = %e, "research pre-step failed; planning without it");
                None
            }
        }
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
                offline: self.deps.planner.is_offline(),
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
