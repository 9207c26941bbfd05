//! crest's helper processes (the dump's guard, the keeper of memory
//! tracking, the holder of a lazy-pages daemon's userfaultfds): each is
//! crest again (`/proc/self/exe COMMAND FD ...`), joined to its starter by
//! a SOCK_SEQPACKET socket pair, with nothing else of crest's open.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// Starts `crest COMMAND FD ARGS...` (FD: its end of a new socket pair;
/// no stdio; crest's fault points not passed on): crest's end and the
/// child.
pub fn spawn(command: &str, args: &[&str]) -> io::Result<(OwnedFd, std::process::Child)> {
    let (mine, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    let inherit = crest_sys::misc::dup_inheritable(&theirs)?;
    let child = std::process::Command::new("/proc/self/exe")
        .arg(command)
        .arg(inherit.as_raw_fd().to_string())
        .args(args)
        // the fault points are crest's, not the helper's
        .env_remove(crest_sys::fault::ENV)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    drop(inherit);
    drop(theirs);
    Ok((mine, child))
}

/// The helper's side, first thing: a session of its own, its name in
/// `ps` (`name`, if given), its socket (`fd`), every other fd but stdio
/// closed (nothing of crest's caller, such as its RPC socket or pipes,
/// kept open).
pub fn become_helper(fd: i32, name: Option<&std::ffi::CStr>) -> io::Result<OwnedFd> {
    let _ = rustix::process::setsid();
    if let Some(n) = name {
        let _ = rustix::thread::set_name(n);
    }
    let sock = crest_sys::misc::own_fd(fd)?;
    let _ = crest_sys::proc::close_between(3, (fd as u32).saturating_sub(1));
    let _ = crest_sys::proc::close_from(fd as u32 + 1);
    Ok(sock)
}
