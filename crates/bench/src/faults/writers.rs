//! Writers: sync-server stand-ins that push mission and agent changes as
//! the sync role inside one user's RLS scope, some in transactions held
//! open for seconds, some rolled back, some poison. They survive every
//! fault: a lost connection is opened again and the action dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::payloads;
use crate::rng::Rng;

/// Changes written (inserted in a transaction) and committed.
#[derive(Default)]
pub struct Counts {
    pub written: AtomicU64,
    pub committed: AtomicU64,
    pub rolled_back: AtomicU64,
    /// Transactions that failed (connection cut, server restarting).
    pub failed_txns: AtomicU64,
    pub poison_committed: AtomicU64,
    pub long_txns: AtomicU64,
}

/// The records the writers know of.
#[derive(Default)]
pub struct Model {
    /// (user, mission id) of missions not deleted.
    missions: Vec<(String, String)>,
    agents: Vec<(String, String)>,
}

/// Shared by every writer.
pub struct Writers {
    pub users: Vec<String>,
    pub url: String,
    pub max_missions: usize,
    pub counts: Counts,
    model: Mutex<Model>,
    next_id: AtomicU64,
}

/// One change of a transaction.
struct Row {
    table: &'static str,
    record: String,
    op: &'static str,
    data: Value,
    stamps: Value,
}

impl Writers {
    pub fn new(users: Vec<String>, url: String, max_missions: usize) -> Arc<Writers> {
        Arc::new(Writers {
            users,
            url,
            max_missions,
            counts: Counts::default(),
            model: Mutex::new(Model::default()),
            next_id: AtomicU64::new(1),
        })
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one writer until `stop`.
    pub async fn run(self: Arc<Self>, mut rng: Rng, stop: CancellationToken) {
        let mut client: Option<Client> = None;
        while !stop.is_cancelled() {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = pgtemp::connect(&self.url).await.ok();
            }
            if let Some(c) = client.as_mut() {
                self.act(c, &mut rng).await;
            }
            tokio::time::sleep(rng.millis(50, 300)).await;
        }
    }

    /// One action, picked by weight.
    async fn act(&self, client: &mut Client, rng: &mut Rng) {
        let user = self.users[rng.index(self.users.len())].clone();
        let room = self.model().missions.len() < self.max_missions;
        let weights = [if room { 10 } else { 0 }, 35, 20, 10, 4, 6, 2, 5];
        let (rows, hold, commit) = match rng.weighted(&weights) {
            0 => (vec![self.create_mission(rng, &user)], None, true),
            1 => (self.edit_mission(rng, &user, false), None, true),
            2 => (vec![self.agent(rng, &user)], None, true),
            3 => return self.long_txn(client, rng, &user).await,
            4 => (vec![self.poison(rng)], None, true),
            5 => (self.edit_mission(rng, &user, true), None, true),
            6 => return self.delete_mission(client, rng).await,
            _ => (self.edit_mission(rng, &user, false), None, false),
        };
        let _ = self.transact(client, &user, rows, hold, commit).await;
    }

    fn create_mission(&self, rng: &mut Rng, user: &str) -> Row {
        let n = self.id();
        let record = format!("m-{n}");
        self.model()
            .missions
            .push((user.to_string(), record.clone()));
        Row {
            table: "aiMissions",
            record,
            op: "insert",
            data: payloads::new_mission(rng, n),
            stamps: json!({}),
        }
    }

    /// An edit of one of `user`'s missions (none if it has none yet).
    fn edit_mission(&self, rng: &mut Rng, user: &str, odd: bool) -> Vec<Row> {
        let Some(record) = self.pick(rng, user, true) else {
            return Vec::new();
        };
        let n = self.id();
        let (data, stamps) = if odd {
            (payloads::odd_edit(rng, n), json!({}))
        } else {
            payloads::mission_edit(rng, n)
        };
        vec![Row {
            table: "aiMissions",
            record,
            op: "update",
            data,
            stamps,
        }]
    }

    fn agent(&self, rng: &mut Rng, user: &str) -> Row {
        let n = self.id();
        let existing = self.pick(rng, user, false).filter(|_| rng.chance(0.7));
        let (record, op) = match existing {
            Some(record) => (record, "update"),
            None => {
                let record = format!("a-{n}");
                self.model().agents.push((user.to_string(), record.clone()));
                (record, "insert")
            }
        };
        let (data, stamps) = payloads::agent(rng, n);
        Row {
            table: "agents",
            record,
            op,
            data,
            stamps,
        }
    }

    /// A random known mission (or agent) of `user`.
    fn pick(&self, rng: &mut Rng, user: &str, mission: bool) -> Option<String> {
        let model = self.model();
        let list = if mission {
            &model.missions
        } else {
            &model.agents
        };
        let mine: Vec<&String> = list
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, r)| r)
            .collect();
        (!mine.is_empty()).then(|| mine[rng.index(mine.len())].clone())
    }

    fn poison(&self, rng: &mut Rng) -> Row {
        let (kind, data) = payloads::poison(rng);
        let table = if rng.chance(0.5) {
            "aiMissions"
        } else {
            "agents"
        };
        Row {
            table,
            record: format!("poison-{kind}-{}", self.id()),
            op: "update",
            data,
            stamps: json!({}),
        }
    }

    /// 2 to 5 edits of one user held open 0.5 to 6 s; one in ten rolled back.
    async fn long_txn(&self, client: &mut Client, rng: &mut Rng, user: &str) {
        let mut rows = Vec::new();
        for _ in 0..rng.range(2, 6) {
            if rng.chance(0.6) {
                rows.extend(self.edit_mission(rng, user, false));
            } else if self.pick(rng, user, false).is_some() {
                rows.push(self.agent(rng, user));
            }
        }
        let hold = Some(rng.millis(500, 6000));
        self.counts.long_txns.fetch_add(1, Ordering::Relaxed);
        let commit = rng.chance(0.9);
        let _ = self.transact(client, user, rows, hold, commit).await;
    }

    /// Deletes a mission (op delete is final); it is edited no more.
    async fn delete_mission(&self, client: &mut Client, rng: &mut Rng) {
        let picked = {
            let mut model = self.model();
            let len = model.missions.len();
            (len > 10).then(|| model.missions.swap_remove(rng.index(len)))
        };
        let Some((user, record)) = picked else {
            return;
        };
        let row = Row {
            table: "aiMissions",
            record,
            op: "delete",
            data: json!({}),
            stamps: json!({}),
        };
        let _ = self.transact(client, &user, vec![row], None, true).await;
    }

    /// Inserts `rows` in one transaction of `user`, waits `hold` before
    /// the end, then commits or rolls back.
    async fn transact(
        &self,
        client: &mut Client,
        user: &str,
        rows: Vec<Row>,
        hold: Option<Duration>,
        commit: bool,
    ) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let result = self.insert_all(client, user, &rows, hold, commit).await;
        let n = rows.len() as u64;
        let poison = rows
            .iter()
            .filter(|r| r.record.starts_with("poison-"))
            .count() as u64;
        match (&result, commit) {
            (Ok(()), true) => {
                self.counts.committed.fetch_add(n, Ordering::Relaxed);
                self.counts
                    .poison_committed
                    .fetch_add(poison, Ordering::Relaxed);
            }
            (Ok(()), false) => {
                self.counts.rolled_back.fetch_add(n, Ordering::Relaxed);
            }
            (Err(_), _) => {
                self.counts.failed_txns.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn insert_all(
        &self,
        client: &mut Client,
        user: &str,
        rows: &[Row],
        hold: Option<Duration>,
        commit: bool,
    ) -> anyhow::Result<()> {
        let tx = mana_ai::db::begin_user(client, user).await?;
        for (i, row) in rows.iter().enumerate() {
            if let (Some(hold), true) = (hold, i > 0) {
                tokio::time::sleep(hold / rows.len() as u32).await;
            }
            tx.execute(
                "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, field_timestamps, client_id)
                 VALUES ('ai', $1, $2, $3, $4, $5, $6, 'fault-writer')",
                &[&row.table, &row.record, &user, &row.op, &row.data, &row.stamps],
            )
            .await?;
            self.counts.written.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(hold) = hold {
            tokio::time::sleep(hold / rows.len() as u32).await;
        }
        if commit {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(())
    }
}
