//! POSIX message queue descriptors. The queues themselves belong to the
//! ipc namespace (`ns::ipc`, with their messages); a descriptor is its
//! queue's name — the link of `/proc/PID/fd/N` is "/NAME" — and its open
//! flags. Restore opens the queue again by name in the task's ipc
//! namespace, which the task has entered by then. CRIU has no image for
//! them: the entry is CRIU's `ext` kind (a plugin's) with crest's
//! `crest_mq` beside it.

use super::fown::ext_entry;
use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::files::error::FileError;
use crest_images::pb::{CrestMqFileEntry, FileEntry};
use crest_inject::{nr, Tracee};

/// The flags of a descriptor that `mq_open` takes again.
const KEPT_FLAGS: u32 = (libc::O_ACCMODE | libc::O_NONBLOCK) as u32;

/// The pid registered for notification in a queue's status line
/// ("QSIZE:0 NOTIFY:0 SIGNO:0 NOTIFY_PID:0"), read through a descriptor.
pub fn notify_pid(status: &str) -> Option<i32> {
    status
        .split_whitespace()
        .find_map(|f| f.strip_prefix("NOTIFY_PID:"))?
        .parse()
        .ok()
}

/// A queue name as crest keeps it: "/NAME", NAME without slashes.
fn valid_name(name: &str) -> bool {
    name.strip_prefix('/')
        .is_some_and(|n| !n.is_empty() && n.len() < 256 && !n.contains(['/', '\0']))
}

pub fn dump(pid: i32, fd: i32, link: &str, flags: u32) -> Result<FileEntry, DumpError> {
    let unsupported = |kind: String| FileError::UnsupportedFd { fd, kind }.in_dump(pid);
    if link.ends_with(" (deleted)") || !valid_name(link) {
        return Err(unsupported(format!(
            "a descriptor of a removed POSIX message queue ({link})"
        )));
    }
    // the queue's status line tells whether a task waits for notification
    let status = std::fs::read_to_string(format!("/proc/{pid}/fd/{fd}"))
        .at(pid, "read the status of a POSIX message queue")?;
    if notify_pid(&status).is_none_or(|p| p != 0) {
        return Err(unsupported(format!(
            "a POSIX message queue descriptor ({link}) whose queue has mq_notify registered \
             ({})",
            status.trim()
        )));
    }
    Ok(FileEntry {
        crest_mq: Some(CrestMqFileEntry {
            name: link.to_string(),
            flags: flags & KEPT_FLAGS,
        }),
        ..ext_entry()
    })
}

/// Opens the queue again in the task (already in its ipc namespace).
pub fn open(t: &mut Tracee, e: &CrestMqFileEntry) -> Result<u64, RestoreError> {
    let pid = t.pid();
    if !valid_name(&e.name) || e.flags & !KEPT_FLAGS != 0 {
        return Err(FileError::BadImage {
            file: crest_images::names::FILES.into(),
            what: format!(
                "POSIX message queue descriptor {:?} flags {:#o}",
                e.name, e.flags
            ),
        }
        .in_restore(pid));
    }
    // the syscall takes the name without its leading slash
    let mut name = e.name.as_bytes()[1..].to_vec();
    name.push(0);
    let addr = t.put(&name).rat(pid, "write a queue name")?;
    let flags = u64::from(e.flags) | libc::O_CLOEXEC as u64;
    t.syscall(nr::MQ_OPEN, &[addr, flags, 0, 0])
        .rat(pid, format!("mq_open({}) again", e.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line() {
        assert_eq!(
            notify_pid("QSIZE:12         NOTIFY:0     SIGNO:0     NOTIFY_PID:0     \n"),
            Some(0)
        );
        assert_eq!(
            notify_pid("QSIZE:0 NOTIFY:2 SIGNO:10 NOTIFY_PID:4711\n"),
            Some(4711)
        );
        assert_eq!(notify_pid("QSIZE:0"), None);
    }

    #[test]
    fn names() {
        assert!(valid_name("/q"));
        assert!(!valid_name("q"));
        assert!(!valid_name("/"));
        assert!(!valid_name("/a/b"));
        assert!(!valid_name(&format!("/{}", "x".repeat(300))));
    }
}
