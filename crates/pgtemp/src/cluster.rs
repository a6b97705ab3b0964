//! Throwaway clusters: `initdb` + `pg_ctl` in a temp dir, run as an
//! unprivileged user when we are root, stopped and removed by a watcher
//! process when the process that started them exits.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::PgServer;

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
pub(crate) fn cluster_user() -> Option<String> {
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
pub(crate) fn command_as(user: Option<&str>, program: &Path) -> Command {
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

pub(crate) fn start_cluster(tls: Option<&ServerTls>) -> anyhow::Result<PgServer> {
    start_cluster_with(tls, None)
}

pub(crate) fn start_cluster_with(
    tls: Option<&ServerTls>,
    password: Option<&str>,
) -> anyhow::Result<PgServer> {
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
    let tls_options = match tls {
        Some(tls) => write_tls(&dir, tls)?,
        None => String::new(),
    };
    if let Some(u) = &user {
        let status = Command::new("chown").arg("-R").arg(u).arg(&dir).status()?;
        if !status.success() {
            bail!("chown {} to {u} failed", dir.display());
        }
    }
    initdb(&bin, user.as_deref(), &dir, password)?;
    let port = free_port()?;
    let options = format!(
        "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c max_connections=200{tls_options}",
        dir.display()
    );
    pg_ctl_start(&bin, user.as_deref(), &dir, &options)?;
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

/// Writes the server's certificate and key into `dir`; returns the server
/// options that turn TLS on with them.
fn write_tls(dir: &Path, tls: &ServerTls) -> anyhow::Result<String> {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, &tls.cert_pem).context("writing the server certificate")?;
    std::fs::write(&key, &tls.key_pem).context("writing the server key")?;
    // Postgres refuses a key others can read.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(format!(
        " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
        cert.display(),
        key.display()
    ))
}

/// `initdb` into `dir/data`: trust, or scram-sha-256 with `password` for `postgres`.
fn initdb(
    bin: &Path,
    user: Option<&str>,
    dir: &Path,
    password: Option<&str>,
) -> anyhow::Result<()> {
    let mut initdb = command_as(user, &bin.join("initdb"));
    match password {
        Some(password) => {
            let file = dir.join("pwfile");
            std::fs::write(&file, password).context("writing the password file")?;
            if let Some(u) = user {
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
        .arg(dir.join("data"))
        .output()
        .context("running initdb")?;
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `pg_ctl start` on `dir/data` with the server `options`; waits until it accepts.
fn pg_ctl_start(bin: &Path, user: Option<&str>, dir: &Path, options: &str) -> anyhow::Result<()> {
    let out = command_as(user, &bin.join("pg_ctl"))
        .args(["-w", "-l"])
        .arg(dir.join("log"))
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-o", options, "start"])
        .output()
        .context("running pg_ctl start")?;
    if !out.status.success() {
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        bail!(
            "pg_ctl start failed: {}{log}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
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
