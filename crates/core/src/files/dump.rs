//! The dump of a task's fds, in order: each fd's open file description
//! found once (`share`), handed to the room of its kind, its owner and
//! locks noted; after every task, what needs the whole tree (files in
//! flight in unix queues, epoll watches, peers) and the images. Only the
//! order lives here; the kinds hold the work.

use super::error::FileError;
use super::table::FileTable;
use super::{epoll, eventfd, fanotify, fifo, ghost, inotify, memfd, mqueue, nsfile, pidfd};
use super::{pipe, share, signalfd, timerfd, unix};
use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError};
use crate::procfs;
use crest_images::pb::{FdTypes, FdinfoEntry};
use crest_images::{magic, names};
use std::os::unix::fs::MetadataExt;

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
    fn dump_in_flight(&mut self) -> Result<(), DumpError> {
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
/// epoll, signalfd, timerfd, inotify, fanotify, pidfd, io_uring; others
/// are refused.
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
        "[io_uring]" => super::uring::dump(pid, fd)?,
        _ => return Err(unsupported(kind_of_link(link))),
    };
    let ty = FdTypes::try_from(entry.r#type).unwrap_or(FdTypes::Und);
    Ok((ty, table.push(entry)))
}

/// Writes the images of the files beside `files.img`: pipe and FIFO data,
/// ghost files, memfd inodes and their contents.
fn write_images(dir: &std::path::Path, table: &FileTable) -> Result<(), DumpError> {
    pipe::write_data(dir, &table.pipes)?;
    fifo::write_data(dir, &table.fifos)?;
    ghost::write(dir, &table.ghosts)?;
    memfd::write(dir, &table.memfds)?;
    table.locks.write(dir)?;
    Ok(())
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

    /// After every task's fds: what needs the whole tree (the files in
    /// flight in unix queues first: a pipe end among them is the tree's;
    /// the pipes whose other end is outside; epoll watches; unix peers),
    /// then every image of files.
    pub fn finish(&mut self, dir: &std::path::Path) -> Result<(), DumpError> {
        self.dump_in_flight()?;
        self.mark_outside_pipes();
        self.name_watched_files()?;
        // (adds the entries of sockets outside the tree)
        self.check_unix()?;
        unix::write_queues(dir, self)?;
        self.inet.write(dir)?;
        self.tty.write(dir)?;
        crest_images::write_image(dir, names::FILES, magic::FILES, self.entries())?;
        write_images(dir, self)
    }
}
