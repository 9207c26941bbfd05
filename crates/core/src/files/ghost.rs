//! Files deleted while open ("ghost files", as CRIU calls them): the
//! contents go into `ghost-file-<id>.img` (a `ghost_file_entry` then the
//! bytes), up to the ghost limit, and `remap-fpath.img` says which
//! regular-file entry each ghost serves. Restore recreates the file at its
//! old path, fills it, opens it the way the task had it, and unlinks it
//! again; other descriptions of the same file reopen it through the first.

use super::context::RestoreFiles;
use super::table::FileTable;
use super::table::GhostDump;
use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::files::error::FileError;
use crate::remote::Remote;
use crest_images::pb::{
    GhostChunkEntry, GhostFileEntry, RegFileEntry, RemapFilePathEntry, RemapType,
};
use crest_images::{magic, names, ImageReader};
use crest_inject::{nr, Tracee};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Largest chunk of contents moved at once.
const CHUNK: usize = 256 << 10;

impl FileTable {
    /// Saves the deleted file behind fd `fd` of `pid` (entry `reg_id`).
    pub(crate) fn dump_ghost(
        &mut self,
        pid: i32,
        fd: i32,
        reg_id: u32,
        meta: &std::fs::Metadata,
    ) -> Result<(), DumpError> {
        let refuse = |kind: String| FileError::UnsupportedFd { fd, kind }.in_dump(pid);
        self.dump_ghost_at(pid, format!("/proc/{pid}/fd/{fd}"), reg_id, meta, &refuse)
    }

    /// Saves the deleted file that `source` (a `/proc/PID/fd/N` or
    /// `/proc/PID/map_files/A-B` link of `pid`) opens, for entry `reg_id`;
    /// `refuse` words a refusal.
    pub(crate) fn dump_ghost_at(
        &mut self,
        pid: i32,
        source: String,
        reg_id: u32,
        meta: &std::fs::Metadata,
        refuse: &dyn Fn(String) -> DumpError,
    ) -> Result<(), DumpError> {
        let g = &mut self.ghosts;
        let limit = g.limit;
        let key = (meta.dev(), meta.ino());
        let id = match g.by_inode.get(&key) {
            Some(id) => *id,
            // a directory or a device node: nothing but its inode
            None if !meta.is_file() => {
                g.ghosts.push((ghost_entry(meta, None), pid, source));
                g.extents.push(None);
                let id = g.ghosts.len() as u32;
                g.by_inode.insert(key, id);
                id
            }
            None => {
                // its data: a sparse file keeps only its extents (and the
                // limit counts them, as CRIU's --ghost-fiemap does)
                let file = std::fs::File::open(&source).at(pid, "open a deleted file")?;
                let extents = crest_sys::misc::data_extents(&file, meta.len())
                    .at(pid, "find the data of a deleted file")?;
                let data: u64 = extents.iter().map(|e| e.1).sum();
                if data > limit {
                    return Err(refuse(format!(
                        "a deleted file with {data} bytes of data, more than the ghost limit of {limit} bytes (raise it with --ghost-limit)"
                    )));
                }
                let sparse = data < meta.len();
                g.ghosts
                    .push((ghost_entry(meta, Some(sparse)), pid, source));
                g.extents.push(sparse.then_some(extents));
                let id = g.ghosts.len() as u32;
                g.by_inode.insert(key, id);
                id
            }
        };
        g.remaps.push(RemapFilePathEntry {
            orig_id: reg_id,
            remap_id: id,
            remap_type: Some(RemapType::Ghost as i32),
        });
        Ok(())
    }
}

/// The ghost entry of a deleted file (`sparse`: whether its contents go
/// as chunks; None for a directory or device node, which has none).
fn ghost_entry(meta: &std::fs::Metadata, sparse: Option<bool>) -> GhostFileEntry {
    use std::os::unix::fs::FileTypeExt;
    GhostFileEntry {
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode(),
        dev: Some(meta.dev() as u32),
        ino: Some(meta.ino()),
        rdev: meta
            .file_type()
            .is_char_device()
            .then_some(meta.rdev() as u32),
        chunks: sparse.filter(|s| *s),
        size: sparse.map(|_| meta.len()),
        crest_times: Some(crest_images::pb::crest::CrestTimes::of(meta)),
    }
}

/// Writes `remap-fpath.img` and one `ghost-file-<id>.img` per ghost, the
/// contents read again now through the task's fd.
pub fn write(dir: &Path, g: &GhostDump) -> Result<(), DumpError> {
    if g.remaps.is_empty() {
        return Ok(());
    }
    crest_images::write_image(dir, names::REMAP_FPATH, magic::REMAP_FPATH, &g.remaps)?;
    for (i, (entry, pid, path)) in g.ghosts.iter().enumerate() {
        let pid = *pid;
        if entry.mode & libc::S_IFMT != libc::S_IFREG {
            // a directory or device node: the entry alone
            crest_images::write_image(
                dir,
                &names::ghost_file(i as u32 + 1),
                magic::GHOST_FILE,
                std::slice::from_ref(entry),
            )?;
            continue;
        }
        if let Some(Some(extents)) = g.extents.get(i) {
            write_chunks(dir, i as u32 + 1, entry, path, extents).at(pid, "copy a deleted file")?;
            continue;
        }
        let data = std::fs::read(path).at(pid, "read a deleted file")?;
        if Some(data.len() as u64) != entry.size {
            return Err(FileError::Unsupported {
                what: format!("a deleted file ({path}) whose size changed while it was dumped"),
            }
            .in_dump(pid));
        }
        let mut w = crest_images::ImageWriter::create(
            dir,
            &names::ghost_file(i as u32 + 1),
            magic::GHOST_FILE,
        )?;
        w.write_entry(entry)?;
        for chunk in data.chunks(CHUNK) {
            w.write_payload(chunk)?;
        }
        w.finish()?;
    }
    Ok(())
}

/// `remap-fpath.img`: regular-file entry id → ghost id.
/// A sparse ghost: the entry, then each data extent as a
/// `ghost_chunk_entry` and its bytes.
fn write_chunks(
    dir: &Path,
    id: u32,
    entry: &GhostFileEntry,
    path: &str,
    extents: &[(u64, u64)],
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let mut w = crest_images::ImageWriter::create(dir, &names::ghost_file(id), magic::GHOST_FILE)
        .map_err(std::io::Error::other)?;
    w.write_entry(entry).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; CHUNK];
    for &(off, len) in extents {
        w.write_entry(&GhostChunkEntry { len, off })
            .map_err(std::io::Error::other)?;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            file.read_exact_at(&mut buf[..n], off + done)?;
            w.write_payload(&buf[..n]).map_err(std::io::Error::other)?;
            done += n as u64;
        }
    }
    w.finish().map_err(std::io::Error::other)?;
    Ok(())
}

pub fn read_remaps(dir: &Path) -> Result<HashMap<u32, u32>, RestoreError> {
    if !dir.join(names::REMAP_FPATH).exists() {
        return Ok(HashMap::new());
    }
    let list: Vec<RemapFilePathEntry> =
        crest_images::read_image(dir, names::REMAP_FPATH, magic::REMAP_FPATH)?;
    let mut out = HashMap::with_capacity(list.len());
    for r in list {
        if r.remap_type != Some(RemapType::Ghost as i32) {
            return Err(FileError::BadImage {
                file: names::REMAP_FPATH.into(),
                what: format!("file {} has a remap other than a ghost file", r.orig_id),
            }
            .in_tree_restore());
        }
        out.insert(r.orig_id, r.remap_id);
    }
    Ok(out)
}

/// `open(path, flags, mode)` as the task: the fd, or the errno.
fn try_create(
    t: &mut Tracee,
    path: &str,
    flags: i32,
    mode: u32,
) -> Result<Result<u64, i32>, RestoreError> {
    let pid = t.pid();
    let mut p = path.as_bytes().to_vec();
    p.push(0);
    let addr = t.put(&p).rat(pid, "write path")?;
    let flags = (flags | libc::O_CLOEXEC) as u64;
    let r = t
        .syscall_raw(
            nr::OPENAT,
            &[libc::AT_FDCWD as u64, addr, flags, u64::from(mode)],
        )
        .rat(pid, format!("open {path}"))?;
    Ok(if r < 0 { Err(-r as i32) } else { Ok(r as u64) })
}

/// `rename(from, to)` as the task.
fn rename_in_task(t: &mut Tracee, from: &str, to: &str) -> Result<(), RestoreError> {
    let pid = t.pid();
    let mut buf = from.as_bytes().to_vec();
    buf.push(0);
    let to_at = buf.len() as u64;
    buf.extend_from_slice(to.as_bytes());
    buf.push(0);
    let addr = t.put(&buf).rat(pid, "write paths")?;
    t.syscall(nr::RENAME, &[addr, addr + to_at])
        .rat(pid, format!("rename {from} to {to}"))?;
    Ok(())
}

fn openat(t: &mut Tracee, path: &str, flags: i32, mode: u32) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let mut p = path.as_bytes().to_vec();
    p.push(0);
    let addr = t.put(&p).rat(pid, "write path")?;
    let flags = (flags | libc::O_CLOEXEC) as u64;
    t.syscall(
        nr::OPENAT,
        &[libc::AT_FDCWD as u64, addr, flags, u64::from(mode)],
    )
    .rat(pid, format!("open {path}"))
}

/// Creates the ghost file at `path` (mode `mode`) in the task: where
/// something took the name since (a directory, another file), it steps
/// aside to `aside` while the ghost is made under its old name, so the fd
/// shows the name it had. Returns the fd and whether something was moved.
fn create_in_place(
    t: &mut Tracee,
    path: &str,
    aside: &str,
    mode: u32,
) -> Result<(u64, bool), RestoreError> {
    let pid = t.pid();
    let create = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
    Ok(match try_create(t, path, create, mode)? {
        Ok(fd) => (fd, false),
        Err(e) if e == libc::EEXIST => {
            rename_in_task(t, path, aside)?;
            match openat(t, path, create, mode) {
                Ok(fd) => (fd, true),
                Err(e) => {
                    let _ = rename_in_task(t, aside, path);
                    return Err(e);
                }
            }
        }
        Err(e) => {
            return Err(RestoreError::Io {
                pid,
                step: format!("create ghost file {path}"),
                source: std::io::Error::from_raw_os_error(e),
            })
        }
    })
}

/// Opens the deleted file of entry `reg` (ghost `ghost`) in the task with
/// the entry's flags; the first time, recreates it from the image.
pub fn open(
    t: &mut Tracee,
    reg: &RegFileEntry,
    flags: i32,
    ghost: u32,
    files: &mut RestoreFiles,
) -> Result<u64, RestoreError> {
    let pid = t.pid();
    if let Some(held) = files.ghost_held.get(&ghost) {
        // made again already: the same file, through crest's copy
        use std::os::fd::AsRawFd;
        let path = format!("/proc/{}/fd/{}", std::process::id(), held.as_raw_fd());
        return Ok(t.open_crest_side(&path, flags)?);
    }
    if let Some(src) = files.ghost_src.get(&ghost).copied() {
        if let Some((hpid, hfd)) = files.where_is(pid, src) {
            // crest's /proc: the task may be in a container's mount
            // namespace by now, whose /proc knows crest's pids not
            return Ok(t.open_crest_side(&format!("/proc/{hpid}/fd/{hfd}"), flags)?);
        }
    }
    let dir = files.dir.clone();
    let name = names::ghost_file(ghost);
    let mut r = ImageReader::open(&dir, &name, magic::GHOST_FILE)?;
    let entry: GhostFileEntry = r.next_entry()?.ok_or_else(|| {
        FileError::BadImage {
            file: name.clone(),
            what: "no ghost_file_entry".into(),
        }
        .in_restore(pid)
    })?;
    let kind = entry.mode & libc::S_IFMT;
    if kind == libc::S_IFDIR || kind == libc::S_IFCHR {
        return open_special(t, reg, flags, ghost, &entry, files);
    }
    if kind != libc::S_IFREG {
        return Err(FileError::BadImage {
            file: name,
            what: format!("a ghost of mode {:#o}", entry.mode),
        }
        .in_restore(pid));
    }
    let size = entry.size.unwrap_or(0);
    let path = &reg.name;
    let aside = format!("{path}.crest-aside-{}", reg.id);
    let (made, moved) = create_in_place(t, path, &aside, entry.mode & 0o7777)?;
    let res = fill(t, made, &mut r, size, &entry, path).and_then(|()| Ok(t.open(path, flags)?));
    t.close(made)?;
    let mut p = path.as_bytes().to_vec();
    p.push(0);
    let addr = t.put(&p).rat(pid, "write path")?;
    t.syscall(nr::UNLINK, &[addr])
        .rat(pid, format!("unlink ghost file {path}"))?;
    if moved {
        rename_in_task(t, &aside, path)?;
    }
    let fd = res?;
    files.ghost_src.insert(ghost, reg.id);
    files
        .ghost_held
        .insert(ghost, crate::remote::take_fd(pid, fd as u32)?);
    Ok(fd)
}

/// A directory or device node deleted while open (or the cwd): made again
/// empty at its old path, opened, given its owner, mode and times, and
/// removed again.
fn open_special(
    t: &mut Tracee,
    reg: &RegFileEntry,
    flags: i32,
    ghost: u32,
    entry: &GhostFileEntry,
    files: &mut RestoreFiles,
) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let path = &reg.name;
    let dir = entry.mode & libc::S_IFMT == libc::S_IFDIR;
    let mode = u64::from(entry.mode & 0o7777);
    let mut p = path.as_bytes().to_vec();
    p.push(0);
    let addr = t.put(&p).rat(pid, "write path")?;
    let make = |t: &mut Tracee| {
        if dir {
            t.syscall_raw(nr::MKDIRAT, &[libc::AT_FDCWD as u64, addr, mode])
        } else {
            let rdev = u64::from(entry.rdev.unwrap_or(0));
            t.syscall_raw(nr::MKNOD, &[addr, u64::from(libc::S_IFCHR) | mode, rdev])
        }
        .rat(pid, format!("make {path} again"))
    };
    let aside = format!("{path}.crest-aside-{}", reg.id);
    let mut moved = false;
    let mut r = make(t)?;
    if r == -i64::from(libc::EEXIST) {
        rename_in_task(t, path, &aside)?;
        moved = true;
        r = make(t)?;
    }
    let made = if r < 0 {
        Err(RestoreError::Io {
            pid,
            step: format!("make {path} again"),
            source: std::io::Error::from_raw_os_error(-r as i32),
        })
    } else {
        let extra = if dir { libc::O_DIRECTORY } else { 0 };
        openat(t, path, flags | extra, 0).and_then(|fd| {
            let copy = std::fs::File::from(crate::remote::take_fd(pid, fd as u32)?);
            std::os::unix::fs::fchown(&copy, Some(entry.uid), Some(entry.gid))
                .rat(pid, format!("chown {path}"))?;
            t.syscall(nr::FCHMOD, &[fd, mode])
                .rat(pid, format!("chmod {path}"))?;
            if let Some(times) = &entry.crest_times {
                set_times(pid, fd, times)?;
            }
            files.ghost_held.insert(ghost, copy.into());
            Ok(fd)
        })
    };
    if r >= 0 {
        let rm = if dir { nr::RMDIR } else { nr::UNLINK };
        t.syscall(rm, &[addr])
            .rat(pid, format!("remove {path} again"))?;
    }
    if moved {
        rename_in_task(t, &aside, path)?;
    }
    let fd = made?;
    files.ghost_src.insert(ghost, reg.id);
    Ok(fd)
}

fn fill(
    t: &mut Tracee,
    fd: u64,
    r: &mut ImageReader,
    size: u64,
    entry: &GhostFileEntry,
    path: &str,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let (huge, chunks) = (on_hugetlbfs(pid, fd), entry.chunks == Some(true));
    if huge {
        fill_huge(t, fd, r, (size, chunks), path)?;
    } else if chunks {
        fill_chunks(t, fd, r, size, path)?;
    }
    // (the rest: a whole file written in order)
    let mut left = if chunks || huge { 0 } else { size };
    while left > 0 {
        let n = left.min(CHUNK as u64);
        let data = r.read_payload(n)?;
        let addr = t.put(&data).rat(pid, "write ghost contents")?;
        let wrote = t
            .syscall(nr::WRITE, &[fd, addr, n])
            .rat(pid, format!("write ghost file {path}"))?;
        if wrote != n {
            return Err(FileError::Unsupported {
                what: format!("a ghost file {path} that took {wrote} of {n} bytes"),
            }
            .in_restore(pid));
        }
        left -= n;
    }
    // the owner as crest sees it, from crest's side: the task may be in a
    // user namespace that maps crest's view otherwise
    let copy = std::fs::File::from(crate::remote::take_fd(pid, fd as u32)?);
    std::os::unix::fs::fchown(&copy, Some(entry.uid), Some(entry.gid))
        .rat(pid, format!("chown ghost file {path}"))?;
    t.syscall(nr::FCHMOD, &[fd, u64::from(entry.mode & 0o7777)])
        .rat(pid, format!("chmod ghost file {path}"))?;
    if let Some(times) = &entry.crest_times {
        set_times(pid, fd, times)?;
    }
    Ok(())
}

/// Whether fd `fd` of `pid` is a file on a hugetlbfs mount (which takes
/// no `write`: its pages are filled through a mapping).
fn on_hugetlbfs(pid: i32, fd: u64) -> bool {
    const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;
    rustix::fs::statfs(format!("/proc/{pid}/fd/{fd}").as_str())
        .is_ok_and(|f| f.f_type as u64 == HUGETLBFS_MAGIC)
}

/// Fills a ghost file on a hugetlbfs mount: sized first (a whole number
/// of its huge pages, as it was), then mapped shared in the task and its
/// data (whole, or the `chunks` of a sparse one) written through the
/// mapping.
fn fill_huge(
    t: &mut Tracee,
    fd: u64,
    r: &mut ImageReader,
    (size, chunks): (u64, bool),
    path: &str,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    t.syscall(nr::FTRUNCATE, &[fd, size])
        .rat(pid, format!("size ghost file {path} (on hugetlbfs)"))?;
    if size == 0 {
        return Ok(());
    }
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let at = t
        .syscall(nr::MMAP, &[0, size, rw, libc::MAP_SHARED as u64, fd, 0])
        .rat(pid, format!("map ghost file {path} (on hugetlbfs)"))?;
    let res = (|| -> Result<(), RestoreError> {
        if !chunks {
            return put_mapped(t, r, (at, size), (0, size), path);
        }
        while let Some(c) = r.next_entry::<GhostChunkEntry>()? {
            put_mapped(t, r, (at, size), (c.off, c.len), path)?;
        }
        Ok(())
    })();
    t.syscall(nr::MUNMAP, &[at, size])
        .rat(pid, format!("unmap ghost file {path}"))?;
    res
}

/// Writes `len` bytes of `r`'s payload at `off` of a ghost file mapped at
/// `at` (`size` bytes) in the task.
fn put_mapped(
    t: &mut Tracee,
    r: &mut ImageReader,
    (at, size): (u64, u64),
    (off, len): (u64, u64),
    path: &str,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    if off.checked_add(len).is_none_or(|end| end > size) {
        return Err(FileError::BadImage {
            file: path.to_string(),
            what: format!("{len} bytes at {off} past the size {size}"),
        }
        .in_restore(pid));
    }
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK as u64);
        let data = r.read_payload(n)?;
        t.write_mem(at + off + done, &data)
            .rat(pid, format!("write ghost file {path} through its mapping"))?;
        done += n;
    }
    Ok(())
}

/// Writes the data extents of a sparse ghost at their offsets and gives
/// the file its size (the holes stay holes).
fn fill_chunks(
    t: &mut Tracee,
    fd: u64,
    r: &mut ImageReader,
    size: u64,
    path: &str,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let bad = |what: String| {
        FileError::BadImage {
            file: path.to_string(),
            what,
        }
        .in_restore(pid)
    };
    while let Some(c) = r.next_entry::<GhostChunkEntry>()? {
        if c.off.checked_add(c.len).is_none_or(|end| end > size) {
            return Err(bad(format!(
                "a chunk of {} bytes at {} past the size {size}",
                c.len, c.off
            )));
        }
        let mut done = 0;
        while done < c.len {
            let n = (c.len - done).min(CHUNK as u64);
            let data = r.read_payload(n)?;
            let addr = t.put(&data).rat(pid, "write ghost contents")?;
            let wrote = t
                .syscall(nr::PWRITE64, &[fd, addr, n, c.off + done])
                .rat(pid, format!("write ghost file {path}"))?;
            if wrote != n {
                return Err(FileError::Unsupported {
                    what: format!("a ghost file {path} that took {wrote} of {n} bytes"),
                }
                .in_restore(pid));
            }
            done += n;
        }
    }
    t.syscall(nr::FTRUNCATE, &[fd, size])
        .rat(pid, format!("size ghost file {path}"))?;
    Ok(())
}

/// Sets the times of fd `fd` of the task `pid` (from crest's side: the
/// last change to a file made again, so its modification time is the
/// dumped one).
pub(crate) fn set_times(
    pid: i32,
    fd: u64,
    times: &crest_images::pb::crest::CrestTimes,
) -> Result<(), RestoreError> {
    let copy = crate::remote::take_fd(pid, fd as u32)?;
    crest_sys::misc::set_times(
        &copy,
        (times.atime_sec, times.atime_nsec),
        (times.mtime_sec, times.mtime_nsec),
    )
    .rat(pid, "futimens")
}

impl FileTable {
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
}
