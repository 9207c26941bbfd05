//! File descriptors and the files behind them: `files.img` holds one
//! `file_entry` per open file (or mapped file, cwd, root, exe) and
//! `fdinfo-<id>.img` maps a task's fd numbers to them.
//!
//! Kinds handled today: regular files, directories and character devices
//! (`reg`), and pipes (`pipe`). Any other kind fails the dump with the pid,
//! the fd number and the kind.

use crate::error::{DumpCtx, DumpError};
use crate::procfs;
use crest_images::pb::{FdTypes, FdinfoEntry, FileEntry, FownEntry, RegFileEntry};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

pub mod pipe;
pub mod restore;

/// The files of a dump, numbered from 1, shared by every task.
#[derive(Default)]
pub struct FileTable {
    entries: Vec<FileEntry>,
    by_path: HashMap<(String, u32), u32>,
    pub pipes: pipe::PipeDump,
}

impl FileTable {
    pub fn entries(&self) -> &[FileEntry] {
        &self.entries
    }

    fn next_id(&self) -> u32 {
        self.entries.len() as u32 + 1
    }

    /// A regular-file entry for `path` opened with `flags` at offset 0,
    /// shared by every user of the same path and mode (mappings, cwd,
    /// root, exe).
    pub fn reg_path(&mut self, pid: i32, path: &str, flags: u32) -> Result<u32, DumpError> {
        if let Some(id) = self.by_path.get(&(path.to_string(), flags)) {
            return Ok(*id);
        }
        let meta = std::fs::metadata(path).at(pid, "stat a mapped or open file")?;
        let id = self.push_reg(path, flags, 0, &meta);
        self.by_path.insert((path.to_string(), flags), id);
        Ok(id)
    }

    fn push_reg(&mut self, path: &str, flags: u32, pos: u64, meta: &std::fs::Metadata) -> u32 {
        let id = self.next_id();
        let reg = RegFileEntry {
            id,
            flags,
            pos,
            fown: FownEntry::default(),
            name: path.to_string(),
            size: meta.is_file().then_some(meta.len()),
            mode: Some(meta.mode()),
            ..RegFileEntry::default()
        };
        self.entries.push(FileEntry {
            r#type: FdTypes::Reg as i32,
            id,
            reg: Some(reg),
            ..FileEntry::default()
        });
        id
    }

    pub(crate) fn push(&mut self, mut entry: FileEntry) -> u32 {
        let id = self.next_id();
        entry.id = id;
        self.entries.push(entry);
        id
    }
}

/// What the link of `/proc/PID/fd/N` says the fd is, for error messages.
fn kind_of_link(link: &str) -> String {
    if let Some(rest) = link.strip_prefix("anon_inode:") {
        return format!("an anonymous inode ({})", rest.trim_matches(['[', ']']));
    }
    if link.starts_with("socket:") {
        return format!("a socket ({link})");
    }
    if link.starts_with("/memfd:") {
        return format!("a memfd ({link})");
    }
    link.to_string()
}

/// Dumps every fd of `pid` into `table`; returns its fdinfo entries.
pub fn dump_fds(pid: i32, table: &mut FileTable) -> Result<Vec<FdinfoEntry>, DumpError> {
    let fds = procfs::list_fds(pid).at(pid, "list fds")?;
    let mut out = Vec::with_capacity(fds.len());
    for (fd, link) in fds {
        let info = procfs::read_fdinfo(pid, fd).at(pid, "read fdinfo")?;
        let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        let (ty, id) = if link.starts_with("pipe:") {
            (FdTypes::Pipe, table.dump_pipe(pid, fd, &link, flags)?)
        } else if link.starts_with('/') && !link.starts_with("/memfd:") {
            if link.ends_with(" (deleted)") {
                return Err(DumpError::UnsupportedFd {
                    pid,
                    fd,
                    kind: format!("a deleted file ({link})"),
                });
            }
            let meta =
                std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).at(pid, "stat an open file")?;
            let ft = meta.file_type();
            use std::os::unix::fs::FileTypeExt;
            if !(ft.is_file() || ft.is_dir() || ft.is_char_device()) {
                let kind = if ft.is_fifo() {
                    "a FIFO".to_string()
                } else {
                    format!("a special file ({link})")
                };
                return Err(DumpError::UnsupportedFd { pid, fd, kind });
            }
            (FdTypes::Reg, table.push_reg(&link, flags, info.pos, &meta))
        } else {
            return Err(DumpError::UnsupportedFd {
                pid,
                fd,
                kind: kind_of_link(&link),
            });
        };
        out.push(FdinfoEntry {
            id,
            flags: if cloexec { libc::FD_CLOEXEC as u32 } else { 0 },
            r#type: ty as i32,
            fd: fd as u32,
            xattr_security_selinux: None,
        });
    }
    Ok(out)
}
