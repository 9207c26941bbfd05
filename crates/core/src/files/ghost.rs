//! Files deleted while open ("ghost files", as CRIU calls them): the
//! contents go into `ghost-file-<id>.img` (a `ghost_file_entry` then the
//! bytes), up to the ghost limit, and `remap-fpath.img` says which
//! regular-file entry each ghost serves. Restore recreates the file at its
//! old path, fills it, opens it the way the task had it, and unlinks it
//! again; other descriptions of the same file reopen it through the first.

use super::restore::RestoreFiles;
use super::FileTable;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::mm::restore::open_in_task;
use crest_images::pb::{GhostFileEntry, RegFileEntry, RemapFilePathEntry, RemapType};
use crest_images::{magic, names, ImageReader};
use crest_inject::{nr, Tracee};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// CRIU's default `--ghost-limit`: 1 MiB.
pub const DEFAULT_LIMIT: u64 = 1 << 20;
/// Largest chunk of contents moved at once.
const CHUNK: usize = 256 << 10;

/// Ghost files found at dump.
#[derive(Default)]
pub struct GhostDump {
    /// The largest deleted file crest saves (`--ghost-limit`).
    pub limit: u64,
    by_inode: HashMap<(u64, u64), u32>,
    /// Per ghost id: its entry and where its contents are (pid, fd).
    ghosts: Vec<(GhostFileEntry, i32, i32)>,
    remaps: Vec<RemapFilePathEntry>,
}

impl FileTable {
    /// Saves the deleted file behind fd `fd` of `pid` (entry `reg_id`).
    pub(crate) fn dump_ghost(
        &mut self,
        pid: i32,
        fd: i32,
        reg_id: u32,
        meta: &std::fs::Metadata,
    ) -> Result<(), DumpError> {
        let g = &mut self.ghosts;
        let limit = g.limit;
        let key = (meta.dev(), meta.ino());
        let id = match g.by_inode.get(&key) {
            Some(id) => *id,
            None => {
                if meta.len() > limit {
                    return Err(DumpError::UnsupportedFd {
                        pid,
                        fd,
                        kind: format!(
                            "a deleted file of {} bytes, more than the ghost limit of {limit} bytes (raise it with --ghost-limit)",
                            meta.len()
                        ),
                    });
                }
                let entry = GhostFileEntry {
                    uid: meta.uid(),
                    gid: meta.gid(),
                    mode: meta.mode(),
                    dev: Some(meta.dev() as u32),
                    ino: Some(meta.ino()),
                    rdev: None,
                    chunks: None,
                    size: Some(meta.len()),
                    crest_times: Some(times_of(meta)),
                };
                g.ghosts.push((entry, pid, fd));
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

/// Writes `remap-fpath.img` and one `ghost-file-<id>.img` per ghost, the
/// contents read again now through the task's fd.
pub fn write(dir: &Path, g: &GhostDump) -> Result<(), DumpError> {
    if g.remaps.is_empty() {
        return Ok(());
    }
    crest_images::write_image(dir, names::REMAP_FPATH, magic::REMAP_FPATH, &g.remaps)?;
    for (i, (entry, pid, fd)) in g.ghosts.iter().enumerate() {
        let (pid, fd) = (*pid, *fd);
        let path = format!("/proc/{pid}/fd/{fd}");
        let data = std::fs::read(&path).at(pid, "read a deleted file")?;
        if Some(data.len() as u64) != entry.size {
            return Err(DumpError::UnsupportedFd {
                pid,
                fd,
                kind: "a deleted file whose size changed while it was dumped".into(),
            });
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
pub fn read_remaps(dir: &Path) -> Result<HashMap<u32, u32>, RestoreError> {
    if !dir.join(names::REMAP_FPATH).exists() {
        return Ok(HashMap::new());
    }
    let list: Vec<RemapFilePathEntry> =
        crest_images::read_image(dir, names::REMAP_FPATH, magic::REMAP_FPATH)?;
    let mut out = HashMap::with_capacity(list.len());
    for r in list {
        if r.remap_type != Some(RemapType::Ghost as i32) {
            return Err(RestoreError::BadImage {
                pid: 0,
                file: names::REMAP_FPATH.into(),
                what: format!("file {} has a remap other than a ghost file", r.orig_id),
            });
        }
        out.insert(r.orig_id, r.remap_id);
    }
    Ok(out)
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
    if let Some(src) = files.ghost_src.get(&ghost).copied() {
        if let Some((hpid, hfd)) = files.where_is(pid, src) {
            // crest's /proc: the task may be in a container's mount
            // namespace by now, whose /proc knows crest's pids not
            return crate::mm::restore::open_crest_side(
                t,
                &format!("/proc/{hpid}/fd/{hfd}"),
                flags,
            );
        }
    }
    let dir = files.dir.clone();
    let name = names::ghost_file(ghost);
    let mut r = ImageReader::open(&dir, &name, magic::GHOST_FILE)?;
    let entry: GhostFileEntry = r.next_entry()?.ok_or_else(|| RestoreError::BadImage {
        pid,
        file: name.clone(),
        what: "no ghost_file_entry".into(),
    })?;
    let size = entry.size.unwrap_or(0);
    let path = &reg.name;
    let made = openat(
        t,
        path,
        libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
        entry.mode & 0o7777,
    )?;
    let res = fill(t, made, &mut r, size, &entry, path).and_then(|()| open_in_task(t, path, flags));
    t.syscall(nr::CLOSE, &[made]).rat(pid, "close ghost file")?;
    let mut p = path.as_bytes().to_vec();
    p.push(0);
    let addr = t.put(&p).rat(pid, "write path")?;
    t.syscall(nr::UNLINK, &[addr])
        .rat(pid, format!("unlink ghost file {path}"))?;
    let fd = res?;
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
    let mut left = size;
    while left > 0 {
        let n = left.min(CHUNK as u64);
        let data = r.read_payload(n)?;
        let addr = t.put(&data).rat(pid, "write ghost contents")?;
        let wrote = t
            .syscall(nr::WRITE, &[fd, addr, n])
            .rat(pid, format!("write ghost file {path}"))?;
        if wrote != n {
            return Err(RestoreError::Unsupported {
                pid,
                what: format!("a ghost file {path} that took {wrote} of {n} bytes"),
            });
        }
        left -= n;
    }
    // the owner as crest sees it, from crest's side: the task may be in a
    // user namespace that maps crest's view otherwise
    let copy = std::fs::File::from(super::share::take_fd(pid, fd as u32)?);
    std::os::unix::fs::fchown(&copy, Some(entry.uid), Some(entry.gid))
        .rat(pid, format!("chown ghost file {path}"))?;
    t.syscall(nr::FCHMOD, &[fd, u64::from(entry.mode & 0o7777)])
        .rat(pid, format!("chmod ghost file {path}"))?;
    if let Some(times) = &entry.crest_times {
        set_times(pid, fd, times)?;
    }
    Ok(())
}

/// A file's access and modification times.
pub(crate) fn times_of(meta: &std::fs::Metadata) -> crest_images::pb::crest::CrestTimes {
    crest_images::pb::crest::CrestTimes {
        atime_sec: meta.atime(),
        atime_nsec: meta.atime_nsec() as u32,
        mtime_sec: meta.mtime(),
        mtime_nsec: meta.mtime_nsec() as u32,
    }
}

/// Sets the times of fd `fd` of the task `pid` (from crest's side: the
/// last change to a file made again, so its modification time is the
/// dumped one).
pub(crate) fn set_times(
    pid: i32,
    fd: u64,
    times: &crest_images::pb::crest::CrestTimes,
) -> Result<(), RestoreError> {
    let copy = super::share::take_fd(pid, fd as u32)?;
    crest_sys::misc::set_times(
        &copy,
        (times.atime_sec, times.atime_nsec),
        (times.mtime_sec, times.mtime_nsec),
    )
    .rat(pid, "futimens")
}
