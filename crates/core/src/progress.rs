//! What a long dump or restore shows on a terminal: once it has taken a
//! second (`CREST_PROGRESS_AFTER_MS` sets another delay), one line on
//! stderr, when stderr is a terminal, redrawn at most five times a second:
//! the tasks done of all and the MiB of pages moved. The line is cleared
//! at the end; the log and `--display-stats` keep the figures. This room
//! uses no other.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The delay before the line shows, unless the environment says another.
const AFTER: Duration = Duration::from_secs(1);
/// The least time between two drawings.
const EVERY: Duration = Duration::from_millis(200);

static TASKS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// The action under way: what it is, its tasks, when it began, when the
/// line was drawn last (None: not yet), whether stderr is a terminal.
struct Run {
    what: &'static str,
    total: usize,
    start: Instant,
    after: Duration,
    drawn: Option<Instant>,
}

static RUN: Mutex<Option<Run>> = Mutex::new(None);

/// Starts counting for `what` ("dump", "restore") of `total` tasks; nothing
/// shows when stderr is not a terminal.
pub fn begin(what: &'static str, total: usize) {
    TASKS.store(0, Ordering::Relaxed);
    BYTES.store(0, Ordering::Relaxed);
    let after = std::env::var("CREST_PROGRESS_AFTER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(AFTER, Duration::from_millis);
    let run = std::io::stderr().is_terminal().then(|| Run {
        what,
        total,
        start: Instant::now(),
        after,
        drawn: None,
    });
    *RUN.lock().unwrap_or_else(|p| p.into_inner()) = run;
}

/// One more task done.
pub fn task_done() {
    TASKS.fetch_add(1, Ordering::Relaxed);
    draw();
}

/// `n` more bytes of pages moved.
pub fn pages(n: u64) {
    BYTES.fetch_add(n, Ordering::Relaxed);
    draw();
}

/// Ends the line (cleared when it was drawn).
pub fn end() {
    let run = RUN.lock().unwrap_or_else(|p| p.into_inner()).take();
    if run.is_some_and(|r| r.drawn.is_some()) {
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r\x1b[K");
        let _ = e.flush();
    }
}

fn draw() {
    let Ok(mut guard) = RUN.try_lock() else {
        return; // (another thread draws)
    };
    let Some(run) = guard.as_mut() else {
        return;
    };
    let now = Instant::now();
    let due = now.duration_since(run.start) >= run.after
        && run.drawn.is_none_or(|d| now.duration_since(d) >= EVERY);
    if !due {
        return;
    }
    run.drawn = Some(now);
    let text = line(
        run.what,
        TASKS.load(Ordering::Relaxed),
        run.total,
        BYTES.load(Ordering::Relaxed),
    );
    let mut e = std::io::stderr().lock();
    let _ = write!(e, "\r\x1b[K{text}");
    let _ = e.flush();
}

/// The progress line.
fn line(what: &str, done: usize, total: usize, bytes: u64) -> String {
    format!(
        "crest {what}: {done}/{total} tasks, {} MiB of pages",
        bytes >> 20
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_line() {
        assert_eq!(
            super::line("dump", 3, 300, 5 << 20),
            "crest dump: 3/300 tasks, 5 MiB of pages"
        );
    }
}
