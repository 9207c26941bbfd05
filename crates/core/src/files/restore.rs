//! Restore of a task's fd table: every fd is made inside the task (files
//! reopened by path, eventfds and the other kinds made by their rooms;
//! pipes are made and refilled by crest and handed over), parked above the
//! highest target number, then moved to its number. A description an earlier fd of the task made
//! is `dup`ed; one another task made is passed over from it (`share`).
//! Epoll watches are added last, once every fd is at its number.

use super::context::{socket_once, CrestPipe, RestoreFiles};
use super::{epoll, eventfd, fifo, ghost, inotify, memfd, pidfd, signalfd, timerfd};
use crate::error::RoomError;
use crate::error::{RestoreCtx, RestoreError};
use crate::files::error::FileError;
use crate::remote::take_fd;
use crate::remote::Remote;
use crest_images::pb::{FdTypes, FdinfoEntry, FileEntry};
use crest_images::{magic, names};
use crest_inject::{nr, Tracee};
use std::collections::{HashMap, HashSet};
use std::path::Path;

fn bad(pid: i32, files_id: u32, what: String) -> RestoreError {
    FileError::BadImage {
        file: names::fdinfo(files_id),
        what,
    }
    .in_restore(pid)
}

/// Closes every inherited fd and rebuilds the dumped fd table.
pub fn restore_fds(
    t: &mut Tracee,
    files_id: u32,
    fds: &[FdinfoEntry],
    files: &mut RestoreFiles,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    close_inherited(t)?;
    let Some(max_fd) = fds.iter().map(|f| f.fd).max() else {
        return Ok(());
    };
    if max_fd > 1 << 20 {
        return Err(bad(pid, files_id, format!("fd number {max_fd}")));
    }
    let park_base = u64::from(max_fd) + 1;
    files.local = (pid, HashMap::new());
    let res = make_all(t, files_id, fds, files, park_base);
    let local = std::mem::take(&mut files.local.1);
    res?;
    // Every fd to its number, then the epoll watches, which name fds by
    // number (the moves and the closes of the parked fds in one batch).
    let mut calls = crate::remote::Calls::default();
    for fi in fds {
        let (from, flags) = place_args(local[&fi.id], fi);
        calls.push(
            nr::DUP3,
            &[from, u64::from(fi.fd), flags],
            format!("move fd to {}", fi.fd),
        );
    }
    let mut parks: Vec<u64> = local.values().copied().collect();
    parks.sort_unstable();
    parks.dedup();
    for park in parks {
        calls.push(nr::CLOSE, &[park], format!("close fd {park}"));
    }
    calls.run(t)?;
    for fi in fds {
        files.holders.entry(fi.id).or_insert((pid, fi.fd));
    }
    add_epoll_watches(t, fds, files, max_fd)?;
    super::pty::take_ctty(t, files)
}

/// Puts fd `from` of the task at the number `fi` gives, close-on-exec as
/// `fi` says (`from` stays open).
pub fn place_fd(t: &mut Tracee, from: u64, fi: &FdinfoEntry) -> Result<(), RestoreError> {
    let (from, flags) = place_args(from, fi);
    t.dup3(
        from,
        u64::from(fi.fd),
        flags,
        &format!("move fd to {}", fi.fd),
    )?;
    Ok(())
}

/// `dup3`'s fd and flags that put fd `from` at the number `fi` gives.
fn place_args(from: u64, fi: &FdinfoEntry) -> (u64, u64) {
    let flags = if fi.flags & libc::FD_CLOEXEC as u32 != 0 {
        libc::O_CLOEXEC as u64
    } else {
        0
    };
    (from, flags)
}

/// Closes every inherited fd.
fn close_inherited(t: &mut Tracee) -> Result<(), RestoreError> {
    let pid = t.pid();
    t.syscall(nr::CLOSE_RANGE, &[0, u64::from(u32::MAX), 0])
        .rat(pid, "close_range of inherited fds")?;
    Ok(())
}

/// Adds the watches of the epoll instances the task made, once every fd
/// is at its number (`max_fd` the highest).
fn add_epoll_watches(
    t: &mut Tracee,
    fds: &[FdinfoEntry],
    files: &mut RestoreFiles,
    max_fd: u32,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let mut watched = HashSet::new();
    // (a watched file no fd holds at its number comes through crest; the
    // sockets made for that are kept above every fd of the task)
    let mut kept = super::kept::Kept::new(u64::from(max_fd) + 1);
    let res = (|| -> Result<(), RestoreError> {
        for fi in fds {
            let made_here = files.made_by.get(&fi.id) == Some(&pid);
            if let (true, Some(ep)) = (
                made_here,
                files.entries.get(&fi.id).and_then(|e| e.epfd.clone()),
            ) {
                if watched.insert(fi.id) {
                    let mut file_of =
                        |t: &mut Tracee, id: u32| flight_copy(t, id, files, &mut kept);
                    epoll::add_targets(t, fi.fd, &ep, &mut file_of)?;
                }
            }
        }
        Ok(())
    })();
    kept.close_all(t)?;
    res
}

/// Makes every fd of the task, each parked at `park_base` + its index (a
/// second fd of one description shares the first one's park).
fn make_all(
    t: &mut Tracee,
    files_id: u32,
    fds: &[FdinfoEntry],
    files: &mut RestoreFiles,
    park_base: u64,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    // Sockets and terminals keep helper fds (a listener to connect to, the
    // other end of a pair) above the parks and pipes until all are made.
    let mut kept = super::kept::Kept::new(park_base + 3 * fds.len() as u64);
    let res = (|| {
        for (i, fi) in fds.iter().enumerate() {
            if files.local.1.contains_key(&fi.id) {
                continue;
            }
            let park = park_base + i as u64;
            let entry = files.entries.get(&fi.id).cloned().ok_or_else(|| {
                bad(
                    pid,
                    files_id,
                    format!("fd {} names missing file {}", fi.fd, fi.id),
                )
            })?;
            if entry.r#type != fi.r#type {
                return Err(bad(
                    pid,
                    files_id,
                    format!(
                        "fd {} has type {}, its file {}",
                        fi.fd, fi.r#type, entry.r#type
                    ),
                ));
            }
            let made = match files.holders.get(&fi.id) {
                // (passed in a queued message, made for that already)
                _ if files.flight.contains_key(&fi.id) => t.give_fd(&files.flight[&fi.id])?,
                Some(_) if files.uring_late.contains(&fi.id) => {
                    return Err(FileError::Unsupported {
                        what: format!(
                            "fd {}: an io_uring with an SQ thread that another task holds too",
                            fi.fd
                        ),
                    }
                    .in_restore(pid))
                }
                Some(&(holder, hfd)) => t.give_fd(&take_fd(holder, hfd)?)?,
                None => {
                    let made = make_one(t, fi, &entry, files, &mut kept)?;
                    files.made_by.insert(fi.id, pid);
                    made
                }
            };
            t.dup3(made, park, 0, &format!("park fd {}", fi.fd))?;
            t.close(made)?;
            files.local.1.insert(fi.id, park);
        }
        Ok(())
    })();
    kept.close_all(t)?;
    res
}

/// crest's copy of file `id`, passed in a queued message that task `t`
/// puts back: the description made already (for another message, for a
/// task's fd, or a socket of `t`'s), or made now in `t` and kept.
fn flight_copy(
    t: &mut Tracee,
    id: u32,
    files: &mut RestoreFiles,
    kept: &mut super::kept::Kept,
) -> Result<std::os::fd::OwnedFd, RestoreError> {
    let pid = t.pid();
    if let Some(c) = files.flight.get(&id) {
        return c.try_clone().rat(pid, "dup a file in flight");
    }
    if let Some(slot) = kept.get(id) {
        return kept.copy(t, slot);
    }
    if let Some(&(holder, hfd)) = files.holders.get(&id) {
        return Ok(take_fd(holder, hfd)?);
    }
    if let Some(c) = files.socks.spare.get(&id) {
        return c.try_clone().rat(pid, "dup a file in flight");
    }
    let entry = files.entries.get(&id).cloned().ok_or_else(|| {
        FileError::BadImage {
            file: names::SK_QUEUES.into(),
            what: format!(
                "a queued message passes file {id}, which is not in {}",
                names::FILES
            ),
        }
        .in_restore(pid)
    })?;
    let fi = FdinfoEntry {
        id,
        flags: 0,
        r#type: entry.r#type,
        fd: 0,
        xattr_security_selinux: None,
    };
    let fd = make_one(t, &fi, &entry, files, kept)?;
    files.made_by.insert(id, pid);
    let copy = take_fd(pid, fd as u32);
    t.close(fd)?;
    let copy = copy?;
    files
        .flight
        .insert(id, copy.try_clone().rat(pid, "dup a file in flight")?);
    Ok(copy)
}

/// Makes a new open file description for `entry`, by kind. Long because
/// it is one match, an arm per kind of file.
fn make_one(
    t: &mut Tracee,
    fi: &FdinfoEntry,
    entry: &FileEntry,
    files: &mut RestoreFiles,
    kept: &mut super::kept::Kept,
) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let missing = |part: &str| {
        FileError::MissingPart {
            file: names::FILES,
            id: entry.id,
            part: part.into(),
        }
        .in_restore(pid)
    };
    match FdTypes::try_from(fi.r#type) {
        Ok(FdTypes::Reg) => open_reg(t, entry, files),
        Ok(FdTypes::Pipe) => pipe_end(t, entry, files),
        Ok(FdTypes::Unixsk) => super::unix::open(t, entry, files, kept, flight_copy),
        Ok(FdTypes::Inetsk) => socket_once(
            t,
            entry,
            (files, kept),
            ("inet", |e| e.isk.as_ref()),
            super::inet::make,
        ),
        Ok(FdTypes::Netlinksk) => socket_once(
            t,
            entry,
            (files, kept),
            ("netlink", |e| e.nlsk.as_ref()),
            super::netlink::make,
        ),
        Ok(FdTypes::Packetsk) => socket_once(
            t,
            entry,
            (files, kept),
            ("packet", |e| e.psk.as_ref()),
            super::packet::make,
        ),
        Ok(FdTypes::Tty) => super::tty::open(t, entry, files, kept),
        Ok(FdTypes::Fifo) => fifo::create(
            t,
            entry.fifo.as_ref().ok_or_else(|| missing("fifo"))?,
            files,
        ),
        Ok(FdTypes::Eventfd) => {
            eventfd::create(t, entry.efd.as_ref().ok_or_else(|| missing("eventfd"))?)
        }
        Ok(FdTypes::Eventpoll) => epoll::create(t),
        Ok(FdTypes::Signalfd) => {
            signalfd::create(t, entry.sgfd.as_ref().ok_or_else(|| missing("signalfd"))?)
        }
        Ok(FdTypes::Timerfd) => {
            timerfd::create(t, entry.tfd.as_ref().ok_or_else(|| missing("timerfd"))?)
        }
        Ok(FdTypes::Inotify) => {
            inotify::create(t, entry.ify.as_ref().ok_or_else(|| missing("inotify"))?)
        }
        Ok(FdTypes::Fanotify) => {
            super::fanotify::create(t, entry.ffy.as_ref().ok_or_else(|| missing("fanotify"))?)
        }
        Ok(FdTypes::Memfd) => memfd::open(
            t,
            entry.memfd.as_ref().ok_or_else(|| missing("memfd"))?,
            files,
        ),
        Ok(FdTypes::Ext) => match (entry.crest_mq.as_ref(), entry.crest_io_uring.as_ref()) {
            (Some(mq), _) => super::mqueue::open(t, mq),
            (None, Some(ring)) if ring.setup_flags & super::uring::SETUP_SQPOLL != 0 => {
                super::uring::placeholder(t, entry.id, files)
            }
            (None, Some(ring)) => super::uring::create(t, ring).map(|(fd, array)| {
                if let Some(array) = array {
                    files.uring_arrays.insert(entry.id, array);
                }
                fd
            }),
            (None, None) => Err(missing(
                "crest_mq or crest_io_uring (an external file of a CRIU plugin)",
            )),
        },
        Ok(FdTypes::Pidfd) => {
            pidfd::create(t, entry.pidfd.as_ref().ok_or_else(|| missing("pidfd"))?)
        }
        Ok(FdTypes::Ns) => {
            let nsf = entry.nsf.as_ref().ok_or_else(|| missing("nsf"))?;
            super::nsfile::open(t, nsf, &files.ns_holders)
        }
        _ => Err(FileError::Unsupported {
            what: format!("fd {} of type {}", fi.fd, fi.r#type),
        }
        .in_restore(pid)),
    }
}

fn open_reg(t: &mut Tracee, e: &FileEntry, files: &mut RestoreFiles) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let reg = e.reg.as_ref().ok_or_else(|| {
        FileError::MissingPart {
            file: names::FILES,
            id: e.id,
            part: "reg".into(),
        }
        .in_restore(pid)
    })?;
    let keep = libc::O_ACCMODE
        | libc::O_APPEND
        | libc::O_NONBLOCK
        | libc::O_DIRECTORY
        | libc::O_NOATIME
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_LARGEFILE
        | libc::O_NOFOLLOW
        | libc::O_PATH
        | libc::O_DIRECT;
    let flags = reg.flags as i32 & keep;
    let fd = match files.remaps.get(&e.id) {
        Some(&g) => ghost::open(t, reg, flags, g, files)?,
        None => t.open(&reg.name, flags)?,
    };
    if reg.pos != 0 {
        t.syscall(nr::LSEEK, &[fd, reg.pos, libc::SEEK_SET as u64])
            .rat(pid, format!("lseek {} to {}", reg.name, reg.pos))?;
    }
    Ok(fd)
}

/// The end of a pipe an fd needs: crest makes each pipe once, with its
/// capacity and data, and gives the task the description it had.
fn pipe_end(t: &mut Tracee, e: &FileEntry, files: &mut RestoreFiles) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let p = e.pipe.as_ref().ok_or_else(|| {
        FileError::MissingPart {
            file: names::FILES,
            id: e.id,
            part: "pipe".into(),
        }
        .in_restore(pid)
    })?;
    if let Some(given) = files.inherit.get(&format!("pipe:[{}]", p.pipe_id)) {
        // the caller's pipe (CRIU's --inherit-fd), as it is
        let fd = t.give_fd(given)?;
        let status = u64::from(p.flags) & (libc::O_NONBLOCK as u64);
        t.fcntl(fd, libc::F_SETFL, status, "set pipe flags")?;
        return Ok(fd);
    }
    if let Some(other) = p.crest_outside_pid {
        return Err(FileError::Unsupported {
            what: format!(
                "pipe:[{}]: pid {other}, outside the dumped tree, held its other end; give \
                 crest an fd to stand for it with --inherit-fd fd[N]:pipe:[{}]",
                p.pipe_id, p.pipe_id
            ),
        }
        .in_restore(pid));
    }
    let status = u64::from(p.flags) & (libc::O_NONBLOCK | libc::O_ASYNC) as u64;
    let end = usize::from(p.flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32);
    if !files.pipes.contains_key(&p.pipe_id) {
        let made = crest_pipe(pid, p.pipe_id, files)?;
        files.pipes.insert(p.pipe_id, made);
    }
    let made = files.pipes.get_mut(&p.pipe_id).ok_or_else(|| {
        FileError::Unsupported {
            what: format!("pipe:[{}] vanished", p.pipe_id),
        }
        .in_restore(pid)
    })?;
    let fd = if p.flags & libc::O_LARGEFILE as u32 == 0 && !made.given[end] {
        // one of the two descriptions pipe2 made
        made.given[end] = true;
        t.give_fd(&made.ends[end])?
    } else {
        // a description opened again through /proc, as the task had it
        use std::os::unix::fs::OpenOptionsExt;
        let again = std::fs::OpenOptions::new()
            .read(end == 0)
            .write(end == 1)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&made.ends[end])
            ))
            .rat(pid, format!("open pipe:[{}] again", p.pipe_id))?;
        t.give_fd(&std::os::fd::OwnedFd::from(again))?
    };
    t.fcntl(fd, libc::F_SETFL, status, "set pipe flags")?;
    Ok(fd)
}

/// Makes pipe `id` in crest, with its capacity and the bytes that were in
/// flight.
fn crest_pipe(pid: i32, id: u32, files: &RestoreFiles) -> Result<CrestPipe, RestoreError> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).rat(pid, "pipe2")?;
    let data = files.pipe_data.get(&id).map_or(&[][..], |d| &d[..]);
    let size = files.pipe_sizes.get(&id).copied().unwrap_or(0) as usize;
    let want = size.max(data.len());
    if want > super::pipe::DEFAULT_PIPE_SIZE as usize {
        rustix::pipe::fcntl_setpipe_size(&w, want)
            .rat(pid, format!("F_SETPIPE_SZ {want} on pipe:[{id}]"))?;
    }
    let mut file = std::fs::File::from(w);
    std::io::Write::write_all(&mut file, data).rat(pid, format!("refill pipe:[{id}]"))?;
    Ok(CrestPipe {
        ends: [r, std::os::fd::OwnedFd::from(file)],
        given: [false; 2],
    })
}

impl RestoreFiles {
    /// Reads `files.img` and the images beside it that every kind uses.
    pub fn read(dir: &Path) -> Result<RestoreFiles, RestoreError> {
        let list: Vec<FileEntry> = crest_images::read_image(dir, names::FILES, magic::FILES)?;
        let mut entries = HashMap::with_capacity(list.len());
        for e in list {
            entries.insert(e.id, e);
        }
        let pipes = super::context::read_pipe_data(dir, names::PIPES_DATA, magic::PIPES_DATA)?;
        Ok(RestoreFiles {
            dir: dir.to_path_buf(),
            entries,
            pipe_data: pipes.0,
            pipe_sizes: pipes.1,
            fifo_data: super::context::read_pipe_data(dir, names::FIFO_DATA, magic::FIFO_DATA)?.0,
            remaps: ghost::read_remaps(dir)?,
            memfd_inodes: memfd::read_inodes(dir)?,
            socks: super::context::sockets::SockImages::read(dir)?,
            locks: super::lock::read(dir)?,
            inherit: HashMap::new(),
            flight: HashMap::new(),
            ns_holders: HashMap::new(),
            ttys: super::context::terminals::TtyRestore::read(dir)?,
            ..RestoreFiles::default()
        })
    }
}
