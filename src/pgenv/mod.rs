//! Finding or starting a Postgres for the tests, the benchmark and the demo.
//!
//! Order ([`discover`]): `DATABASE_URL` / `SYNC_DATABASE_URL` (a superuser
//! URL) when set; else the libpq environment; else 127.0.0.1:5432 as
//! `postgres` if it lets us in; else a throwaway cluster made with
//! `initdb`/`pg_ctl` (found on PATH or under `/usr/lib/postgresql/*/bin`) in
//! a temp dir. initdb refuses to run as root,
//! so as root the cluster runs as the `postgres` user (or `nobody`). A
//! watcher process stops the cluster and removes its directory when the
//! process that started it exits, however it exits.
//!
//! Each caller then gets its own database ([`TempDb`]), dropped afterwards,
//! and the roles that play the sync server and the mana-ai service.

pub mod discover;
pub mod pgpass;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use tokio_postgres::NoTls;

/// The mana_sync side of the contract (section 1), for databases we create.
pub const SYNC_FIXTURE: &str = include_str!("../../fixtures/mana_sync.sql");

/// A Postgres server we may create databases and roles on.
#[derive(Debug, Clone)]
pub struct PgServer {
    /// Connection settings of a superuser, without a database name.
    admin: tokio_postgres::Config,
    /// Set when we started the server ourselves.
    pub cluster_dir: Option<PathBuf>,
}

/// Quotes a libpq keyword/value setting.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl PgServer {
    /// Finds a server as [`discover`] describes, from the process environment.
    pub fn discover() -> anyhow::Result<PgServer> {
        discover::discover_with(&|k| std::env::var(k).ok())
    }

    /// Starts a throwaway cluster that also accepts TLS with `tls`'s
    /// certificate (the TLS tests; plain connections still work).
    pub fn start_with_tls(tls: &ServerTls) -> anyhow::Result<PgServer> {
        start_cluster(Some(tls))
    }

    /// Starts a throwaway cluster that, like a stock Debian server, asks for
    /// a password (scram-sha-256) on TCP; `postgres` has `password`.
    pub fn start_with_password(password: &str) -> anyhow::Result<PgServer> {
        start_cluster_with(None, Some(password))
    }

    /// The server's host and port (the first of each).
    pub fn host_port(&self) -> (String, u16) {
        let host = match self.admin.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".into(),
        };
        (
            host,
            self.admin.get_ports().first().copied().unwrap_or(5432),
        )
    }

    /// Starts a throwaway cluster of its own, whatever else answers (tests
    /// that restart the server).
    pub fn start_throwaway() -> anyhow::Result<PgServer> {
        start_cluster(None)
    }

    /// Restarts a cluster this process started (`pg_ctl restart -m fast`,
    /// same options): every connection to it is cut.
    pub fn restart(&self) -> anyhow::Result<()> {
        let dir = self
            .cluster_dir
            .as_ref()
            .context("only a cluster this process started can be restarted")?;
        let bin = find_pg_bin().context("pg_ctl not found")?;
        let out = command_as(cluster_user().as_deref(), &bin.join("pg_ctl"))
            .args(["-w", "-m", "fast", "-l"])
            .arg(dir.join("log"))
            .arg("-D")
            .arg(dir.join("data"))
            .arg("restart")
            .output()
            .context("running pg_ctl restart")?;
        if !out.status.success() {
            bail!(
                "pg_ctl restart failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A libpq connection string for `dbname`, as the admin or as `user`.
    pub fn conninfo(&self, dbname: &str, user: Option<(&str, &str)>) -> String {
        let mut parts = Vec::new();
        for host in self.admin.get_hosts() {
            match host {
                tokio_postgres::config::Host::Tcp(h) => parts.push(format!("host={}", quote(h))),
                tokio_postgres::config::Host::Unix(p) => {
                    parts.push(format!("host={}", quote(&p.to_string_lossy())))
                }
            }
        }
        if let Some(port) = self.admin.get_ports().first() {
            parts.push(format!("port={port}"));
        }
        match user {
            Some((name, password)) => {
                parts.push(format!("user={}", quote(name)));
                parts.push(format!("password={}", quote(password)));
            }
            None => {
                if let Some(u) = self.admin.get_user() {
                    parts.push(format!("user={}", quote(u)));
                }
                if let Some(p) = self.admin.get_password() {
                    parts.push(format!("password={}", quote(&String::from_utf8_lossy(p))));
                }
            }
        }
        parts.push(format!("dbname={}", quote(dbname)));
        parts.join(" ")
    }

    pub async fn connect_admin(&self, dbname: &str) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.conninfo(dbname, None)).await
    }
}

/// Connects and drives the connection on a task.
pub async fn connect(conninfo: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .context("connecting to Postgres")?;
    tokio::spawn(connection);
    Ok(client)
}

/// `initdb` and `pg_ctl`: on PATH, else the newest /usr/lib/postgresql/*/bin.
pub fn find_pg_bin() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The unprivileged user a root process runs the cluster as.
fn cluster_user() -> Option<String> {
    if !is_root() {
        return None;
    }
    for user in ["postgres", "nobody"] {
        let known = Command::new("id")
            .arg("-u")
            .arg(user)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if known {
            return Some(user.to_string());
        }
    }
    Some("nobody".into())
}

/// Runs `program args` as `user` (via runuser) or as ourselves.
fn command_as(user: Option<&str>, program: &Path) -> Command {
    match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.arg("-u").arg(u).arg("--").arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A server certificate and its key, PEM.
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
}

fn start_cluster(tls: Option<&ServerTls>) -> anyhow::Result<PgServer> {
    start_cluster_with(tls, None)
}

fn start_cluster_with(tls: Option<&ServerTls>, password: Option<&str>) -> anyhow::Result<PgServer> {
    let bin = find_pg_bin().context(
        "no Postgres found: set DATABASE_URL, run one on 127.0.0.1:5432, or install the server \
         (Debian: apt-get install postgresql) so initdb and pg_ctl can start a throwaway cluster",
    )?;
    let user = cluster_user();
    let dir = tempfile::Builder::new()
        .prefix("mana-ai-pg-")
        .tempdir()
        .context("creating a temp dir for the cluster")?
        .keep();
    let mut options = String::new();
    if let Some(tls) = tls {
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        std::fs::write(&cert, &tls.cert_pem).context("writing the server certificate")?;
        std::fs::write(&key, &tls.key_pem).context("writing the server key")?;
        // Postgres refuses a key others can read.
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        options = format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cert.display(),
            key.display()
        );
    }
    if let Some(u) = &user {
        let status = Command::new("chown").arg("-R").arg(u).arg(&dir).status()?;
        if !status.success() {
            bail!("chown {} to {u} failed", dir.display());
        }
    }
    let data = dir.join("data");
    let mut initdb = command_as(user.as_deref(), &bin.join("initdb"));
    match password {
        Some(password) => {
            let file = dir.join("pwfile");
            std::fs::write(&file, password).context("writing the password file")?;
            if let Some(u) = &user {
                Command::new("chown").arg(u).arg(&file).status()?;
            }
            initdb.args(["-A", "scram-sha-256", "--pwfile"]).arg(file);
        }
        None => {
            initdb.args(["-A", "trust"]);
        }
    }
    let out = initdb
        .args(["-U", "postgres", "--no-sync", "-E", "UTF8", "-D"])
        .arg(&data)
        .output()
        .context("running initdb")?;
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let port = free_port()?;
    let options = format!(
        "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c max_connections=200{options}",
        dir.display()
    );
    let out = command_as(user.as_deref(), &bin.join("pg_ctl"))
        .args(["-w", "-l"])
        .arg(dir.join("log"))
        .arg("-D")
        .arg(&data)
        .args(["-o", &options, "start"])
        .output()
        .context("running pg_ctl start")?;
    if !out.status.success() {
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        bail!(
            "pg_ctl start failed: {}{log}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    spawn_reaper(&bin, user.as_deref(), &dir)?;
    let mut admin = tokio_postgres::Config::new();
    admin.host("127.0.0.1").port(port).user("postgres");
    if let Some(password) = password {
        admin.password(password);
    }
    Ok(PgServer {
        admin,
        cluster_dir: Some(dir),
    })
}

/// A shell that waits for this process to exit, then stops the cluster and
/// removes its directory: statics have no destructors, and a test binary or
/// a demo killed by a signal must not leave a server behind.
fn spawn_reaper(bin: &Path, user: Option<&str>, dir: &Path) -> anyhow::Result<()> {
    let pg_ctl = bin.join("pg_ctl");
    let stop = match user {
        Some(u) => format!(
            "runuser -u {u} -- {} -D {}/data -m immediate stop",
            pg_ctl.display(),
            dir.display()
        ),
        None => format!(
            "{} -D {}/data -m immediate stop",
            pg_ctl.display(),
            dir.display()
        ),
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        dir = dir.display()
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting the cluster watcher")?;
    Ok(())
}

/// Password of the LOGIN roles created for tests and the demo (on a
/// throwaway or local development server only): made from a random secret
/// kept in this user's cache directory (mode 0600), so every process of this
/// user agrees on it and nobody else knows it; a random one per process when
/// there is no cache directory to keep it in.
pub fn role_password() -> &'static str {
    static PASSWORD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PASSWORD
        .get_or_init(|| kept_secret().unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()))
}

fn kept_secret() -> Option<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let file = cache.join("mana-ai").join("local-role-password");
    if let Some(secret) = std::fs::read_to_string(&file)
        .ok()
        .filter(|s| s.trim().len() >= 32)
    {
        return Some(secret.trim().to_string());
    }
    std::fs::create_dir_all(file.parent()?).ok()?;
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .and_then(|mut f| f.write_all(secret.as_bytes()));
    match created {
        Ok(()) => Some(secret),
        // Another process made it first: use theirs.
        Err(_) => std::fs::read_to_string(&file)
            .ok()
            .map(|s| s.trim().to_string()),
    }
}

/// The sync server's stand-in: an ordinary role that writes sync_changes.
pub const SYNC_ROLE: &str = "mana_ai_local_sync";
/// The service's role: NOSUPERUSER NOBYPASSRLS, given only what install.sql grants.
pub const SERVICE_ROLE: &str = "mana_ai_local_service";

/// A database of our own with the mana_sync fixture, dropped on drop.
pub struct TempDb {
    pub server: PgServer,
    pub name: String,
}

impl TempDb {
    /// Creates a fresh database with `sync_changes` (FORCE RLS), the two
    /// roles, and the grants the sync role needs. Triggers are not installed.
    pub async fn create(server: &PgServer, prefix: &str) -> anyhow::Result<TempDb> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let admin = server.connect_admin("postgres").await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        let db = TempDb {
            server: server.clone(),
            name,
        };
        let client = db.admin().await?;
        // Roles are cluster-wide and tests run in parallel: one thread of
        // this process at a time (a concurrent ALTER ROLE fails), and a
        // race with another process retried.
        static ROLES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one_at_a_time = ROLES.lock().await;
        let password = role_password();
        for role in [SYNC_ROLE, SERVICE_ROLE] {
            // An existing role gets this user's password (an older one may
            // have been created with a password everyone knew).
            let sql = format!(
                "DO $$ BEGIN
                   CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '{password}';
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN
                   ALTER ROLE {role} PASSWORD '{password}';
                 END $$;"
            );
            // Another process doing the same at once makes one of them fail
            // ("tuple concurrently updated"): try again.
            let mut attempt = 0;
            while let Err(e) = client.batch_execute(&sql).await {
                attempt += 1;
                if attempt == 5 {
                    return Err(e).with_context(|| format!("creating role {role}"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
            }
        }
        client
            .batch_execute(SYNC_FIXTURE)
            .await
            .context("creating sync_changes")?;
        client
            .batch_execute(&format!(
                "GRANT SELECT, INSERT ON public.sync_changes TO {SYNC_ROLE}"
            ))
            .await?;
        Ok(db)
    }

    /// Connection string as the superuser.
    pub fn admin_url(&self) -> String {
        self.server.conninfo(&self.name, None)
    }

    /// Connection string as `role`.
    pub fn url_as(&self, role: &str) -> String {
        self.server
            .conninfo(&self.name, Some((role, role_password())))
    }

    pub async fn admin(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.server.connect_admin(&self.name).await
    }

    pub async fn connect_as(&self, role: &str) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.url_as(role)).await
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        // Drop runs inside a tokio runtime, which cannot block on itself:
        // drop the database from a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let admin = server.connect_admin("postgres").await?;
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
    }
}
