//! memfd: the open file (`memfd_file_entry`: flags, position, inode) and
//! the inode (`memfd_inode_entry` in `memfd.img`: name, size, seals), whose
//! contents go, page by page where not zero, into
//! `pagemap-shmem-<shmid>.img` and its pages file. A mapping of a memfd
//! ("/memfd:NAME (deleted)") names a memfd entry too, so at restore it maps
//! the restored memfd itself and a shared mapping stays shared with the fd.
//!
//! Restore makes the inode once (`memfd_create`, size, contents, seals)
//! in the first task that needs it; every other user reopens that inode
//! through `/proc/PID/fd/N` of an fd holding it, or through
//! `/proc/PID/map_files/` of a mapping of it.

use super::context::RestoreFiles;
use super::context::Source;
use super::table::FileTable;
use super::table::MemfdDump;
use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::files::error::FileError;
use crate::procfs::FdInfo;
use crate::remote::Remote;
use crest_images::pb::{
    FdTypes, FileEntry, MemfdFileEntry, MemfdInodeEntry, PagemapEntry, PagemapHead,
};
use crest_images::{magic, names, ImageReader, ImageWriter, PE_PRESENT};
use crest_inject::{nr, Tracee};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

const PAGE: u64 = 4096;
const CHUNK: u64 = 256 << 10;
/// `pages-<id>.img` ids of memfd contents start here, far above the ids
/// of tasks' pages.
const PAGES_ID_BASE: u32 = 0x4000_0000;
/// Most pagemap runs crest reads for one memfd.
const MAX_RUNS: usize = 1 << 20;

/// "/memfd:NAME (deleted)" → NAME.
pub fn name_of(link: &str) -> Option<&str> {
    link.strip_prefix("/memfd:")?.strip_suffix(" (deleted)")
}

impl FileTable {
    /// The inode id of the memfd `file` (fd or mapping `what` of `pid`).
    fn memfd_inode(&mut self, pid: i32, link: &str, file: std::fs::File) -> Result<u32, DumpError> {
        let meta = file.metadata().at(pid, "stat a memfd")?;
        if let Some(id) = self.memfds.by_ino.get(&meta.ino()) {
            return Ok(*id);
        }
        let name = name_of(link).ok_or_else(|| {
            FileError::Unsupported {
                what: format!("a memfd with an unexpected name ({link})"),
            }
            .in_dump(pid)
        })?;
        let seals = rustix::fs::fcntl_get_seals(&file)
            .at(pid, "F_GET_SEALS of a memfd")?
            .bits();
        // a hugetlb memfd: MFD_HUGETLB with its page size (the
        // filesystem's block size)
        let hugetlb_flag = if crest_sys::misc::is_hugetlbfs(&file).at(pid, "fstatfs of a memfd")? {
            let bsize = rustix::fs::fstatfs(&file)
                .map(|s| s.f_bsize as u64)
                .unwrap_or(0);
            if !bsize.is_power_of_two() || bsize < 1 << 16 {
                return Err(FileError::Unsupported {
                    what: format!("a hugetlb memfd ({link}) of {bsize}-byte pages"),
                }
                .in_dump(pid));
            }
            Some(MFD_HUGETLB | (bsize.trailing_zeros() << MFD_HUGE_SHIFT))
        } else {
            None
        };
        let id = self.memfds.inodes.len() as u32 + 1;
        let entry = MemfdInodeEntry {
            name: name.to_string(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.len(),
            shmid: id,
            seals,
            inode_id: u64::from(id),
            crest_mode: Some(meta.mode() & 0o7777),
            crest_times: Some(crest_images::pb::crest::CrestTimes::of(&meta)),
            crest_hugetlb_flag: hugetlb_flag,
        };
        self.memfds.inodes.push((entry, file));
        self.memfds.by_ino.insert(meta.ino(), id);
        Ok(id)
    }

    pub(crate) fn dump_memfd(
        &mut self,
        pid: i32,
        fd: i32,
        link: &str,
        info: &FdInfo,
        flags: u32,
    ) -> Result<u32, DumpError> {
        let pidfd = crest_sys::misc::pidfd_open(pid).at(pid, "pidfd_open")?;
        let file: OwnedFd =
            rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
                .at(pid, "pidfd_getfd of a memfd")?;
        let inode_id = self.memfd_inode(pid, link, file.into())?;
        Ok(self.push(entry(flags, info.pos, inode_id)))
    }

    /// The entry a mapping of a memfd names (`vma.shmid`).
    pub(crate) fn memfd_vma(
        &mut self,
        pid: i32,
        start: u64,
        end: u64,
        path: &str,
        flags: u32,
    ) -> Result<u32, DumpError> {
        let file = std::fs::File::open(format!("/proc/{pid}/map_files/{start:x}-{end:x}"))
            .at(pid, "open a memfd mapping")?;
        let inode_id = self.memfd_inode(pid, path, file)?;
        if let Some(id) = self.memfds.vma_entries.get(&(inode_id, flags)) {
            return Ok(*id);
        }
        let id = self.push(entry(flags, 0, inode_id));
        self.memfds.vma_entries.insert((inode_id, flags), id);
        Ok(id)
    }
}

fn entry(flags: u32, pos: u64, inode_id: u32) -> FileEntry {
    FileEntry {
        r#type: FdTypes::Memfd as i32,
        id: 0,
        memfd: Some(MemfdFileEntry {
            id: 0,
            flags,
            pos,
            fown: super::fown::no_owner(),
            inode_id,
        }),
        ..FileEntry::default()
    }
}

/// Writes `memfd.img` and the contents of every memfd.
pub fn write(dir: &Path, m: &MemfdDump) -> Result<(), DumpError> {
    if m.inodes.is_empty() {
        return Ok(());
    }
    let list: Vec<MemfdInodeEntry> = m.inodes.iter().map(|(e, _)| e.clone()).collect();
    crest_images::write_image(dir, names::MEMFD_INODE, magic::MEMFD_INODE, &list)?;
    for (e, file) in &m.inodes {
        write_contents(dir, e, file)?;
    }
    Ok(())
}

fn write_contents(dir: &Path, e: &MemfdInodeEntry, file: &std::fs::File) -> Result<(), DumpError> {
    let pages_id = PAGES_ID_BASE + e.shmid;
    let mut pages = crest_images::create_raw(dir, &names::pages(pages_id))?;
    let mut map = ImageWriter::create(dir, &names::pagemap_shmem(e.shmid), magic::PAGEMAP)?;
    map.write_entry(&PagemapHead { pages_id })?;
    let size = file.metadata().at(0, "stat a memfd")?.len();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut run: Option<(u64, u64)> = None;
    let mut off = 0u64;
    let flush = |run: &mut Option<(u64, u64)>, map: &mut ImageWriter| {
        if let Some((start, n)) = run.take() {
            return map.write_entry(&PagemapEntry {
                vaddr: start,
                compat_nr_pages: n as u32,
                in_parent: None,
                flags: Some(PE_PRESENT),
                nr_pages: Some(n),
            });
        }
        Ok(())
    };
    while off < size {
        let n = (size - off).min(CHUNK);
        let got = &mut buf[..n.div_ceil(PAGE) as usize * PAGE as usize];
        got.fill(0);
        file.read_exact_at(&mut got[..n as usize], off)
            .at(0, "read a memfd")?;
        for (i, page) in got.chunks(PAGE as usize).enumerate() {
            let at = off + i as u64 * PAGE;
            if page.iter().all(|b| *b == 0) {
                flush(&mut run, &mut map)?;
                continue;
            }
            pages.write_all(page)?;
            run = match run {
                Some((s, k)) => Some((s, k + 1)),
                None => Some((at, 1)),
            };
        }
        off += n;
    }
    flush(&mut run, &mut map)?;
    map.finish()?;
    pages.finish()?;
    Ok(())
}

/// `memfd.img`, indexed by inode id.
pub fn read_inodes(dir: &Path) -> Result<HashMap<u32, MemfdInodeEntry>, RestoreError> {
    if !dir.join(names::MEMFD_INODE).exists() {
        return Ok(HashMap::new());
    }
    let list: Vec<MemfdInodeEntry> =
        crest_images::read_image(dir, names::MEMFD_INODE, magic::MEMFD_INODE)?;
    Ok(list.into_iter().map(|e| (e.inode_id as u32, e)).collect())
}

/// Opens the inode in the task if it was made already.
fn reopen(
    t: &mut Tracee,
    files: &RestoreFiles,
    inode_id: u32,
    oflags: i32,
) -> Result<Option<u64>, RestoreError> {
    let path = match files.memfd_src.get(&inode_id) {
        Some(Source::File(id)) => match files.where_is(t.pid(), *id) {
            Some((p, fd)) => format!("/proc/{p}/fd/{fd}"),
            None => return Ok(None),
        },
        Some(Source::Map(p, s, e)) => format!("/proc/{p}/map_files/{s:x}-{e:x}"),
        None => return Ok(None),
    };
    // (crest's /proc, the paths name crest's pids)
    Ok(Some(t.open_crest_side(&path, oflags)?))
}

/// Makes the inode in the task: `memfd_create`, size, contents, seals.
fn make(t: &mut Tracee, files: &RestoreFiles, inode_id: u32) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let bad = |what: String| {
        FileError::BadImage {
            file: names::MEMFD_INODE.into(),
            what,
        }
        .in_restore(pid)
    };
    let e = files
        .memfd_inodes
        .get(&inode_id)
        .ok_or_else(|| bad(format!("no memfd inode {inode_id}")))?;
    let mut name = e.name.as_bytes().to_vec();
    name.truncate(249);
    name.push(0);
    let addr = t.put(&name).rat(pid, "write memfd name")?;
    let mut flags = (libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) as u64;
    if let Some(h) = e.crest_hugetlb_flag {
        let log = h >> MFD_HUGE_SHIFT;
        if h & !(MFD_HUGETLB | (0x3f << MFD_HUGE_SHIFT)) != 0 || !(16..=34).contains(&log) {
            return Err(bad(format!("memfd {} with hugetlb flags {h:#x}", e.name)));
        }
        flags |= u64::from(h);
    }
    let fd = t
        .syscall(nr::MEMFD_CREATE, &[addr, flags])
        .rat(pid, format!("memfd_create({})", e.name))?;
    t.syscall(nr::FTRUNCATE, &[fd, e.size])
        .rat(pid, format!("ftruncate memfd {} to {}", e.name, e.size))?;
    fill(t, files, e, fd)?;
    // owner and mode from crest's side (the task may not own it any more)
    let copy = std::fs::File::from(crate::remote::take_fd(pid, fd as u32)?);
    std::os::unix::fs::fchown(&copy, Some(e.uid), Some(e.gid)).rat(
        pid,
        format!("fchown memfd {} to {}:{}", e.name, e.uid, e.gid),
    )?;
    if let Some(mode) = e.crest_mode {
        use std::os::unix::fs::PermissionsExt;
        copy.set_permissions(std::fs::Permissions::from_mode(mode))
            .rat(pid, format!("fchmod memfd {} to {mode:o}", e.name))?;
    }
    if let Some(times) = &e.crest_times {
        super::ghost::set_times(pid, fd, times)?;
    }
    if e.seals != 0 {
        t.fcntl(
            fd,
            libc::F_ADD_SEALS,
            u64::from(e.seals),
            &format!("F_ADD_SEALS {:#x} on memfd {}", e.seals, e.name),
        )?;
    }
    Ok(fd)
}

/// `MFD_HUGETLB` and where `memfd_create` takes the page size's log.
const MFD_HUGETLB: u32 = 4;
const MFD_HUGE_SHIFT: u32 = 26;

/// Writes the dumped pages of the memfd into it with `pwrite64` (a hugetlb
/// memfd, which takes no writes, through a shared mapping of it in the
/// task).
fn fill(
    t: &mut Tracee,
    files: &RestoreFiles,
    e: &MemfdInodeEntry,
    fd: u64,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let map_name = names::pagemap_shmem(e.shmid);
    let mut r = ImageReader::open(&files.dir, &map_name, magic::PAGEMAP)?;
    let head: PagemapHead = r.next_entry()?.ok_or_else(|| {
        FileError::BadImage {
            file: map_name.clone(),
            what: "no pagemap head".into(),
        }
        .in_restore(pid)
    })?;
    let pages_path = files.dir.join(names::pages(head.pages_id));
    let pages =
        std::fs::File::open(&pages_path).rat(pid, format!("open {}", pages_path.display()))?;
    // (a hugetlb memfd: its pages are written through a mapping)
    let mapped = match e.crest_hugetlb_flag {
        Some(_) if e.size > 0 => {
            let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
            let at = t
                .syscall(nr::MMAP, &[0, e.size, prot, libc::MAP_SHARED as u64, fd, 0])
                .rat(pid, format!("map hugetlb memfd {} to fill it", e.name))?;
            Some(at)
        }
        _ => None,
    };
    let r = fill_runs(t, (&mut r, &map_name), (&pages, &pages_path), e, fd, mapped);
    if let Some(at) = mapped {
        t.syscall(nr::MUNMAP, &[at, e.size])
            .rat(pid, "unmap a hugetlb memfd")?;
    }
    r
}

/// The runs of [`fill`]: into the memfd at `fd`, or, when it is `mapped`
/// at an address of the task, into that mapping.
fn fill_runs(
    t: &mut Tracee,
    (r, map_name): (&mut ImageReader, &str),
    (pages, pages_path): (&std::fs::File, &Path),
    e: &MemfdInodeEntry,
    fd: u64,
    mapped: Option<u64>,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let mut from = 0u64;
    let mut runs = 0usize;
    while let Some(pe) = r.next_entry::<PagemapEntry>()? {
        runs += 1;
        let n = pe.pages();
        let len = n.checked_mul(PAGE);
        let inside = len
            .and_then(|l| pe.vaddr.checked_add(l))
            .is_some_and(|end| end <= e.size.div_ceil(PAGE) * PAGE);
        if runs > MAX_RUNS || !inside || pe.vaddr % PAGE != 0 {
            return Err(FileError::BadImage {
                file: map_name.to_string(),
                what: format!(
                    "{n} pages at offset {:#x} of a {}-byte memfd",
                    pe.vaddr, e.size
                ),
            }
            .in_restore(pid));
        }
        let mut left = n * PAGE;
        let mut at = pe.vaddr;
        while left > 0 {
            let k = left.min(CHUNK);
            let mut buf = vec![0u8; k as usize];
            pages
                .read_exact_at(&mut buf, from)
                .rat(pid, format!("read {}", pages_path.display()))?;
            // The last page may reach past the end of the file.
            let keep = k.min(e.size.saturating_sub(at));
            if let Some(base) = mapped {
                let n = crest_sys::mem::write_remote(
                    pid,
                    &[(base + at, keep as usize)],
                    &buf[..keep as usize],
                )
                .rat(pid, format!("fill hugetlb memfd {} at {at}", e.name))?;
                if n != keep as usize {
                    return Err(FileError::Unsupported {
                        what: format!("hugetlb memfd {}: wrote {n} of {keep} bytes", e.name),
                    }
                    .in_restore(pid));
                }
            } else {
                let addr = t
                    .put(&buf[..keep as usize])
                    .rat(pid, "write memfd contents")?;
                t.syscall(nr::PWRITE64, &[fd, addr, keep, at])
                    .rat(pid, format!("pwrite memfd {} at {at}", e.name))?;
            }
            from += k;
            at += k;
            left -= k;
        }
    }
    Ok(())
}

/// The fd of a memfd entry: the inode made or reopened, with the entry's
/// flags and position.
pub fn open(
    t: &mut Tracee,
    e: &MemfdFileEntry,
    files: &mut RestoreFiles,
) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let acc = e.flags as i32 & libc::O_ACCMODE;
    let fd = match reopen(t, files, e.inode_id, acc)? {
        Some(fd) => fd,
        None => {
            let made = make(t, files, e.inode_id)?;
            files.memfd_src.insert(e.inode_id, Source::File(e.id));
            if acc == libc::O_RDWR {
                made
            } else {
                let again = t.open_crest_side(&format!("/proc/{pid}/fd/{made}"), acc);
                t.close(made)?;
                again?
            }
        }
    };
    let status = u64::from(e.flags) & (libc::O_APPEND | libc::O_NONBLOCK) as u64;
    t.fcntl(fd, libc::F_SETFL, status, "set memfd flags")?;
    if e.pos != 0 {
        t.syscall(nr::LSEEK, &[fd, e.pos, libc::SEEK_SET as u64])
            .rat(pid, format!("lseek memfd to {}", e.pos))?;
    }
    Ok(fd)
}

/// An fd to map a memfd VMA from (entry `id`, mapping `start`-`end`), or
/// None if entry `id` is not a memfd.
pub fn open_for_map(
    t: &mut Tracee,
    files: &mut RestoreFiles,
    id: u32,
    oflags: i32,
    (start, end): (u64, u64),
) -> Option<Result<u64, RestoreError>> {
    let inode_id = files.entries.get(&id)?.memfd.as_ref()?.inode_id;
    Some((|| {
        if let Some(fd) = reopen(t, files, inode_id, oflags)? {
            return Ok(fd);
        }
        let fd = make(t, files, inode_id)?;
        files
            .memfd_src
            .insert(inode_id, Source::Map(t.pid(), start, end));
        Ok(fd)
    })())
}

#[cfg(test)]
mod tests {
    use super::name_of;

    #[test]
    fn names() {
        assert_eq!(name_of("/memfd:shm (deleted)"), Some("shm"));
        assert_eq!(name_of("/memfd:a b (deleted)"), Some("a b"));
        assert_eq!(name_of("/memfd:x"), None);
        assert_eq!(name_of("/tmp/x (deleted)"), None);
    }
}
