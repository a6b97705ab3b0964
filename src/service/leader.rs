//! Leading: the leader lock on its own connection, and what a leader runs
//! (the reactor, retention and, with `TICK_ENABLED`, the runner).

use std::sync::Arc;

use anyhow::Context;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backend::LeaderView;
use crate::db::{self, tls::ConnectionTask};
use crate::reactor::supervisor::TaskName;
use crate::reactor::{self, Reactor};
use crate::run::Runner;
use crate::schedule::clock::DbClock;
use crate::store;

use super::{Customize, RunnerSetup, ServiceContext, Term};

/// What a leader runs: the reactor, retention (see `crate::retention`) and,
/// with `TICK_ENABLED`, the runner.
pub struct Leadership {
    pub reactor: Reactor,
    pub runner: Option<Arc<Runner>>,
    runner_task: Option<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
    abandon: CancellationToken,
}

/// The term's retention task (see `crate::retention`), for its reactor to
/// supervise.
fn retention(
    ctx: &ServiceContext,
    stop: CancellationToken,
) -> impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    let reactor = &ctx.config.reactor;
    let days = crate::retention::Days {
        rows: reactor.retention_days,
        audit: reactor.audit_retention_days,
    };
    crate::retention::task(
        ctx.pool.clone(),
        ctx.metrics.clone(),
        reactor.sweep_interval,
        days,
        stop,
    )
}

/// The runner's loop, for supervision: a loop started again takes the same
/// queue of due missions (the wheel's sender outlives it).
fn runner_loop(
    runner: &Arc<Runner>,
    due: mpsc::UnboundedReceiver<crate::schedule::wheel::DueMission>,
    stop: &CancellationToken,
    abandon: &CancellationToken,
    grace: std::time::Duration,
) -> impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    let due = Arc::new(tokio::sync::Mutex::new(due));
    let (runner, stop, abandon) = (runner.clone(), stop.clone(), abandon.clone());
    move || {
        let (runner, due) = (runner.clone(), due.clone());
        let (stop, abandon) = (stop.clone(), abandon.clone());
        Box::pin(async move {
            let mut due = due.lock().await;
            runner.run_loop(&mut due, stop, abandon, grace).await
        })
    }
}

/// Gives back the slots earlier terms left `running` (see
/// `run::claim::release_other_terms`), before this term claims any.
async fn release_other_terms(ctx: &ServiceContext, term_id: uuid::Uuid) -> anyhow::Result<()> {
    let client = ctx
        .pool
        .get()
        .await
        .context("connecting to release earlier terms' claims")?;
    let released = crate::run::claim::release_other_terms(&**client, term_id)
        .await
        .context("releasing earlier terms' claims")?;
    if released > 0 {
        tracing::info!(released, "gave back the slots earlier terms left running");
    }
    Ok(())
}

impl Leadership {
    /// Starts the reactor and the runner on the context's pool. `term_id`
    /// marks this term's slot claims; it must be fresh for every term, so a
    /// claim left `running` by an earlier term of the same process is taken over.
    pub async fn start(
        ctx: &ServiceContext,
        setup: RunnerSetup,
        term_id: uuid::Uuid,
        hooks: reactor::Hooks,
    ) -> anyhow::Result<Leadership> {
        let (config, stop, abandon) = (
            &ctx.config,
            CancellationToken::new(),
            CancellationToken::new(),
        );
        release_other_terms(ctx, term_id).await?;
        let clock = Arc::new(DbClock::new());
        let (due_tx, due_rx) = mpsc::unbounded_channel();
        let mut reactor = reactor::start(
            config,
            ctx.pool.clone(),
            ctx.metrics.clone(),
            clock.clone(),
            due_tx,
            stop.child_token(),
            hooks,
        )
        .await?;
        reactor.supervise(TaskName::Retention, retention(ctx, stop.child_token()));
        let (runner, runner_task) = if config.runner.tick_enabled {
            let term = Term {
                id: term_id,
                clock,
                wheel: reactor.wheel.clone(),
            };
            let runner = setup.into_runner(ctx, &term);
            let grace = config.runner.shutdown_grace;
            let run_loop = runner_loop(&runner, due_rx, &stop, &abandon, grace);
            let task = reactor.supervise_apart(TaskName::Runner, run_loop, &stop);
            (Some(runner), Some(task))
        } else {
            (None, None)
        };
        Ok(Leadership {
            reactor,
            runner,
            runner_task,
            stop,
            abandon,
        })
    }

    /// What others may see of this term while it lasts.
    pub fn view(&self, term_id: uuid::Uuid) -> LeaderView {
        LeaderView {
            term_id,
            wheel: self.reactor.wheel.clone(),
            runner: self.runner.clone(),
            listening: self.reactor.listening.clone(),
            tasks: self.reactor.task_states.clone(),
        }
    }

    /// Stops taking work, lets runs finish up to the grace period, stops the reactor.
    pub async fn stop(self) {
        self.wind_down().await;
    }

    /// Stops at once after the leader lock was lost: another instance may
    /// already lead and take over these runs, so waiting would only spend
    /// tokens on plans whose write the claim token refuses anyway.
    pub async fn abandon(self) {
        self.abandon.cancel();
        self.wind_down().await;
    }

    async fn wind_down(self) {
        self.stop.cancel();
        if let Some(task) = self.runner_task {
            let _ = task.await;
        }
        self.reactor.stop().await;
    }
}

/// Holds the leader lock on its own connection; resolves when it is lost.
async fn acquire_leadership(
    ctx: &ServiceContext,
    stop: &CancellationToken,
) -> Option<(tokio_postgres::Client, ConnectionTask)> {
    let target = db::Dedicated {
        url: ctx.config.db.url.expose(),
        root_cert: ctx.config.db.root_cert.as_deref(),
        application_name: Some("mana-ai-leader"),
    };
    loop {
        let attempt = async {
            let (client, task) = db::connect_dedicated(&target, |_| {}).await?;
            let locked = store::leader::try_lock(&client).await?;
            anyhow::Ok(locked.then_some((client, task)))
        };
        match attempt.await {
            Ok(Some(held)) => return Some(held),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "leader lock attempt failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(ctx.config.db.leader_retry) => {}
        }
    }
}

/// One process's bid for leadership: becomes leader whenever possible and
/// leads until the lock or the process goes.
pub(super) struct Candidate {
    pub ctx: ServiceContext,
    pub instance_id: uuid::Uuid,
    pub customize: Option<Customize>,
    pub terms: watch::Sender<Option<LeaderView>>,
}

impl Candidate {
    pub async fn run(self, stop: CancellationToken) {
        let ctx = &self.ctx;
        while let Some((lock_client, mut lock_task)) = acquire_leadership(ctx, &stop).await {
            let term_id = uuid::Uuid::new_v4();
            tracing::info!(instance_id = %self.instance_id, %term_id, "leading");
            let leadership = match self.start_term(term_id).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "could not start leading; retrying");
                    drop(lock_client);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(ctx.config.db.leader_retry) => continue,
                    }
                }
            };
            self.publish(Some(&leadership), term_id);
            let lock_lost = tokio::select! {
                _ = stop.cancelled() => false,
                _ = &mut lock_task => true,
            };
            self.publish(None, term_id);
            if lock_lost {
                ctx.metrics.leader_lock_lost.inc();
                tracing::error!(%term_id, "leader lock connection lost; stepping down now");
                leadership.abandon().await;
            } else {
                leadership.stop().await;
            }
            drop(lock_client);
            if stop.is_cancelled() {
                return;
            }
        }
    }

    async fn start_term(&self, term_id: uuid::Uuid) -> anyhow::Result<Leadership> {
        let mut setup = RunnerSetup::from_config(&self.ctx.config, &self.ctx.metrics)?;
        if let Some(customize) = &self.customize {
            customize(&mut setup);
        }
        Leadership::start(&self.ctx, setup, term_id, reactor::Hooks::default()).await
    }

    /// Publishes who leads now: the one state the HTTP backend and the
    /// `App` read (and the `is_leader` gauge beside it).
    fn publish(&self, leadership: Option<&Leadership>, term_id: uuid::Uuid) {
        self.ctx
            .metrics
            .is_leader
            .set(i64::from(leadership.is_some()));
        self.terms.send_replace(leadership.map(|l| l.view(term_id)));
    }
}
