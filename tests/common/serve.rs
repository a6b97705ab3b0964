//! `mana-ai serve` as a process, its output in a file.

use std::process::Stdio;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `mana-ai serve` against `url`; output goes to a file read back by `log`.
pub struct Serve {
    child: tokio::process::Child,
    pub port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Serve {
    pub fn start(url: &str, extra: &[(&str, &str)]) -> Serve {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serve.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mana-ai"));
        cmd.arg("serve")
            .env_clear()
            .env("RUST_LOG", "info")
            .env("SYNC_DATABASE_URL", url)
            .env("PORT", port.to_string())
            .env("MANA_LLM_URL", "http://127.0.0.1:9")
            .env("MANA_API_URL", "http://127.0.0.1:9")
            .env("TICK_ENABLED", "false")
            .env("MANA_AI_SHUTDOWN_GRACE_SECS", "1");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("the mana-ai binary starts");
        Serve {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit on its own; its exit status.
    pub async fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("still running after {limit:?}; log:\n{}", self.log()),
        }
    }

    /// Waits until /health answers at all.
    pub async fn answers_within(&mut self, limit: Duration) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let start = Instant::now();
        loop {
            let url = format!("http://127.0.0.1:{}/health", self.port);
            if client.get(url).send().await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("exited with {status}; log:\n{}", self.log());
            }
            assert!(
                start.elapsed() < limit,
                "no HTTP within {limit:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
