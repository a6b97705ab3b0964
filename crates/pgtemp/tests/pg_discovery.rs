//! Finding Postgres on a machine like a stock Debian one, whose server asks
//! for a password: a throwaway cluster of this test's own with scram auth.

use pgtemp::discover::{self, candidates};
use pgtemp::PgServer;

const PASSWORD: &str = "correct horse";

fn env_of(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
    move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_asks_for_a_password_is_used_through_libpq_variables_or_pgpass() {
    let server = tokio::task::spawn_blocking(|| PgServer::start_with_password(PASSWORD))
        .await
        .unwrap()
        .expect("a throwaway cluster with password auth");
    let (host, port) = server.host_port();

    // Without a password the probe says what is missing, not "invalid configuration".
    let no_password = env_of(vec![
        ("PGHOST", host.clone()),
        ("PGPORT", port.to_string()),
        ("PGUSER", "postgres".into()),
    ]);
    let first = candidates(&no_password, None).remove(0);
    let reason = discover::probe(&first.config).unwrap_err();
    assert!(reason.contains("asks for a password"), "{reason}");

    // PGPASSWORD.
    let with_password = env_of(vec![
        ("PGHOST", host.clone()),
        ("PGPORT", port.to_string()),
        ("PGUSER", "postgres".into()),
        ("PGPASSWORD", PASSWORD.into()),
    ]);
    let found = tokio::task::spawn_blocking(move || discover::discover_with(&with_password))
        .await
        .unwrap()
        .expect("the password server");
    assert_eq!(found.host_port(), (host.clone(), port));
    let client = found
        .connect_admin("postgres")
        .await
        .expect("connect as found");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    // The password file named by PGPASSFILE.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgpass");
    std::fs::write(&file, format!("{host}:{port}:*:postgres:{PASSWORD}\n")).unwrap();
    let with_file = env_of(vec![
        ("PGHOST", host.clone()),
        ("PGPORT", port.to_string()),
        ("PGUSER", "postgres".into()),
        ("PGPASSFILE", file.display().to_string()),
    ]);
    let found = tokio::task::spawn_blocking(move || discover::discover_with(&with_file))
        .await
        .unwrap()
        .expect("the password server through the password file");
    assert_eq!(found.host_port(), (host, port));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_a_reason_never_echoed() {
    let server = tokio::task::spawn_blocking(|| PgServer::start_with_password(PASSWORD))
        .await
        .unwrap()
        .expect("a throwaway cluster with password auth");
    let (host, port) = server.host_port();
    let wrong = env_of(vec![
        ("PGHOST", host),
        ("PGPORT", port.to_string()),
        ("PGUSER", "postgres".into()),
        ("PGPASSWORD", "not-it-7731".into()),
    ]);
    let first = candidates(&wrong, None).remove(0);
    let reason = discover::probe(&first.config).unwrap_err();
    assert!(
        reason.contains("password authentication failed"),
        "{reason}"
    );
    assert!(!reason.contains("not-it-7731") && !first.label.contains("not-it-7731"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_roles_tests_and_the_demo_create_carry_a_password_only_this_user_knows() {
    use pgtemp::{role_password, TempDb, SERVICE_ROLE};
    let server = tokio::task::spawn_blocking(|| PgServer::start_with_password(PASSWORD))
        .await
        .unwrap()
        .expect("a throwaway cluster with password auth");
    let db = TempDb::create(&server, "mana_ai_pw")
        .await
        .expect("a database");
    db.connect_as(SERVICE_ROLE)
        .await
        .expect("the role logs in with this user's password");
    let known = server.conninfo(&db.name, Some((SERVICE_ROLE, "mana-ai-local")));
    assert!(
        pgtemp::connect(&known).await.is_err(),
        "the password earlier versions used for everyone no longer works"
    );
    assert!(role_password().len() >= 32);
    if let Some(home) = std::env::var_os("HOME") {
        use std::os::unix::fs::PermissionsExt;
        let kept = std::path::Path::new(&home).join(".cache/mana-ai/local-role-password");
        if std::env::var_os("XDG_CACHE_HOME").is_none() && kept.exists() {
            let mode = std::fs::metadata(&kept).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "only its owner may read the secret");
        }
    }
}
