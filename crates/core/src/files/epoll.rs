//! epoll: each watched fd with its events and data (fdinfo lines
//! "tfd: N events: X data: Y ..."). The fd numbers are those of the task
//! that registered them; dump checks with `kcmp(KCMP_EPOLL_TFD)` that each
//! still names the watched file. A watch whose fd was closed or replaced
//! since (the file lives on in another fd) is found in the fds of the tree
//! the same way and named by its file (crest's `crest_file`). Restore makes
//! the instance where the other fds are made and adds the targets once
//! every fd of the task is at its number; a target named by its file is
//! put at its old number for the `epoll_ctl`, and whatever is there now
//! put back after.

use super::error::need;
use super::fown::no_owner;
use crate::error::RoomError;
use crate::error::{DumpError, RestoreCtx, RestoreError};
use crate::files::error::FileError;
use crate::procfs::FdInfo;
use crate::remote::Remote;
use crest_images::pb::{EventpollFileEntry, EventpollTfdEntry, FdTypes, FileEntry};
use crest_inject::{nr, Tracee};

/// One "tfd:" line: target fd, events (hex), data (hex), inode (hex).
pub fn parse_tfd(line: &str) -> Option<EventpollTfdEntry> {
    let mut words = line.split_whitespace();
    let tfd = words.next()?.parse().ok()?;
    let mut e = EventpollTfdEntry {
        id: 0,
        tfd,
        events: 0,
        data: 0,
        dev: None,
        inode: None,
        pos: None,
        crest_file: None,
    };
    let (mut have_ev, mut have_data) = (false, false);
    while let Some(w) = words.next() {
        let (key, inline) = match w.split_once(':') {
            Some((k, v)) if !v.is_empty() => (k, Some(v)),
            Some((k, _)) => (k, None),
            None => continue,
        };
        let v = match inline {
            Some(v) => v,
            None => words.next()?,
        };
        match key {
            "events" => {
                e.events = u32::from_str_radix(v, 16).ok()?;
                have_ev = true;
            }
            "data" => {
                e.data = u64::from_str_radix(v, 16).ok()?;
                have_data = true;
            }
            "ino" => e.inode = Some(u64::from_str_radix(v, 16).ok()?),
            "sdev" => e.dev = Some(u32::from_str_radix(v, 16).ok()?),
            "pos" => e.pos = v.parse().ok(),
            _ => {}
        }
    }
    (have_ev && have_data).then_some(e)
}

/// Every target of the instance.
pub fn parse(info: &FdInfo) -> Option<Vec<EventpollTfdEntry>> {
    info.all("tfd").map(parse_tfd).collect()
}

/// Each target fd number of the instance at `fd` of `pid` must still be
/// the file it watches: crest restores the watches by fd number.
pub fn check_targets(pid: i32, fd: i32, info: &FdInfo) -> Result<(), DumpError> {
    for t in need(pid, fd, "an epoll instance", parse(info))? {
        let same = crest_sys::misc::kcmp_epoll_tfd(pid, t.tfd as i32, fd, t.tfd as i32);
        if same.ok() != Some(0) {
            return Err(FileError::UnsupportedFd {
                fd,
                kind: format!(
                    "an epoll instance watching a file whose fd {} was closed or replaced since",
                    t.tfd
                ),
            }
            .in_dump(pid));
        }
    }
    Ok(())
}

/// Watches whose fd no longer holds their file: (the watch's index, a pid
/// and fd of the tree that does).
pub type Elsewhere = Vec<(usize, i32, i32)>;

/// The entry of the epoll instance at `fd` of `pid`, and its watches
/// whose fd no longer holds their file.
pub fn dump(
    pid: i32,
    fd: i32,
    info: &FdInfo,
    flags: u32,
    tree: &std::collections::HashSet<i32>,
) -> Result<(FileEntry, Elsewhere), DumpError> {
    let tfd = need(pid, fd, "an epoll instance", parse(info))?;
    let mut elsewhere = Vec::new();
    for (i, t) in tfd.iter().enumerate() {
        let w = t.tfd as i32;
        if crest_sys::misc::kcmp_epoll_tfd(pid, w, fd, w).ok() == Some(0) {
            continue;
        }
        let found = holder_of(pid, fd, w, tree).ok_or_else(|| {
            FileError::UnsupportedFd {
                fd,
                kind: format!(
                    "an epoll instance watching a file whose fd {w} was closed or replaced since, \
                 and which no fd of the tree holds"
                ),
            }
            .in_dump(pid)
        })?;
        elsewhere.push((i, found.0, found.1));
    }
    Ok((
        FileEntry {
            r#type: FdTypes::Eventpoll as i32,
            id: 0,
            epfd: Some(EventpollFileEntry {
                id: 0,
                flags,
                fown: no_owner(),
                tfd,
            }),
            ..FileEntry::default()
        },
        elsewhere,
    ))
}

/// An fd of the tree (the owner's first) holding the file the epoll at
/// `efd` of `owner` watches as `tfd`.
fn holder_of(
    owner: i32,
    efd: i32,
    tfd: i32,
    tree: &std::collections::HashSet<i32>,
) -> Option<(i32, i32)> {
    let mut pids: Vec<i32> = tree.iter().copied().filter(|p| *p != owner).collect();
    pids.sort_unstable();
    pids.insert(0, owner);
    for p in pids {
        let Ok(fds) = crate::procfs::list_fds(p) else {
            continue;
        };
        for (f, _) in fds {
            if crest_sys::misc::kcmp_epoll_tfd_of(p, f, owner, (efd, tfd)).ok() == Some(0) {
                return Some((p, f));
            }
        }
    }
    None
}

pub fn create(t: &mut Tracee) -> Result<u64, RestoreError> {
    let pid = t.pid();
    t.syscall(nr::EPOLL_CREATE1, &[libc::EPOLL_CLOEXEC as u64])
        .rat(pid, "epoll_create1")
}

/// Adds every target to the instance at `epfd` (fds at their numbers);
/// `file_of` gives crest's copy of a file a watch names by its file.
pub fn add_targets(
    t: &mut Tracee,
    epfd: u32,
    e: &EventpollFileEntry,
    file_of: &mut dyn FnMut(&mut Tracee, u32) -> Result<std::os::fd::OwnedFd, RestoreError>,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    for tfd in &e.tfd {
        // the file at its old number meanwhile, what is there kept aside
        let moved = match tfd.crest_file {
            Some(id) => {
                let file = file_of(t, id)?;
                Some(place(t, tfd.tfd, &file)?)
            }
            None => None,
        };
        // struct epoll_event is packed on x86-64: u32 events, u64 data.
        let mut ev = Vec::with_capacity(12);
        ev.extend_from_slice(&tfd.events.to_le_bytes());
        ev.extend_from_slice(&tfd.data.to_le_bytes());
        let addr = t.put(&ev).rat(pid, "write epoll_event")?;
        let add = libc::EPOLL_CTL_ADD as u64;
        let r = t
            .syscall(
                nr::EPOLL_CTL,
                &[u64::from(epfd), add, u64::from(tfd.tfd), addr],
            )
            .rat(
                pid,
                format!(
                    "epoll_ctl(ADD) of fd {} (events {:#x}) to epoll fd {epfd}",
                    tfd.tfd, tfd.events
                ),
            );
        if let Some(m) = moved {
            put_back(t, tfd.tfd, m)?;
        }
        r?;
    }
    Ok(())
}

/// What [`place`] moved aside: the fd that held the number (and whether
/// it was close-on-exec), if one did.
struct Aside(Option<(u64, bool)>);

/// Puts `file` at fd `num` of the task, moving aside what is there.
fn place(t: &mut Tracee, num: u32, file: &std::os::fd::OwnedFd) -> Result<Aside, RestoreError> {
    let n = u64::from(num);
    let aside = match t.syscall(nr::FCNTL, &[n, libc::F_GETFD as u64]) {
        Ok(fdflags) => {
            let keep = t.fcntl(
                n,
                libc::F_DUPFD_CLOEXEC,
                n + 1,
                &format!("move fd {num} aside"),
            )?;
            Some((keep, fdflags & libc::FD_CLOEXEC as u64 != 0))
        }
        Err(_) => None,
    };
    let there = t.give_fd(file)?;
    t.dup3(there, n, 0, &format!("put a watched file at fd {num}"))?;
    t.close(there)?;
    Ok(Aside(aside))
}

/// Undoes [`place`]: fd `num` as it was.
fn put_back(t: &mut Tracee, num: u32, a: Aside) -> Result<(), RestoreError> {
    let n = u64::from(num);
    match a.0 {
        Some((keep, cloexec)) => {
            let flags = if cloexec { libc::O_CLOEXEC as u64 } else { 0 };
            t.dup3(keep, n, flags, &format!("put fd {num} back"))?;
            t.close(keep)?;
        }
        None => {
            t.close(n)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::parse_fdinfo;

    #[test]
    fn targets() {
        let text = include_str!("../procfs/fixtures/fdinfo_epoll.txt");
        let v = parse(&parse_fdinfo("fdinfo", text).unwrap()).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].tfd, v[0].events, v[0].data), (4, 0x19, 4));
        assert_eq!(
            (v[0].inode, v[0].dev, v[0].pos),
            (Some(0x153e), Some(0xf), Some(0))
        );
        assert_eq!((v[1].tfd, v[1].events), (5, 0x1c));
        let e = parse_tfd("7 events: 80000019 data: deadbeef  pos:0 ino:12 sdev:10").unwrap();
        assert_eq!((e.tfd, e.events, e.data), (7, 0x8000_0019, 0xdead_beef));
        assert!(parse_tfd("7 events: zz data: 1").is_none());
        assert!(parse_tfd("x events: 1 data: 1").is_none());
        assert!(parse_tfd("7 events: 1").is_none());
    }
}
