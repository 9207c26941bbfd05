//! The keeper of memory tracking between dumps: a small process (`crest
//! __track-keeper FD NAME`, in a session of its own) that holds the
//! userfaultfds of a tree's tracking ([`super::track`]) from one dump to
//! the next, so that the tasks' fd tables stay theirs.
//!
//! It listens on the abstract unix socket NAME (recorded in the images'
//! inventory) and hands every userfaultfd, with the task's pid and start
//! time, to the first crest of the same user that asks, then exits. It
//! exits too once every task it tracks has exited. Killing it ends the
//! tracking: the kernel unregisters everything as the last copy of each
//! userfaultfd closes, and the next dump saves every page.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

/// The hidden command that runs the keeper.
pub const COMMAND: &str = "__track-keeper";

/// Messages: one tracking (`h`, then pid and start time, with its
/// userfaultfd), the end of a list (`e`), the keeper listening (`r`), a
/// request for the list (`g`).
const HELD: u8 = b'h';
const END: u8 = b'e';
const READY: u8 = b'r';
const GIVE: u8 = b'g';
const HELD_LEN: usize = 1 + 4 + 8;
/// A restart record (`x`, then pid, tid, call, rip and six arguments).
const RESTART: u8 = b'x';
const RESTART_LEN: usize = 1 + 4 + 4 + 8 + 8 + 6 * 8;
/// Most trackings one keeper holds (one per process of a tree).
const MAX_HELD: usize = 1 << 16;

/// The tracking of one process.
pub struct Held {
    pub pid: i32,
    /// Its start time (`/proc/PID/stat` field 22): a pid used again is
    /// another process.
    pub start_time: u64,
    pub uffd: OwnedFd,
}

/// A thread that a round left in a call the kernel restarts through
/// `restart_syscall` (which hides the call's number from the next round):
/// the call, where it was made and its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    pub pid: i32,
    pub tid: i32,
    pub nr: u64,
    pub rip: u64,
    pub args: [u64; 6],
}

fn restart_msg(r: &Restart) -> Vec<u8> {
    let mut m = Vec::with_capacity(RESTART_LEN);
    m.push(RESTART);
    m.extend_from_slice(&r.pid.to_le_bytes());
    m.extend_from_slice(&r.tid.to_le_bytes());
    m.extend_from_slice(&r.nr.to_le_bytes());
    m.extend_from_slice(&r.rip.to_le_bytes());
    for a in r.args {
        m.extend_from_slice(&a.to_le_bytes());
    }
    m
}

fn parse_restart(m: &[u8]) -> Option<Restart> {
    if m.len() != RESTART_LEN || m[0] != RESTART {
        return None;
    }
    let u64_at = |o: usize| {
        m.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let mut args = [0u64; 6];
    for (i, a) in args.iter_mut().enumerate() {
        *a = u64_at(25 + 8 * i)?;
    }
    Some(Restart {
        pid: i32::from_le_bytes(m[1..5].try_into().ok()?),
        tid: i32::from_le_bytes(m[5..9].try_into().ok()?),
        nr: u64_at(9)?,
        rip: u64_at(17)?,
        args,
    })
}

/// What a keeper holds: the trackings and the restart records.
#[derive(Default)]
pub struct Kept {
    pub held: Vec<Held>,
    pub restarts: Vec<Restart>,
}

fn held_msg(h: &Held) -> Vec<u8> {
    let mut m = Vec::with_capacity(HELD_LEN);
    m.push(HELD);
    m.extend_from_slice(&h.pid.to_le_bytes());
    m.extend_from_slice(&h.start_time.to_le_bytes());
    m
}

fn parse_held(m: &[u8], uffd: OwnedFd) -> Option<Held> {
    if m.len() != HELD_LEN || m[0] != HELD {
        return None;
    }
    Some(Held {
        pid: i32::from_le_bytes(m[1..5].try_into().ok()?),
        start_time: u64::from_le_bytes(m[5..13].try_into().ok()?),
        uffd,
    })
}

/// Sends what is kept and the end mark over `sock`.
fn send_all(sock: &impl AsRawFd, kept: &Kept) -> io::Result<()> {
    for h in &kept.held {
        crest_sys::misc::send_with_fd(sock, &held_msg(h), Some(h.uffd.as_raw_fd()))?;
    }
    for r in &kept.restarts {
        crest_sys::misc::send_with_fd(sock, &restart_msg(r), None)?;
    }
    crest_sys::misc::send_with_fd(sock, &[END], None).map(drop)
}

/// Receives what is kept over `sock`, up to the end mark.
fn recv_all(sock: &impl AsRawFd) -> io::Result<Kept> {
    let mut out = Kept::default();
    loop {
        let mut b = [0u8; 128];
        let full = out.held.len() + out.restarts.len() >= MAX_HELD;
        match crest_sys::misc::recv_with_fd(sock, &mut b)? {
            (1, None) if b[0] == END => return Ok(out),
            (n, Some(fd)) if !full => match parse_held(&b[..n], fd) {
                Some(h) => out.held.push(h),
                None => return Err(bad("a malformed tracking message")),
            },
            (n, None) if !full && n > 0 && b[0] == RESTART => match parse_restart(&b[..n]) {
                Some(r) => out.restarts.push(r),
                None => return Err(bad("a malformed restart record")),
            },
            (0, _) => return Err(bad("the keeper's socket closed before the end")),
            _ => return Err(bad("an unexpected message")),
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("tracking keeper: {what}"),
    )
}

/// Starts a keeper holding `kept`; returns the name it listens on once it
/// does.
pub fn start(kept: &Kept) -> io::Result<String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("crest-track-{}-{nanos:x}", std::process::id());
    let (mine, mut child) = crate::helper::spawn(COMMAND, &[&name])?;
    let answer = send_all(&mine, kept).and_then(|()| {
        let mut b = [0u8; 256];
        match crest_sys::misc::recv_with_fd(&mine, &mut b)? {
            (1, None) if b[0] == READY => Ok(()),
            (n, _) => Err(bad(&String::from_utf8_lossy(&b[..n]))),
        }
    });
    if let Err(e) = answer {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    // (the keeper's parent exits before it: pid 1 reaps it)
    std::mem::forget(child);
    Ok(name)
}

/// Takes the trackings and restart records from the keeper listening on
/// `name` (which then exits). A keeper of another user is not asked.
pub fn take(name: &str) -> io::Result<Kept> {
    use rustix::net::{self, AddressFamily, SocketFlags, SocketType};
    let sock = net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let addr = net::SocketAddrUnix::new_abstract_name(name.as_bytes())?;
    net::connect(&sock, &addr)?;
    let peer = net::sockopt::socket_peercred(&sock)?;
    if peer.uid != rustix::process::geteuid() {
        return Err(bad("it runs as another user"));
    }
    crest_sys::misc::send_with_fd(&sock, &[GIVE], None)?;
    recv_all(&sock)
}

/// The keeper's whole life: returns its exit code.
pub fn run(fd: i32, name: &str) -> i32 {
    // (seen as such in ps, rather than as "exe")
    let Ok(sock) = crate::helper::become_helper(fd, Some(c"crest-keeper")) else {
        return 1;
    };
    let listener = match listen(name) {
        Ok(l) => l,
        Err(e) => {
            let _ = crest_sys::misc::send_with_fd(&sock, e.to_string().as_bytes(), None);
            return 1;
        }
    };
    let Ok(kept) = recv_all(&sock) else {
        return 1;
    };
    let pidfds: Vec<OwnedFd> = kept
        .held
        .iter()
        .filter_map(|h| crest_sys::misc::pidfd_open(h.pid).ok())
        .collect();
    if crest_sys::misc::send_with_fd(&sock, &[READY], None).is_err() {
        return 1;
    }
    drop(sock);
    loop {
        match crest_sys::misc::poll_one(&listener, libc::POLLIN, 1000) {
            Ok(0) => {
                if pidfds.iter().all(crest_sys::misc::pidfd_exited) {
                    return 0;
                }
            }
            Ok(_) => {
                if serve(&listener, &kept) {
                    return 0;
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Listens on the abstract name.
fn listen(name: &str) -> io::Result<OwnedFd> {
    use rustix::net::{self, AddressFamily, SocketFlags, SocketType};
    let l = net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    net::bind(
        &l,
        &net::SocketAddrUnix::new_abstract_name(name.as_bytes())?,
    )?;
    net::listen(&l, 4)?;
    Ok(l)
}

/// Answers one connection: true once the trackings are handed over.
fn serve(listener: &OwnedFd, kept: &Kept) -> bool {
    let Ok(c) = rustix::net::accept_with(listener, rustix::net::SocketFlags::CLOEXEC) else {
        return false;
    };
    let mine = rustix::process::geteuid();
    if !rustix::net::sockopt::socket_peercred(c.as_fd()).is_ok_and(|p| p.uid == mine) {
        return false;
    }
    let mut b = [0u8; 8];
    match crest_sys::misc::poll_one(&c, libc::POLLIN, 5000) {
        Ok(n) if n != 0 => {}
        _ => return false,
    }
    match crest_sys::misc::recv_with_fd(&c, &mut b) {
        Ok((1, None)) if b[0] == GIVE => send_all(&c, kept).is_ok(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_messages_round_trip() {
        let fd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let h = Held {
            pid: 4242,
            start_time: 1 << 40,
            uffd: fd,
        };
        let m = held_msg(&h);
        let fd2 = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let back = parse_held(&m, fd2).unwrap();
        assert_eq!((back.pid, back.start_time), (4242, 1 << 40));
        let fd3 = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        assert!(parse_held(&m[..5], fd3).is_none());
        let r = Restart {
            pid: 7,
            tid: 8,
            nr: 230,
            rip: 0x7f00_0000_1234,
            args: [1, 0, 0x7ffd_0000, 0x7ffd_0010, 5, 6],
        };
        assert_eq!(parse_restart(&restart_msg(&r)), Some(r));
        assert!(parse_restart(&restart_msg(&r)[..40]).is_none());
    }
}
