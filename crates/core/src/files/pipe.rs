//! Pipes: both ends are found by the pipe's inode; the data in flight is
//! copied without consuming it (`pidfd_getfd` + `tee`) into
//! `pipes-data.img`, and restore creates the pipe once, refills it and
//! gives each fd its end.

use super::table::FileTable;
use super::table::PipeDump;
use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError};
use crate::files::error::FileError;
use crest_images::pb::{FdTypes, FileEntry, FownEntry, PipeEntry};
use std::collections::HashMap;

impl PipeDump {
    /// The pipes the tree holds only one end of while a process outside
    /// the tree holds the other: inode → (that process, a task and fd of
    /// the tree holding the pipe).
    pub fn held_outside(
        &self,
        tree: &std::collections::HashSet<i32>,
    ) -> HashMap<u32, (i32, i32, i32)> {
        let lonely: HashMap<u32, (i32, i32)> = self
            .ends
            .iter()
            .filter(|(_, e)| !(e.0 && e.1))
            .map(|(ino, e)| (*ino, (e.2, e.3)))
            .collect();
        let mut found = HashMap::new();
        if lonely.is_empty() {
            return found;
        }
        let me = std::process::id() as i32;
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return found;
        };
        for p in procs.filter_map(Result::ok) {
            let Some(other) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if other == me || tree.contains(&other) {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(format!("/proc/{other}/fd")) else {
                continue;
            };
            for f in fds.filter_map(Result::ok) {
                let Ok(link) = std::fs::read_link(f.path()) else {
                    continue;
                };
                let Some(ino) = pipe_ino(&link.to_string_lossy()) else {
                    continue;
                };
                if let Some(&(pid, fd)) = lonely.get(&ino) {
                    found.entry(ino).or_insert((other, pid, fd));
                }
            }
        }
        found
    }
}

impl FileTable {
    /// Marks every pipe whose other end a process outside the tree holds
    /// (`crest_outside_pid`): the restore needs it back from its caller,
    /// CRIU's `--inherit-fd`, as container runtimes give their stdio pipes.
    pub fn mark_outside_pipes(&mut self) {
        let outside = self.pipes.held_outside(&self.tree);
        for (ino, (other, pid, fd)) in &outside {
            crate::info!(
                "fd {fd} of pid {pid}: pipe:[{ino}] has its other end in pid {other}, outside \
                 the tree; restore it with --inherit-fd fd[N]:pipe:[{ino}]"
            );
        }
        for e in &mut self.entries {
            if let Some(p) = e.pipe.as_mut() {
                p.crest_outside_pid = outside.get(&p.pipe_id).map(|o| o.0 as u32);
            }
        }
    }
}

/// Largest amount of pipe data crest keeps per pipe (the largest pipe).
const MAX_PIPE_DATA: usize = 1 << 20;

fn pipe_ino(link: &str) -> Option<u32> {
    link.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
}

impl FileTable {
    pub(crate) fn dump_pipe(
        &mut self,
        pid: i32,
        fd: i32,
        link: &str,
        flags: u32,
    ) -> Result<u32, DumpError> {
        let ino = pipe_ino(link).ok_or_else(|| {
            FileError::UnsupportedFd {
                fd,
                kind: format!("a pipe with an unreadable link ({link})"),
            }
            .in_dump(pid)
        })?;
        let e = self
            .pipes
            .ends
            .entry(ino)
            .or_insert((false, false, pid, fd));
        if flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32 {
            e.0 = true;
        } else {
            e.1 = true;
        }
        if !self.pipes.data.contains_key(&ino) && flags & libc::O_ACCMODE as u32 == 0 {
            let data = peek_pipe(pid, fd)?;
            self.pipes.data.insert(ino, data);
        }
        if let std::collections::hash_map::Entry::Vacant(v) = self.pipes.sizes.entry(ino) {
            let size = pipe_size(pid, fd)?;
            if size != DEFAULT_PIPE_SIZE {
                v.insert(size);
            }
        }
        Ok(self.push(FileEntry {
            r#type: FdTypes::Pipe as i32,
            id: 0,
            pipe: Some(PipeEntry {
                id: 0,
                pipe_id: ino,
                flags,
                fown: FownEntry::default(),
                crest_outside_pid: None,
            }),
            ..FileEntry::default()
        }))
    }
}

/// A new pipe's capacity (16 pages).
pub(crate) const DEFAULT_PIPE_SIZE: u32 = 16 * 4096;

/// The capacity of the pipe behind `fd` of `pid`.
fn pipe_size(pid: i32, fd: i32) -> Result<u32, DumpError> {
    let pidfd = crest_sys::misc::pidfd_open(pid).at(pid, "pidfd_open")?;
    let theirs =
        rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
            .at(pid, "pidfd_getfd of a pipe")?;
    let size = rustix::pipe::fcntl_getpipe_size(&theirs).at(pid, "F_GETPIPE_SZ")?;
    Ok(size as u32)
}

/// Copies the bytes waiting in the pipe behind `fd` of `pid` without
/// consuming them.
fn peek_pipe(pid: i32, fd: i32) -> Result<Vec<u8>, DumpError> {
    let pidfd = crest_sys::misc::pidfd_open(pid).at(pid, "pidfd_open")?;
    let theirs =
        rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
            .at(pid, "pidfd_getfd of a pipe")?;
    peek(pid, fd, &theirs)
}

/// Copies the bytes waiting in the pipe `theirs` reads (fd `fd` of `pid`,
/// for messages) without consuming them.
pub(crate) fn peek(pid: i32, fd: i32, theirs: &std::os::fd::OwnedFd) -> Result<Vec<u8>, DumpError> {
    let waiting = rustix::io::ioctl_fionread(theirs).at(pid, "FIONREAD on a pipe")? as usize;
    if waiting == 0 {
        return Ok(Vec::new());
    }
    if waiting > MAX_PIPE_DATA {
        return Err(FileError::UnsupportedFd {
            fd,
            kind: format!("a pipe holding {waiting} bytes (more than {MAX_PIPE_DATA})"),
        }
        .in_dump(pid));
    }
    let (rd, wr) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).at(pid, "pipe for tee")?;
    let _ = rustix::pipe::fcntl_setpipe_size(&wr, waiting);
    // tee copies from the start of the source without consuming it; one
    // call takes everything that fits in our pipe.
    rustix::pipe::tee(theirs, &wr, waiting, rustix::pipe::SpliceFlags::NONBLOCK)
        .at(pid, "tee of pipe data")?;
    drop(wr);
    let mut data = Vec::with_capacity(waiting);
    use std::io::Read;
    std::fs::File::from(rd)
        .read_to_end(&mut data)
        .at(pid, "read copied pipe data")?;
    if data.len() != waiting {
        return Err(FileError::UnsupportedFd {
            fd,
            kind: format!("a pipe whose {waiting} bytes could not all be copied"),
        }
        .in_dump(pid));
    }
    Ok(data)
}

/// Writes `pipes-data.img`: per pipe with data, a `pipe_data_entry`
/// followed by the bytes.
pub fn write_data(dir: &std::path::Path, pipes: &PipeDump) -> Result<(), DumpError> {
    write_data_to(
        dir,
        crest_images::names::PIPES_DATA,
        crest_images::magic::PIPES_DATA,
        &pipes.data,
        &pipes.sizes,
    )
}

/// Writes pipe data in CRIU's layout (also used for FIFOs): an entry per
/// pipe with bytes in flight or a capacity of its own.
pub(crate) fn write_data_to(
    dir: &std::path::Path,
    name: &str,
    magic: u32,
    all: &HashMap<u32, Vec<u8>>,
    sizes: &HashMap<u32, u32>,
) -> Result<(), DumpError> {
    let mut w = crest_images::ImageWriter::create(dir, name, magic)?;
    let mut inos: Vec<_> = all.keys().chain(sizes.keys()).copied().collect();
    inos.sort_unstable();
    inos.dedup();
    let none = Vec::new();
    for ino in inos {
        let data = all.get(&ino).unwrap_or(&none);
        let size = sizes.get(&ino).copied();
        if data.is_empty() && size.is_none() {
            continue;
        }
        w.write_entry(&crest_images::pb::PipeDataEntry {
            pipe_id: ino,
            bytes: data.len() as u32,
            size,
            crest_fs: None,
        })?;
        w.write_payload(data)?;
    }
    w.finish()?;
    Ok(())
}
