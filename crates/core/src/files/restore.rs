//! Restore of a task's fd table: every fd is made inside the task (files
//! reopened by path, pipes created and refilled), parked above the highest
//! target number, then moved to its number.

use crate::error::{RestoreCtx, RestoreError};
use crate::mm::restore::open_in_task;
use crest_images::pb::{FdTypes, FdinfoEntry, FileEntry, PipeDataEntry};
use crest_images::{magic, names, ImageReader};
use crest_inject::{nr, Tracee};
use std::collections::HashMap;
use std::path::Path;

/// `files.img` and `pipes-data.img`, indexed, and which restored task
/// already holds each pipe.
#[derive(Default)]
pub struct RestoreFiles {
    pub entries: HashMap<u32, FileEntry>,
    pub pipe_data: HashMap<u32, Vec<u8>>,
    /// pipe id → (pid, fd) of a restored task that holds an end of it;
    /// other tasks open the same pipe through `/proc/PID/fd/FD`.
    pub pipe_holders: HashMap<u32, (i32, u32)>,
    /// Socket queues and which task made each socket or terminal.
    pub socks: super::unix::SockImages,
}

/// Most pipe data crest accepts per pipe from an image.
const MAX_PIPE_DATA: u32 = 1 << 20;

impl RestoreFiles {
    pub fn read(dir: &Path) -> Result<RestoreFiles, RestoreError> {
        let list: Vec<FileEntry> = crest_images::read_image(dir, names::FILES, magic::FILES)?;
        let mut entries = HashMap::with_capacity(list.len());
        for e in list {
            entries.insert(e.id, e);
        }
        let mut pipe_data = HashMap::new();
        if dir.join(names::PIPES_DATA).exists() {
            let mut r = ImageReader::open(dir, names::PIPES_DATA, magic::PIPES_DATA)?;
            while let Some(e) = r.next_entry::<PipeDataEntry>()? {
                if e.bytes > MAX_PIPE_DATA {
                    return Err(RestoreError::BadImage {
                        pid: 0,
                        file: names::PIPES_DATA.into(),
                        what: format!("pipe {} claims {} bytes", e.pipe_id, e.bytes),
                    });
                }
                let data = r.read_payload(u64::from(e.bytes))?;
                pipe_data.insert(e.pipe_id, data);
            }
        }
        Ok(RestoreFiles {
            entries,
            pipe_data,
            pipe_holders: HashMap::new(),
            socks: super::unix::SockImages::read(dir)?,
        })
    }

    /// The path of a regular-file entry.
    pub fn reg_path(&self, id: u32) -> Option<&str> {
        self.entries
            .get(&id)
            .and_then(|e| e.reg.as_ref())
            .map(|r| r.name.as_str())
    }
}

fn bad(pid: i32, files_id: u32, what: String) -> RestoreError {
    RestoreError::BadImage {
        pid,
        file: names::fdinfo(files_id),
        what,
    }
}

/// Closes every inherited fd and rebuilds the dumped fd table.
pub fn restore_fds(
    t: &mut Tracee,
    files_id: u32,
    fds: &[FdinfoEntry],
    files: &mut RestoreFiles,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    t.syscall(nr::CLOSE_RANGE, &[0, u64::from(u32::MAX), 0])
        .rat(pid, "close_range of inherited fds")?;
    let Some(max_fd) = fds.iter().map(|f| f.fd).max() else {
        return Ok(());
    };
    if max_fd > 1 << 20 {
        return Err(bad(pid, files_id, format!("fd number {max_fd}")));
    }
    let park_base = u64::from(max_fd) + 1;
    // Each fd is first parked at park_base + index.
    let mut parked: HashMap<u32, u64> = HashMap::new();
    let mut pipes: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut kept = super::kept::Kept::new(park_base + 3 * fds.len() as u64);
    for (i, fi) in fds.iter().enumerate() {
        let park = park_base + i as u64;
        let entry = files.entries.get(&fi.id).ok_or_else(|| {
            bad(
                pid,
                files_id,
                format!("fd {} names missing file {}", fi.fd, fi.id),
            )
        })?;
        let made = match FdTypes::try_from(fi.r#type) {
            Ok(FdTypes::Reg) => open_reg(t, entry)?,
            Ok(FdTypes::Pipe) => {
                pipe_end(t, entry, files, &mut pipes, park_base + fds.len() as u64)?
            }
            Ok(FdTypes::Unixsk) => super::unix::open(t, &entry.clone(), files, &mut kept)?,
            Ok(FdTypes::Inetsk) => super::inet::open(t, &entry.clone(), files, &mut kept)?,
            Ok(FdTypes::Tty) => super::tty::open(t, entry, files, &mut kept)?,
            _ => {
                return Err(RestoreError::Unsupported {
                    pid,
                    what: format!("fd {} of type {}", fi.fd, fi.r#type),
                })
            }
        };
        t.syscall(nr::DUP3, &[made, park, 0])
            .rat(pid, format!("park fd {}", fi.fd))?;
        t.syscall(nr::CLOSE, &[made])
            .rat(pid, "close temporary fd")?;
        parked.insert(fi.fd, park);
        if let Some(p) = entry_pipe_id(files, fi.id) {
            files.pipe_holders.entry(p).or_insert((pid, fi.fd));
        }
    }
    kept.close_all(t)?;
    for (fd, _) in pipes.values().flat_map(|(r, w)| [(*r, ()), (*w, ())]) {
        t.syscall(nr::CLOSE, &[fd]).rat(pid, "close pipe end")?;
    }
    for fi in fds {
        let park = parked[&fi.fd];
        let flags = if fi.flags & libc::FD_CLOEXEC as u32 != 0 {
            libc::O_CLOEXEC as u64
        } else {
            0
        };
        t.syscall(nr::DUP3, &[park, u64::from(fi.fd), flags])
            .rat(pid, format!("move fd to {}", fi.fd))?;
        t.syscall(nr::CLOSE, &[park]).rat(pid, "close parked fd")?;
    }
    Ok(())
}

fn entry_pipe_id(files: &RestoreFiles, id: u32) -> Option<u32> {
    files.entries.get(&id)?.pipe.as_ref().map(|p| p.pipe_id)
}

fn open_reg(t: &mut Tracee, e: &FileEntry) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let reg = e.reg.as_ref().ok_or_else(|| RestoreError::BadImage {
        pid,
        file: names::FILES.into(),
        what: format!("file {} has no reg entry", e.id),
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
    let fd = open_in_task(t, &reg.name, flags)?;
    if reg.pos != 0 {
        t.syscall(nr::LSEEK, &[fd, reg.pos, libc::SEEK_SET as u64])
            .rat(pid, format!("lseek {} to {}", reg.name, reg.pos))?;
    }
    Ok(fd)
}

/// The end of a pipe an fd needs, creating and refilling the pipe once.
fn pipe_end(
    t: &mut Tracee,
    e: &FileEntry,
    files: &RestoreFiles,
    pipes: &mut HashMap<u32, (u64, u64)>,
    park_from: u64,
) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let p = e.pipe.as_ref().ok_or_else(|| RestoreError::BadImage {
        pid,
        file: names::FILES.into(),
        what: format!("file {} has no pipe entry", e.id),
    })?;
    if let Some(&(holder, hfd)) = files.pipe_holders.get(&p.pipe_id) {
        if holder != pid && !pipes.contains_key(&p.pipe_id) {
            // Another task made this pipe: open the same one through it.
            let path = format!("/proc/{holder}/fd/{hfd}");
            let acc = p.flags as i32 & libc::O_ACCMODE;
            let fd = open_in_task(t, &path, acc | libc::O_NONBLOCK)?;
            let status = u64::from(p.flags) & (libc::O_NONBLOCK as u64);
            t.syscall(nr::FCNTL, &[fd, libc::F_SETFL as u64, status])
                .rat(pid, "set pipe flags")?;
            return Ok(fd);
        }
    }
    if !pipes.contains_key(&p.pipe_id) {
        let buf = t.scratch(8).rat(pid, "scratch")?;
        t.syscall(nr::PIPE2, &[buf, libc::O_CLOEXEC as u64])
            .rat(pid, "pipe2")?;
        let mut raw = [0u8; 8];
        t.read_mem(buf, &mut raw).rat(pid, "read pipe fds")?;
        let r = u64::from(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]));
        let w = u64::from(u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]));
        // Keep both ends out of the way of the target numbers.
        let slot = park_from + 2 * pipes.len() as u64;
        for (from, to) in [(r, slot), (w, slot + 1)] {
            t.syscall(nr::DUP3, &[from, to, libc::O_CLOEXEC as u64])
                .rat(pid, "park pipe end")?;
            t.syscall(nr::CLOSE, &[from]).rat(pid, "close pipe end")?;
        }
        let (r, w) = (slot, slot + 1);
        if let Some(data) = files.pipe_data.get(&p.pipe_id) {
            fill_pipe(t, w, data)?;
        }
        pipes.insert(p.pipe_id, (r, w));
    }
    let (r, w) = pipes[&p.pipe_id];
    let end = if p.flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32 {
        r
    } else {
        w
    };
    // A new fd for this end, so per-fd status flags stay separate.
    let fd = t
        .syscall(nr::FCNTL, &[end, libc::F_DUPFD_CLOEXEC as u64, 0])
        .rat(pid, "dup pipe end")?;
    let status = u64::from(p.flags) & (libc::O_NONBLOCK as u64);
    t.syscall(nr::FCNTL, &[fd, libc::F_SETFL as u64, status])
        .rat(pid, "set pipe flags")?;
    Ok(fd)
}

fn fill_pipe(t: &mut Tracee, w: u64, data: &[u8]) -> Result<(), RestoreError> {
    let pid = t.pid();
    if data.len() > 65536 {
        t.syscall(
            nr::FCNTL,
            &[w, libc::F_SETPIPE_SZ as u64, data.len() as u64],
        )
        .rat(pid, "F_SETPIPE_SZ")?;
    }
    for chunk in data.chunks(256 << 10) {
        let addr = t.put(chunk).rat(pid, "write pipe data")?;
        let n = t
            .syscall(nr::WRITE, &[w, addr, chunk.len() as u64])
            .rat(pid, "refill pipe")?;
        if n != chunk.len() as u64 {
            return Err(RestoreError::Unsupported {
                pid,
                what: format!("a pipe that took {n} of {} bytes back", chunk.len()),
            });
        }
    }
    Ok(())
}
