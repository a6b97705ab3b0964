//! TLS to Postgres.
//!
//! A connection string with `sslmode=require` is served over TLS, and the
//! server's certificate is always verified: chain and host name, against
//! the CA file in `MANA_AI_PG_ROOT_CERT` when it is set, else against the
//! public web PKI roots (`webpki-roots`). That is stricter than libpq's
//! `require` (which checks nothing) and equals its `verify-full`; a
//! database with a private CA (most managed services publish a bundle)
//! needs the CA file. Without `sslmode=require` (libpq's default is
//! `prefer`) connections are plain, as before.
//!
//! Every service connection goes through here: the pool, the listener and
//! the leader lock.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Why TLS could not be set up. Raised at start, before any connection.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("MANA_AI_PG_ROOT_CERT: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("MANA_AI_PG_ROOT_CERT: {path} holds no usable CA certificate")]
    NoCertificate { path: PathBuf },
    #[error("MANA_AI_PG_ROOT_CERT: {path}: {source}")]
    BadCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("setting up TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// How to reach one Postgres URL.
#[derive(Clone)]
pub enum PgTls {
    /// `sslmode` disable or prefer (the default): plain TCP.
    Plain,
    /// `sslmode=require`: TLS with a verified server certificate.
    Verified(MakeRustlsConnect),
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PgTls::Plain => "PgTls::Plain",
            PgTls::Verified(_) => "PgTls::Verified",
        })
    }
}

impl PgTls {
    /// The connector for `pg` (a parsed URL): TLS when it says
    /// `sslmode=require`, with `root_cert` (a PEM file of CA certificates)
    /// or the web PKI roots as trust anchors.
    pub fn for_config(
        pg: &tokio_postgres::Config,
        root_cert: Option<&Path>,
    ) -> Result<PgTls, TlsSetupError> {
        if pg.get_ssl_mode() != SslMode::Require {
            // `Config` refuses a CA file when no URL asks for TLS; with two
            // URLs (a pooler and a direct LISTEN URL) one may go without.
            return Ok(PgTls::Plain);
        }
        let roots = match root_cert {
            Some(path) => roots_from_file(path)?,
            None => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        // An explicit provider: nothing depends on a process-wide default.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(PgTls::Verified(MakeRustlsConnect::new(config)))
    }

    /// Whether connections are encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, PgTls::Verified(_))
    }
}

fn roots_from_file(path: &Path) -> Result<rustls::RootCertStore, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|source| TlsSetupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    for cert in certs {
        let cert = cert.map_err(|source| TlsSetupError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        roots
            .add(cert)
            .map_err(|source| TlsSetupError::BadCertificate {
                path: path.to_path_buf(),
                source,
            })?;
    }
    if roots.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}

/// The task that drives a connection; it ends with the connection.
pub type ConnectionTask = JoinHandle<Result<(), tokio_postgres::Error>>;

/// Connects with `tls` and drives the connection on its own task, handing
/// every asynchronous message (notifications, notices) to `on_message`.
pub async fn connect(
    pg: &tokio_postgres::Config,
    tls: &PgTls,
    on_message: impl FnMut(AsyncMessage) + Send + 'static,
) -> Result<(Client, ConnectionTask), tokio_postgres::Error> {
    match tls {
        PgTls::Plain => {
            let (client, connection) = pg.connect(NoTls).await?;
            Ok((client, drive(connection, on_message)))
        }
        PgTls::Verified(make) => {
            let (client, connection) = pg.connect(make.clone()).await?;
            Ok((client, drive(connection, on_message)))
        }
    }
}

fn drive<S, T>(
    mut connection: Connection<S, T>,
    mut on_message: impl FnMut(AsyncMessage) + Send + 'static,
) -> ConnectionTask
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            on_message(message?);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> tokio_postgres::Config {
        url.parse().unwrap()
    }

    #[test]
    fn only_sslmode_require_asks_for_tls() {
        for url in [
            "postgres://u@h/db",
            "postgres://u@h/db?sslmode=prefer",
            "postgres://u@h/db?sslmode=disable",
            "host=h user=u",
        ] {
            assert!(
                !PgTls::for_config(&parsed(url), None).unwrap().is_tls(),
                "{url}"
            );
        }
        for url in [
            "postgres://u@h/db?sslmode=require",
            "host=h sslmode=require",
        ] {
            assert!(
                PgTls::for_config(&parsed(url), None).unwrap().is_tls(),
                "{url}"
            );
        }
    }

    #[test]
    fn a_root_cert_is_only_read_for_a_url_that_asks_for_tls() {
        let missing = Some(Path::new("/nonexistent/ca.pem"));
        let plain = PgTls::for_config(&parsed("postgres://u@h/db"), missing).unwrap();
        assert!(!plain.is_tls());
        assert!(PgTls::for_config(&parsed("postgres://u@h/db?sslmode=require"), missing).is_err());
    }

    #[test]
    fn bad_root_cert_files_name_the_variable_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let tls = parsed("postgres://u@h/db?sslmode=require");
        for path in [&missing, &empty, &garbage] {
            let e = PgTls::for_config(&tls, Some(path)).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("MANA_AI_PG_ROOT_CERT: "), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
        }
    }
}
