//! Paced single-change transactions, shared by the latency section and the
//! backfill's latency phase: `scale.rate` a second for `scale.latency_secs`,
//! spread over [`USERS`] x [`MISSIONS`] missions by [`WRITERS`] connections,
//! each an update of a mission the caller has seeded.

use std::time::{Duration, Instant};

use pgtemp::TempDb;
use serde_json::json;

use crate::setup::{self, mission_id, user_id, ChangeWriter};
use crate::Scale;

/// Users the paced changes are spread over.
pub const USERS: usize = 100;
/// Missions per user.
pub const MISSIONS: usize = 10;
/// Writer connections.
pub const WRITERS: usize = 8;

/// One paced write.
pub struct Written {
    pub id: uuid::Uuid,
    /// When the writer saw its COMMIT return.
    pub committed: Instant,
    /// How long BEGIN..COMMIT took on the writer's side.
    pub took: Duration,
}

/// Writes the paced changes; returns them (in no order) and when the pacing
/// started.
pub async fn write(db: &TempDb, scale: &Scale) -> anyhow::Result<(Vec<Written>, Instant)> {
    let total = (scale.rate as f64 * scale.latency_secs) as usize;
    let period = Duration::from_secs_f64(1.0 / scale.rate as f64);
    let start = Instant::now() + Duration::from_millis(100);
    let next_run = setup::next_run_tomorrow();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut writer = ChangeWriter::connect(db).await?;
        let next_run = next_run.clone();
        writers.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for k in (w..total).step_by(WRITERS) {
                tokio::time::sleep_until((start + period * k as u32).into()).await;
                let user = user_id(k % USERS);
                let mission = mission_id(&user, (k / USERS) % MISSIONS);
                let data =
                    json!({"title": format!("t{k}"), "state": "active", "nextRunAt": next_run});
                let begun = Instant::now();
                let id = writer
                    .write(&user, "ai", "aiMissions", &mission, &data)
                    .await?;
                let committed = Instant::now();
                written.push(Written {
                    id,
                    committed,
                    took: committed - begun,
                });
            }
            anyhow::Ok(written)
        }));
    }
    let mut written = Vec::with_capacity(total);
    for w in writers {
        written.extend(w.await??);
    }
    Ok((written, start))
}
