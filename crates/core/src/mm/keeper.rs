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

/// Sends `held` and the end mark over `sock`.
fn send_all(sock: &impl AsRawFd, held: &[Held]) -> io::Result<()> {
    for h in held {
        crest_sys::misc::send_with_fd(sock, &held_msg(h), Some(h.uffd.as_raw_fd()))?;
    }
    crest_sys::misc::send_with_fd(sock, &[END], None).map(drop)
}

/// Receives trackings over `sock` up to the end mark.
fn recv_all(sock: &impl AsRawFd) -> io::Result<Vec<Held>> {
    let mut out = Vec::new();
    loop {
        let mut b = [0u8; 64];
        match crest_sys::misc::recv_with_fd(sock, &mut b)? {
            (1, None) if b[0] == END => return Ok(out),
            (n, Some(fd)) if out.len() < MAX_HELD => match parse_held(&b[..n], fd) {
                Some(h) => out.push(h),
                None => return Err(bad("a malformed tracking message")),
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

/// Starts a keeper holding `held`; returns the name it listens on once it
/// does.
pub fn start(held: &[Held]) -> io::Result<String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("crest-track-{}-{nanos:x}", std::process::id());
    let (mine, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    let inherit = crest_sys::misc::dup_inheritable(&theirs)?;
    let mut child = std::process::Command::new("/proc/self/exe")
        .arg(COMMAND)
        .arg(inherit.as_raw_fd().to_string())
        .arg(&name)
        .env_remove(crest_sys::fault::ENV)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    drop(inherit);
    drop(theirs);
    let answer = send_all(&mine, held).and_then(|()| {
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

/// Takes the trackings from the keeper listening on `name` (which then
/// exits). A keeper of another user is not asked.
pub fn take(name: &str) -> io::Result<Vec<Held>> {
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
    let _ = rustix::process::setsid();
    // (seen as such in ps, rather than as "exe")
    let _ = rustix::thread::set_name(c"crest-keeper");
    let Ok(sock) = crest_sys::misc::own_fd(fd) else {
        return 1;
    };
    // nothing of crest's caller (its RPC socket, its pipes) is kept open
    let _ = crest_sys::proc::close_between(3, (fd as u32).saturating_sub(1));
    let _ = crest_sys::proc::close_from(fd as u32 + 1);
    let listener = match listen(name) {
        Ok(l) => l,
        Err(e) => {
            let _ = crest_sys::misc::send_with_fd(&sock, e.to_string().as_bytes(), None);
            return 1;
        }
    };
    let Ok(held) = recv_all(&sock) else {
        return 1;
    };
    let pidfds: Vec<OwnedFd> = held
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
                if serve(&listener, &held) {
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
fn serve(listener: &OwnedFd, held: &[Held]) -> bool {
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
        Ok((1, None)) if b[0] == GIVE => send_all(&c, held).is_ok(),
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
    }
}
