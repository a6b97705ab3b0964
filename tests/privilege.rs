//! Least privilege: `serve` refuses a privileged role, the restrictive policy
//! limits what the service role may insert into `sync_changes`, uninstall.sql
//! takes back every grant, and verify.sql names each missing or extra
//! privilege and any kit object the service role owns.

mod common;

use std::time::Duration;

use common::serve::Serve;
use common::{psql, setup};
use pgtemp::{role_password, SERVICE_ROLE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_superuser_unless_allowed_for_development() {
    let t = setup().await;
    let mut refused = Serve::start(&t.db.admin_url(), &[]);
    let status = refused.exit_within(Duration::from_secs(30)).await;
    let log = refused.log();
    assert!(!status.success(), "{log}");
    assert!(log.contains("which is SUPERUSER"), "{log}");
    assert!(log.contains("MANA_AI_ALLOW_PRIVILEGED=true"), "{log}");
    assert!(
        !log.contains("HTTP listening"),
        "refused before serving: {log}"
    );

    let mut allowed = Serve::start(&t.db.admin_url(), &[("MANA_AI_ALLOW_PRIVILEGED", "true")]);
    allowed.answers_within(Duration::from_secs(30)).await;
    let log = allowed.log();
    assert!(
        log.contains("WARN") && log.contains("SUPERUSER") && log.contains("development only"),
        "a loud warning: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_bypassrls_role() {
    let t = setup().await;
    // Roles are cluster-wide and tests run in parallel: a role of its own.
    let role = format!("mana_ai_t_bypass_{}", uuid::Uuid::new_v4().simple());
    let admin = t.admin().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN NOSUPERUSER BYPASSRLS PASSWORD '{}'",
            role_password()
        ))
        .await
        .unwrap();
    let url = t.db.url_as(&role);
    let mut refused = Serve::start(&url, &[]);
    let status = refused.exit_within(Duration::from_secs(30)).await;
    let log = refused.log();
    admin
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!("{role:?}, which is BYPASSRLS:")),
        "{log}"
    );
}

/// A role made BYPASSRLS while the service runs is refused on the pool's
/// next new connection, not only at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_made_privileged_while_serving_is_refused_on_the_next_connection() {
    let t = setup().await;
    let role = format!("mana_ai_t_later_{}", uuid::Uuid::new_v4().simple());
    let admin = t.admin().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '{}'",
            role_password()
        ))
        .await
        .unwrap();
    let pool = mana_ai::db::service_pool(&t.db.url_as(&role), 2, None, false).unwrap();
    let first = pool.get().await.expect("an ordinary role connects");
    admin
        .batch_execute(&format!("ALTER ROLE {role} BYPASSRLS"))
        .await
        .unwrap();
    let second = pool.get().await.map(|_| ()).map_err(|e| e.to_string());
    drop(first);
    pool.close();
    admin
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
    let err = second.expect_err("a new connection as a BYPASSRLS role is refused");
    assert!(
        err.contains(&format!("{role:?}, which is BYPASSRLS")),
        "{err}"
    );
}

/// Inserts one sync_changes row as the service role in u1's scope.
async fn insert_as_service(
    t: &common::TestDb,
    app: &str,
    table: &str,
    client_id: &str,
) -> Result<u64, tokio_postgres::Error> {
    let mut client = t.db.connect_as(SERVICE_ROLE).await.unwrap();
    let tx = mana_ai::db::begin_user(&mut client, "u1").await.unwrap();
    let n = tx
        .execute(
            "INSERT INTO public.sync_changes (app_id, table_name, record_id, user_id, op, data, client_id)
             VALUES ($1, $2, 'm1', 'u1', 'update', '{}', $3)",
            &[&app, &table, &client_id],
        )
        .await?;
    tx.commit().await?;
    Ok(n)
}

#[tokio::test]
async fn the_service_role_may_insert_only_write_back_rows() {
    let t = setup().await;
    for (app, table, client_id) in [
        ("notes", "aiMissions", "mana-ai-runner"),
        ("ai", "agents", "mana-ai-runner"),
        ("ai", "aiMissions", "web-browser"),
    ] {
        let err = insert_as_service(&t, app, table, client_id)
            .await
            .expect_err("a forged row is refused");
        let db = err.as_db_error().expect("a server error");
        assert!(
            db.message().contains("row-level security policy"),
            "{app}/{table}/{client_id}: {}",
            db.message()
        );
    }
    assert_eq!(
        insert_as_service(&t, "ai", "aiMissions", "mana-ai-runner")
            .await
            .expect("a write-back row is accepted"),
        1
    );
    // The sync server's role is not restricted by it.
    let mut sync = t.sync_client().await;
    common::write(
        &mut sync,
        &[common::Change::mission(
            "u1",
            "m2",
            "insert",
            serde_json::json!({}),
        )],
    )
    .await;
    // Re-running install.sql keeps exactly one such policy.
    let (ok, err) = psql(&t.db, "install.sql", Some(SERVICE_ROLE));
    assert!(ok, "{err}");
    let admin = t.admin().await;
    let row = admin
        .query_one(
            "SELECT count(*), bool_and(NOT polpermissive) FROM pg_policy
             WHERE polrelid = 'public.sync_changes'::regclass AND polname = 'mana_ai_writeback_only'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, bool>(1)), (1, true));
    assert!(insert_as_service(&t, "ai", "agents", "mana-ai-runner")
        .await
        .is_err());
}

/// Every privilege install.sql grants, as (function, object, privilege).
const GRANTED: &[(&str, &str, &str)] = &[
    ("schema", "mana_ai", "USAGE"),
    ("schema", "mana_ai", "CREATE"),
    ("table", "public.sync_changes", "SELECT"),
    ("table", "public.sync_changes", "INSERT"),
];

async fn holds(admin: &tokio_postgres::Client, kind: &str, object: &str, privilege: &str) -> bool {
    let sql = match kind {
        "schema" => "SELECT has_schema_privilege($1, $2, $3)",
        _ => "SELECT has_table_privilege($1, $2, $3)",
    };
    admin
        .query_one(sql, &[&SERVICE_ROLE, &object, &privilege])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn uninstall_takes_back_every_grant_and_the_policy() {
    // psql naming the role, psql leaving it to the kit, and the library.
    for (with_role, through_psql) in [(true, true), (false, true), (false, false)] {
        let t = setup().await;
        let admin = t.admin().await;
        for (kind, object, privilege) in GRANTED {
            assert!(holds(&admin, kind, object, privilege).await);
        }
        let role = with_role.then_some(SERVICE_ROLE);
        if through_psql {
            let (ok, err) = psql(&t.db, "uninstall.sql", role);
            assert!(ok, "{err}");
        } else {
            mana_ai::triggers::uninstall(&admin, role).await.unwrap();
        }
        for (kind, object, privilege) in GRANTED {
            assert!(
                !holds(&admin, kind, object, privilege).await,
                "{privilege} on {object} still held after uninstall (role given: {with_role})"
            );
        }
        let policies: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_policy WHERE polname = 'mana_ai_writeback_only'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(policies, 0);
        // Uninstalling twice is harmless.
        let (ok, err) = psql(&t.db, "uninstall.sql", Some(SERVICE_ROLE));
        assert!(ok, "{err}");
    }
}

/// verify.sql through psql and through `mana_ai::triggers::verify`: both
/// fail, with the same message.
async fn verify_fails(t: &common::TestDb) -> String {
    let (ok, err) = psql(&t.db, "verify.sql", Some(SERVICE_ROLE));
    assert!(!ok, "verify.sql passed");
    let from_rust = mana_ai::triggers::verify(&t.admin().await, Some(SERVICE_ROLE))
        .await
        .expect_err("triggers::verify fails too");
    let from_rust = format!("{from_rust:#}");
    let first = from_rust.split(" (hint").next().unwrap_or_default();
    assert!(err.contains(first), "psql: {err}\nrust: {from_rust}");
    err
}

#[tokio::test]
async fn verify_names_each_missing_and_extra_privilege() {
    let t = setup().await;
    let admin = t.admin().await;
    let (ok, err) = psql(&t.db, "verify.sql", Some(SERVICE_ROLE));
    assert!(ok, "{err}");

    admin
        .batch_execute(&format!(
            "REVOKE DELETE ON mana_ai.change_queue FROM {SERVICE_ROLE}"
        ))
        .await
        .unwrap();
    let err = verify_fails(&t).await;
    assert!(
        err.contains(&format!(
            "privilege DELETE on table mana_ai.change_queue for role {SERVICE_ROLE}"
        )),
        "{err}"
    );
    assert!(!err.contains("SELECT"), "only the missing one: {err}");

    admin
        .batch_execute(&format!(
            "GRANT DELETE ON mana_ai.change_queue TO {SERVICE_ROLE};
             GRANT UPDATE ON public.sync_changes TO {SERVICE_ROLE}"
        ))
        .await
        .unwrap();
    let err = verify_fails(&t).await;
    assert!(
        err.contains(&format!(
            "extra privilege UPDATE on table public.sync_changes for role {SERVICE_ROLE}"
        )),
        "{err}"
    );
    assert!(!err.contains("DELETE"), "{err}");
    admin
        .batch_execute(&format!(
            "REVOKE UPDATE ON public.sync_changes FROM {SERVICE_ROLE};
             DROP POLICY mana_ai_writeback_only ON public.sync_changes"
        ))
        .await
        .unwrap();
    let err = verify_fails(&t).await;
    assert!(
        err.contains("restrictive policy mana_ai_writeback_only on public.sync_changes"),
        "{err}"
    );
}

#[tokio::test]
async fn verify_refuses_a_queue_owned_by_the_service_role_and_install_fixes_it() {
    let t = setup().await;
    let admin = t.admin().await;
    admin
        .batch_execute(&format!(
            "ALTER TABLE mana_ai.change_queue OWNER TO {SERVICE_ROLE}"
        ))
        .await
        .unwrap();
    let err = verify_fails(&t).await;
    assert!(
        err.contains(&format!(
            "table mana_ai.change_queue is owned by {SERVICE_ROLE}"
        )),
        "{err}"
    );
    let (ok, err) = psql(&t.db, "install.sql", Some(SERVICE_ROLE));
    assert!(ok, "{err}");
    let (ok, err) = psql(&t.db, "verify.sql", Some(SERVICE_ROLE));
    assert!(ok, "re-running install.sql takes the queue back: {err}");

    admin
        .batch_execute(&format!(
            "ALTER FUNCTION mana_ai.enqueue_change() OWNER TO {SERVICE_ROLE}"
        ))
        .await
        .unwrap();
    let err = verify_fails(&t).await;
    assert!(
        err.contains(&format!(
            "function mana_ai.enqueue_change() is owned by {SERVICE_ROLE}"
        )),
        "{err}"
    );
}
