//! FIFOs (named pipes): the path and open flags (a regular-file entry the
//! `fifo_entry` names) and the data in flight, copied without consuming it
//! through a reader crest opens itself (`tee`), into `fifo-data.img`.
//! Restore opens the FIFO by path in the task without blocking: first
//! read-write (which never waits for a peer), refills it once per FIFO,
//! then opens it with the fd's own mode while the first open keeps a
//! reader and a writer there.

use super::context::RestoreFiles;
use super::table::FifoDump;
use super::table::FileTable;
use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::files::error::FileError;
use crate::remote::Remote;
use crest_images::pb::{FdTypes, FifoEntry, FileEntry};
use crest_inject::{nr, Tracee};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

impl FileTable {
    pub(crate) fn dump_fifo(
        &mut self,
        pid: i32,
        fd: i32,
        link: &str,
        flags: u32,
        meta: &std::fs::Metadata,
    ) -> Result<u32, DumpError> {
        let ino = meta.ino() as u32;
        if let std::collections::hash_map::Entry::Vacant(slot) = self.fifos.data.entry(ino) {
            use std::os::unix::fs::OpenOptionsExt;
            let reader = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(format!("/proc/{pid}/fd/{fd}"))
                .at(pid, "open a reader of a FIFO")?;
            slot.insert(super::pipe::peek(pid, fd, &reader.into())?);
        }
        // deleted while open: made at its path again for the restore
        let (path, deleted) = match link.strip_suffix(" (deleted)") {
            Some(p) if meta.nlink() == 0 => (p, true),
            _ => (link, false),
        };
        let regf_id = self.push_reg(path, flags, 0, meta);
        Ok(self.push(FileEntry {
            r#type: FdTypes::Fifo as i32,
            id: 0,
            fifo: Some(FifoEntry {
                id: 0,
                pipe_id: ino,
                regf_id: Some(regf_id),
                crest_deleted: deleted.then_some(true),
            }),
            ..FileEntry::default()
        }))
    }
}

pub fn write_data(dir: &std::path::Path, fifos: &FifoDump) -> Result<(), DumpError> {
    if fifos.data.is_empty() {
        return Ok(());
    }
    super::pipe::write_data_to(
        dir,
        crest_images::names::FIFO_DATA,
        crest_images::magic::FIFO_DATA,
        &fifos.data,
        &HashMap::new(),
    )
}

pub fn create(
    t: &mut Tracee,
    e: &FifoEntry,
    files: &mut RestoreFiles,
) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let reg = e
        .regf_id
        .and_then(|id| files.entries.get(&id))
        .and_then(|f| f.reg.as_ref())
        .ok_or_else(|| {
            FileError::BadImage {
                file: crest_images::names::FILES.into(),
                what: format!("fifo {} names no regular-file entry", e.id),
            }
            .in_restore(pid)
        })?;
    let (path, flags) = (reg.name.clone(), reg.flags);
    if e.crest_deleted == Some(true) {
        return create_deleted(t, e, &path, reg.mode.unwrap_or(0o600), flags, files);
    }
    let keeper = t.open(&path, libc::O_RDWR | libc::O_NONBLOCK)?;
    if files.fifo_filled.insert(e.pipe_id) {
        if let Some(data) = files.fifo_data.get(&e.pipe_id) {
            fill_pipe(t, keeper, data)?;
        }
    }
    let acc = flags as i32 & libc::O_ACCMODE;
    let fd = t.open(&path, acc | libc::O_NONBLOCK);
    let fd = match fd {
        Ok(fd) => fd,
        Err(e) => {
            t.close(keeper)?;
            return Err(e.into());
        }
    };
    t.close(keeper)?;
    let status = u64::from(flags) & (libc::O_NONBLOCK | libc::O_APPEND) as u64;
    t.fcntl(
        fd,
        libc::F_SETFL,
        status,
        &format!("set the flags of FIFO {path}"),
    )?;
    Ok(fd)
}

/// A FIFO deleted while open: the first description is made at its path
/// (mknod, opened, refilled, unlinked again); every other one is opened
/// through the fd of the first.
fn create_deleted(
    t: &mut Tracee,
    e: &FifoEntry,
    path: &str,
    mode: u32,
    flags: u32,
    files: &mut RestoreFiles,
) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let acc = flags as i32 & libc::O_ACCMODE;
    let first = files.deleted_fifos.get(&e.pipe_id).copied();
    let fd = match first.and_then(|id| files.where_is(pid, id)) {
        Some((hpid, hfd)) => crate::remote::Remote::open_crest_side(
            t,
            &format!("/proc/{hpid}/fd/{hfd}"),
            acc | libc::O_NONBLOCK,
        )?,
        None => {
            let mut p = path.as_bytes().to_vec();
            p.push(0);
            let addr = t.put(&p).rat(pid, "write path")?;
            t.syscall(
                nr::MKNOD,
                &[addr, u64::from(libc::S_IFIFO | (mode & 0o7777)), 0],
            )
            .rat(pid, format!("mkfifo {path} (deleted while open)"))?;
            // read-write first, so neither open waits for the other side;
            // the name goes again whatever happens
            let keeper = t.open(path, libc::O_RDWR | libc::O_NONBLOCK);
            let fd = match &keeper {
                Ok(_) => Some(t.open(path, acc | libc::O_NONBLOCK)),
                Err(_) => None,
            };
            let addr = t.put(&p).rat(pid, "write path")?;
            t.syscall(nr::UNLINK, &[addr])
                .rat(pid, format!("unlink {path} (deleted while open)"))?;
            let keeper = keeper?;
            let fd = match fd.unwrap_or(Ok(keeper)) {
                Ok(fd) => fd,
                Err(err) => {
                    t.close(keeper)?;
                    return Err(err.into());
                }
            };
            if files.fifo_filled.insert(e.pipe_id) {
                if let Some(data) = files.fifo_data.get(&e.pipe_id) {
                    fill_pipe(t, keeper, data)?;
                }
            }
            t.close(keeper)?;
            files.deleted_fifos.insert(e.pipe_id, e.id);
            fd
        }
    };
    let status = u64::from(flags) & (libc::O_NONBLOCK | libc::O_APPEND) as u64;
    t.fcntl(
        fd,
        libc::F_SETFL,
        status,
        &format!("set the flags of FIFO {path}"),
    )?;
    Ok(fd)
}

/// Writes `data` into pipe `w` of task `t`, its capacity raised first
/// where the data needs it.
pub(super) fn fill_pipe(t: &mut Tracee, w: u64, data: &[u8]) -> Result<(), RestoreError> {
    let pid = t.pid();
    if data.len() > 65536 {
        t.fcntl(w, libc::F_SETPIPE_SZ, data.len() as u64, "F_SETPIPE_SZ")?;
    }
    for chunk in data.chunks(256 << 10) {
        let addr = t.put(chunk).rat(pid, "write pipe data")?;
        let n = t
            .syscall(nr::WRITE, &[w, addr, chunk.len() as u64])
            .rat(pid, "refill pipe")?;
        if n != chunk.len() as u64 {
            return Err(FileError::Unsupported {
                what: format!("a pipe that took {n} of {} bytes back", chunk.len()),
            }
            .in_restore(pid));
        }
    }
    Ok(())
}
