//! The dump's guard: a small process (`crest __dump-guard FD`, in a session
//! of its own, so that what kills crest or its process group spares it)
//! that takes away what a killed crest leaves behind in the tree it was
//! dumping. crest tells it, before making each:
//!
//! - an established TCP connection about to go in repair mode (a copy of
//!   it): the guard takes it out of repair mode again;
//! - a recovery area about to be mapped in a task (its address, length and
//!   a pidfd of the task): the recovery code returns every thread to its
//!   seized context by itself but cannot unmap the page it runs from, so
//!   the guard seizes the task once no thread is on that code any more and
//!   unmaps the area (`crest_inject::leftover`);
//! - where the thread that maps it is parked while it does, and while it
//!   unmaps it at the end (`crest_inject::parking`): the guard returns a
//!   thread it finds in that loop to its seized state, first.
//!
//! The guard learns that crest is gone when its socket ends without the
//! "done" crest sends when the dump is over (tree killed or released).

use crest_inject::leftover::{self, Removed};
use crest_inject::parking::{self, Parked};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The hidden command that runs the guard.
pub const COMMAND: &str = "__dump-guard";

/// How long the guard keeps trying to take an area away.
const PATIENCE: Duration = Duration::from_secs(10);

struct Guard {
    sock: OwnedFd,
    child: std::process::Child,
}

static GUARD: std::sync::Mutex<Option<Guard>> = std::sync::Mutex::new(None);

/// Messages: a connection that had `SO_REUSEADDR` (`R`) or not (`r`),
/// with its fd; an area (`a`, then pid, address and length, with a pidfd
/// of the task), followed by where its thread is parked (`p`, then
/// [`parking::to_bytes`]) when it is; the end of the dump (`d`).
const CONN_REUSE: u8 = b'R';
const CONN_PLAIN: u8 = b'r';
const AREA: u8 = b'a';
const PARKED: u8 = b'p';
const DONE: u8 = b'd';
const AREA_LEN: usize = 1 + 4 + 8 + 8;

/// Sends one message, starting the guard first if it is not running.
fn send(msg: &[u8], fd: Option<i32>) -> io::Result<()> {
    let mut g = GUARD.lock().unwrap_or_else(|p| p.into_inner());
    if g.is_none() {
        let (mine, child) = crate::helper::spawn(COMMAND, &[])?;
        *g = Some(Guard { sock: mine, child });
    }
    let Some(g) = g.as_ref() else {
        return Ok(());
    };
    crest_sys::misc::send_with_fd(&g.sock, msg, fd).map(drop)
}

/// Hands the guard a copy of connection `c` before it goes in repair mode
/// (`reuse`: it has `SO_REUSEADDR`, which leaving repair mode clears).
pub fn hold_connection(c: &OwnedFd, reuse: bool) -> io::Result<()> {
    let tag = if reuse { CONN_REUSE } else { CONN_PLAIN };
    send(&[tag], Some(c.as_raw_fd()))
}

/// Tells the guard that a recovery area of `len` bytes is about to be
/// mapped at `addr` in task `pid`, by a thread `parked` in the vdso loop
/// meanwhile (and while it unmaps it at the end).
pub fn watch_area(pid: i32, addr: u64, len: u64, parked: Option<&Parked>) -> io::Result<()> {
    let pidfd = crest_sys::misc::pidfd_open(pid)?;
    send(&area_msg(pid, addr, len), Some(pidfd.as_raw_fd()))?;
    if let Some(p) = parked {
        let mut m = vec![PARKED];
        m.extend_from_slice(&parking::to_bytes(p));
        send(&m, None)?;
    }
    Ok(())
}

fn area_msg(pid: i32, addr: u64, len: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(AREA_LEN);
    m.push(AREA);
    m.extend_from_slice(&pid.to_le_bytes());
    m.extend_from_slice(&addr.to_le_bytes());
    m.extend_from_slice(&len.to_le_bytes());
    m
}

fn parse_area(m: &[u8]) -> Option<(i32, u64, u64)> {
    if m.len() != AREA_LEN || m[0] != AREA {
        return None;
    }
    Some((
        i32::from_le_bytes(m[1..5].try_into().ok()?),
        u64::from_le_bytes(m[5..13].try_into().ok()?),
        u64::from_le_bytes(m[13..21].try_into().ok()?),
    ))
}

/// Ends the guard of a dump (once its tree is killed or released): what it
/// holds stays as crest left it.
pub fn end() {
    let g = GUARD.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(mut g) = g {
        let _ = crest_sys::misc::send_with_fd(&g.sock, &[DONE], None);
        drop(g.sock);
        let _ = g.child.wait();
    }
}

/// An area the guard watches, and the thread that maps it when it is
/// parked meanwhile.
struct Area {
    pid: i32,
    addr: u64,
    len: u64,
    pidfd: OwnedFd,
    parked: Option<Parked>,
}

/// The guard's whole life: returns its exit code.
pub fn run(fd: i32) -> i32 {
    let _ = rustix::process::setsid();
    // raised by the same exec as crest: no more than the caller's power
    if let Err(e) = crate::privilege::Caller::detect(false).and_then(|c| c.confine()) {
        eprintln!("crest: the dump's guard: {e}");
        return 1;
    }
    let Ok(sock) = crest_sys::misc::own_fd(fd) else {
        return 1;
    };
    let mut conns: Vec<(OwnedFd, bool)> = Vec::new();
    let mut areas: Vec<Area> = Vec::new();
    loop {
        let mut b = [0u8; 512];
        match crest_sys::misc::recv_with_fd(&sock, &mut b) {
            Ok((1, Some(c))) if b[0] == CONN_REUSE || b[0] == CONN_PLAIN => {
                conns.push((c, b[0] == CONN_REUSE));
            }
            Ok((n, Some(pidfd))) if parse_area(&b[..n]).is_some() => {
                if let Some((pid, addr, len)) = parse_area(&b[..n]) {
                    areas.push(Area {
                        pid,
                        addr,
                        len,
                        pidfd,
                        parked: None,
                    });
                }
            }
            Ok((n, None)) if n > 1 && b[0] == PARKED => {
                if let (Some(a), Some(p)) = (areas.last_mut(), parking::from_bytes(&b[1..n])) {
                    a.parked = Some(p);
                }
            }
            Ok((1, _)) if b[0] == DONE => return 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // crest is gone: nobody will clean up but us
            _ => break,
        }
    }
    for (c, reuse) in &conns {
        crest_sys::net::tcp_repair_off(c, *reuse);
    }
    let deadline = Instant::now() + PATIENCE;
    let mut failed = 0;
    for a in &areas {
        let exited = || crest_sys::misc::pidfd_exited(&a.pidfd);
        // a thread in the vdso loop first: it is on no area code, and would
        // spin there for good
        if let Some(p) = &a.parked {
            if let Err(e) = leftover::return_parked(a.pid, p, &exited, deadline) {
                eprintln!("crest: the dump's guard: pid {}: {e}", a.pid);
                failed += 1;
            }
        }
        match leftover::remove_area(a.pid, a.addr, a.len, &exited, deadline) {
            Ok(Removed::Unmapped | Removed::Absent | Removed::Replaced) => {}
            Err(e) => {
                eprintln!("crest: the dump's guard: pid {}: {e}", a.pid);
                failed += 1;
            }
        }
    }
    i32::from(failed > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_message_round_trip() {
        let m = area_msg(4242, 0x7f00_0000_1000, 0x3000);
        assert_eq!(parse_area(&m), Some((4242, 0x7f00_0000_1000, 0x3000)));
        assert_eq!(parse_area(&m[..m.len() - 1]), None);
        assert_eq!(parse_area(&[DONE]), None);
    }
}
