//! Terminals. A tree may use a terminal it does not own (its shell's pty
//! or tty) only with `--shell-job`: the fds are recorded as CRIU's
//! `tty_file_entry` with a `tty_info_entry` (`tty-info.img`), and at
//! restore they are opened on the terminal of the restoring crest, as
//! CRIU gives a restored shell job its caller's terminal. A pty master
//! (a pty pair inside the tree) is refused.

use super::kept::Kept;
use super::FileTable;
use crate::error::{DumpCtx, DumpError, RestoreError};
use crate::mm::restore::open_in_task;
use crest_images::pb::{FdTypes, FileEntry, FownEntry, TtyFileEntry, TtyInfoEntry, TtyType};
use crest_images::{magic, names};
use crest_inject::Tracee;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Terminals seen at dump.
#[derive(Default)]
pub struct TtyDump {
    infos: Vec<TtyInfoEntry>,
    /// (rdev, flags) → file id: fds of one terminal with the same flags
    /// come back as one open file.
    files: HashMap<(u64, u32), u32>,
}

fn major(rdev: u64) -> u64 {
    ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)
}

fn minor(rdev: u64) -> u64 {
    (rdev & 0xff) | ((rdev >> 12) & !0xff)
}

/// The kind of terminal behind a character device, if it is one.
fn tty_type(rdev: u64) -> Option<TtyType> {
    match (major(rdev), minor(rdev)) {
        (136..=143, _) => Some(TtyType::Pty),
        (5, 0) => Some(TtyType::Ctty),
        (5, 1) => Some(TtyType::Console),
        (5, 2) => Some(TtyType::Pty),
        (4, 0..=63) => Some(TtyType::Vt),
        (4, _) => Some(TtyType::Serial),
        _ => None,
    }
}

impl FileTable {
    /// A terminal fd: None if `link` is no terminal.
    pub(crate) fn dump_tty(
        &mut self,
        pid: i32,
        fd: i32,
        link: &str,
        flags: u32,
    ) -> Result<Option<u32>, DumpError> {
        if !link.starts_with("/dev/") {
            return Ok(None);
        }
        let meta =
            std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).at(pid, "stat an open file")?;
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_char_device() {
            return Ok(None);
        }
        let rdev = meta.rdev();
        let Some(ty) = tty_type(rdev) else {
            return Ok(None);
        };
        let unsupported = |kind: String| DumpError::UnsupportedFd { pid, fd, kind };
        if major(rdev) == 5 && minor(rdev) == 2 {
            return Err(unsupported(format!(
                "a pty master ({link}); a pty pair inside the tree is not supported yet"
            )));
        }
        if !self.shell_job {
            return Err(unsupported(format!(
                "the terminal {link}, which the tree does not own; dump with --shell-job (-j) \
                 to give it the restoring crest's terminal"
            )));
        }
        if let Some(id) = self.tty.files.get(&(rdev, flags)) {
            return Ok(Some(*id));
        }
        let info_id = match self.tty.infos.iter().find(|i| u64::from(i.rdev) == rdev) {
            Some(i) => i.id,
            None => {
                let id = self.tty.infos.len() as u32 + 1;
                self.tty.infos.push(TtyInfoEntry {
                    id,
                    r#type: ty as i32,
                    locked: false,
                    exclusive: false,
                    packet_mode: false,
                    sid: 0,
                    pgrp: 0,
                    rdev: rdev as u32,
                    termios: None,
                    termios_locked: None,
                    winsize: None,
                    pty: (ty == TtyType::Pty).then(|| crest_images::pb::TtyPtyEntry {
                        index: minor(rdev) as u32 + 256 * (major(rdev) as u32 - 136),
                    }),
                    dev: None,
                });
                id
            }
        };
        let id = self.push(FileEntry {
            r#type: FdTypes::Tty as i32,
            id: 0,
            tty: Some(TtyFileEntry {
                id: 0,
                tty_info_id: info_id,
                flags,
                fown: FownEntry::default(),
            }),
            ..FileEntry::default()
        });
        if let Some(e) = self.entries.last_mut().and_then(|e| e.tty.as_mut()) {
            e.id = id;
        }
        self.tty.files.insert((rdev, flags), id);
        Ok(Some(id))
    }
}

impl TtyDump {
    /// Writes `tty-info.img` when the tree uses a terminal.
    pub fn write(&self, dir: &Path) -> Result<(), DumpError> {
        if !self.infos.is_empty() {
            crest_images::write_image(dir, names::TTY_INFO, magic::TTY_INFO, &self.infos)?;
        }
        Ok(())
    }
}

/// The fd for a terminal entry: crest's own terminal, opened once per
/// task.
pub fn open(
    t: &mut Tracee,
    e: &FileEntry,
    files: &super::restore::RestoreFiles,
    kept: &mut Kept,
) -> Result<u64, RestoreError> {
    let pid = t.pid();
    if kept.get(e.id).is_none() {
        if !files.socks.shell_job {
            return Err(RestoreError::Unsupported {
                pid,
                what: "a terminal of a shell job without --shell-job (-j)".into(),
            });
        }
        let path = (0..3)
            .find_map(crest_sys::net::terminal_of)
            .ok_or_else(|| RestoreError::Unsupported {
                pid,
                what: "a shell job's terminal when crest itself has no terminal on fds 0-2".into(),
            })?;
        let flags = e.tty.as_ref().map_or(libc::O_RDWR as u32, |t| t.flags) as i32;
        let keep = libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND;
        let fd = open_in_task(t, &path, (flags & keep) | libc::O_NOCTTY)?;
        kept.keep(t, e.id, fd)?;
    }
    kept.dup(t, e.id)
}
