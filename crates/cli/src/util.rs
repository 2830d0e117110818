//! Small helpers shared by the subcommands: units, memory readings, progress display.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `1234567` → `"1.23 MB"` (decimal units, as disk and bandwidth figures are quoted).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// GB/s of `bytes` in `seconds`.
pub fn gbps(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / seconds / 1e9
    } else {
        0.0
    }
}

/// Peak resident set size of this process so far (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|k| k * 1024)
}

/// Current resident set size (VmRSS), in bytes.
pub fn rss_bytes() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|k| k * 1024)
}

fn proc_status_kib(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Resets the peak-RSS mark to the current RSS (Linux `clear_refs` 5), so a benchmark can read
/// each run's own peak. Returns false where the kernel does not allow it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A bar on stderr for `total` units drawn with `template` (indicatif's syntax), or a hidden one
/// (drawing nothing) when stderr is not a terminal, so logs and pipes stay clean.
fn stderr_bar(total: u64, template: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    // Cleared however it ends, an error included, so the error line starts a clean line.
    let bar = indicatif::ProgressBar::new(total).with_finish(indicatif::ProgressFinish::AndClear);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// A bar on stderr for a job of `total_bytes` (advance it with `inc(bytes)`); draws nothing when
/// stderr is not a terminal.
pub fn bytes_bar(total_bytes: u64, label: &str) -> indicatif::ProgressBar {
    let bar = stderr_bar(
        total_bytes,
        "{msg} [{bar:40}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    );
    bar.set_message(label.to_string());
    bar
}

/// A bar on stderr for `total_steps` steps, its message naming the current one; draws nothing
/// when stderr is not a terminal.
pub fn steps_bar(total_steps: u64) -> indicatif::ProgressBar {
    stderr_bar(total_steps, "[{bar:30}] {pos}/{len} {msg} ({elapsed})")
}

/// A progress bar on stderr fed from a byte counter; nothing when stderr is not a terminal.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the bar reads the counter.
const PROGRESS_TICK: Duration = Duration::from_millis(100);

impl Progress {
    /// Starts displaying `counter` against `total_bytes` if stderr is a terminal and `enabled`.
    pub fn start(
        counter: Arc<AtomicU64>,
        total_bytes: u64,
        label: &str,
        enabled: bool,
    ) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        if !enabled || !std::io::stderr().is_terminal() {
            return Progress { stop, thread: None };
        }
        let bar = bytes_bar(total_bytes, label);
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                bar.set_position(counter.load(Ordering::Relaxed));
                // Parked rather than slept: Drop unparks it, so ending the bar never adds a
                // tick to the load time the caller measures.
                std::thread::park_timeout(PROGRESS_TICK);
            }
            bar.finish_and_clear();
        });
        Progress {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(13_476_831_232), "13.48 GB");
        assert_eq!(gbps(2_000_000_000, 2.0), 1.0);
        assert_eq!(gbps(1, 0.0), 0.0);
    }
}
