//! File descriptors and the files behind them: `files.img` holds one
//! `file_entry` per open file description (or mapped file, cwd, root, exe)
//! and `fdinfo-<id>.img` maps a task's fd numbers to them.
//!
//! Fds that are one open file description (dup, or inherited across fork),
//! in one task or several, get one entry (`share`), so offsets and status
//! flags stay shared after restore.
//!
//! Kinds handled today: regular files, directories and character devices
//! (`reg`, with files deleted while open in `ghost`), pipes (`pipe`),
//! FIFOs (`fifo`), eventfd, epoll, signalfd, timerfd, inotify, memfd and
//! pidfd; the file locks held through them (`lock`). Any other kind fails the dump with the pid, the fd number and the
//! kind.

use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError};
use crate::files::error::FileError;
use crate::procfs;
use crest_images::pb::{FdTypes, FdinfoEntry, FileEntry, FownEntry, RegFileEntry};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

pub mod context;
pub mod epoll;
pub mod error;
pub mod eventfd;
pub mod fanotify;
pub mod fifo;
pub mod fown;
pub mod ghost;
pub mod inet;
pub mod inotify;
pub mod kept;
pub mod lock;
pub mod mcast;
pub mod memfd;
pub mod mqueue;
pub mod netlink;
pub mod nsfile;
pub mod packet;
pub mod pidfd;
pub mod pipe;
pub mod pty;
pub mod restore;
pub mod share;
pub mod signalfd;
pub mod skopts;
pub mod sockdiag;
pub mod timerfd;
pub mod tty;
pub mod unix;

/// The files of a dump, numbered from 1, shared by every task.
#[derive(Default)]
pub struct FileTable {
    entries: Vec<FileEntry>,
    by_path: HashMap<(String, u32), u32>,
    /// Entries of deleted mapped files by (dev, inode, flags).
    by_deleted: HashMap<(u64, u64, u32), u32>,
    pub pipes: pipe::PipeDump,
    /// Open file descriptions seen so far, to find the fds that share one.
    pub seen: share::Seen,
    /// Every pid of the dumped tree (a pidfd must name one of them).
    pub tree: std::collections::HashSet<i32>,
    pub fifos: fifo::FifoDump,
    pub ghosts: ghost::GhostDump,
    pub memfds: memfd::MemfdDump,
    /// Sockets seen so far: inode → kind and file id; and who holds each.
    sockets: HashMap<u32, (FdTypes, u32)>,
    sock_holders: HashMap<u32, Vec<i32>>,
    pub unix: unix::UnixDump,
    pub inet: inet::InetDump,
    pub tty: tty::TtyDump,
    /// `--shell-job`: the tree may use its shell's terminal.
    pub shell_job: bool,
    /// A datagram unix socket connected to a named socket outside the tree
    /// is dumped (`--ext-unix-sk`).
    pub ext_unix_sk: bool,
    /// Unix sockets connected outside the tree that the caller gives back
    /// at restore (`--ext-unix-sk=INO`).
    pub ext_unix_sk_ids: Vec<u32>,
    /// The tree's own namespaces (namespace files of them are carried).
    pub tree_ns: nsfile::TreeNs,
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
    pub locks: lock::LockDump,
}

impl FileTable {
    /// An empty table for a dump with `opts` of the `live` tasks, whose own
    /// namespaces are `tree_ns`.
    pub fn for_dump(opts: &crate::opts::Options, live: &[i32], tree_ns: nsfile::TreeNs) -> Self {
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

    fn next_id(&self) -> u32 {
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

    /// A regular-file entry for the deleted file mapped at
    /// `[start, end)` of `pid` (its old `path`), opened with `flags`; its
    /// contents saved as a ghost file, shared with every other user of
    /// the same file.
    pub fn reg_deleted_map(
        &mut self,
        pid: i32,
        (start, end): (u64, u64),
        path: &str,
        flags: u32,
    ) -> Result<u32, DumpError> {
        let source = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
        let what = format!("mapping {start:#x}-{end:#x} of deleted file {path}");
        self.reg_deleted(pid, source, path, flags, &what)
    }

    /// A regular-file entry for the deleted file or directory that
    /// `source` (a link of `pid`'s /proc) opens, at its old `path`, opened
    /// with `flags`; saved as a ghost file, shared with every other user of
    /// the same file. `what` names the user in a refusal.
    pub fn reg_deleted(
        &mut self,
        pid: i32,
        source: String,
        path: &str,
        flags: u32,
        what: &str,
    ) -> Result<u32, DumpError> {
        let meta = std::fs::metadata(&source).at(pid, "stat a deleted file")?;
        let key = (meta.dev(), meta.ino(), flags);
        if let Some(id) = self.by_deleted.get(&key) {
            return Ok(*id);
        }
        let id = self.push_reg(path, flags, 0, &meta);
        let refuse = |why: String| {
            FileError::Unsupported {
                what: format!("{what}: {why}"),
            }
            .in_dump(pid)
        };
        self.dump_ghost_at(pid, source, id, &meta, &refuse)?;
        self.by_deleted.insert(key, id);
        Ok(id)
    }

    fn push_reg(&mut self, path: &str, flags: u32, pos: u64, meta: &std::fs::Metadata) -> u32 {
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

/// What the link of `/proc/PID/fd/N` says the fd is, for error messages.
fn kind_of_link(link: &str) -> String {
    if let Some(rest) = link.strip_prefix("anon_inode:") {
        return format!("an anonymous inode ({})", rest.trim_matches(['[', ']']));
    }
    if link.starts_with("socket:") {
        return format!("a socket ({link})");
    }
    link.to_string()
}

/// Dumps every fd of `pid` into `table`; returns its fdinfo entries.
pub fn dump_fds(pid: i32, table: &mut FileTable) -> Result<Vec<FdinfoEntry>, DumpError> {
    let fds = procfs::list_fds(pid).at(pid, "list fds")?;
    let mut out = Vec::with_capacity(fds.len());
    for (fd, link) in fds {
        let info = procfs::read_fdinfo(pid, fd).at(pid, "read fdinfo")?;
        let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        let key = share::key(pid, fd)?;
        let (ty, id) = match table.seen.find(pid, fd, key)? {
            Some(found) => {
                if found.0 == FdTypes::Eventpoll {
                    epoll::check_targets(pid, fd, &info)?;
                }
                found
            }
            None => {
                let made = dump_one(pid, fd, &link, &info, flags, table)?;
                table.dump_fown(pid, fd, made.1)?;
                table.seen.add(pid, fd, key, made)?;
                made
            }
        };
        table.locks.note(pid, fd, id, &info, table.file_locks)?;
        out.push(FdinfoEntry {
            id,
            flags: if cloexec { libc::FD_CLOEXEC as u32 } else { 0 },
            r#type: ty as i32,
            fd: fd as u32,
            xattr_security_selinux: None,
        });
    }
    Ok(out)
}

impl FileTable {
    /// Names by its file each epoll watch whose fd no longer holds it: the
    /// file of the fd found holding it, dumped by now.
    fn name_watched_files(&mut self) -> Result<(), DumpError> {
        for (epoll, i, p, f) in std::mem::take(&mut self.epoll_elsewhere) {
            let key = share::key(p, f)?;
            let (_, file) = self.seen.find(p, f, key)?.ok_or_else(|| {
                FileError::UnsupportedFd {
                    fd: f,
                    kind: "the file an epoll watch names, which crest did not dump".into(),
                }
                .in_dump(p)
            })?;
            let watch = self
                .entries
                .iter_mut()
                .find(|e| e.id == epoll)
                .and_then(|e| e.epfd.as_mut())
                .and_then(|ep| ep.tfd.get_mut(i));
            if let Some(w) = watch {
                w.crest_file = Some(file);
            }
        }
        Ok(())
    }

    /// The files passed in queued unix messages (`SCM_RIGHTS`), dumped as
    /// files of their own through crest's copies (a description a task
    /// also holds is the same file); a socket among them may carry more.
    pub(crate) fn dump_in_flight(&mut self) -> Result<(), DumpError> {
        use std::os::fd::AsRawFd;
        let me = std::process::id() as i32;
        while let Some((q, i, fds, ctx)) = self.unix.flight.pop() {
            let mut ids = Vec::with_capacity(fds.len());
            for f in fds {
                let saved = self.unix.ctx.replace(ctx);
                let r = self.dump_crest_fd(me, f.as_raw_fd(), ctx);
                self.unix.ctx = saved;
                let (_, id) = r.map_err(|e| {
                    FileError::Unsupported {
                        what: format!(
                            "a file passed in a unix socket's queue, not received yet: {e}"
                        ),
                    }
                    .in_dump(ctx)
                })?;
                ids.push(id);
                self.unix.flight_held.push(f);
            }
            if let Some(p) = self.unix.queues.get_mut(q).and_then(|x| x.1.get_mut(i)) {
                p.rights = ids;
            }
        }
        Ok(())
    }

    /// Dumps crest's own fd `fd` (a file in flight the queue of a socket of
    /// `ctx` holds) as any fd of a task.
    fn dump_crest_fd(&mut self, me: i32, fd: i32, ctx: i32) -> Result<(FdTypes, u32), DumpError> {
        let link = procfs::read_link(&format!("/proc/{me}/fd/{fd}")).at(me, "read an fd link")?;
        if link.starts_with('/') && !link.ends_with(" (deleted)") {
            // the path is crest's view: the restore opens it in the task,
            // which must find the same file there
            let id = |m: std::fs::Metadata| (m.dev(), m.ino());
            let here = std::fs::metadata(format!("/proc/{me}/fd/{fd}"))
                .map(id)
                .ok();
            let there = std::fs::metadata(format!("{}{link}", procfs::ns_root(ctx)))
                .map(id)
                .ok();
            if here.is_none() || here != there {
                return Err(FileError::Unsupported {
                    what: format!("{link} in flight, which the task does not see at that path"),
                }
                .in_dump(ctx));
            }
        }
        let info = procfs::read_fdinfo(me, fd).at(me, "read fdinfo")?;
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        let key = share::key(me, fd)?;
        match self.seen.find(me, fd, key)? {
            Some(found) => Ok(found),
            None => {
                let made = dump_one(me, fd, &link, &info, flags, self)?;
                self.dump_fown(me, fd, made.1)?;
                self.seen.add(me, fd, key, made)?;
                Ok(made)
            }
        }
    }
}

/// Dumps one open file description seen for the first time.
fn dump_one(
    pid: i32,
    fd: i32,
    link: &str,
    info: &procfs::FdInfo,
    flags: u32,
    table: &mut FileTable,
) -> Result<(FdTypes, u32), DumpError> {
    let unsupported = |kind: String| FileError::UnsupportedFd { fd, kind }.in_dump(pid);
    if link.starts_with("pipe:") {
        return Ok((FdTypes::Pipe, table.dump_pipe(pid, fd, link, flags)?));
    }
    if let Some(anon) = link.strip_prefix("anon_inode:") {
        return dump_anon(pid, fd, (anon, link), info, flags, table);
    }
    if link.starts_with("pidfd:") {
        let entry = pidfd::dump(pid, fd, info, flags, &table.tree)?;
        return Ok((FdTypes::Pidfd, table.push(entry)));
    }
    if link.starts_with("/memfd:") {
        return Ok((
            FdTypes::Memfd,
            table.dump_memfd(pid, fd, link, info, flags)?,
        ));
    }
    if let Some(ino) = socket_ino(link) {
        return table.dump_socket(pid, fd, ino, flags);
    }
    if let Some(id) = table.dump_tty(pid, fd, link, flags)? {
        return Ok((FdTypes::Tty, id));
    }
    if let Some(entry) = nsfile::dump(pid, fd, link, flags, &table.tree_ns)? {
        return Ok((FdTypes::Ns, table.push(entry)));
    }
    if !link.starts_with('/') {
        return Err(unsupported(kind_of_link(link)));
    }
    let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).at(pid, "stat an open file")?;
    let ft = meta.file_type();
    // A POSIX message queue descriptor looks like a file named /NAME: it
    // is not one.
    const MQUEUE_MAGIC: u64 = 0x1980_0202;
    if rustix::fs::statfs(format!("/proc/{pid}/fd/{fd}").as_str())
        .is_ok_and(|f| f.f_type as u64 == MQUEUE_MAGIC)
    {
        let entry = mqueue::dump(pid, fd, link, flags)?;
        return Ok((FdTypes::Ext, table.push(entry)));
    }
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        return Ok((FdTypes::Fifo, table.dump_fifo(pid, fd, link, flags, &meta)?));
    }
    if !(ft.is_file() || ft.is_dir() || ft.is_char_device()) {
        return Err(unsupported(format!("a special file ({link})")));
    }
    if let Some(path) = link.strip_suffix(" (deleted)") {
        // (a directory or device node comes back empty, made again)
        let id = table.push_reg(path, flags, info.pos, &meta);
        table.dump_ghost(pid, fd, id, &meta)?;
        return Ok((FdTypes::Reg, id));
    }
    Ok((FdTypes::Reg, table.push_reg(link, flags, info.pos, &meta)))
}

/// Dumps a file of anonymous inode kind `anon` (link `link`): eventfd,
/// epoll, signalfd, timerfd, inotify, fanotify, pidfd; others are
/// refused.
fn dump_anon(
    pid: i32,
    fd: i32,
    (anon, link): (&str, &str),
    info: &procfs::FdInfo,
    flags: u32,
    table: &mut FileTable,
) -> Result<(FdTypes, u32), DumpError> {
    let unsupported = |kind: String| FileError::UnsupportedFd { fd, kind }.in_dump(pid);
    let entry = match anon {
        "[eventfd]" => eventfd::dump(pid, fd, info, flags)?,
        "[eventpoll]" => {
            let (entry, elsewhere) = epoll::dump(pid, fd, info, flags, &table.tree)?;
            let id = table.push(entry);
            for (i, p, f) in elsewhere {
                table.epoll_elsewhere.push((id, i, p, f));
            }
            return Ok((FdTypes::Eventpoll, id));
        }
        "[signalfd]" => signalfd::dump(pid, fd, info, flags)?,
        "[timerfd]" => timerfd::dump(pid, fd, info, flags)?,
        "inotify" => inotify::dump(pid, fd, info, flags)?,
        "[fanotify]" => fanotify::dump(pid, fd, info, flags)?,
        "[pidfd]" => pidfd::dump(pid, fd, info, flags, &table.tree)?,
        _ => return Err(unsupported(kind_of_link(link))),
    };
    let ty = FdTypes::try_from(entry.r#type).unwrap_or(FdTypes::Und);
    Ok((ty, table.push(entry)))
}

/// Writes the images of the files beside `files.img`: pipe and FIFO data,
/// ghost files, memfd inodes and their contents.
pub fn write_images(dir: &std::path::Path, table: &FileTable) -> Result<(), DumpError> {
    pipe::write_data(dir, &table.pipes)?;
    fifo::write_data(dir, &table.fifos)?;
    ghost::write(dir, &table.ghosts)?;
    memfd::write(dir, &table.memfds)?;
    table.locks.write(dir)?;
    Ok(())
}

/// The default `fown_entry` (no F_SETOWN owner).
pub(crate) fn no_owner() -> FownEntry {
    FownEntry::default()
}

/// A value of `info` parsed by `parse`, or an UnsupportedFd naming what
/// could not be read.
pub(crate) fn need<T>(pid: i32, fd: i32, what: &str, v: Option<T>) -> Result<T, DumpError> {
    v.ok_or_else(|| {
        FileError::UnsupportedFd {
            fd,
            kind: format!("{what} whose fdinfo crest cannot read"),
        }
        .in_dump(pid)
    })
}

fn socket_ino(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

impl FileTable {
    /// A socket fd: the same socket seen again (a dup) is the same file;
    /// a new one goes to the room of its family.
    fn dump_socket(
        &mut self,
        pid: i32,
        fd: i32,
        ino: u32,
        flags: u32,
    ) -> Result<(FdTypes, u32), DumpError> {
        let holders = self.sock_holders.entry(ino).or_default();
        if !holders.contains(&pid) {
            holders.push(pid);
        }
        if let Some(known) = self.sockets.get(&ino) {
            return Ok(*known);
        }
        let pidfd = crest_sys::misc::pidfd_open(pid).at(pid, "pidfd_open")?;
        let copy =
            rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
                .at(pid, "pidfd_getfd of a socket")?;
        let domain = crest_sys::net::getsockopt_int(&copy, libc::SOL_SOCKET, libc::SO_DOMAIN)
            .at(pid, "SO_DOMAIN")?;
        let known = match domain {
            libc::AF_UNIX => (FdTypes::Unixsk, self.dump_unix(pid, fd, ino, flags, &copy)?),
            libc::AF_INET | libc::AF_INET6 => {
                (FdTypes::Inetsk, self.dump_inet(pid, fd, ino, flags, copy)?)
            }
            libc::AF_NETLINK => (
                FdTypes::Netlinksk,
                self.dump_netlink(pid, fd, ino, flags, &copy)?,
            ),
            libc::AF_PACKET => (
                FdTypes::Packetsk,
                self.dump_packet(pid, fd, ino, flags, &copy)?,
            ),
            _ => {
                return Err(FileError::UnsupportedFd {
                    fd,
                    kind: format!(
                        "a socket of address family {domain} ({})",
                        kind_of_link(&format!("socket:[{ino}]"))
                    ),
                }
                .in_dump(pid))
            }
        };
        self.sockets.insert(ino, known);
        Ok(known)
    }

    /// After every task's fds: checks what needs the whole tree and writes
    /// the socket and terminal images.
    pub fn finish(&mut self, dir: &std::path::Path) -> Result<(), DumpError> {
        self.dump_in_flight()?;
        self.name_watched_files()?;
        self.check_unix()?;
        unix::write_queues(dir, self)?;
        self.inet.write(dir)?;
        self.tty.write(dir)?;
        Ok(())
    }
}
