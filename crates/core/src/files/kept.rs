//! Sockets and terminals made in a task while its fd table is rebuilt,
//! kept at high fd numbers until every fd that needs them has its own
//! dup: fds of one socket come out as one socket, and a socket another
//! one depends on (a peer, a listener) is made once.

use crate::error::RoomError;
use crate::error::{RestoreCtx, RestoreError};
use crate::files::error::FileError;
use crate::remote::Remote;
use crest_inject::{nr, Tracee};
use std::collections::HashMap;
use std::os::fd::OwnedFd;

pub struct Kept {
    slots: HashMap<u32, u64>,
    next: u64,
    pidfd: Option<OwnedFd>,
}

impl Kept {
    /// Keeps things at `first_slot` and above.
    pub fn new(first_slot: u64) -> Kept {
        Kept {
            slots: HashMap::new(),
            next: first_slot,
            pidfd: None,
        }
    }

    /// The fd in the task that holds file `id`, if it is made.
    pub fn get(&self, id: u32) -> Option<u64> {
        self.slots.get(&id).copied()
    }

    /// Moves `fd` of the task to the next slot as file `id`.
    pub fn keep(&mut self, t: &mut Tracee, id: u32, fd: u64) -> Result<u64, RestoreError> {
        let slot = self.next;
        self.next += 1;
        t.dup3(fd, slot, libc::O_CLOEXEC as u64, "keep a socket aside")?;
        t.close(fd)?;
        self.slots.insert(id, slot);
        Ok(slot)
    }

    /// A new fd of the task for the kept file `id`.
    pub fn dup(&self, t: &mut Tracee, id: u32) -> Result<u64, RestoreError> {
        let pid = t.pid();
        let slot = self.get(id).ok_or_else(|| {
            FileError::BadImage {
                file: crest_images::names::FILES.into(),
                what: format!("file {id} was not made"),
            }
            .in_restore(pid)
        })?;
        t.syscall(nr::FCNTL, &[slot, libc::F_DUPFD_CLOEXEC as u64, 0])
            .rat(pid, "dup a kept socket")
    }

    /// crest's own copy of fd `fd` of the task (the same open file).
    /// Makes socket `(domain, ty, protocol)` in the task (non-blocking and
    /// close-on-exec, so in its net namespace), keeps it as file `id` and
    /// returns crest's copy, on which the rest is set up.
    pub fn new_socket(
        &mut self,
        t: &mut Tracee,
        id: u32,
        (domain, ty, protocol): (u32, u32, u32),
    ) -> Result<OwnedFd, RestoreError> {
        let pid = t.pid();
        let flags = (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64;
        let fd = t
            .syscall(
                nr::SOCKET,
                &[
                    u64::from(domain),
                    u64::from(ty) | flags,
                    u64::from(protocol),
                ],
            )
            .rat(
                pid,
                format!("socket({domain}, {ty}, {protocol}) for file {id}"),
            )?;
        let slot = self.keep(t, id, fd)?;
        self.copy(t, slot)
    }

    pub fn copy(&mut self, t: &Tracee, fd: u64) -> Result<OwnedFd, RestoreError> {
        let pid = t.pid();
        let p = match self.pidfd.take() {
            Some(p) => p,
            None => crest_sys::misc::pidfd_open(pid).rat(pid, "pidfd_open")?,
        };
        let r =
            rustix::process::pidfd_getfd(&p, fd as i32, rustix::process::PidfdGetfdFlags::empty())
                .rat(pid, "pidfd_getfd of a new socket");
        self.pidfd = Some(p);
        r
    }

    /// Closes every kept fd in the task.
    pub fn close_all(self, t: &mut Tracee) -> Result<(), RestoreError> {
        for slot in self.slots.into_values() {
            t.close(slot)?;
        }
        Ok(())
    }
}

/// Writes `data` into the task and returns its address.
pub fn put(t: &mut Tracee, data: &[u8]) -> Result<u64, RestoreError> {
    let pid = t.pid();
    t.put(data).rat(pid, "write into the task")
}
