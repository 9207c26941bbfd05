//! What a dump of files collects (data): the numbered file entries every
//! task shares, and each kind's state until the images are written. The
//! kinds fill it (each in its own file, as methods of [`FileTable`] or of
//! its state); `dump.rs` is the order that calls them. This file uses no
//! kind's code, only the data types of `share`, `lock`, `nsfile`,
//! `sockdiag` and the restore context's queued packets.

use super::context::sockets::Queued;
use super::lock::LockDump;
use super::nsfile::TreeNs;
use super::share::Seen;
use super::sockdiag::UnixDiag;
use crate::error::{DumpCtx, DumpError};
use crate::procfs;
use crest_images::pb::{
    FdTypes, FileEntry, FownEntry, GhostFileEntry, MemfdInodeEntry, RegFileEntry,
    RemapFilePathEntry, TcpStreamEntry, TtyDataEntry, TtyInfoEntry,
};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

/// The files of a dump, numbered from 1, shared by every task.
#[derive(Default)]
pub struct FileTable {
    pub(crate) entries: Vec<FileEntry>,
    pub(crate) by_path: HashMap<(String, u32), u32>,
    /// Entries of deleted mapped files by (dev, inode, flags).
    pub(crate) by_deleted: HashMap<(u64, u64, u32), u32>,
    pub pipes: PipeDump,
    /// Open file descriptions seen so far, to find the fds that share one.
    pub seen: Seen,
    /// Every pid of the dumped tree (a pidfd must name one of them).
    pub tree: std::collections::HashSet<i32>,
    pub fifos: FifoDump,
    pub ghosts: GhostDump,
    pub memfds: MemfdDump,
    /// Sockets seen so far: inode → kind and file id; and who holds each.
    pub(crate) sockets: HashMap<u32, (FdTypes, u32)>,
    pub(crate) sock_holders: HashMap<u32, Vec<i32>>,
    pub unix: UnixDump,
    pub inet: InetDump,
    pub tty: TtyDump,
    /// `--shell-job`: the tree may use its shell's terminal.
    pub shell_job: bool,
    /// A datagram unix socket connected to a named socket outside the tree
    /// is dumped (`--ext-unix-sk`).
    pub ext_unix_sk: bool,
    /// Unix sockets connected outside the tree that the caller gives back
    /// at restore (`--ext-unix-sk=INO`).
    pub ext_unix_sk_ids: Vec<u32>,
    /// The tree's own namespaces (namespace files of them are carried).
    pub tree_ns: TreeNs,
    /// epoll watches whose fd no longer holds the file: (epoll file id,
    /// watch index, a pid and fd of the tree holding the file).
    pub epoll_elsewhere: Vec<(u32, usize, i32, i32)>,
    /// A pty slave whose master is outside the tree is dumped (the RPC's
    /// `orphan_pts_master`: the caller takes a new master at restore).
    pub orphan_pts_master: bool,
    /// `--external tty[RDEV:DEV]` keys: terminals outside the tree that
    /// the caller gives back at restore with `--inherit-fd`.
    pub external_ttys: Vec<String>,
    /// `--tcp-established`: dump established TCP connections.
    pub tcp_established: bool,
    /// `--tcp-close`: a connected TCP socket is dumped as a closed one
    /// (CRIU's: the connection is dropped, the fd stays).
    pub tcp_close: bool,
    /// `--skip-in-flight`: a listening TCP socket's connections not accepted
    /// yet are left behind (their clients see them reset), as CRIU does.
    pub tcp_skip_in_flight: bool,
    /// `--file-locks`: dump the file locks the tree holds.
    pub file_locks: bool,
    pub locks: LockDump,
}

impl FileTable {
    /// An empty table for a dump with `opts` of the `live` tasks, whose own
    /// namespaces are `tree_ns`.
    pub fn for_dump(opts: &crate::opts::Options, live: &[i32], tree_ns: TreeNs) -> Self {
        let mut files = FileTable {
            tree: live.iter().copied().collect(),
            shell_job: opts.shell_job,
            tcp_established: opts.tcp_established,
            tcp_close: opts.tcp_close,
            tcp_skip_in_flight: opts.tcp_skip_in_flight,
            file_locks: opts.file_locks,
            orphan_pts_master: opts.orphan_pts_master,
            external_ttys: opts
                .external
                .iter()
                .filter(|e| e.starts_with("tty["))
                .cloned()
                .collect(),
            ext_unix_sk: opts.ext_unix_sk,
            ext_unix_sk_ids: opts.ext_unix_sk_ids.clone(),
            tree_ns,
            ..FileTable::default()
        };
        files.ghosts.limit = opts.ghost_limit;
        files
    }

    pub fn entries(&self) -> &[FileEntry] {
        &self.entries
    }

    pub(crate) fn next_id(&self) -> u32 {
        self.entries.len() as u32 + 1
    }

    /// A regular-file entry for `path` opened with `flags` at offset 0,
    /// shared by every user of the same path and mode (mappings, cwd,
    /// root, exe).
    pub fn reg_path(&mut self, pid: i32, path: &str, flags: u32) -> Result<u32, DumpError> {
        if let Some(id) = self.by_path.get(&(path.to_string(), flags)) {
            return Ok(*id);
        }
        // through the root of the task's mount namespace: it may have one
        // of its own, and a chroot below it
        let meta = std::fs::metadata(format!("{}{path}", procfs::ns_root(pid)))
            .at(pid, "stat a mapped or open file")?;
        let id = self.push_reg(path, flags, 0, &meta);
        self.by_path.insert((path.to_string(), flags), id);
        Ok(id)
    }

    pub(crate) fn push_reg(
        &mut self,
        path: &str,
        flags: u32,
        pos: u64,
        meta: &std::fs::Metadata,
    ) -> u32 {
        let id = self.next_id();
        let reg = RegFileEntry {
            id,
            flags,
            pos,
            fown: FownEntry::default(),
            name: path.to_string(),
            size: meta.is_file().then_some(meta.len()),
            mode: Some(meta.mode()),
            ..RegFileEntry::default()
        };
        self.entries.push(FileEntry {
            r#type: FdTypes::Reg as i32,
            id,
            reg: Some(reg),
            ..FileEntry::default()
        });
        id
    }

    pub(crate) fn push(&mut self, mut entry: FileEntry) -> u32 {
        let id = self.next_id();
        entry.id = id;
        // The kind's own message carries the id too, as in CRIU's images.
        let inner = [
            entry.pipe.as_mut().map(|e| &mut e.id),
            entry.efd.as_mut().map(|e| &mut e.id),
            entry.epfd.as_mut().map(|e| &mut e.id),
            entry.sgfd.as_mut().map(|e| &mut e.id),
            entry.tfd.as_mut().map(|e| &mut e.id),
            entry.ify.as_mut().map(|e| &mut e.id),
            entry.fifo.as_mut().map(|e| &mut e.id),
            entry.memfd.as_mut().map(|e| &mut e.id),
            entry.pidfd.as_mut().map(|e| &mut e.id),
            entry.ext.as_mut().map(|e| &mut e.id),
            entry.nsf.as_mut().map(|e| &mut e.id),
            entry.ffy.as_mut().map(|e| &mut e.id),
            entry.nlsk.as_mut().map(|e| &mut e.id),
            entry.psk.as_mut().map(|e| &mut e.id),
            entry.isk.as_mut().map(|e| &mut e.id),
            entry.usk.as_mut().map(|e| &mut e.id),
            entry.tty.as_mut().map(|e| &mut e.id),
        ];
        for slot in inner.into_iter().flatten() {
            *slot = id;
        }
        self.entries.push(entry);
        id
    }
}

/// Pipe data found at dump: inode → bytes in flight.
#[derive(Default)]
pub struct PipeDump {
    pub data: HashMap<u32, Vec<u8>>,
    /// inode → its capacity (`F_GETPIPE_SZ`) where it is not the default.
    pub sizes: HashMap<u32, u32>,
    /// inode → (the tree holds its read end, its write end, a pid and fd
    /// of it), to find pipes whose other end is outside the tree.
    pub ends: HashMap<u32, (bool, bool, i32, i32)>,
}

/// FIFO data found at dump: inode → bytes in flight.
#[derive(Default)]
pub struct FifoDump {
    pub data: HashMap<u32, Vec<u8>>,
}

/// Ghost files found at dump.
#[derive(Default)]
pub struct GhostDump {
    /// The largest deleted file crest saves (`--ghost-limit`).
    pub limit: u64,
    pub(crate) by_inode: HashMap<(u64, u64), u32>,
    /// Per ghost id: its entry and where its contents are (the pid, and a
    /// link of its /proc that opens the file).
    pub(crate) ghosts: Vec<(GhostFileEntry, i32, String)>,
    /// Per ghost, its data extents when it has holes (written as chunks).
    pub(crate) extents: Vec<Option<Vec<(u64, u64)>>>,
    pub(crate) remaps: Vec<RemapFilePathEntry>,
}

/// memfd inodes found at dump, with a file crest keeps open on each.
#[derive(Default)]
pub struct MemfdDump {
    pub(crate) by_ino: HashMap<u64, u32>,
    pub(crate) inodes: Vec<(MemfdInodeEntry, std::fs::File)>,
    /// (inode id, open flags) → entry of a mapping.
    pub(crate) vma_entries: HashMap<(u32, u32), u32>,
}

/// What the dump learnt about unix sockets so far.
#[derive(Default)]
pub struct UnixDump {
    /// sock_diag of each network namespace, by its inode.
    pub(crate) diags: HashMap<u64, HashMap<u32, UnixDiag>>,
    /// Queued packets by file id, in queue order.
    pub queues: Vec<(u32, Vec<Queued>)>,
    /// Every dumped socket: inode → who holds it and what it is.
    pub(crate) socks: HashMap<u32, Held>,
    /// Files passed in queued packets (`SCM_RIGHTS`), not dumped yet:
    /// (queue, packet, crest's copies, the pid whose socket holds them).
    pub(crate) flight: Vec<(usize, usize, Vec<OwnedFd>, i32)>,
    /// crest's copies of files in flight, open until the dump ends (their
    /// descriptions are compared with `kcmp`).
    pub(crate) flight_held: Vec<OwnedFd>,
    /// While a file in flight is dumped: the task whose namespaces stand
    /// for crest's (the socket's net namespace, its cwd).
    pub(crate) ctx: Option<i32>,
}

/// A dumped unix socket: who holds it and what it is.
pub(crate) struct Held {
    pub(crate) pid: i32,
    pub(crate) fd: i32,
    pub(crate) netns: u64,
    pub(crate) peer: u32,
    /// SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET.
    pub(crate) ty: i32,
    /// The peer is a listener and this connection is not accepted yet.
    pub(crate) pending: bool,
}

/// What the dump keeps about inet sockets until the images are written.
#[derive(Default)]
pub struct InetDump {
    /// Established connections: inode, state, receive and send queues.
    pub(crate) streams: Vec<(u32, TcpStreamEntry, Vec<u8>, Vec<u8>)>,
    /// Queued UDP datagrams: file id, sender, data.
    pub(crate) udp: Vec<(u32, Vec<u8>, Vec<u8>)>,
    /// crest's copies of the connections put in repair mode, with their
    /// `SO_REUSEADDR` (leaving repair mode clears it).
    pub(crate) repair: Vec<(OwnedFd, bool)>,
    /// Leave them in repair mode (the dump succeeded and the tree dies).
    pub keep_repair: bool,
}

/// Terminals seen at dump.
#[derive(Default)]
pub struct TtyDump {
    pub(crate) infos: Vec<TtyInfoEntry>,
    /// Pty pairs whose master the tree holds.
    pub(crate) pty: PtyDump,
    /// (rdev, flags) → file id: fds of one terminal with the same flags
    /// come back as one open file.
    pub(crate) files: HashMap<(u64, u32), u32>,
}

/// Pty pairs at dump.
#[derive(Default)]
pub struct PtyDump {
    /// None until the tree's fds are scanned.
    pub(crate) pairs: Option<HashMap<PairKey, PairSeen>>,
    pub data: Vec<TtyDataEntry>,
}

/// A pair: the device of the devpts its slave is on, and its index.
pub type PairKey = (u64, u32);

/// What the scan of the tree's fds found of one pair.
#[derive(Default)]
pub struct PairSeen {
    /// A task and fd of the tree holding the master.
    pub(crate) master: Option<(i32, i32)>,
    /// Whether a task of the tree holds the slave.
    pub(crate) slave_held: bool,
    /// Its entries once dumped: the master's and the slave's infos.
    pub(crate) infos: Option<(u32, Option<u32>)>,
    /// The info of `/dev/tty` opened on its slave.
    pub(crate) ctty_info: Option<u32>,
}
