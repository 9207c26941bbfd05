//! File locks (`--file-locks`): POSIX record locks (`fcntl F_SETLK`), open
//! file description locks (`F_OFD_SETLK`) and BSD `flock` locks held by the
//! tree, in CRIU's `filelocks.img`.
//!
//! Dump reads the "lock:" lines of `/proc/PID/fdinfo/FD`: the kernel lists
//! there the locks taken through that fd's open file description whose
//! owner is that description (flock, OFD) or the task's fd table (POSIX),
//! so every lock shows up at an fd of its owner. A flock or OFD lock is
//! saved once per description (through the first fd seen), a POSIX lock
//! once per task and range. Without `--file-locks` a held lock fails the
//! dump naming the option, as CRIU does. File leases (`F_SETLEASE`) go
//! the same way (CRIU's `FL_LEASE`), taken again by the fd's task. A lease
//! being broken is saved as CRIU does (its target type with
//! `LEASE_BREAKING`), taken again as the lease that breaks to that target
//! (a write lease for a read target, else as the fd's access mode allows)
//! and broken again at once: crest opens the file with `O_NONBLOCK` for
//! the access that breaks it, which starts the break and returns. The
//! holder is told again (its lease signal), and the break time starts
//! again. A delegation, mandatory and unknown locks fail the dump always.
//!
//! Restore takes each lock again as its owner, through the fd it was
//! saved with, with the non-blocking calls: a conflicting lock taken
//! meanwhile by a process outside the tree fails the restore rather than
//! hanging it. POSIX locks go when their owner closes any fd of the file,
//! so they are taken after the task's fds and mappings are in place.

use crate::error::RoomError;
use crate::error::{DumpError, RestoreCtx, RestoreError};
use crate::files::error::{FileError, LockError};
use crate::procfs::FdInfo;
use crate::remote::Remote;
use crest_images::pb::FileLockEntry;
use crest_images::{magic, names};
use crest_inject::{nr, Tracee};
use std::collections::HashSet;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// `file_lock_entry.flag` of a POSIX lock (CRIU's `FL_POSIX`).
pub const FL_POSIX: u32 = 1;
/// `file_lock_entry.flag` of a flock lock (CRIU's `FL_FLOCK`).
pub const FL_FLOCK: u32 = 2;
/// `file_lock_entry.flag` of an OFD lock (CRIU's `FL_OFD`).
pub const FL_OFD: u32 = 4;
/// `file_lock_entry.flag` of a lease (CRIU's `FL_LEASE`).
pub const FL_LEASE: u32 = 32;

/// Or'ed into a lease's type: the lease is being broken to that type
/// (CRIU's `LEASE_BREAKING`).
pub const LEASE_BREAKING: u32 = 4;

/// `F_OFD_SETLK` (not in every libc crate's list).
const F_OFD_SETLK: u64 = 37;
/// Most locks crest takes from an image.
const MAX_LOCKS: usize = 1 << 16;

/// The kind of a lock as fdinfo names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Posix,
    Ofd,
    Flock,
    Lease,
}

impl Kind {
    fn flag(self) -> u32 {
        match self {
            Kind::Posix => FL_POSIX,
            Kind::Ofd => FL_OFD,
            Kind::Flock => FL_FLOCK,
            Kind::Lease => FL_LEASE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Posix => "POSIX",
            Kind::Ofd => "OFD",
            Kind::Flock => "flock",
            Kind::Lease => "lease",
        }
    }
}

/// One "lock:" line of fdinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockLine {
    pub kind: Kind,
    /// A write (exclusive) lock; else a read (shared) one.
    pub write: bool,
    /// A lease being broken: the type it is broken to (`F_RDLCK` or
    /// `F_UNLCK`).
    pub breaking_to: Option<u32>,
    /// The inode, as "MAJ:MIN:INO".
    pub inode: String,
    pub start: i64,
    /// The last byte locked; None: to the end of the file.
    pub end: Option<i64>,
}

impl LockLine {
    /// `l_len` / `file_lock_entry.len`: 0 up to the end of the file.
    pub fn l_len(&self) -> i64 {
        self.end.map_or(0, |e| e - self.start + 1)
    }

    fn describe(&self) -> String {
        let range = match self.end {
            Some(e) => format!("bytes {}-{e}", self.start),
            None if self.start == 0 => "the whole file".to_string(),
            None => format!("bytes {}-EOF", self.start),
        };
        let ty = if self.write { "write" } else { "read" };
        match self.kind {
            Kind::Flock => format!("a {} flock lock (inode {})", ty, self.inode),
            Kind::Lease if self.breaking_to.is_some() => {
                format!("a lease being broken to {ty} (inode {})", self.inode)
            }
            Kind::Lease => format!("a {ty} lease (inode {})", self.inode),
            k => format!("a {} {ty} lock on {range} (inode {})", k.name(), self.inode),
        }
    }
}

/// Parses the value of a "lock:" line, e.g.
/// `1: POSIX  ADVISORY  WRITE 20310 fe:00:10010934 5 14`. A lock crest
/// cannot take again (a lease, a mandatory or unknown lock) is an error
/// that says what it is.
pub fn parse_line(v: &str) -> Result<LockLine, LockError> {
    let w: Vec<&str> = v.split_whitespace().collect();
    let unreadable = || LockError::Unreadable(v.to_string());
    let Some(kind) = w.get(1) else {
        return Err(unreadable());
    };
    let kind = match *kind {
        "POSIX" => Kind::Posix,
        "OFDLCK" => Kind::Ofd,
        "FLOCK" => Kind::Flock,
        // (active, or being broken: a breaker of its own has no file)
        "LEASE" if matches!(w.get(2), Some(&"ACTIVE" | &"BREAKING")) => Kind::Lease,
        "LEASE" => return Err(LockError::LeaseBroken(w[1..].join(" "))),
        "DELEG" => return Err(LockError::Delegation(w[1..].join(" "))),
        _ => return Err(LockError::UnknownKind(v.to_string())),
    };
    if w.len() != 8 {
        return Err(unreadable());
    }
    if w[2] != "ADVISORY" && kind != Kind::Lease {
        return Err(LockError::NotAdvisory {
            mode: w[2].to_lowercase(),
            line: w[1..].join(" "),
        });
    }
    let breaking = kind == Kind::Lease && w[2] == "BREAKING";
    let write = match w[3] {
        "WRITE" => true,
        "READ" => false,
        // (the target of a lease being broken to nothing)
        "UNLCK" if breaking => false,
        _ => {
            return Err(LockError::UnknownType {
                ty: w[3].to_string(),
                line: v.to_string(),
            })
        }
    };
    let start: i64 = w[6].parse().map_err(|_| unreadable())?;
    let end = match w[7] {
        "EOF" => None,
        e => Some(e.parse::<i64>().map_err(|_| unreadable())?),
    };
    if start < 0 || end.is_some_and(|e| e < start) {
        return Err(unreadable());
    }
    let breaking_to = breaking.then_some(if w[3] == "READ" {
        libc::F_RDLCK as u32
    } else {
        libc::F_UNLCK as u32
    });
    Ok(LockLine {
        kind,
        write,
        breaking_to,
        inode: w[5].to_string(),
        start,
        end,
    })
}

/// The locks of a dump, and which were seen already.
#[derive(Default)]
pub struct LockDump {
    pub entries: Vec<FileLockEntry>,
    /// (kind, owner, range): the owner is the file id for flock and OFD
    /// locks, the pid for POSIX ones (with the inode).
    seen: HashSet<(Kind, i64, String, i64, Option<i64>)>,
}

impl LockDump {
    /// Notes the locks fdinfo shows at `fd` of `pid`, whose open file
    /// description is file `id`; without `allowed` (`--file-locks`) a lock
    /// fails the dump.
    pub fn note(
        &mut self,
        pid: i32,
        fd: i32,
        id: u32,
        info: &FdInfo,
        allowed: bool,
    ) -> Result<(), DumpError> {
        for v in info.all("lock") {
            let l = parse_line(v).map_err(|why| FileError::Lock { fd, why }.in_dump(pid))?;
            if !allowed {
                return Err(FileError::NeedsOption {
                    fd,
                    what: format!("holds {}", l.describe()),
                    option: "--file-locks",
                }
                .in_dump(pid));
            }
            let owner = match l.kind {
                Kind::Posix => i64::from(pid),
                Kind::Ofd | Kind::Flock | Kind::Lease => i64::from(id),
            };
            let inode = if l.kind == Kind::Posix {
                l.inode.clone()
            } else {
                String::new()
            };
            if !self.seen.insert((l.kind, owner, inode, l.start, l.end)) {
                continue;
            }
            crate::debug!("pid {pid} fd {fd}: {}", l.describe());
            let ty = match l.breaking_to {
                Some(to) => to | LEASE_BREAKING,
                None if l.write => libc::F_WRLCK as u32,
                None => libc::F_RDLCK as u32,
            };
            self.entries.push(FileLockEntry {
                flag: l.kind.flag(),
                r#type: ty,
                pid,
                fd,
                start: l.start,
                len: l.l_len(),
            });
        }
        Ok(())
    }

    /// Writes `filelocks.img` if the tree holds any lock.
    pub fn write(&self, dir: &Path) -> Result<(), DumpError> {
        if self.entries.is_empty() {
            return Ok(());
        }
        crest_images::write_image(dir, names::FILE_LOCKS, magic::FILE_LOCKS, &self.entries)?;
        Ok(())
    }
}

/// The entries of `filelocks.img` (none without the file), checked.
pub fn read(dir: &Path) -> Result<Vec<FileLockEntry>, RestoreError> {
    if !dir.join(names::FILE_LOCKS).exists() {
        return Ok(Vec::new());
    }
    let list: Vec<FileLockEntry> =
        crest_images::read_image(dir, names::FILE_LOCKS, magic::FILE_LOCKS)?;
    let bad = |what: String| {
        FileError::BadImage {
            file: names::FILE_LOCKS.into(),
            what,
        }
        .in_tree_restore()
    };
    if list.len() > MAX_LOCKS {
        return Err(bad(format!("{} locks, more than {MAX_LOCKS}", list.len())));
    }
    for e in &list {
        check(e).map_err(|why| {
            FileError::BadLock {
                file: names::FILE_LOCKS,
                pid: e.pid,
                fd: e.fd,
                why,
            }
            .in_tree_restore()
        })?;
    }
    Ok(list)
}

fn check(e: &FileLockEntry) -> Result<(), LockError> {
    if ![FL_POSIX, FL_OFD, FL_FLOCK, FL_LEASE].contains(&e.flag) {
        return Err(LockError::EntryKind(e.flag));
    }
    let breaking = [libc::F_RDLCK, libc::F_UNLCK].map(|t| t as u32 | LEASE_BREAKING);
    let lease_breaking = e.flag == FL_LEASE && breaking.contains(&e.r#type);
    if e.r#type != libc::F_RDLCK as u32 && e.r#type != libc::F_WRLCK as u32 && !lease_breaking {
        return Err(LockError::EntryType(e.r#type));
    }
    if e.fd < 0 || e.start < 0 || e.len < 0 || e.start.checked_add(e.len).is_none() {
        return Err(LockError::EntryRange {
            start: e.start,
            len: e.len,
        });
    }
    Ok(())
}

/// Takes again, as task `t`, every lock `locks` says it held but its
/// leases (see [`restore_leases`]).
pub fn restore(t: &mut Tracee, pid: i32, locks: &[FileLockEntry]) -> Result<(), RestoreError> {
    let not_leases: Vec<FileLockEntry> = locks
        .iter()
        .filter(|e| e.flag != FL_LEASE)
        .cloned()
        .collect();
    take(t, pid, &not_leases)
}

/// Takes lease `e` again as task `t`; one being broken is taken as the
/// lease that breaks to its target and broken again: crest opens the file
/// without blocking for the access that breaks it (the kernel starts the
/// break, tells the holder, and answers `EWOULDBLOCK`).
fn take_lease(t: &mut Tracee, e: &FileLockEntry, what: &str) -> Result<(), RestoreError> {
    let pid = t.pid();
    let fd = e.fd as u64;
    if e.r#type & LEASE_BREAKING == 0 {
        t.fcntl(fd, libc::F_SETLEASE, u64::from(e.r#type), what)?;
        return Ok(());
    }
    let to = e.r#type & !LEASE_BREAKING;
    // (a read target: a write lease was broken; to nothing: the lease the
    // fd's access mode allows, a read one on a read-only fd)
    let info = crate::procfs::read_fdinfo(pid, e.fd).map_err(|source| RestoreError::Proc {
        pid,
        step: "read the fdinfo of a leased file",
        source,
    })?;
    let read_only = info.flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32;
    let lease = if to == libc::F_RDLCK as u32 || !read_only {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    };
    t.fcntl(fd, libc::F_SETLEASE, lease as u64, what)?;
    let access = if to == libc::F_RDLCK as u32 {
        libc::O_RDONLY
    } else {
        libc::O_WRONLY
    };
    let path = format!("/proc/{pid}/fd/{}", e.fd);
    let opened = std::fs::OpenOptions::new()
        .read(access == libc::O_RDONLY)
        .write(access == libc::O_WRONLY)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path);
    match opened {
        Err(err) if err.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(()),
        Err(err) => Err(err).rat(pid, format!("break the lease on fd {} again", e.fd)),
        Ok(_) => Err(FileError::Unsupported {
            what: format!(
                "a lease being broken on fd {} that opening the file did not break",
                e.fd
            ),
        }
        .in_restore(pid)),
    }
}

/// Takes again the leases task `t` held, once it has its own ids: a lease
/// wants the holder's fsuid to own the file (or CAP_LEASE).
pub fn restore_leases(
    t: &mut Tracee,
    pid: i32,
    locks: &[FileLockEntry],
) -> Result<(), RestoreError> {
    let leases: Vec<FileLockEntry> = locks
        .iter()
        .filter(|e| e.flag == FL_LEASE)
        .cloned()
        .collect();
    take(t, pid, &leases)
}

fn take(t: &mut Tracee, pid: i32, locks: &[FileLockEntry]) -> Result<(), RestoreError> {
    for e in locks.iter().filter(|e| e.pid == pid) {
        let fd = e.fd as u64;
        let write = e.r#type == libc::F_WRLCK as u32;
        let what = format!(
            "take again the {} {} lock on fd {} (bytes {} +{})",
            if write { "write" } else { "read" },
            match e.flag {
                FL_POSIX => "POSIX",
                FL_OFD => "OFD",
                FL_LEASE => "lease",
                _ => "flock",
            },
            e.fd,
            e.start,
            e.len
        );
        if e.flag == FL_FLOCK {
            let op = if write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
            t.syscall(nr::FLOCK, &[fd, op as u64]).rat(pid, what)?;
            continue;
        }
        if e.flag == FL_LEASE {
            take_lease(t, e, &what)?;
            continue;
        }
        // struct flock: l_type, l_whence (shorts), l_start, l_len, l_pid.
        let mut fl = [0u8; 32];
        fl[0..2].copy_from_slice(&(e.r#type as i16).to_le_bytes());
        fl[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_le_bytes());
        fl[8..16].copy_from_slice(&e.start.to_le_bytes());
        fl[16..24].copy_from_slice(&e.len.to_le_bytes());
        let cmd = if e.flag == FL_OFD {
            F_OFD_SETLK
        } else {
            libc::F_SETLK as u64
        };
        let addr = t.put(&fl).rat(pid, "write a struct flock")?;
        t.fcntl(fd, cmd as i32, addr, &what)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::parse_fdinfo;

    #[test]
    fn parses_the_three_kinds() {
        let p = parse_line("1: POSIX  ADVISORY  WRITE 20310 fe:00:10010934 5 14").unwrap();
        assert_eq!(
            (p.kind, p.write, p.start, p.end, p.l_len()),
            (Kind::Posix, true, 5, Some(14), 10)
        );
        let f = parse_line("1: FLOCK  ADVISORY  READ 20310 fe:00:10010947 0 EOF").unwrap();
        assert_eq!(
            (f.kind, f.write, f.start, f.l_len()),
            (Kind::Flock, false, 0, 0)
        );
        let o = parse_line("3: OFDLCK ADVISORY  WRITE -1 fe:00:10010966 150 EOF").unwrap();
        assert_eq!(
            (o.kind, o.write, o.start, o.end),
            (Kind::Ofd, true, 150, None)
        );
        assert_eq!(o.inode, "fe:00:10010966");
    }

    #[test]
    fn refuses_what_it_cannot_take() {
        let lease = parse_line("1: LEASE  ACTIVE    READ 20310 fe:00:10010947 0 EOF").unwrap();
        assert_eq!(lease.kind, Kind::Lease);
        assert!(!lease.write);
        let breaking = parse_line("1: LEASE  BREAKING  UNLCK 20310 fe:00:10010947 0 EOF").unwrap();
        assert_eq!(breaking.breaking_to, Some(libc::F_UNLCK as u32));
        let to_read = parse_line("1: LEASE  BREAKING  READ 20310 fe:00:10010947 0 EOF").unwrap();
        assert_eq!(to_read.breaking_to, Some(libc::F_RDLCK as u32));
        assert!(to_read.describe().contains("being broken"));
        assert!(parse_line("1: LEASE  BREAKER  UNLCK 20310 fe:00:10010947 0 EOF").is_err());
        assert!(parse_line("1: POSIX  ADVISORY  UNLCK 1 fe:00:1 0 EOF").is_err());
        let mand = parse_line("1: POSIX  MANDATORY WRITE 1 fe:00:1 0 EOF").unwrap_err();
        assert!(mand.to_string().contains("mandatory"), "{mand}");
        assert!(parse_line("1: ACCESS ADVISORY  READ 1 fe:00:1 0 EOF").is_err());
        assert!(parse_line("1: POSIX  ADVISORY  WRITE 1 fe:00:1 9 3").is_err());
        assert!(parse_line("1: POSIX  ADVISORY  WRITE 1 fe:00:1 x EOF").is_err());
        assert!(parse_line("1: POSIX").is_err());
        assert!(parse_line("").is_err());
    }

    #[test]
    fn notes_each_lock_once_and_needs_the_option() {
        let text = "pos:\t0\nflags:\t02100002\nmnt_id:\t27\nino:\t10010966\n\
            lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:10010966 0 99\n\
            lock:\t2: OFDLCK ADVISORY  READ -1 fe:00:10010966 100 149\n";
        let info = parse_fdinfo("fdinfo", text).unwrap();
        let mut d = LockDump::default();
        let err = d.note(7, 5, 3, &info, false).unwrap_err().to_string();
        assert!(
            err.contains("--file-locks") && err.contains("fd 5"),
            "{err}"
        );
        d.note(7, 5, 3, &info, true).unwrap();
        // The same description at another fd (a dup, or a child's copy).
        d.note(8, 9, 3, &info, true).unwrap();
        assert_eq!(d.entries.len(), 2);
        assert_eq!(
            (d.entries[0].pid, d.entries[0].fd, d.entries[0].len),
            (7, 5, 100)
        );
        assert_eq!(d.entries[1].r#type, libc::F_RDLCK as u32);
        assert!(d.entries.iter().all(|e| check(e).is_ok()));
    }

    #[test]
    fn checks_image_entries() {
        let ok = FileLockEntry {
            flag: FL_POSIX,
            r#type: 1,
            pid: 1,
            fd: 3,
            start: 0,
            len: 0,
        };
        assert!(check(&ok).is_ok());
        assert!(check(&FileLockEntry { flag: 8, ..ok }).is_err());
        assert!(check(&FileLockEntry { r#type: 2, ..ok }).is_err());
        assert!(check(&FileLockEntry { fd: -1, ..ok }).is_err());
        assert!(check(&FileLockEntry {
            start: i64::MAX,
            len: 2,
            ..ok
        })
        .is_err());
    }
}
