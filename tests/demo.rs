//! `mana-ai demo` runs to completion without a network and without an LLM.

use std::process::Command;

#[test]
fn the_demo_runs_offline_to_completion() {
    let out = Command::new(env!("CARGO_BIN_EXE_mana-ai"))
        .arg("demo")
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
