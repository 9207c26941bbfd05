//! A small log sink: the CLI points it at the log file (`-o`) with a
//! verbosity (`-v`); the rest of crest writes lines to it.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

struct Sink {
    out: Box<dyn Write + Send>,
    level: u32,
}

static SINK: OnceLock<Mutex<Sink>> = OnceLock::new();

/// Sends log lines of `level` and below to `out`.
pub fn init(out: Box<dyn Write + Send>, level: u32) {
    let _ = SINK.set(Mutex::new(Sink { out, level }));
}

/// Writes one line if `level` is enabled.
pub fn line(level: u32, msg: std::fmt::Arguments<'_>) {
    if let Some(m) = SINK.get() {
        if let Ok(mut s) = m.lock() {
            if level <= s.level {
                let _ = writeln!(s.out, "{msg}");
                let _ = s.out.flush();
            }
        }
    }
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::line(3, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::line(4, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::line(2, format_args!($($arg)*)) };
}
