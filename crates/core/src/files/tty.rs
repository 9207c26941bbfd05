//! Terminals. A tree may use a terminal it does not own (its shell's pty
//! or tty) only with `--shell-job`, or a pty slave whose master is outside
//! (a terminal container's console) with the RPC's `orphan_pts_master`:
//! the fds are recorded as CRIU's `tty_file_entry` with a `tty_info_entry`
//! (`tty-info.img`: settings, window size, the session it controls and
//! its foreground group). At restore a shell job's fds are opened on the
//! terminal of the restoring crest, as CRIU gives a restored shell job its
//! caller's terminal; with `orphan_pts_master` a new pty pair is made in
//! the task's mount namespace (its devpts), the slave gets the settings
//! and becomes the controlling terminal again, and the master goes to the
//! caller (the `orphan-pts-master` notification). Pty pairs whose master
//! the tree holds are `pty.rs`'s.

use super::kept::Kept;
use super::pty::{major, minor};
use super::table::FileTable;
use super::table::TtyDump;
use crate::error::RestoreCtx;
use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreError};
use crate::files::error::FileError;
use crate::remote::Remote;
use crest_images::pb::{
    FdTypes, FileEntry, FownEntry, TermiosEntry, TtyFileEntry, TtyInfoEntry, TtyType, WinsizeEntry,
};
use crest_images::{magic, names};
use crest_inject::nr;
use crest_inject::Tracee;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

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
        let unsupported = |kind: String| FileError::UnsupportedFd { fd, kind }.in_dump(pid);
        if ty == TtyType::Pty {
            if let Some(id) = self.dump_pty((pid, fd), link, flags, &meta)? {
                return Ok(Some(id));
            }
        }
        if ty == TtyType::Ctty {
            if let Some(id) = self.dump_dev_tty(pid, fd, flags)? {
                return Ok(Some(id));
            }
        }
        if super::pty::is_ptmx(rdev) {
            return Err(unsupported(format!(
                "a pty master ({link}) whose index fdinfo does not show"
            )));
        }
        let key = format!("tty[{:x}:{:x}]", rdev, meta.dev());
        let external = self.external_ttys.contains(&key);
        let orphan_slave = self.orphan_pts_master && (136..=143).contains(&major(rdev));
        if !self.shell_job && !orphan_slave && !external {
            return Err(unsupported(format!(
                "the terminal {link}, which the tree does not own; dump with --shell-job (-j) \
                 to give it the restoring crest's terminal, or name it with --external {key} \
                 and give it back with --inherit-fd fd[N]:{key}"
            )));
        }
        let ty = if external { TtyType::ExtTty } else { ty };
        if let Some(id) = self.tty.files.get(&(rdev, flags)) {
            return Ok(Some(*id));
        }
        let info_id = match self.tty.infos.iter().find(|i| u64::from(i.rdev) == rdev) {
            Some(i) => i.id,
            None => self.push_outside_info(pid, fd, ty, (rdev, meta.dev()))?,
        };
        let id = self.push(file_entry(info_id, flags));
        self.tty.files.insert((rdev, flags), id);
        Ok(Some(id))
    }

    /// The info of a terminal the tree does not own (the caller's, named
    /// external, or the slave of an orphan pty master): its settings as
    /// fd `fd` of `pid` shows them, and the session it controls.
    fn push_outside_info(
        &mut self,
        pid: i32,
        fd: i32,
        ty: TtyType,
        (rdev, dev): (u64, u64),
    ) -> Result<u32, DumpError> {
        let id = self.tty.next_info_id();
        let (termios, winsize) = settings(pid, fd)?;
        let (sid, pgrp) = controlled(&self.tree, rdev);
        self.tty.infos.push(TtyInfoEntry {
            id,
            r#type: ty as i32,
            locked: false,
            exclusive: false,
            packet_mode: false,
            sid,
            pgrp,
            rdev: rdev as u32,
            termios,
            termios_locked: None,
            winsize,
            pty: (ty == TtyType::Pty).then(|| crest_images::pb::TtyPtyEntry {
                index: minor(rdev) as u32 + 256 * (major(rdev) as u32 - 136),
            }),
            dev: (ty == TtyType::ExtTty).then_some(dev as u32),
            ..TtyInfoEntry::default()
        });
        Ok(id)
    }
}

/// A `files.img` entry of a terminal's open file.
pub(crate) fn file_entry(tty_info_id: u32, flags: u32) -> FileEntry {
    FileEntry {
        r#type: FdTypes::Tty as i32,
        id: 0,
        tty: Some(TtyFileEntry {
            id: 0,
            tty_info_id,
            flags,
            fown: FownEntry::default(),
        }),
        ..FileEntry::default()
    }
}

impl TtyDump {
    pub(crate) fn next_info_id(&self) -> u32 {
        self.infos.len() as u32 + 1
    }

    /// Writes `tty-info.img` when the tree uses a terminal, and
    /// `tty-data.img` when bytes are queued in its pty pairs.
    pub fn write(&self, dir: &Path) -> Result<(), DumpError> {
        if !self.infos.is_empty() {
            crest_images::write_image(dir, names::TTY_INFO, magic::TTY_INFO, &self.infos)?;
        }
        if !self.pty.data.is_empty() {
            crest_images::write_image(dir, names::TTY_DATA, magic::TTY_DATA, &self.pty.data)?;
        }
        Ok(())
    }
}

/// The settings and window size of the terminal behind `pid`'s `fd`.
fn settings(pid: i32, fd: i32) -> Result<(Option<TermiosEntry>, Option<WinsizeEntry>), DumpError> {
    let pidfd = crest_sys::misc::pidfd_open(pid).at(pid, "pidfd_open")?;
    let copy = rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
        .at(pid, "pidfd_getfd of a terminal")?;
    let t = crest_sys::misc::tcgets(&copy).at(pid, "TCGETS")?;
    let w = crest_sys::misc::get_winsize(&copy).at(pid, "TIOCGWINSZ")?;
    Ok((
        Some(super::pty::termios_entry(&t)),
        Some(WinsizeEntry {
            ws_row: u32::from(w.ws_row),
            ws_col: u32::from(w.ws_col),
            ws_xpixel: u32::from(w.ws_xpixel),
            ws_ypixel: u32::from(w.ws_ypixel),
        }),
    ))
}

/// The session the terminal `rdev` controls and its foreground group, as
/// the session's own pid namespace numbers them (the leader's innermost
/// pid; 0, 0 when no task of `tree` leads a session it controls).
pub(crate) fn controlled(tree: &std::collections::HashSet<i32>, rdev: u64) -> (u32, u32) {
    for &pid in tree {
        let Ok(st) = crate::procfs::read_stat(pid) else {
            continue;
        };
        let tty = st.tty_nr as u64;
        if st.session != pid || major(tty) != major(rdev) || minor(tty) != minor(rdev) {
            continue;
        }
        let inner = |p: i32, key: &str| -> Option<u32> {
            let s = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            s.lines()
                .find_map(|l| l.strip_prefix(key))?
                .split_whitespace()
                .last()?
                .parse()
                .ok()
        };
        let sid = inner(pid, "NSsid:").unwrap_or(0);
        // the foreground group, through a task of the tree in it
        let fg = tree
            .iter()
            .find(|&&p| crate::procfs::read_stat(p).is_ok_and(|s| s.pgrp == st.tpgid))
            .and_then(|&p| inner(p, "NSpgid:"))
            .unwrap_or(0);
        return (sid, fg);
    }
    (0, 0)
}

/// The fd for a terminal entry: a new pty's slave for a console whose
/// master was outside (`orphan_pts_master`), or crest's own terminal for a
/// shell job, opened once per task.
pub fn open(
    t: &mut Tracee,
    e: &FileEntry,
    files: &mut super::context::RestoreFiles,
    kept: &mut Kept,
) -> Result<u64, RestoreError> {
    let pid = t.pid();
    if kept.get(e.id).is_none() {
        let flags = e.tty.as_ref().map_or(libc::O_RDWR as u32, |t| t.flags) as i32;
        let keep = libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND;
        let info = e
            .tty
            .as_ref()
            .and_then(|f| files.ttys.infos.get(&f.tty_info_id))
            .cloned();
        let pair = info
            .as_ref()
            .and_then(|i| super::pty::master_of(&files.ttys.infos, i))
            .cloned();
        let fd = match (info, pair) {
            (Some(info), Some(m)) => super::pty::open(t, e, &info, &m, files)?,
            (Some(info), None) if info.r#type == TtyType::ExtTty as i32 => {
                open_external(t, &info, files, flags)?
            }
            (Some(info), None) if files.ttys.orphan_pts_master && info.pty.is_some() => {
                open_orphan_slave(t, &info, files, (flags & keep) | libc::O_NOCTTY)?
            }
            _ => {
                if !files.socks.shell_job {
                    return Err(FileError::Unsupported {
                        what: "a terminal of a shell job without --shell-job (-j)".into(),
                    }
                    .in_restore(pid));
                }
                let path = (0..3)
                    .find_map(crest_sys::net::terminal_of)
                    .ok_or_else(|| FileError::Unsupported { what: "a shell job's terminal when crest itself has no terminal on fds 0-2"
                            .into() }.in_restore(pid))?;
                t.open(&path, (flags & keep) | libc::O_NOCTTY)?
            }
        };
        kept.keep(t, e.id, fd)?;
    }
    kept.dup(t, e.id)
}

/// The terminal the caller gives for external terminal `info` (CRIU's
/// `--inherit-fd fd[N]:tty[RDEV:DEV]`), with the dumped settings; `t`
/// takes it as its controlling terminal if it leads the session it
/// controlled.
fn open_external(
    t: &mut Tracee,
    info: &TtyInfoEntry,
    files: &mut super::context::RestoreFiles,
    flags: i32,
) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let key = format!("tty[{:x}:{:x}]", info.rdev, info.dev.unwrap_or(0));
    let given = files.inherit.get(&key).ok_or_else(|| {
        FileError::Unsupported {
            what: format!("the external terminal {key} without --inherit-fd fd[N]:{key}"),
        }
        .in_restore(pid)
    })?;
    set_settings(given, info).rat(pid, format!("set the settings of {key}"))?;
    let fd = t.give_fd(given)?;
    let status = (flags & (libc::O_NONBLOCK | libc::O_APPEND)) as u64;
    t.fcntl(
        fd,
        libc::F_SETFL,
        status,
        &format!("set the flags of {key}"),
    )?;
    take_as_ctty(t, fd, info)?;
    Ok(fd)
}

/// `t` takes terminal `fd` as its controlling terminal, with the
/// foreground group, if it leads the session `info` says it controlled.
pub(crate) fn take_as_ctty(
    t: &mut Tracee,
    fd: u64,
    info: &TtyInfoEntry,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    if info.sid == 0 {
        return Ok(());
    }
    let me = t.syscall(nr::GETPID, &[]).rat(pid, "getpid")?;
    let sid = t.syscall(nr::GETSID, &[0]).rat(pid, "getsid")?;
    if me != sid || me != u64::from(info.sid) {
        return Ok(());
    }
    t.syscall(nr::IOCTL, &[fd, libc::TIOCSCTTY, 0])
        .rat(pid, "take the controlling terminal")?;
    if info.pgrp != 0 {
        let pg = t
            .put(&(info.pgrp as i32).to_ne_bytes())
            .rat(pid, "write an int")?;
        t.syscall(nr::IOCTL, &[fd, libc::TIOCSPGRP, pg])
            .rat(pid, "set the terminal's foreground group")?;
    }
    Ok(())
}

/// The slave of the new pty standing for terminal `info`, opened in `t`
/// (the pair is made by the first task that needs it, in its mount
/// namespace's devpts); `t` takes it as its controlling terminal if it
/// leads the session the terminal controlled.
fn open_orphan_slave(
    t: &mut Tracee,
    info: &TtyInfoEntry,
    files: &mut super::context::RestoreFiles,
    flags: i32,
) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let mut made = files
        .ttys
        .masters
        .iter()
        .find(|m| m.0 == info.id)
        .map(|m| m.2);
    if made.is_none() {
        let index = info.pty.as_ref().map_or(0, |p| p.index);
        if let Some(master) =
            crate::ns::mnt::devpts::take_premade(&format!("/proc/{pid}/root/dev/pts"), index)
        {
            set_settings(&master, info).rat(pid, "set a terminal's settings")?;
            files.ttys.masters.push((info.id, master, index));
            made = Some(index);
        }
    }
    let fd = match made {
        Some(index) => t.open(&format!("/dev/pts/{index}"), flags)?,
        None => {
            let m = t.open("/dev/ptmx", libc::O_RDWR | libc::O_NOCTTY)?;
            let zero = t.put(&0i32.to_ne_bytes()).rat(pid, "write an int")?;
            t.syscall(nr::IOCTL, &[m, libc::TIOCSPTLCK, zero])
                .rat(pid, "unlock a new pty")?;
            let s = t
                .syscall(nr::IOCTL, &[m, libc::TIOCGPTPEER, flags as u64])
                .rat(pid, "open a new pty's slave")?;
            let pidfd = crest_sys::misc::pidfd_open(pid).rat(pid, "pidfd_open")?;
            let master = rustix::process::pidfd_getfd(
                &pidfd,
                m as i32,
                rustix::process::PidfdGetfdFlags::empty(),
            )
            .rat(pid, "take a new pty's master")?;
            t.close(m)?;
            let index = crest_sys::misc::pty_index(&master).rat(pid, "TIOCGPTN")?;
            set_settings(&master, info).rat(pid, "set a terminal's settings")?;
            files.ttys.masters.push((info.id, master, index));
            s
        }
    };
    // the controlling terminal of the session it leads, with its
    // foreground group
    take_as_ctty(t, fd, info)?;
    Ok(fd)
}

/// Gives a pty (through its master) the dumped settings and window size.
pub(crate) fn set_settings(
    master: &std::os::fd::OwnedFd,
    info: &TtyInfoEntry,
) -> std::io::Result<()> {
    if let Some(te) = &info.termios {
        let t = super::pty::termios_from(&crest_sys::misc::tcgets(master)?, te);
        crest_sys::misc::tcsets(master, &t)?;
    }
    if let Some(w) = &info.winsize {
        crest_sys::misc::set_winsize(
            master,
            &libc::winsize {
                ws_row: w.ws_row as u16,
                ws_col: w.ws_col as u16,
                ws_xpixel: w.ws_xpixel as u16,
                ws_ypixel: w.ws_ypixel as u16,
            },
        )?;
    }
    Ok(())
}
