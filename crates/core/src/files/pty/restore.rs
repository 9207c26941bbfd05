//! Pty pairs at restore: the pair opened at its index, its settings and
//! queues put back, masters and slaves handed to the tasks, the
//! controlling terminal taken.

use super::*;
use crate::error::RoomError;
use crate::files::error::FileError;

/// The master info of the in-tree pair `info` belongs to, if it does.
pub fn master_of<'a>(
    infos: &'a HashMap<u32, TtyInfoEntry>,
    info: &TtyInfoEntry,
) -> Option<&'a TtyInfoEntry> {
    let index = match (&info.pty, info.crest_ctty_index) {
        (Some(p), _) => p.index,
        (None, Some(i)) => i,
        (None, None) => return None,
    };
    infos.values().find(|m| {
        is_ptmx(u64::from(m.rdev))
            && m.crest_ptmx.is_some()
            && m.dev == info.dev
            && m.pty.as_ref().is_some_and(|p| p.index == index)
    })
}

/// The slave info of the pair whose master info is `m`.
pub(super) fn slave_of<'a>(
    infos: &'a HashMap<u32, TtyInfoEntry>,
    m: &TtyInfoEntry,
) -> Option<&'a TtyInfoEntry> {
    let index = m.pty.as_ref()?.index;
    infos.values().find(|s| {
        slave_index(u64::from(s.rdev)).is_some()
            && s.dev == m.dev
            && s.pty.as_ref().is_some_and(|p| p.index == index)
    })
}

/// Opens the master of pty `index` from `ptmx` (at `path`, as crest
/// reaches it): the devpts gives the lowest free index, so masters are
/// opened, and held, until one is of that index.
fn open_at_index(
    pid: i32,
    path: &str,
    (ptmx, index): (&str, u32),
) -> Result<OwnedFd, RestoreError> {
    // the devpts gives the lowest free index: open until it is ours
    let mut spare = Vec::new();
    loop {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .rat(pid, format!("open {path}"))?;
        let f = OwnedFd::from(f);
        let got = crest_sys::misc::pty_index(&f)
            .rat(pid, format!("TIOCGPTN of a pty opened at {path}"))?;
        if got == index {
            return Ok(f);
        }
        if got > index || spare.len() > 4096 {
            return Err(FileError::Unsupported {
                what: format!(
                    "pty {index} of {ptmx}: that index is taken in its devpts (the next free \
                     one is {got})"
                ),
            }
            .in_restore(pid));
        }
        spare.push(f);
    }
}

/// The slave end `p` of a pair made again: its device file's owner and
/// mode as `slave` had them.
fn set_slave(p: &OwnedFd, slave: Option<&TtyInfoEntry>) -> std::io::Result<()> {
    if let Some(s) = slave {
        if let (Some(uid), Some(gid)) = (s.crest_uid, s.crest_gid) {
            std::os::unix::fs::fchown(p, Some(uid), Some(gid))?;
        }
        if let Some(mode) = s.crest_mode {
            std::fs::File::from(p.try_clone()?)
                .set_permissions(std::fs::Permissions::from_mode(mode & 0o777))?;
        }
    }
    Ok(())
}

/// Makes the pair of master info `m` in `t`'s mount namespace, unless it
/// is made.
pub(super) fn make_pair(
    t: &Tracee,
    m: &TtyInfoEntry,
    files: &mut crate::files::context::RestoreFiles,
) -> Result<(), RestoreError> {
    if files.ttys.pty.made.contains_key(&m.id) {
        return Ok(());
    }
    let pid = t.pid();
    let index = m.pty.as_ref().map_or(0, |p| p.index);
    let ptmx = m.crest_ptmx.as_deref().unwrap_or("/dev/ptmx");
    if !ptmx.starts_with('/') || ptmx.split('/').any(|c| c == "..") || !ptmx.ends_with("/ptmx") {
        return Err(FileError::BadImage {
            file: crest_images::names::TTY_INFO.into(),
            what: format!("pty master path {ptmx:?}"),
        }
        .in_restore(pid));
    }
    let path = format!("/proc/{pid}/root{ptmx}");
    // (the steps name the image the pair comes from)
    let ctx = |what: &str| {
        format!(
            "{what} of pty {index} ({ptmx}, {})",
            crest_images::names::TTY_INFO
        )
    };
    if index >= 1 << 20 {
        return Err(FileError::BadImage {
            file: crest_images::names::TTY_INFO.into(),
            what: format!("pty index {index}"),
        }
        .in_restore(pid));
    }
    let master = open_at_index(pid, &path, (ptmx, index))?;
    crest_sys::misc::pty_unlock(&master).rat(pid, ctx("unlock"))?;
    let slave = slave_of(&files.ttys.infos, m).cloned();
    let settings = slave.as_ref().unwrap_or(m);
    let cur = crest_sys::misc::tcgets(&master).rat(pid, ctx("TCGETS"))?;
    if let Some(tl) = &settings.termios_locked {
        let tl = termios_from(&cur, tl);
        if !is_zero(&tl) {
            crest_sys::misc::tcsets_locked(&master, &tl).rat(pid, ctx("TIOCSLCKTRMIOS"))?;
        }
    }
    crate::files::tty::set_settings(&master, settings).rat(pid, ctx("set the settings"))?;
    let output = files.ttys.pty.data.remove(&m.id).unwrap_or_default();
    let input = slave
        .as_ref()
        .and_then(|s| files.ttys.pty.data.remove(&s.id))
        .unwrap_or_default();
    let want_peer = slave.is_some() || m.crest_slave_closed == Some(true) || !output.is_empty();
    let peer = if want_peer {
        let p = peer(&master).rat(pid, ctx("TIOCGPTPEER"))?;
        set_slave(&p, slave.as_ref()).rat(pid, ctx("set the slave"))?;
        Some(p)
    } else {
        None
    };
    let status = m.crest_pkt_status.unwrap_or(0) as u8;
    refill(
        &master,
        peer.as_ref(),
        m.packet_mode,
        (&output, &input, status),
        index,
    )
    .rat(pid, ctx("put the queues and packet status back"))?;
    if let (Some(p), true) = (&peer, slave.as_ref().is_some_and(|s| s.exclusive)) {
        crest_sys::misc::tty_set_excl(p, true).rat(pid, ctx("TIOCEXCL of the slave"))?;
    }
    if m.exclusive {
        crest_sys::misc::tty_set_excl(&master, true).rat(pid, ctx("TIOCEXCL"))?;
    }
    if m.locked {
        crest_sys::misc::ioctl_set_int(&master, libc::TIOCSPTLCK, 1).rat(pid, ctx("lock"))?;
    }
    files.ttys.pty.made.insert(m.id, MadePair { master, peer });
    Ok(())
}

/// The fd in `t` for tty file `e` of an in-tree pair whose master info is
/// `m` and own info `info`: the master's one open file, or a new one of
/// the slave.
pub fn open(
    t: &mut Tracee,
    e: &FileEntry,
    info: &TtyInfoEntry,
    m: &TtyInfoEntry,
    files: &mut crate::files::context::RestoreFiles,
) -> Result<u64, RestoreError> {
    let pid = t.pid();
    make_pair(t, m, files)?;
    let flags = e.tty.as_ref().map_or(libc::O_RDWR as u32, |t| t.flags) as i32;
    let index = m.pty.as_ref().map_or(0, |p| p.index);
    if info.crest_ctty_index.is_some() {
        // /dev/tty: the task's session must have its terminal first
        take_ctty(t, files)?;
        let keep = libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND;
        return Ok(t.open("/dev/tty", flags & keep)?);
    }
    let pair = &files.ttys.pty.made[&m.id];
    let file = if info.id == m.id {
        let fl = flags & (libc::O_NONBLOCK | libc::O_APPEND);
        // (F_SETFL through crest's copy sets the one open file)
        crest_sys::misc::set_status_flags(&pair.master, fl)
            .rat(pid, format!("F_SETFL of pty {index}'s master"))?;
        pair.master.try_clone().rat(pid, "dup")?
    } else {
        // (O_LARGEFILE is the kernel's value: the libc constant is 0 here)
        let keep = libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND | O_LARGEFILE;
        unlocked(&pair.master, || {
            crest_sys::misc::pty_peer(&pair.master, (flags & keep) | libc::O_NOCTTY)
        })
        .rat(pid, format!("open pty {index}'s slave (TIOCGPTPEER)"))?
    };
    Ok(t.give_fd(&file)?)
}

/// Gives `t` its controlling terminal back if it leads a session whose
/// terminal was the slave of an in-tree pair, with the foreground group.
pub fn take_ctty(
    t: &mut Tracee,
    files: &mut crate::files::context::RestoreFiles,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let masters: Vec<TtyInfoEntry> = files
        .ttys
        .infos
        .values()
        .filter(|m| is_ptmx(u64::from(m.rdev)) && m.crest_ptmx.is_some() && m.sid != 0)
        .cloned()
        .collect();
    if masters.is_empty() {
        return Ok(());
    }
    let me = t.syscall(nr::GETPID, &[]).rat(pid, "getpid")?;
    let sid = t.syscall(nr::GETSID, &[0]).rat(pid, "getsid")?;
    let Some(m) = masters.iter().find(|m| me == sid && u64::from(m.sid) == me) else {
        return Ok(());
    };
    if !files.ttys.pty.ctty_taken.insert(pid) {
        return Ok(());
    }
    make_pair(t, m, files)?;
    let index = m.pty.as_ref().map_or(0, |p| p.index);
    let pair = &files.ttys.pty.made[&m.id];
    let slave = unlocked(&pair.master, || {
        crest_sys::misc::pty_peer(&pair.master, libc::O_RDWR | libc::O_NOCTTY)
    })
    .rat(pid, format!("open pty {index}'s slave (TIOCGPTPEER)"))?;
    let fd = t.give_fd(&slave)?;
    let r = crate::files::tty::take_as_ctty(t, fd, m);
    t.close(fd)?;
    r
}
