//! TLS to Postgres against a real server: a throwaway cluster whose
//! certificate comes from a CA made here. `sslmode=require` must be served
//! over TLS with the server certificate verified, by the CLI and by every
//! connection of the running service (pool, listener, leader lock).

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{eventually, mission_data, write, Change};
use pgtemp::{PgServer, ServerTls, SERVICE_ROLE};
use serde_json::json;

struct Pki {
    ca_pem: String,
    server: ServerTls,
}

/// A CA and a server certificate it signed for localhost and 127.0.0.1.
fn make_pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "mana-ai test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem,
        server: ServerTls {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
    }
}

fn migrate(url: &str, root_cert: Option<&Path>) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mana-ai"));
    cmd.arg("migrate")
        .env_clear()
        .env("RUST_LOG", "warn")
        .env("SYNC_DATABASE_URL", url);
    if let Some(path) = root_cert {
        cmd.env("MANA_AI_PG_ROOT_CERT", path);
    }
    cmd.output().expect("the mana-ai binary runs")
}

/// (application_name, ssl) of the service's connections to this database.
async fn service_connections(admin: &tokio_postgres::Client) -> Vec<(String, bool)> {
    admin
        .query(
            "SELECT a.application_name, s.ssl
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.datname = current_database()
               AND a.application_name IN ('mana-ai', 'mana-ai-listener', 'mana-ai-leader')
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_is_served_over_verified_tls_by_every_connection() {
    let pki = make_pki();
    let stranger = make_pki();
    let server = PgServer::start_with_tls(&pki.server)
        .expect("a throwaway cluster with TLS (needs initdb and pg_ctl)");
    let t = common::setup_on(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let wrong_ca = dir.path().join("stranger-ca.pem");
    std::fs::write(&wrong_ca, &stranger.ca_pem).unwrap();
    let url = format!("{} sslmode=require", t.db.url_as(SERVICE_ROLE));

    // The CLI: a certificate no trusted CA signed is refused, with the cause.
    for root in [None, Some(wrong_ca.as_path())] {
        let out = migrate(&url, root);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{root:?} must be refused");
        assert!(
            stderr.contains("certificate") && stderr.contains("SYNC_DATABASE_URL"),
            "{root:?}: {stderr}"
        );
    }
    let out = migrate(&url, Some(&ca));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The service: pool, listener and leader lock all on TLS, and it works.
    let ca_text = ca.display().to_string();
    let config = t.config(&[
        ("SYNC_DATABASE_URL", &url),
        ("MANA_AI_PG_ROOT_CERT", &ca_text),
        ("PORT", "0"),
        ("TICK_ENABLED", "false"),
    ]);
    let service = mana_ai::service::App::build(config)
        .await
        .expect("the service starts");
    let admin = t.db.admin().await.unwrap();
    eventually("the leader's connections are up", || async {
        let names: Vec<String> = service_connections(&admin)
            .await
            .into_iter()
            .map(|c| c.0)
            .collect();
        ["mana-ai", "mana-ai-leader", "mana-ai-listener"]
            .iter()
            .all(|n| names.iter().any(|m| m == n))
    })
    .await;
    let mut sync = t.sync_client().await;
    write(
        &mut sync,
        &[Change::mission(
            "tess",
            "m1",
            "insert",
            mission_data(json!({})),
        )],
    )
    .await;
    eventually("the change applied through the TLS pool", || async {
        t.mission("tess", "m1").await.is_some()
    })
    .await;
    let connections = service_connections(&admin).await;
    assert!(
        connections.iter().all(|(_, ssl)| *ssl),
        "every service connection encrypted: {connections:?}"
    );
    tokio::time::timeout(Duration::from_secs(30), service.shutdown())
        .await
        .expect("stops");
}
