//! Start-up errors as an operator meets them: `mana-ai serve` with one bad
//! variable exits non-zero with a line that names the variable, says what
//! is wrong with the value (never a password) and hints at the fix.

mod common;

use std::process::Command;

const PASSWORD: &str = "hunter2-secret";

/// Runs `serve` with `env` (and nothing inherited that could help it) and
/// returns its stderr, asserting it failed.
fn serve_fails(env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mana-ai"));
    cmd.arg("serve");
    for var in [
        "SYNC_DATABASE_URL",
        "DATABASE_URL",
        "RUST_LOG",
        "MANA_AI_LOG_FORMAT",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("MANA_LLM_URL", "http://127.0.0.1:9")
        .env("PORT", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{env:?} started:\n{stderr}");
    assert!(!stderr.contains(PASSWORD), "the password leaked:\n{stderr}");
    stderr
}

fn assert_says(stderr: &str, parts: &[&str]) {
    for part in parts {
        assert!(stderr.contains(part), "missing {part:?} in:\n{stderr}");
    }
}

#[test]
fn bad_values_name_the_variable_the_value_and_a_hint() {
    let url = format!("postgres://svc:{PASSWORD}@127.0.0.1:5432/mana_sync");
    let port = serve_fails(&[("SYNC_DATABASE_URL", &url), ("PORT", "70000")]);
    assert_says(
        &port,
        &["PORT: \"70000\" is out of range (allowed: 0..=65535)"],
    );

    let mysql = format!("mysql://svc:{PASSWORD}@db/mana_sync");
    let scheme = serve_fails(&[("SYNC_DATABASE_URL", &mysql)]);
    assert_says(
        &scheme,
        &["SYNC_DATABASE_URL", "\"mysql\" URL", "postgres://"],
    );

    let format = serve_fails(&[("SYNC_DATABASE_URL", &url), ("MANA_AI_LOG_FORMAT", "yaml")]);
    assert_says(
        &format,
        &["MANA_AI_LOG_FORMAT: \"yaml\" is not one of text, json"],
    );

    let filter = serve_fails(&[("SYNC_DATABASE_URL", &url), ("RUST_LOG", "mana_ai=loud")]);
    assert_says(
        &filter,
        &[
            "RUST_LOG: \"mana_ai=loud\" is not a log filter",
            "RUST_LOG=info",
        ],
    );
}

#[test]
fn a_database_that_cannot_be_reached_or_refuses_is_said_plainly() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let unreachable = format!("postgres://svc:{PASSWORD}@127.0.0.1:{port}/mana_sync");
    let e = serve_fails(&[("SYNC_DATABASE_URL", &unreachable)]);
    assert_says(
        &e,
        &[
            "SYNC_DATABASE_URL: cannot reach the server",
            "check the host and port",
        ],
    );
    assert!(
        !e.contains("creating a new object") && !e.contains("db error: db error"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_role_and_a_pem_path_are_explained() {
    let t = common::setup().await;
    let (host, port) = t.db.server.host_port();
    let nobody = format!(
        "postgres://no_such_role_7:{PASSWORD}@{host}:{port}/{}",
        t.db.name
    );
    let e = tokio::task::spawn_blocking(move || serve_fails(&[("SYNC_DATABASE_URL", &nobody)]))
        .await
        .unwrap();
    assert_says(
        &e,
        &[
            "SYNC_DATABASE_URL: the server refused",
            "no_such_role_7",
            "check the user and password",
        ],
    );

    let service = t.db.url_as(pgtemp::SERVICE_ROLE);
    let e = tokio::task::spawn_blocking(move || {
        serve_fails(&[
            ("SYNC_DATABASE_URL", &service),
            ("MANA_AI_REQUIRE_GRANTS", "true"),
            ("MANA_AI_PRIVATE_KEY_PEM", "/etc/mana-ai/grant-key.pem"),
        ])
    })
    .await
    .unwrap();
    assert_says(
        &e,
        &[
            "MANA_AI_PRIVATE_KEY_PEM: no PEM block found",
            "not a file path",
        ],
    );
}
