//! `mana-ai-demo` runs to completion without a network and without an LLM.

use std::process::Command;

/// On either generation of sync_changes (today's by default).
#[test]
fn the_demo_runs_offline_to_completion() {
    for (args, shape) in [
        (&[][..], "of today's generation: field_meta"),
        (&["--generation", "v0.6"][..], "of mana v0.6's generation"),
    ] {
        demo_runs_offline(args, shape);
    }
}

fn demo_runs_offline(args: &[&str], shape: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_mana-ai-demo"))
        .args(args)
        .env_remove("SYNC_DATABASE_URL")
        .env_remove("MANA_LLM_URL")
        .env_remove("MANA_API_URL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for expected in [
        shape,
        "Planner: OFFLINE",
        "5. Snapshot: state active",
        "timer armed",
        "input notes/notes",
        "7. Written back",
        "\"overallStatus\": \"awaiting-review\"",
        "8. Audit: ok notes:note-1",
        "Done: database dropped.",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

/// Starts `demo --keep-running`, waits for `marker` on stdout, sends
/// `signal`, and returns the exit status and every stdout line.
fn demo_stopped_by(signal: &str, marker: &str) -> (std::process::ExitStatus, Vec<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_mana-ai-demo"))
        .arg("--keep-running")
        .env_remove("SYNC_DATABASE_URL")
        .env_remove("MANA_LLM_URL")
        .env_remove("MANA_API_URL")
        .env("PORT", "0")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = Vec::new();
    let mut reader = BufReader::new(stdout).lines();
    for line in reader.by_ref() {
        let line = line.expect("utf-8 output");
        let seen = line.contains(marker);
        lines.push(line);
        if seen {
            let sent = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("kill runs");
            assert!(sent.success());
            break;
        }
    }
    lines.extend(reader.map_while(Result::ok));
    let status = child.wait().expect("the demo exits");
    if !status.success() {
        let mut stderr = String::new();
        let _ =
            std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr);
        lines.push(format!("stderr: {stderr}"));
    }
    (status, lines)
}

fn database_of(lines: &[String]) -> String {
    lines
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix("database ")?
                .split_whitespace()
                .next()
        })
        .expect("the demo names its database")
        .to_string()
}

async fn database_exists(name: &str) -> bool {
    let server = tokio::task::spawn_blocking(pgtemp::PgServer::discover)
        .await
        .unwrap()
        .expect("a Postgres");
    let admin = server.connect_admin("postgres").await.expect("admin");
    admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .expect("pg_database")
        .is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_and_sigint_end_the_demo_cleanly_at_any_step() {
    for (signal, marker) in [
        ("-TERM", "Serving http://"),
        ("-INT", "Serving http://"),
        ("-TERM", "3. Seeded"),
    ] {
        let (status, lines) = demo_stopped_by(signal, marker);
        let all = lines.join("\n");
        assert!(
            status.success(),
            "{signal} after {marker:?}: {status:?}\n{all}"
        );
        assert_eq!(
            lines.last().map(String::as_str),
            Some("Done: database dropped."),
            "{signal} after {marker:?}:\n{all}"
        );
        assert!(!database_exists(&database_of(&lines)).await, "{all}");
    }
}
