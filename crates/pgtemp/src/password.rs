//! The password of the LOGIN roles made for tests and the demo.

use std::path::PathBuf;

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
