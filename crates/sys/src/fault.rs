//! Numbered fault points, as CRIU's `CRIU_FAULT`: every step of a dump or a
//! restore passes one, and the environment makes crest fail or die there,
//! so that tests can walk them all.
//!
//! `CREST_FAULT=N:kill` kills crest with SIGKILL at the Nth point passed,
//! `CREST_FAULT=N:fail` makes that step fail, `CREST_FAULT=N:term` sends
//! crest a SIGTERM there, and `CREST_FAULT=list`
//! prints every point to stderr as it is passed (`crest fault point N:
//! what`). Points are counted from 1 in the order crest passes them.
//!
//! The same points stop an operation that SIGINT, SIGTERM or SIGHUP asked
//! to end (see [`catch_termination`]): it fails there, and its error path
//! releases the dumped tree or kills the restored one.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    Kill(u32),
    Fail(u32),
    Term(u32),
    List,
}

static PASSED: AtomicU32 = AtomicU32::new(0);
static SPEC: OnceLock<Option<Spec>> = OnceLock::new();

fn parse(s: &str) -> Option<Spec> {
    if s == "list" {
        return Some(Spec::List);
    }
    let (n, action) = s.split_once(':')?;
    let n: u32 = n.trim().parse().ok()?;
    match action.trim() {
        "kill" => Some(Spec::Kill(n)),
        "fail" => Some(Spec::Fail(n)),
        "term" => Some(Spec::Term(n)),
        _ => None,
    }
}

/// The environment variable that names the fault point.
pub const ENV: &str = "CREST_FAULT";

fn spec() -> Option<Spec> {
    *SPEC.get_or_init(|| std::env::var(ENV).ok().as_deref().and_then(parse))
}

/// Why a step stopped at a fault point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Injected {
    #[error("fault injected at point {n} ({what})")]
    Fault { n: u32, what: &'static str },
    #[error("stopped by signal {sig} (at: {what})")]
    Signal { sig: i32, what: &'static str },
}

/// The termination signal that arrived, 0 if none.
static TERMINATED: AtomicI32 = AtomicI32::new(0);
/// A point has failed for it already.
static STOPPED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_termination(sig: libc::c_int) {
    TERMINATED.store(sig, Ordering::Relaxed);
}

/// While it lives, SIGINT, SIGTERM and SIGHUP do not kill crest: the next
/// fault point fails the operation (and a blocking call returns `EINTR`,
/// no `SA_RESTART`). Dropped: their default actions are back.
pub struct TerminationGuard(());

/// `sigaction` for SIGINT, SIGTERM and SIGHUP — catches them (see
/// [`TerminationGuard`]).
pub fn catch_termination() -> std::io::Result<TerminationGuard> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        set_action(sig, on_termination as *const () as usize)?;
    }
    Ok(TerminationGuard(()))
}

fn set_action(sig: i32, handler: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler only stores to an
    // atomic, which is async-signal-safe; no pointer outlives the call.
    let ret = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut())
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for TerminationGuard {
    fn drop(&mut self) {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            let _ = set_action(sig, libc::SIG_DFL);
        }
    }
}

/// The termination signal caught since [`catch_termination`], if any.
pub fn terminated() -> Option<i32> {
    match TERMINATED.load(Ordering::Relaxed) {
        0 => None,
        sig => Some(sig),
    }
}

/// Passes the fault point `what`: with no `CREST_FAULT` set and no
/// termination signal caught, nothing happens.
pub fn point(what: &'static str) -> Result<(), Injected> {
    // once: the error path that follows (putting tasks back, killing
    // what a restore made) passes points too and must run to its end
    if let Some(sig) = terminated() {
        if !STOPPED.swap(true, Ordering::Relaxed) {
            return Err(Injected::Signal { sig, what });
        }
    }
    let Some(spec) = spec() else {
        return Ok(());
    };
    let n = PASSED.fetch_add(1, Ordering::Relaxed) + 1;
    match spec {
        Spec::List => {
            eprintln!("crest fault point {n}: {what}");
            Ok(())
        }
        Spec::Kill(k) if k == n => {
            eprintln!("crest fault point {n}: {what}: killed here");
            let _ = crate::misc::kill(std::process::id() as i32, libc::SIGKILL);
            // SIGKILL is never late for the process itself, but be sure
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        Spec::Fail(k) if k == n => {
            eprintln!("crest fault point {n}: {what}: failed here");
            Err(Injected::Fault { n, what })
        }
        Spec::Term(k) if k == n => {
            eprintln!("crest fault point {n}: {what}: SIGTERM here");
            let _ = crate::misc::kill(std::process::id() as i32, libc::SIGTERM);
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(parse("list"), Some(Spec::List));
        assert_eq!(parse("12:kill"), Some(Spec::Kill(12)));
        assert_eq!(parse("3:fail"), Some(Spec::Fail(3)));
        assert_eq!(parse("4:term"), Some(Spec::Term(4)));
        assert_eq!(parse("3"), None);
        assert_eq!(parse("x:kill"), None);
        assert_eq!(parse("3:explode"), None);
    }
}
