//! The holder of a lazy-pages daemon's userfaultfds (`crest
//! __lazy-holder FD`, in a session of its own): a second copy of each, so
//! that a daemon killed outright does not release them before the kernel
//! kills its tree.
//!
//! A process's files close before its tracees are killed
//! (`PTRACE_O_EXITKILL` acts last in the exit): with the daemon's copies
//! alone, a task waiting on a fault would be woken by the release and read
//! a zero page where its page was, for the moment before it dies. With a
//! copy held here the faults keep waiting until the kill. Once every page
//! is in, the daemon tells the holder to let go; when the daemon is gone
//! without saying so, the holder waits a moment (the kills come in the
//! same exit) and lets go.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

/// The hidden command that runs the holder.
pub const COMMAND: &str = "__lazy-holder";

/// Messages: a userfaultfd to hold (`h`, the fd beside it), let go (`r`).
const HOLD: u8 = b'h';
const RELEASE: u8 = b'r';
/// Most userfaultfds one holder keeps (one per address space).
const MAX_HELD: usize = 1 << 16;
/// How long a holder whose daemon died keeps the fds: the kills of the
/// tree come in the same exit, microseconds later.
const GRACE: Duration = Duration::from_millis(500);

/// The daemon's end of a holder.
pub struct Holder {
    sock: OwnedFd,
}

impl Holder {
    /// Starts a holder.
    pub fn start() -> io::Result<Holder> {
        let (mine, child) = crate::helper::spawn(COMMAND, &[])?;
        // (it outlives the daemon when the daemon is killed: pid 1 reaps
        // it then)
        std::mem::forget(child);
        Ok(Holder { sock: mine })
    }

    /// Gives the holder a copy of `uffd`.
    pub fn hold(&self, uffd: &OwnedFd) -> io::Result<()> {
        crest_sys::misc::send_with_fd(&self.sock, &[HOLD], Some(uffd.as_raw_fd())).map(drop)
    }

    /// Tells the holder to let every fd go, and waits until it has.
    pub fn release(self) {
        if crest_sys::misc::send_with_fd(&self.sock, &[RELEASE], None).is_ok() {
            let mut b = [0u8; 8];
            let _ = rustix::net::recv(&self.sock, &mut b, rustix::net::RecvFlags::empty());
        }
    }
}

/// The holder's whole life: returns its exit code.
pub fn run(fd: i32) -> i32 {
    let Ok(sock) = crate::helper::become_helper(fd, Some(c"crest-lazy-hold")) else {
        return 1;
    };
    let mut held: Vec<OwnedFd> = Vec::new();
    loop {
        let mut b = [0u8; 8];
        match crest_sys::misc::recv_with_fd(&sock, &mut b) {
            Ok((1, Some(f))) if b[0] == HOLD && held.len() < MAX_HELD => held.push(f),
            Ok((1, None)) if b[0] == RELEASE => {
                drop(held);
                let _ = rustix::net::send(&sock, &[RELEASE], rustix::net::SendFlags::NOSIGNAL);
                return 0;
            }
            Ok((n, _)) if n > 0 => continue,
            // the daemon is gone without a word: its tree is being killed
            _ => {
                std::thread::sleep(GRACE);
                return 0;
            }
        }
    }
}
