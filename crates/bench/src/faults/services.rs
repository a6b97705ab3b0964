//! `mana-ai serve` processes as an operator runs them: the binary of this
//! workspace, the unprivileged service role, the fake gateway, logs in
//! files of the campaign's directory (appended across restarts).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// Settings of every process the campaign starts.
pub struct Setup {
    pub bin: PathBuf,
    pub db_url: String,
    pub llm_url: String,
    pub log_dir: PathBuf,
}

/// The service binary: `--service-bin`, else `mana-ai` beside this one
/// (cargo builds both into the same target/<profile>/).
pub fn find_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let bin = match given {
        Some(bin) => bin,
        None => std::env::current_exe()?
            .parent()
            .context("the campaign's own directory")?
            .join("mana-ai"),
    };
    if !bin.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release --locked --bin mana-ai) \
             or pass --service-bin",
            bin.display()
        );
    }
    Ok(bin)
}

/// One service process slot (`a`, `b`, or the final drain).
pub struct Service {
    pub name: &'static str,
    child: Option<Child>,
    port: u16,
    pub starts: u32,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Service {
    pub fn new(name: &'static str) -> Service {
        Service {
            name,
            child: None,
            port: 0,
            starts: 0,
        }
    }

    /// Starts the process with the campaign's settings plus `extra`.
    pub fn start(&mut self, setup: &Setup, extra: &[(&str, &str)]) -> anyhow::Result<()> {
        self.port = free_port()?;
        let log = log_file(&setup.log_dir, self.name)?;
        let mut cmd = Command::new(&setup.bin);
        cmd.arg("serve").env_clear().envs(env(setup, self.port));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", setup.bin.display()))?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// SIGTERM; waits up to `limit` for the exit. False when it had to be
    /// SIGKILLed after all.
    pub async fn terminate(&mut self, limit: Duration) -> anyhow::Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        if let Some(pid) = child.id() {
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
        }
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => {
                status?;
                Ok(true)
            }
            Err(_) => {
                child.start_kill()?;
                child.wait().await?;
                Ok(false)
            }
        }
    }

    /// `role` of `/health` (`leader` or `standby`), None while it does not answer.
    pub async fn role(&self) -> Option<String> {
        let health = self.health().await?;
        Some(health.get("role")?.as_str()?.to_string())
    }

    /// The `/health` document, if it answers within a second.
    pub async fn health(&self) -> Option<serde_json::Value> {
        self.child.as_ref()?;
        let get = http_get(self.port, "/health");
        let body = tokio::time::timeout(Duration::from_secs(1), get)
            .await
            .ok()?
            .ok()?;
        serde_json::from_str(&body).ok()
    }

    /// Waits until it leads with a healthy listener.
    pub async fn wait_leading(&self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(h) = self.health().await {
                if h["role"] == "leader" && h["ok"] == true && h["listener"]["connected"] == true {
                    return Ok(());
                }
            }
            if start.elapsed() > limit {
                bail!("{} did not lead within {limit:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The environment of every process: short retries, a 4 s LLM timeout,
/// intervals below a minute allowed, a 64 KiB field limit (cheap poison).
fn env(setup: &Setup, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("RUST_LOG", "info".into()),
        ("SYNC_DATABASE_URL", setup.db_url.clone()),
        ("PORT", port.to_string()),
        ("MANA_LLM_URL", setup.llm_url.clone()),
        ("MANA_LLM_TIMEOUT_SECS", "4".into()),
        ("MANA_SERVICE_KEY", "fault-campaign-key".into()),
        ("MANA_AI_INTERNAL_KEY", "fault-campaign-internal".into()),
        ("MANA_API_URL", "http://127.0.0.1:9".into()),
        ("MANA_AI_LEADER_RETRY_SECS", "1".into()),
        ("MANA_AI_LISTEN_HEARTBEAT_SECS", "2".into()),
        ("MANA_AI_SWEEP_INTERVAL_SECS", "30".into()),
        ("MANA_AI_RETRY_BACKOFF_SECS", "1,2".into()),
        ("MANA_AI_MIN_INTERVAL_MINUTES", "0".into()),
        ("MANA_AI_MAX_FIELD_BYTES", "65536".into()),
        ("MANA_AI_SHUTDOWN_GRACE_SECS", "10".into()),
    ]
}

/// What the backstop logs when it applies rows the claim passed over
/// (`reactor::backstop`).
const BACKSTOP_LINE: &str = "the backstop applied queued changes the claim had passed over";

/// Queue rows the backstop applied, summed over every service's log (text
/// format: `rows=N`): each one a change the claim passed over.
pub fn backstop_recoveries(dir: &Path) -> anyhow::Result<u64> {
    let mut rows = 0;
    for entry in std::fs::read_dir(dir).context("reading the log directory")? {
        let text = std::fs::read_to_string(entry?.path()).context("reading a service log")?;
        for line in text.lines().filter(|l| l.contains(BACKSTOP_LINE)) {
            let n = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix("rows="))
                .and_then(|n| n.parse::<u64>().ok());
            rows += n.unwrap_or(1);
        }
    }
    Ok(rows)
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .with_context(|| format!("opening {name}.log in {}", dir.display()))
}

/// A bare HTTP/1.0 GET on loopback; the body of any answer.
async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_default();
    Ok(body.to_string())
}
