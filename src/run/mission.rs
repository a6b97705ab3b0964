//! One mission run, start to end, as a sequence of phases: load the due
//! slot, claim it, gate on the agent, gather inputs, plan, write back. Each
//! phase either hands the next one what it needs ([`Step::Next`]) or ends
//! the run with its [`Outcome`] ([`Step::End`]).

use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tracing::Instrument;
use uuid::Uuid;

use super::admit::Admission;
use super::claim::{self, Claim, Slot};
use super::claimed::Claimed;
use super::deep::Researched;
use super::due::DueRun;
use super::gates::GateDecision;
use super::phase::Phase;
use super::stall::Stall;
use super::{Outcome, Runner};
use crate::planner::{filter_tools, ToolSpec};
use crate::schedule::wheel::MissionKey;

/// What a phase hands on: the next phase's material, or the run's end.
pub(super) enum Step<T> {
    Next(T),
    End(Outcome),
}

/// Takes a phase's material, or returns its outcome from `execute`.
macro_rules! next {
    ($step:expr) => {
        match $step {
            Step::Next(value) => value,
            Step::End(outcome) => return Ok(outcome),
        }
    };
}

impl Runner {
    pub(super) async fn execute(
        self: &Arc<Self>,
        user_id: &str,
        mission_id: &str,
    ) -> anyhow::Result<Outcome> {
        let started = self.deps.clock.now();
        let mut client = self.deps.pool.get().await.context("connecting")?;
        let due = next!(self.load_due(&client, user_id, mission_id, started).await?);
        let mut claimed = next!(self.claim_slot(&mut client, &due, started).await?);
        let admitted = match self.gate(&client, &due, started).await? {
            Admission::Run(admitted) => admitted,
            Admission::Skip { decision, retry_at } => {
                claimed.release(&**client, retry_at, decision).await?;
                return Ok(self.skipped(&due.slot, decision, retry_at).await);
            }
        };
        // No pooled connection is held while mana-research answers.
        drop(client);
        let research = self.deep_research(&due);
        let web = match research
            .instrument(tracing::info_span!("deep_research"))
            .await?
        {
            Researched::Ready(web) => web,
            Researched::Pending { retry_at } => {
                return self.research_pending(&due, claimed, retry_at).await
            }
        };
        self.decided(GateDecision::Ran);
        if claimed.failures() == 0 {
            self.count_missed(&due.record, due.slot_at, started);
        }
        let iteration_id = Uuid::new_v4().to_string();
        let mut client = self.deps.pool.get().await.context("connecting")?;
        let inputs = self
            .gather_inputs(&mut client, &due, &iteration_id, started, web)
            .instrument(tracing::info_span!("inputs"))
            .await?;
        // No pooled connection is held while the model thinks.
        drop(client);
        claimed.enter(Phase::CallingLlm);
        let tools: Vec<&ToolSpec> = filter_tools(&self.deps.catalog, admitted.policy.as_ref());
        let planned = self
            .plan(&due, &admitted, &tools, inputs, &mut claimed, started)
            .await;
        let author = admitted.author();
        self.write_back(&due, claimed, author, iteration_id, planned, started)
            .await
    }

    /// Phase 1: the mission's due slot; the run ends when it is not due
    /// (deleted, paused, moved to the future).
    async fn load_due(
        &self,
        client: &deadpool_postgres::Object,
        user_id: &str,
        mission_id: &str,
        started: DateTime<Utc>,
    ) -> anyhow::Result<Step<DueRun>> {
        let snapshot = crate::store::due::load_due(&***client, user_id, mission_id).await?;
        let Some(snapshot) = snapshot else {
            return Ok(Step::End(Outcome::NotDue));
        };
        let (Some(slot_text), Some(slot_at), true) = (
            snapshot.next_run_at,
            snapshot.next_run_ts,
            snapshot.record.is_object(),
        ) else {
            return Ok(Step::End(Outcome::NotDue));
        };
        if slot_at > started {
            self.rearm(user_id, mission_id, slot_at).await;
            return Ok(Step::End(Outcome::NotDue));
        }
        tracing::Span::current().record("slot", slot_text.as_str());
        Ok(Step::Next(DueRun {
            slot: Slot {
                user_id: user_id.into(),
                mission_id: mission_id.into(),
                due_at: slot_text,
            },
            slot_at,
            record: snapshot.record,
            iteration_count: usize::try_from(snapshot.iteration_count).unwrap_or_default(),
        }))
    }

    /// Phase 2: the durable claim of the slot.
    async fn claim_slot(
        &self,
        client: &mut deadpool_postgres::Object,
        due: &DueRun,
        started: DateTime<Utc>,
    ) -> anyhow::Result<Step<Claimed>> {
        let slot = &due.slot;
        let claim = claim::claim(client, slot, self.deps.term_id)
            .instrument(tracing::info_span!("claim"))
            .await?;
        let (token, failures) = match claim {
            Claim::Claimed { token, failures } => (token, failures.max(0) as u32),
            Claim::Done => {
                self.check_done_slot(&***client, slot).await;
                return Ok(Step::End(Outcome::AlreadyDone));
            }
            Claim::Running => return Ok(Step::End(Outcome::InFlight)),
            Claim::RetryAt(at) => {
                self.rearm(&slot.user_id, &slot.mission_id, at).await;
                return Ok(Step::End(Outcome::BackingOff));
            }
        };
        let retry_at = started + self.backoff_after(failures);
        let pool = self.deps.pool.clone();
        let claimed = Claimed::new(pool, slot.clone(), token, failures, retry_at);
        Ok(Step::Next(claimed))
    }

    /// Phase 3: the agent gates. A skip gives the slot back uncounted (the
    /// caller releases it); a run let through is counted `ran` after the
    /// deep research step (3b).
    async fn gate(
        &self,
        client: &deadpool_postgres::Object,
        due: &DueRun,
        started: DateTime<Utc>,
    ) -> anyhow::Result<Admission> {
        let key = MissionKey::new(&due.slot.user_id, &due.slot.mission_id);
        self.admit(&***client, &key, due.fields(), started)
            .instrument(tracing::info_span!("gate"))
            .await
    }

    fn decided(&self, decision: GateDecision) {
        self.deps
            .metrics
            .agent_decisions
            .with_label_values(&[decision.as_str()])
            .inc();
    }

    /// A gate said not now: counted, the slot already given back.
    pub(super) async fn skipped(
        &self,
        slot: &Slot,
        decision: GateDecision,
        retry_at: Option<DateTime<Utc>>,
    ) -> Outcome {
        self.decided(decision);
        match decision {
            GateDecision::SkippedMissingAgent => self.stalled(Stall::MissingAgent),
            GateDecision::SkippedBadPolicy => self.stalled(Stall::BadPolicy),
            GateDecision::SkippedEncrypted => {
                self.stalled(Stall::EncryptedText);
                tracing::warn!(
                    stall = Stall::EncryptedText.as_str(),
                    "the mission's title, concept or objective is encrypted (enc:1:); \
                     not planned until it is plaintext"
                );
            }
            _ => {}
        }
        if let Some(at) = retry_at {
            self.rearm(&slot.user_id, &slot.mission_id, at).await;
        }
        Outcome::Skipped(decision.as_str())
    }
}
