//! Unix sockets of every type (stream, datagram, seqpacket).
//!
//! Dump: sock_diag gives each socket's name, peer, pending connections and
//! queue lengths; crest's copy of the fd (`pidfd_getfd`) gives the options
//! and, with `MSG_PEEK` from offset 0 (`SO_PEEK_OFF`, put back after), the
//! queued data without consuming it (`sk-queues.img`). A client whose
//! connection is not accepted yet is recorded with the listener as its
//! peer. A socket connected to one outside the dumped tree is refused,
//! naming the other socket.
//!
//! Restore, inside the task: a connected pair comes back with
//! `socketpair`, a listener with `bind` + `listen`, a pending client or a
//! one-way datagram socket with `connect` to its peer's name; then crest
//! refills each receive queue by sending from the peer (or, for a named
//! unconnected receiver, from a throwaway socket), sets the options and
//! the shutdown state.
//!
//! Known limits: an accepted socket is not bound again (the listener holds
//! the name), so a client's `getpeername` comes back empty; the senders of
//! queued datagrams are not kept.

mod dump;
mod restore;

pub use dump::write_queues;
pub use restore::open;

use super::context::sockets::Queued;
use super::context::{FlightCopy, RestoreFiles};
use super::kept::{self, Kept};
use super::skopts;
use super::sockdiag::{self, UnixDiag};
use super::table::FileTable;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::remote::Remote;
use crest_images::pb::{FdTypes, FileEntry, FilePermsEntry, FownEntry, SkPacketEntry, UnixSkEntry};
use crest_images::MAX_QUEUE;
use crest_images::{magic, names};
use crest_inject::{nr, Tracee};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

const TCP_ESTABLISHED: u32 = 1;
const TCP_LISTEN: u32 = 10;
const TCP_CLOSE: u32 = 7;
/// `unix_sk_entry.uflags`: a socket outside the tree (CRIU's USK_EXTERN),
/// the peer a datagram socket connects to by name again.
const USK_EXTERN: u32 = 1;

/// Most packets crest keeps from one socket's queue (bytes:
/// `crest_images::MAX_QUEUE`).
const MAX_PACKETS: usize = 4096;

fn netns_of(pid: i32) -> Result<u64, DumpError> {
    let m = std::fs::metadata(format!("/proc/{pid}/ns/net")).at(pid, "stat the net namespace")?;
    Ok(m.ino())
}

fn show_name(name: &[u8]) -> String {
    if name.first() == Some(&0) {
        format!("@{}", String::from_utf8_lossy(&name[1..]))
    } else {
        String::from_utf8_lossy(name).into_owned()
    }
}
