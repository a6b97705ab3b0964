//! Log capture for tests that prove something never reaches a log line:
//! one capturing subscriber for the whole test binary (all tests share the
//! process), installed by whichever test calls [`capture_logs`] first.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// Every formatted log line of this test binary.
fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// Installs the capturing subscriber once for the whole binary. Every test
/// of a binary that uses it calls it first, so it is installed before any
/// service code logs (the common `setup()` only installs one when RUST_LOG
/// is set, with `try_init`, which then loses to this one).
pub fn capture_logs() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("mana_ai=debug"))
            .with_ansi(false)
            .with_writer(Capture(log_buffer().clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this binary");
    });
}

/// Everything logged so far in this binary.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&log_buffer().lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}
