//! The fault loop: every 3 to 10 s one fault, picked at random: SIGKILL of
//! the leader (started again 2 to 6 s later, so a standby is back before the
//! next kill), `pg_terminate_backend` of the service's connections (all, or
//! each with probability one half), `pg_ctl restart` in fast or immediate
//! mode, a crash of one server process (SIGKILL of a backend: Postgres
//! recovers without a new start time), or a window of 3 to 10 s in which
//! the gateway answers 429, 500, garbage or slowly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::cluster::Db;
use crate::llm::{Gateway, Mode};
use crate::rng::Rng;
use crate::services::{Service, Setup};

/// Faults injected, by kind.
pub type FaultCounts = BTreeMap<&'static str, u64>;

/// The loop's state and everything it acts on.
pub struct Injector<'a> {
    pub db: &'a Db,
    pub llm: &'a Gateway,
    pub setup: &'a Setup,
    pub services: &'a mut [Service; 2],
    pub rng: Rng,
    pub counts: FaultCounts,
    /// A killed service and when to start it again.
    down: Option<(usize, Instant)>,
    /// When the gateway's fault window ends.
    llm_until: Option<Instant>,
}

impl<'a> Injector<'a> {
    pub fn new(
        db: &'a Db,
        llm: &'a Gateway,
        setup: &'a Setup,
        services: &'a mut [Service; 2],
        rng: Rng,
    ) -> Self {
        Injector {
            db,
            llm,
            setup,
            services,
            rng,
            counts: FaultCounts::new(),
            down: None,
            llm_until: None,
        }
    }

    /// Injects faults until `stop`; then heals at once: the gateway
    /// healthy, both services running.
    pub async fn run(&mut self, stop: CancellationToken) {
        loop {
            let deadline = Instant::now() + self.rng.millis(3000, 10_000);
            while Instant::now() < deadline && !stop.is_cancelled() {
                self.heal(false);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if stop.is_cancelled() {
                break;
            }
            let kind = self.inject().await;
            *self.counts.entry(kind).or_default() += 1;
            eprintln!("[{}] fault: {kind}", crate::clock());
        }
        self.heal(true);
    }

    fn count(&mut self, kind: &'static str) {
        *self.counts.entry(kind).or_default() += 1;
    }

    /// Ends a gateway window and starts a killed service once due (`now`: at once).
    fn heal(&mut self, now: bool) {
        if self
            .llm_until
            .is_some_and(|until| now || Instant::now() >= until)
        {
            self.llm.set(Mode::Healthy);
            self.llm_until = None;
        }
        if let Some((index, until)) = self.down {
            if now || Instant::now() >= until {
                self.down = None;
                if let Err(e) = self.services[index].start(self.setup, &[]) {
                    eprintln!("restarting {}: {e:#}", self.services[index].name);
                    self.count("restart-failed");
                }
            }
        }
    }

    /// Injects one fault; returns its kind (errors are reported as `<kind>-failed`).
    async fn inject(&mut self) -> &'static str {
        let kill_weight = if self.down.is_none() { 3 } else { 0 };
        let llm_weight = if self.llm_until.is_none() { 4 } else { 0 };
        match self.rng.weighted(&[kill_weight, 3, 1, 1, 1, llm_weight]) {
            0 => self.kill_leader().await,
            1 => self.terminate_backends().await,
            2 => self.restart_pg("fast").await,
            3 => self.restart_pg("immediate").await,
            4 => self.crash_backend().await,
            _ => self.llm_window(),
        }
    }

    /// SIGKILLs whichever service leads (it says so on /health).
    async fn kill_leader(&mut self) -> &'static str {
        let mut leader = None;
        for (i, s) in self.services.iter().enumerate() {
            if s.role().await.as_deref() == Some("leader") {
                leader = Some(i);
            }
        }
        let Some(i) = leader else {
            return "kill-leader-skipped-no-leader";
        };
        if let Err(e) = self.services[i].kill().await {
            eprintln!("SIGKILL {}: {e:#}", self.services[i].name);
            return "kill-leader-failed";
        }
        self.down = Some((i, Instant::now() + self.rng.millis(2000, 6000)));
        "sigkill-leader"
    }

    async fn terminate_backends(&mut self) -> &'static str {
        let all = self.rng.chance(0.5);
        let share = if all { 1.1 } else { 0.5 };
        match self.db.terminate_service_backends(share).await {
            Ok(_) if all => "terminate-backends-all",
            Ok(_) => "terminate-backends-half",
            Err(e) => {
                eprintln!("pg_terminate_backend: {e:#}");
                "terminate-backends-failed"
            }
        }
    }

    async fn restart_pg(&mut self, mode: &'static str) -> &'static str {
        match (self.db.restart(mode).await, mode) {
            (Ok(()), "fast") => "pg-restart-fast",
            (Ok(()), _) => "pg-restart-immediate",
            (Err(e), _) => {
                eprintln!("{e:#}");
                "pg-restart-failed"
            }
        }
    }

    async fn crash_backend(&mut self) -> &'static str {
        match self.db.crash_backend().await {
            Ok(()) => "pg-backend-crash",
            Err(e) => {
                eprintln!("{e:#}");
                "pg-backend-crash-failed"
            }
        }
    }

    fn llm_window(&mut self) -> &'static str {
        let mode = Mode::FAULTS[self.rng.index(Mode::FAULTS.len())];
        self.llm.set(mode);
        self.llm_until = Some(Instant::now() + self.rng.millis(3000, 10_000));
        mode.name()
    }
}
