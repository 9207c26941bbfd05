//! Unix sockets at restore, made inside the task: pairs, listeners,
//! clients connected by name, sockets bound in a chroot or to a removed
//! or replaced path; then their queues refilled and their options set.

use super::*;
use crate::error::RoomError;
use crate::files::error::FileError;

pub(super) fn bad(pid: i32, what: String) -> RestoreError {
    FileError::BadImage {
        file: names::FILES.into(),
        what,
    }
    .in_restore(pid)
}

pub(super) fn usk_of(files: &RestoreFiles, pid: i32, id: u32) -> Result<UnixSkEntry, RestoreError> {
    files
        .entries
        .get(&id)
        .and_then(|e| e.usk.clone())
        .ok_or_else(|| {
            FileError::MissingPart {
                file: names::FILES,
                id,
                part: "unix socket".into(),
            }
            .in_restore(pid)
        })
}

pub(super) fn by_ino(files: &RestoreFiles, ino: u32) -> Option<UnixSkEntry> {
    files
        .entries
        .values()
        .filter_map(|e| e.usk.as_ref())
        .find(|u| u.ino == ino)
        .cloned()
}

/// The fd for a unix socket entry: made once per task, dup'd per fd.
pub fn open(
    t: &mut Tracee,
    e: &FileEntry,
    files: &mut RestoreFiles,
    kept: &mut Kept,
    flight: FlightCopy,
) -> Result<u64, RestoreError> {
    let pid = t.pid();
    if kept.get(e.id).is_none() {
        // --inherit-fd fd[N]:socket:[INO]: the caller's socket stands for it
        let key = e.usk.as_ref().map(|u| format!("socket:[{}]", u.ino));
        if let Some(given) = key.as_ref().and_then(|k| files.inherit.get(k)) {
            let fd = t.give_fd(given)?;
            kept.keep(t, e.id, fd)?;
            files.socks.made_by.insert(e.id, pid);
            return kept.dup(t, e.id);
        }
        if let Some(copy) = files.socks.spare.get(&e.id) {
            // made by another task together with a socket of its own
            let fd = t.give_fd(copy)?;
            kept.keep(t, e.id, fd)?;
            return kept.dup(t, e.id);
        }
        if let Some(&other) = files.socks.made_by.get(&e.id) {
            if other != pid {
                return Err(FileError::Unsupported {
                    what: format!("unix socket {} shared with pid {other}", e.id),
                }
                .in_restore(pid));
            }
        }
        let made = make(t, e.id, files, kept, flight)?;
        finish(t, &made, files, kept, flight)?;
        // what was made for others stays reachable through crest
        for x in made.iter().filter(|x| x.id != e.id) {
            if let Some(slot) = kept.get(x.id) {
                let copy = kept.copy(t, slot)?;
                files.socks.spare.insert(x.id, copy);
            }
        }
    }
    kept.dup(t, e.id)
}

/// `struct sockaddr_un` for a name.
pub(super) fn sockaddr(name: &[u8]) -> Vec<u8> {
    let mut a = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    a.extend_from_slice(name);
    if name.first() != Some(&0) {
        a.push(0);
    }
    a
}

pub(super) fn new_socket(t: &mut Tracee, ty: u32) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    t.syscall(
        nr::SOCKET,
        &[libc::AF_UNIX as u64, u64::from(ty) | flags as u64, 0],
    )
    .rat(pid, "socket(AF_UNIX)")
}

/// Whether the entry's name belongs to another socket that comes back
/// bound (an accepted socket shares its listener's name): a name belongs
/// to its listener, else to the first socket that has it.
pub(super) fn name_taken(files: &RestoreFiles, u: &UnixSkEntry) -> bool {
    let same: Vec<&UnixSkEntry> = files
        .entries
        .values()
        .filter_map(|e| e.usk.as_ref())
        .filter(|o| o.name == u.name)
        .collect();
    let owner = same
        .iter()
        .find(|o| o.state == TCP_LISTEN)
        .or_else(|| same.iter().min_by_key(|o| o.id));
    owner.is_some_and(|o| o.ino != u.ino)
}

pub(super) fn bind(t: &mut Tracee, fd: u64, u: &UnixSkEntry) -> Result<(), RestoreError> {
    let pid = t.pid();
    if let Some(root) = &u.crest_root {
        if !root.starts_with('/') || root.split('/').any(|c| c == "..") {
            return Err(FileError::BadImage {
                file: crest_images::names::FILES.into(),
                what: format!("a unix socket's chroot {root:?}"),
            }
            .in_restore(pid));
        }
    }
    let relative = u.name.first().is_some_and(|&c| c != 0 && c != b'/');
    let Some(dir) = u.name_dir.as_deref().filter(|_| relative) else {
        if relative {
            return Err(FileError::BadImage {
                file: crest_images::names::FILES.into(),
                what: format!(
                    "a unix socket bound to the relative path {} without its directory",
                    show_name(&u.name)
                ),
            }
            .in_restore(pid));
        }
        return bind_in(t, fd, u, &show_name(&u.name));
    };
    // bound from its directory, as it was: the task goes there for the
    // bind, and back
    let full = format!("{}/{}", dir.trim_end_matches('/'), show_name(&u.name));
    let dot = kept::put(t, b".\0")?;
    let back = t
        .syscall(
            nr::OPENAT,
            &[
                libc::AT_FDCWD as u64,
                dot,
                (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
                0,
            ],
        )
        .rat(pid, "open the cwd")?;
    let mut d = dir.as_bytes().to_vec();
    d.push(0);
    let at = kept::put(t, &d)?;
    let bound = t
        .syscall(nr::CHDIR, &[at])
        .rat(pid, format!("chdir {dir}"))
        .and_then(|_| bind_in(t, fd, u, &full));
    let came_back = t.syscall(nr::FCHDIR, &[back]).rat(pid, "fchdir back");
    t.close(back)?;
    bound?;
    came_back.map(drop)
}

/// The chroot a socket's name is a path in: None for the root of the
/// mount namespace.
pub(super) fn chroot_of(u: &UnixSkEntry) -> Option<&str> {
    u.crest_root
        .as_deref()
        .map(|r| r.trim_end_matches('/'))
        .filter(|r| r.starts_with('/') && !r.split('/').any(|c| c == ".."))
}

/// Where crest finds path `path` of socket `u`'s root in task `pid`.
pub(super) fn path_here(pid: i32, u: &UnixSkEntry, path: &str) -> String {
    format!("/proc/{pid}/root{}{path}", chroot_of(u).unwrap_or(""))
}

/// Runs `f` with `t` chrooted into `root` (a path in its mount
/// namespace) if there is one, so that a socket's name means what it
/// meant to its chrooted task; `t`'s root and cwd come back after.
pub(super) fn in_root<T>(
    t: &mut Tracee,
    root: Option<&str>,
    f: impl FnOnce(&mut Tracee) -> Result<T, RestoreError>,
) -> Result<T, RestoreError> {
    let Some(root) = root else {
        return f(t);
    };
    let pid = t.pid();
    let flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    let open_dir = |t: &mut Tracee, path: &[u8]| -> Result<u64, RestoreError> {
        let at = kept::put(t, path)?;
        t.syscall(nr::OPENAT, &[libc::AT_FDCWD as u64, at, flags, 0])
            .rat(pid, "open a directory to come back to")
    };
    let cwd = open_dir(t, b".\0")?;
    let top = open_dir(t, b"/\0")?;
    let mut p = root.as_bytes().to_vec();
    p.push(0);
    let at = kept::put(t, &p)?;
    let r = match t
        .syscall(nr::CHROOT, &[at])
        .rat(pid, format!("chroot {root} for a socket's name"))
    {
        Ok(_) => {
            let r = f(t);
            // back out of the chroot through the fd of the old root
            let dot = kept::put(t, b".\0")?;
            t.syscall(nr::FCHDIR, &[top])
                .rat(pid, "fchdir to the root")?;
            t.syscall(nr::CHROOT, &[dot])
                .rat(pid, "chroot back to the root")?;
            r
        }
        Err(e) => Err(e),
    };
    t.syscall(nr::FCHDIR, &[cwd]).rat(pid, "fchdir back")?;
    for fd in [cwd, top] {
        t.close(fd)?;
    }
    r
}

/// Binds to `u`'s name, whose file is at `path` (absolute, in the task's
/// root).
pub(super) fn bind_in(
    t: &mut Tracee,
    fd: u64,
    u: &UnixSkEntry,
    path: &str,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    if u.deleted == Some(true) && u.name.first() != Some(&0) {
        return bind_deleted(t, fd, u, path);
    }
    if u.name.first() != Some(&0) {
        let here = path_here(pid, u, path);
        // The dumped socket left its file behind: remove that (and only a
        // socket file) to bind again.
        if std::fs::symlink_metadata(&here).is_ok_and(|m| m.file_type().is_socket()) {
            std::fs::remove_file(&here).rat(pid, format!("remove the old socket file {path}"))?;
        }
    }
    in_root(t, chroot_of(u), |t| {
        let addr = kept::put(t, &sockaddr(&u.name))?;
        let len = sockaddr(&u.name).len() as u64;
        t.syscall(nr::BIND, &[fd, addr, len])
            .rat(pid, format!("bind a unix socket to {}", show_name(&u.name)))
    })?;
    if let Some(p) = &u.file_perms {
        let here = path_here(pid, u, path);
        std::fs::set_permissions(&here, std::fs::Permissions::from_mode(p.mode))
            .rat(pid, "chmod a socket file")?;
        std::os::unix::fs::lchown(&here, Some(p.uid), Some(p.gid))
            .rat(pid, "chown a socket file")?;
    }
    Ok(())
}

/// A socket whose file was removed (or replaced by another file) since it
/// was bound: bound to its name again, its file (at `path`) removed again;
/// whatever holds the name now steps aside meanwhile.
pub(super) fn bind_deleted(
    t: &mut Tracee,
    fd: u64,
    u: &UnixSkEntry,
    path: &str,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let here = path_here(pid, u, path);
    let aside = format!("{here}.crest-aside-{}", u.ino);
    let occupied = std::fs::symlink_metadata(&here).is_ok();
    if occupied {
        std::fs::rename(&here, &aside).rat(pid, format!("move {path} aside"))?;
    }
    let bound = in_root(t, chroot_of(u), |t| {
        let addr = kept::put(t, &sockaddr(&u.name))?;
        let len = sockaddr(&u.name).len() as u64;
        t.syscall(nr::BIND, &[fd, addr, len])
            .rat(pid, format!("bind a unix socket to {}", show_name(&u.name)))
    });
    let removed = if bound.is_ok() {
        std::fs::remove_file(&here).rat(pid, "remove the socket file again")
    } else {
        Ok(())
    };
    if occupied {
        std::fs::rename(&aside, &here).rat(pid, format!("move {path} back"))?;
    }
    bound?;
    removed
}

pub(super) fn connect(t: &mut Tracee, fd: u64, name: &[u8]) -> Result<(), RestoreError> {
    let pid = t.pid();
    let a = sockaddr(name);
    let addr = kept::put(t, &a)?;
    t.syscall(nr::CONNECT, &[fd, addr, a.len() as u64])
        .rat(pid, format!("connect a unix socket to {}", show_name(name)))?;
    Ok(())
}

/// Makes the socket of file `id` (and what it needs first: its listener,
/// its peer); returns the entries made that still need [`finish`].
pub(super) fn make(
    t: &mut Tracee,
    id: u32,
    files: &mut RestoreFiles,
    kept: &mut Kept,
    flight: FlightCopy,
) -> Result<Vec<UnixSkEntry>, RestoreError> {
    let pid = t.pid();
    let u = usk_of(files, pid, id)?;
    let peer = if u.peer != 0 {
        Some(by_ino(files, u.peer).ok_or_else(|| {
            bad(
                pid,
                format!(
                    "unix socket {id}: peer inode {} is not in the image",
                    u.peer
                ),
            )
        })?)
    } else {
        None
    };
    let named = !u.name.is_empty();
    let mut made = Vec::new();
    match peer {
        Some(p) if p.peer == u.ino && p.state != TCP_LISTEN && u.state != TCP_LISTEN => {
            // A connected pair.
            let (a, b) = pair(t, u.r#type)?;
            for (fd, x) in [(a, &u), (b, &p)] {
                if !x.name.is_empty() && !name_taken(files, x) {
                    bind(t, fd, x)?;
                }
            }
            kept.keep(t, u.id, a)?;
            kept.keep(t, p.id, b)?;
            made.push(u.clone());
            made.push(p);
        }
        Some(p) => {
            client(t, &u, &p, (files, kept, flight))?;
            made.push(u);
        }
        None if u.state == TCP_ESTABLISHED && u.r#type != libc::SOCK_DGRAM as u32 => {
            closed_peer(t, &u, (files, kept, flight))?;
            made.push(u);
        }
        None => {
            let fd = new_socket(t, u.r#type)?;
            if named && !name_taken(files, &u) {
                bind(t, fd, &u)?;
            }
            if u.state == TCP_LISTEN {
                t.syscall(nr::LISTEN, &[fd, u64::from(u.backlog)])
                    .rat(pid, "listen")?;
            }
            kept.keep(t, u.id, fd)?;
            made.push(u);
        }
    }
    for x in &made {
        files.socks.made_by.insert(x.id, pid);
    }
    Ok(made)
}

/// What the making of one socket uses: the restore's files, the fds kept
/// in the task, and how a file passed in a queue is made.
type Making<'a> = (&'a mut RestoreFiles, &'a mut Kept, FlightCopy);

/// Makes `u`, a client of listener `p` or a datagram socket connected to
/// `p` (not connected back): `p` made first where this task makes it,
/// then `u` bound to its name and connected to `p`'s.
fn client(
    t: &mut Tracee,
    u: &UnixSkEntry,
    p: &UnixSkEntry,
    (files, kept, flight): Making<'_>,
) -> Result<(), RestoreError> {
    let (pid, id) = (t.pid(), u.id);
    let outside = p.uflags & USK_EXTERN != 0;
    if outside && (p.name.is_empty() || u.r#type != libc::SOCK_DGRAM as u32) {
        return Err(FileError::Unsupported {
            what: format!(
                "unix socket {}: its peer was outside the dumped tree; give crest a \
                 socket to stand for it with --inherit-fd fd[N]:socket:[{}]",
                u.ino, u.ino
            ),
        }
        .in_restore(pid));
    }
    if p.name.is_empty() {
        return Err(bad(
            pid,
            format!("unix socket {id} is connected to an unnamed socket"),
        ));
    }
    let elsewhere = files.socks.made_by.get(&p.id).is_some_and(|o| *o != pid);
    if kept.get(p.id).is_none() && !elsewhere && !outside {
        let before = make(t, p.id, files, kept, flight)?;
        finish(t, &before, files, kept, flight)?;
        for x in &before {
            if let Some(slot) = kept.get(x.id) {
                let copy = kept.copy(t, slot)?;
                files.socks.spare.insert(x.id, copy);
            }
        }
    }
    let fd = new_socket(t, u.r#type)?;
    if !u.name.is_empty() && !name_taken(files, u) {
        bind(t, fd, u)?;
    }
    // (a name in a chroot is reached from inside it)
    in_root(t, chroot_of(p), |t| connect(t, fd, &p.name))?;
    kept.keep(t, u.id, fd)?;
    Ok(())
}

/// Makes `u`, whose peer was closed: one end of a pair whose other end
/// sends the queued data and is closed.
fn closed_peer(
    t: &mut Tracee,
    u: &UnixSkEntry,
    (files, kept, flight): Making<'_>,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let (a, b) = pair(t, u.r#type)?;
    if !u.name.is_empty() && !name_taken(files, u) {
        bind(t, a, u)?;
    }
    if let Some(packets) = files.socks.queues.get(&u.id).cloned() {
        let sender = kept.copy(t, b)?;
        let rights = rights_of(t, &packets, files, kept, flight)?;
        let map = &files.socks.pid_map;
        send_all(pid, &sender, &[], (&packets, &rights, map), u.id)?;
    }
    t.close(b)?;
    kept.keep(t, u.id, a)?;
    Ok(())
}

/// `socketpair(AF_UNIX, ty)` in the task.
pub(super) fn pair(t: &mut Tracee, ty: u32) -> Result<(u64, u64), RestoreError> {
    let pid = t.pid();
    let buf = kept::put(t, &[0u8; 8])?;
    let ty = u64::from(ty) | (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64;
    t.syscall(nr::SOCKETPAIR, &[libc::AF_UNIX as u64, ty, 0, buf])
        .rat(pid, "socketpair")?;
    let mut raw = [0u8; 8];
    t.read_mem(buf, &mut raw).rat(pid, "read socketpair fds")?;
    let a = u64::from(u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]));
    let b = u64::from(u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]));
    Ok((a, b))
}

/// Refills the queues of the sockets just made, then sets their options,
/// flags and shutdown state.
pub(super) fn finish(
    t: &mut Tracee,
    made: &[UnixSkEntry],
    files: &mut RestoreFiles,
    kept: &mut Kept,
    flight: FlightCopy,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let mut copies = Vec::with_capacity(made.len());
    for u in made {
        let slot = kept
            .get(u.id)
            .ok_or_else(|| bad(pid, format!("socket {} not made", u.id)))?;
        copies.push(kept.copy(t, slot)?);
    }
    for (u, copy) in made.iter().zip(&copies) {
        let Some(packets) = files.socks.queues.get(&u.id).cloned() else {
            continue;
        };
        if u.peer == 0 && u.state == TCP_ESTABLISHED && u.r#type != libc::SOCK_DGRAM as u32 {
            continue; // refilled by its closed peer in make
        }
        fill(t, u, copy, &packets, files, kept, flight)?;
    }
    for (u, copy) in made.iter().zip(&copies) {
        skopts::restore(copy, &u.opts).rat(pid, format!("options of unix socket {}", u.id))?;
        let status = libc::O_NONBLOCK | libc::O_ASYNC;
        crest_sys::net::set_status_flags(copy, u.flags as i32 & status)
            .rat(pid, "set socket flags")?;
        if let Some(how) = u.shutdown.filter(|s| (1..=3).contains(s)) {
            let how = match how {
                1 => rustix::net::Shutdown::Read,
                2 => rustix::net::Shutdown::Write,
                _ => rustix::net::Shutdown::Both,
            };
            rustix::net::shutdown(copy, how).rat(pid, "shutdown")?;
        }
    }
    Ok(())
}

/// Puts `packets` back into the receive queue of `u` by sending them from
/// its peer, or from a throwaway socket to its name.
pub(super) fn fill(
    t: &mut Tracee,
    u: &UnixSkEntry,
    _own: &OwnedFd,
    packets: &[Queued],
    files: &mut RestoreFiles,
    kept: &mut Kept,
    flight: FlightCopy,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    // the files passed in them first: making one may make sockets here
    let rights = rights_of(t, packets, files, kept, flight)?;
    let peer = by_ino(files, u.peer).filter(|p| p.state != TCP_LISTEN);
    let (sender, to, temp) = match peer.as_ref().and_then(|p| kept.get(p.id).map(|s| (p, s))) {
        Some((p, slot)) => {
            let to = if p.peer == u.ino {
                Vec::new()
            } else {
                sockaddr(&u.name)
            };
            (kept.copy(t, slot)?, to, None)
        }
        None if !u.name.is_empty() && u.peer == 0 => {
            let fd = new_socket(t, u.r#type)?;
            let c = kept.copy(t, fd)?;
            (c, sockaddr(&u.name), Some(fd))
        }
        None => {
            return Err(FileError::Unsupported {
                what: format!(
                    "data queued on unix socket {} whose sender crest cannot make again",
                    u.id
                ),
            }
            .in_restore(pid))
        }
    };
    let map = &files.socks.pid_map;
    send_all(pid, &sender, &to, (packets, &rights, map), u.id)?;
    if let Some(fd) = temp {
        t.close(fd)?;
    }
    Ok(())
}

/// Sends `packets` from `sender` (to `to`, or its peer), its send buffer
/// raised meanwhile so the whole queue fits.
pub(super) fn send_all(
    pid: i32,
    sender: &OwnedFd,
    to: &[u8],
    (packets, rights, pid_map): (&[Queued], &[Vec<OwnedFd>], &HashMap<i32, i32>),
    id: u32,
) -> Result<(), RestoreError> {
    use crest_sys::net::{getsockopt_int, send_with_fds};
    use std::os::fd::AsFd;
    let total: usize = packets.iter().map(|p| p.data.len()).sum();
    let old = getsockopt_int(sender, libc::SOL_SOCKET, libc::SO_SNDBUF).rat(pid, "SO_SNDBUF")?;
    let want = (2 * total + (64 << 10)).min(i32::MAX as usize / 2) as i32;
    if want > old {
        // (unprivileged, as far as net.core.wmem_max: a queue that does
        // not fit then fails below, naming the socket)
        crate::files::skopts::set_buf(sender, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, want)
            .rat(pid, "raise SO_SNDBUF to refill a queue")?;
    }
    for (p, fds) in packets.iter().zip(rights) {
        let fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        // the sender as it is now
        let creds = p
            .creds
            .map(|(p, u, g)| (pid_map.get(&p).copied().unwrap_or(p), u, g));
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        let n = send_with_fds(sender, &p.data, flags, to, (&fds, creds))
            .rat(pid, format!("refill the queue of socket {id}"))?;
        if n != p.data.len() {
            return Err(FileError::Unsupported {
                what: format!(
                    "a socket queue that took {n} of {} bytes back",
                    p.data.len()
                ),
            }
            .in_restore(pid));
        }
    }
    if want > old {
        let got =
            crate::files::skopts::set_buf(sender, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, old / 2)
                .rat(pid, "put SO_SNDBUF back")?;
        if got != old {
            return Err(FileError::Unsupported {
                what: format!(
                    "putting SO_SNDBUF of socket {id} back to {old} (the kernel gave {got})"
                ),
            }
            .in_restore(pid));
        }
    }
    Ok(())
}

/// crest's copies of the files each packet passes.
pub(super) fn rights_of(
    t: &mut Tracee,
    packets: &[Queued],
    files: &mut RestoreFiles,
    kept: &mut Kept,
    flight: FlightCopy,
) -> Result<Vec<Vec<OwnedFd>>, RestoreError> {
    packets
        .iter()
        .map(|p| {
            p.rights
                .iter()
                .map(|&id| flight(t, id, files, kept))
                .collect()
        })
        .collect()
}
