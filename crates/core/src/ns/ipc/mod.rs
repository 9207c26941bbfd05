//! SysV IPC objects of an ipc namespace of the tree's own: shared memory
//! segments with their contents, semaphore sets with their values,
//! message queues with their messages, and the namespace's sysctls.
//!
//! Dump reads them through a short-lived crest child that has entered the
//! namespace's owning user namespace and then the namespace itself, so ids
//! and modes are as the container sees them; messages are copied with
//! `msgrcv(MSG_COPY)` and segments attached read-only, so nothing is
//! consumed. Restore runs in the helper that created the namespace (inside
//! the same user namespace): each object is made with its old id through
//! `kernel/{shm,sem,msg}_next_id`, then refilled and given its owner and
//! mode with `IPC_SET`.
//!
//! Images: CRIU's `ipcns-var-<id>.img`, `ipcns-shm-<id>.img`,
//! `ipcns-sem-<id>.img` and `ipcns-msg-<id>.img`, payloads laid out as
//! CRIU lays them out.

mod dump;
mod image;
mod restore;

pub use dump::dump;
pub use image::{read, write};
pub use restore::restore;

use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::remote::Remote;
use crest_images::pb::crest::{CrestPmqEntry, CrestPmqMsg};
use crest_images::pb::{IpcDescEntry, IpcMsg, IpcMsgEntry, IpcSemEntry, IpcShmEntry, IpcVarEntry};
use crest_images::{magic, names, ImageReader, ImageWriter};
use crest_inject::{nr, Tracee};
use std::collections::HashMap;
use std::path::Path;

/// Largest segment crest copies (and accepts from an image).
const MAX_SHM: u64 = 1 << 30;
/// Most bytes a message queue may hold in an image.
const MAX_QUEUE_BYTES: u64 = 64 << 20;
/// Most objects of each kind accepted from an image.
const MAX_OBJECTS: usize = 32768;

const IPC_CREAT: u64 = 0o1000;
const IPC_EXCL: u64 = 0o2000;
const IPC_NOWAIT: u64 = 0o4000;
const IPC_SET: u64 = 1;
const IPC_STAT: u64 = 2;
const SHM_RDONLY: u64 = 0o10000;
const SHM_DEST: u32 = 0o1000;
const SHM_LOCKED: u32 = 0o2000;
const SHM_LOCK: u64 = 11;
const GETALL: u64 = 13;
const SETALL: u64 = 17;
const MSG_NOERROR: u64 = 0o10000;
const MSG_COPY: u64 = 0o40000;
/// Offset of `msg_qbytes` in the kernel's `msqid64_ds` (x86_64).
const MSG_QBYTES_AT: usize = 88;
/// Size of the kernel's `{shm,sem,msq}id64_ds` buffers we pass (all fit).
const DS_LEN: usize = 128;

/// A message queue and its messages (type, text).
pub type Queue = (IpcMsgEntry, Vec<(u64, Vec<u8>)>);

/// The SysV state of one ipc namespace.
#[derive(Debug, Clone, Default)]
pub struct IpcDump {
    pub var: IpcVarEntry,
    pub shms: Vec<(IpcShmEntry, Vec<u8>)>,
    pub sems: Vec<(IpcSemEntry, Vec<u16>)>,
    pub msgs: Vec<Queue>,
    /// POSIX message queues.
    pub pmqs: Vec<CrestPmqEntry>,
}

impl IpcDump {
    /// Whether the namespace holds any SysV object.
    pub fn is_empty(&self) -> bool {
        self.shms.is_empty() && self.sems.is_empty() && self.msgs.is_empty() && self.pmqs.is_empty()
    }
}

/// One row of `/proc/sysvipc/{shm,sem,msg}`, by column name.
type Row = HashMap<String, i64>;

/// Parses a `/proc/sysvipc/*` table: a header of column names, then one
/// row per object (`perms` is octal, everything else decimal).
fn parse_table(text: &str) -> Option<Vec<Row>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let mut rows = Vec::new();
    for l in lines.filter(|l| !l.trim().is_empty()) {
        let vals: Vec<&str> = l.split_whitespace().collect();
        if vals.len() != header.len() {
            return None;
        }
        let mut row = Row::new();
        for (h, v) in header.iter().zip(vals) {
            let n = if *h == "perms" {
                i64::from_str_radix(v, 8).ok()?
            } else {
                v.parse().ok()?
            };
            row.insert((*h).to_string(), n);
        }
        rows.push(row);
    }
    Some(rows)
}

fn col(row: &Row, name: &str) -> i64 {
    row.get(name).copied().unwrap_or(0)
}

fn desc_of(row: &Row, id_col: &str) -> IpcDescEntry {
    IpcDescEntry {
        key: col(row, "key") as u32,
        uid: col(row, "uid") as u32,
        gid: col(row, "gid") as u32,
        cuid: col(row, "cuid") as u32,
        cgid: col(row, "cgid") as u32,
        mode: col(row, "perms") as u32,
        id: col(row, id_col) as u32,
    }
}

/// Where the namespace's mqueue filesystem is mounted in a reader's or
/// helper's private mount namespace.
const MQ_AT: &str = "/tmp";

/// Most POSIX queues, and bytes per queue, crest takes.
const MAX_PMQS: usize = 4096;

const MAX_PMQ_BYTES: u64 = 16 << 20;

/// Gives task `t` a private mount namespace with the mqueue filesystem of
/// its ipc namespace on [`MQ_AT`] (nothing it mounts reaches crest's).
fn mount_mqueue(t: &mut Tracee) -> Result<(), crest_inject::InjectError> {
    t.syscall(nr::UNSHARE, &[libc::CLONE_NEWNS as u64])?;
    let buf = t.put(b"/\0mqueue\0/tmp\0")?;
    t.syscall(nr::MOUNT, &[0, buf, 0, libc::MS_REC | libc::MS_PRIVATE, 0])?;
    t.syscall(nr::MOUNT, &[buf + 2, buf + 9, buf + 2, 0, 0])?;
    Ok(())
}

fn send_all(
    t: &mut Tracee,
    fd: u64,
    msgs: &[CrestPmqMsg],
) -> Result<(), crest_inject::InjectError> {
    for m in msgs {
        let addr = t.put(&m.data)?;
        t.syscall(
            nr::MQ_TIMEDSEND,
            &[fd, addr, m.data.len() as u64, u64::from(m.prio), 0],
        )?;
    }
    Ok(())
}

fn pad(len: usize, to: usize) -> usize {
    len.div_ceil(to) * to - len
}

/// Sets the access and modification times of a queue by its path in the
/// mqueue filesystem.
fn set_path_times(path: &str, times: &crest_images::pb::crest::CrestTimes) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    crest_sys::misc::set_times(
        &f,
        (times.atime_sec, times.atime_nsec),
        (times.mtime_sec, times.mtime_nsec),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysvipc_tables_parse_by_header() {
        let shm = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n\
                   1234         5   1600                  4096   100   100      1     0     0     0     0          0          0 1700000000                  4096                     0\n";
        let rows = parse_table(shm).expect("parses");
        assert_eq!(rows.len(), 1);
        assert_eq!(col(&rows[0], "key"), 1234);
        assert_eq!(col(&rows[0], "shmid"), 5);
        assert_eq!(col(&rows[0], "perms"), 0o1600);
        assert_eq!(col(&rows[0], "size"), 4096);
        let d = desc_of(&rows[0], "shmid");
        assert_eq!((d.id, d.mode, d.key), (5, 0o1600, 1234));
        assert_eq!(parse_table("a b\n1\n"), None);
        assert_eq!(parse_table("a perms\n1 9\n"), None, "9 is not octal");
        assert_eq!(parse_table("key id\n").map(|r| r.len()), Some(0));
    }

    #[test]
    fn negative_keys_keep_their_bits() {
        let rows = parse_table("key semid perms nsems\n-1 3 666 2\n").expect("parses");
        assert_eq!(desc_of(&rows[0], "semid").key, u32::MAX);
    }

    #[test]
    fn padding() {
        assert_eq!(pad(0, 8), 0);
        assert_eq!(pad(1, 8), 7);
        assert_eq!(pad(8, 8), 0);
        assert_eq!(pad(4097, 4), 3);
    }
}
