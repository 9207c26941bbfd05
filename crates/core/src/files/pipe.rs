//! Pipes: both ends are found by the pipe's inode; the data in flight is
//! copied without consuming it (`pidfd_getfd` + `tee`) into
//! `pipes-data.img`, and restore creates the pipe once, refills it and
//! gives each fd its end.

use super::FileTable;
use crate::error::{DumpCtx, DumpError};
use crest_images::pb::{FdTypes, FileEntry, FownEntry, PipeEntry};
use std::collections::HashMap;

/// Pipe data found at dump: inode → bytes in flight.
#[derive(Default)]
pub struct PipeDump {
    pub data: HashMap<u32, Vec<u8>>,
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
        let ino = pipe_ino(link).ok_or_else(|| DumpError::UnsupportedFd {
            pid,
            fd,
            kind: format!("a pipe with an unreadable link ({link})"),
        })?;
        if !self.pipes.data.contains_key(&ino) && flags & libc::O_ACCMODE as u32 == 0 {
            let data = peek_pipe(pid, fd)?;
            self.pipes.data.insert(ino, data);
        }
        Ok(self.push(FileEntry {
            r#type: FdTypes::Pipe as i32,
            id: 0,
            pipe: Some(PipeEntry {
                id: 0,
                pipe_id: ino,
                flags,
                fown: FownEntry::default(),
            }),
            ..FileEntry::default()
        }))
    }
}

/// Copies the bytes waiting in the pipe behind `fd` of `pid` without
/// consuming them.
fn peek_pipe(pid: i32, fd: i32) -> Result<Vec<u8>, DumpError> {
    let pidfd = crest_sys::misc::pidfd_open(pid).at(pid, "pidfd_open")?;
    let theirs = crest_sys::misc::pidfd_getfd(&pidfd, fd).at(pid, "pidfd_getfd of a pipe")?;
    peek(pid, fd, &theirs)
}

/// Copies the bytes waiting in the pipe `theirs` reads (fd `fd` of `pid`,
/// for messages) without consuming them.
pub(crate) fn peek(pid: i32, fd: i32, theirs: &std::os::fd::OwnedFd) -> Result<Vec<u8>, DumpError> {
    let waiting = crest_sys::misc::fionread(theirs).at(pid, "FIONREAD on a pipe")?;
    if waiting == 0 {
        return Ok(Vec::new());
    }
    if waiting > MAX_PIPE_DATA {
        return Err(DumpError::UnsupportedFd {
            pid,
            fd,
            kind: format!("a pipe holding {waiting} bytes (more than {MAX_PIPE_DATA})"),
        });
    }
    let (rd, wr) = crest_sys::misc::pipe().at(pid, "pipe for tee")?;
    let _ = crest_sys::misc::set_pipe_size(&wr, waiting);
    // tee copies from the start of the source without consuming it; one
    // call takes everything that fits in our pipe.
    crest_sys::misc::tee(theirs, &wr, waiting).at(pid, "tee of pipe data")?;
    drop(wr);
    let mut data = Vec::with_capacity(waiting);
    use std::io::Read;
    std::fs::File::from(rd)
        .read_to_end(&mut data)
        .at(pid, "read copied pipe data")?;
    if data.len() != waiting {
        return Err(DumpError::UnsupportedFd {
            pid,
            fd,
            kind: format!("a pipe whose {waiting} bytes could not all be copied"),
        });
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
    )
}

/// Writes pipe data in CRIU's layout (also used for FIFOs).
pub(crate) fn write_data_to(
    dir: &std::path::Path,
    name: &str,
    magic: u32,
    all: &HashMap<u32, Vec<u8>>,
) -> Result<(), DumpError> {
    let mut w = crest_images::ImageWriter::create(dir, name, magic)?;
    let mut inos: Vec<_> = all.keys().copied().collect();
    inos.sort_unstable();
    for ino in inos {
        let data = &all[&ino];
        if data.is_empty() {
            continue;
        }
        w.write_entry(&crest_images::pb::PipeDataEntry {
            pipe_id: ino,
            bytes: data.len() as u32,
            size: None,
        })?;
        w.write_payload(data)?;
    }
    w.finish()?;
    Ok(())
}
