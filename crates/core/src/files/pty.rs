//! Pty pairs whose master a task of the tree holds (a terminal
//! multiplexer, `script`, an ssh server, a container engine's console).
//!
//! Dump: before the first terminal fd is dumped, every fd of the tree is
//! scanned for pty masters (their index from fdinfo's `tty-index`, their
//! devpts the one the kernel finds beside the `ptmx` they were opened by)
//! and slaves (device `136..143:N` on a devpts). A pair gets two
//! `tty_info_entry`s, the master's and (when the slave is open or was)
//! the slave's, with the slave's settings, window size, locked settings,
//! packet mode, lock, exclusive modes and the session it controls. The
//! bytes queued in it are read out through crest's copies, as CRIU's
//! `tty-data.img` holds them (an entry named by the side they were read
//! from), and put back at once, so the tree runs on with them if it is
//! not killed:
//! - output the slave wrote that the master has not read: read from the
//!   master while it polls readable (its own open file, blocking or not,
//!   never waits), put back by writing into the slave with `OPOST` off;
//! - input the slave has not read: read from a new open file of the slave
//!   (`TIOCGPTPEER`), in canonical mode line by line and then the partial
//!   line with canonical mode off for the read, a line that was pushed
//!   by the EOF character followed by that character in the data; put
//!   back byte by byte with `TIOCSTI` (synchronous, unlike a write into
//!   the master, whose bytes the line discipline takes later under
//!   whatever settings it has then) with echo, signals, input mapping and
//!   the editing characters off, so the bytes and line ends come back as
//!   they were.
//!
//! Restore: the first task that needs a pair (an fd of either side, or
//! its session's controlling terminal) has crest open the `ptmx` it was
//! opened by, in that task's mount namespace (`/proc/PID/root`), until
//! the index is the dumped one; crest sets the pair up, puts the queued
//! bytes back and keeps the master. Every open file of the master is that
//! one (a pair has one master file); every open file of the slave is a
//! new `TIOCGPTPEER`; both reach the task with `give_fd`. A session leader
//! whose controlling terminal was the slave takes it with `TIOCSCTTY` and
//! gets its foreground group back; `/dev/tty` is opened once it has.
//!
//! Not carried: a packet-mode status not read yet other than flow control
//! (`TIOCPKT_NOSTOP`/`DOSTOP`, made again by switching the flow control
//! the other way and back; the rest is dropped with a warning), a slave's
//! input before the slave was ever opened (it cannot be read without
//! opening it, which the master would see). A crest without CAP_SYS_ADMIN
//! refuses a pair whose slave is open (`TIOCSTI` wants it). A crest killed
//! between reading a pair's queues and putting them back loses them: the
//! window is the few system calls in between.

use super::FileTable;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::remote::Remote;
use crest_images::pb::{FileEntry, TtyDataEntry, TtyInfoEntry};
use crest_images::pb::{TermiosEntry, TtyPtyEntry, TtyType};
use crest_inject::{nr, Tracee};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

/// A pair: the device of the devpts its slave is on, and its index.
pub type PairKey = (u64, u32);

/// The most bytes crest carries queued in one direction of one pair (the
/// line discipline holds 4 KiB, the pty's buffers 64 KiB more).
const MOST_QUEUED: usize = 128 << 10;

/// `O_LARGEFILE` as the kernel has it on x86-64.
const O_LARGEFILE: i32 = 0o100000;

/// What the scan of the tree's fds found of one pair.
#[derive(Default)]
pub struct PairSeen {
    /// A task and fd of the tree holding the master.
    master: Option<(i32, i32)>,
    /// Whether a task of the tree holds the slave.
    slave_held: bool,
    /// Its entries once dumped: the master's and the slave's infos.
    infos: Option<(u32, Option<u32>)>,
    /// The info of `/dev/tty` opened on its slave.
    ctty_info: Option<u32>,
}

/// Pty pairs at dump.
#[derive(Default)]
pub struct PtyDump {
    /// None until the tree's fds are scanned.
    pairs: Option<HashMap<PairKey, PairSeen>>,
    pub data: Vec<TtyDataEntry>,
}

pub fn major(rdev: u64) -> u64 {
    ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)
}

pub fn minor(rdev: u64) -> u64 {
    (rdev & 0xff) | ((rdev >> 12) & !0xff)
}

/// Whether `rdev` is a pty master (the `ptmx` device).
pub fn is_ptmx(rdev: u64) -> bool {
    major(rdev) == 5 && minor(rdev) == 2
}

/// The index of pty slave device `rdev`, if it is one.
pub fn slave_index(rdev: u64) -> Option<u32> {
    (136..=143)
        .contains(&major(rdev))
        .then(|| (minor(rdev) + 256 * (major(rdev) - 136)) as u32)
}

fn slave_rdev(index: u32) -> u64 {
    let (ma, mi) = (136 + u64::from(index / 256), u64::from(index % 256));
    (ma << 8) | mi
}

const DEVPTS_SUPER_MAGIC: i64 = 0x1cd1;

/// The pair pty master fd `fd` of `pid` (opened by `link`) belongs to.
fn master_key(pid: i32, fd: i32, link: &str) -> Option<PairKey> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let index = info
        .lines()
        .find_map(|l| l.strip_prefix("tty-index:"))?
        .trim()
        .parse()
        .ok()?;
    let at = format!("/proc/{pid}/fd/{fd}");
    let on_devpts = rustix::fs::statfs(at.as_str()).is_ok_and(|s| s.f_type == DEVPTS_SUPER_MAGIC);
    let dev = if on_devpts {
        std::fs::metadata(&at).ok()?.dev()
    } else {
        // (the kernel takes the devpts mounted at `pts` beside it)
        let dir = link.rsplit_once('/').map_or("", |x| x.0);
        std::fs::metadata(format!("{}{dir}/pts", crate::procfs::ns_root(pid)))
            .ok()?
            .dev()
    };
    Some((dev, index))
}

/// Every pty master and slave the tree's fds hold.
fn scan(tree: &std::collections::HashSet<i32>) -> HashMap<PairKey, PairSeen> {
    use std::os::unix::fs::FileTypeExt;
    let mut pairs: HashMap<PairKey, PairSeen> = HashMap::new();
    let mut pids: Vec<i32> = tree.iter().copied().collect();
    pids.sort_unstable();
    for pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in dir.flatten() {
            let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(meta) = std::fs::metadata(e.path()) else {
                continue;
            };
            if !meta.file_type().is_char_device() {
                continue;
            }
            let rdev = meta.rdev();
            if is_ptmx(rdev) {
                let link = std::fs::read_link(e.path())
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if let Some(key) = master_key(pid, fd, &link) {
                    pairs
                        .entry(key)
                        .or_default()
                        .master
                        .get_or_insert((pid, fd));
                }
            } else if let Some(index) = slave_index(rdev) {
                pairs.entry((meta.dev(), index)).or_default().slave_held = true;
            }
        }
    }
    pairs
}

pub(crate) fn termios_entry(t: &libc::termios) -> TermiosEntry {
    TermiosEntry {
        c_iflag: t.c_iflag,
        c_oflag: t.c_oflag,
        c_cflag: t.c_cflag,
        c_lflag: t.c_lflag,
        c_line: u32::from(t.c_line),
        c_ispeed: t.c_ispeed,
        c_ospeed: t.c_ospeed,
        c_cc: t.c_cc.iter().map(|&c| u32::from(c)).collect(),
    }
}

/// `e` laid over the settings `base` (fields the entry has).
pub fn termios_from(base: &libc::termios, e: &TermiosEntry) -> libc::termios {
    let mut t = *base;
    t.c_iflag = e.c_iflag;
    t.c_oflag = e.c_oflag;
    t.c_cflag = e.c_cflag;
    t.c_lflag = e.c_lflag;
    t.c_line = e.c_line as u8;
    t.c_ispeed = e.c_ispeed;
    t.c_ospeed = e.c_ospeed;
    for (d, s) in t.c_cc.iter_mut().zip(&e.c_cc) {
        *d = *s as u8;
    }
    t
}

fn is_zero(t: &libc::termios) -> bool {
    t.c_iflag == 0
        && t.c_oflag == 0
        && t.c_cflag == 0
        && t.c_lflag == 0
        && t.c_cc.iter().all(|&c| c == 0)
}

/// Runs `f` with the pty behind `master` unlocked (a locked slave cannot
/// be opened), locking it again after.
fn unlocked<T>(master: &OwnedFd, f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    let locked = crest_sys::misc::ioctl_get_int(master, libc::TIOCGPTLCK)? != 0;
    if locked {
        crest_sys::misc::ioctl_set_int(master, libc::TIOCSPTLCK, 0)?;
    }
    let r = f();
    if locked {
        crest_sys::misc::ioctl_set_int(master, libc::TIOCSPTLCK, 1)?;
    }
    r
}

/// A new open file of the slave of `master`, for crest (non-blocking).
fn peer(master: &OwnedFd) -> std::io::Result<OwnedFd> {
    unlocked(master, || {
        crest_sys::misc::pty_peer(
            master,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    })
}

/// The output queued for `master` (written by the slave, not read): read
/// while the master polls readable, so a blocking master never waits.
/// In packet mode each read starts with a status byte; a status that is
/// not data is dropped with a warning.
fn read_output(master: &OwnedFd, packet: bool, index: u32) -> std::io::Result<(Vec<u8>, u8)> {
    let mut out = Vec::new();
    let mut status = 0u8;
    let mut f = std::fs::File::from(master.try_clone()?);
    let mut buf = vec![0u8; 4096];
    loop {
        let ev = crest_sys::misc::poll_one(master, libc::POLLIN, 0)?;
        if ev & libc::POLLIN == 0 {
            break;
        }
        let n = match f.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        let got = if packet {
            status |= buf[0];
            &buf[1..n]
        } else {
            &buf[..n]
        };
        out.extend_from_slice(got);
        if out.len() > MOST_QUEUED {
            return Err(std::io::Error::other(format!(
                "more than {MOST_QUEUED} bytes queued for the master"
            )));
        }
    }
    let lost = status & !FLOW_STATUS;
    if lost != 0 {
        crate::warn!("pty {index}: a packet-mode status {lost:#x} not read yet is not carried");
    }
    Ok((out, status & FLOW_STATUS))
}

/// The packet-mode statuses crest carries: whether the slave's flow
/// control by ^S/^Q went on or off.
const FLOW_STATUS: u8 = TIOCPKT_NOSTOP | TIOCPKT_DOSTOP;
const TIOCPKT_NOSTOP: u8 = 0x10;
const TIOCPKT_DOSTOP: u8 = 0x20;

/// Makes a packet-mode master's pending status `status` again: the
/// slave's settings are set with flow control the other way, then back.
fn put_status(master: &OwnedFd, status: u8) -> std::io::Result<()> {
    if status & FLOW_STATUS == 0 {
        return Ok(());
    }
    let t = crest_sys::misc::tcgets(master)?;
    let mut other = t;
    if status & TIOCPKT_DOSTOP != 0 {
        other.c_iflag &= !libc::IXON;
    } else {
        other.c_iflag |= libc::IXON;
        other.c_cc[libc::VSTOP] = 0o23;
        other.c_cc[libc::VSTART] = 0o21;
    }
    crest_sys::misc::tcsets(master, &other)?;
    crest_sys::misc::tcsets(master, &t)
}

/// The input queued for the slave (written into the master, not read),
/// read from crest's open file `peer` of the slave, whose settings are
/// `t`. In canonical mode a line the EOF character pushed is followed by
/// that character.
fn read_input(peer: &OwnedFd, t: &libc::termios) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::from(peer.try_clone()?);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    let canon = t.c_lflag & libc::ICANON != 0 && t.c_lflag & libc::EXTPROC == 0;
    let too_much = || {
        std::io::Error::other(format!(
            "more than {MOST_QUEUED} bytes of input queued for the slave"
        ))
    };
    if canon {
        let ends = [b'\n', t.c_cc[libc::VEOL], t.c_cc[libc::VEOL2]];
        let eof = t.c_cc[libc::VEOF];
        // one line per read
        loop {
            match f.read(&mut buf) {
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    let last = n.checked_sub(1).map(|k| buf[k]);
                    if !last.is_some_and(|c| c != 0 && ends.contains(&c) || c == b'\n') {
                        out.push(eof);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
            if out.len() > MOST_QUEUED {
                return Err(too_much());
            }
        }
        // the partial line, readable once canonical mode is off
        let mut raw = *t;
        raw.c_lflag &= !libc::ICANON;
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        crest_sys::misc::tcsets(peer, &raw)?;
        let r = read_all(&mut f, &mut buf, &mut out);
        crest_sys::misc::tcsets(peer, t)?;
        r?;
    } else {
        read_all(&mut f, &mut buf, &mut out)?;
    }
    if out.len() > MOST_QUEUED {
        return Err(too_much());
    }
    Ok(out)
}

fn read_all(f: &mut std::fs::File, buf: &mut [u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    loop {
        match f.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
        if out.len() > MOST_QUEUED {
            return Ok(());
        }
    }
}

/// Whether crest may push input into a terminal (`TIOCSTI` wants
/// CAP_SYS_ADMIN in the initial user namespace).
fn can_push_input() -> bool {
    // (the initial user namespace has a fixed inode, PROC_USER_INIT_INO)
    let initial = std::fs::read_link("/proc/self/ns/user")
        .is_ok_and(|l| l.as_os_str() == "user:[4026531837]");
    let admin = crate::procfs::read_status(std::process::id() as i32)
        .is_ok_and(|st| st.cap_eff & (1u64 << crate::privilege::CAP_SYS_ADMIN) != 0);
    initial && admin
}

/// Puts `data` back in the master's queue: written by crest's open file
/// `peer` of the slave with output processing off.
fn put_output(peer: &OwnedFd, data: &[u8]) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let t = crest_sys::misc::tcgets(peer)?;
    let mut plain = t;
    plain.c_oflag &= !libc::OPOST;
    crest_sys::misc::tcsets(peer, &plain)?;
    let r = write_all(peer, data);
    crest_sys::misc::tcsets(peer, &t)?;
    r
}

fn write_all(fd: &OwnedFd, mut data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::from(fd.try_clone()?);
    let mut waits = 0;
    while !data.is_empty() {
        match f.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && waits < 50 => {
                waits += 1;
                crest_sys::misc::poll_one(fd, libc::POLLOUT, 100)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Puts `data` back in the slave's input: each byte through `TIOCSTI` on
/// crest's open file `peer` of the slave, under settings that take every
/// byte as it is (no echo, signals, mapping or editing characters; the
/// line ends and the EOF push as set).
fn put_input(peer: &OwnedFd, data: &[u8]) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let t = crest_sys::misc::tcgets(peer)?;
    let mut plain = t;
    plain.c_iflag = 0;
    plain.c_lflag &= !(libc::ECHO
        | libc::ECHOE
        | libc::ECHOK
        | libc::ECHONL
        | libc::ECHOCTL
        | libc::ECHOPRT
        | libc::ECHOKE
        | libc::ISIG);
    for c in [
        libc::VERASE,
        libc::VKILL,
        libc::VWERASE,
        libc::VLNEXT,
        libc::VREPRINT,
    ] {
        plain.c_cc[c] = 0;
    }
    crest_sys::misc::tcsets(peer, &plain)?;
    let mut r = Ok(());
    for b in data {
        if let Err(e) = crest_sys::misc::tty_push_input(peer, *b) {
            r = Err(e);
            break;
        }
    }
    crest_sys::misc::tcsets(peer, &t)?;
    r
}

impl FileTable {
    /// A pty fd of a pair whose master the tree holds: None if `rdev` is
    /// no such fd.
    pub(crate) fn dump_pty(
        &mut self,
        pid: i32,
        fd: i32,
        link: &str,
        flags: u32,
    ) -> Result<Option<u32>, DumpError> {
        let meta =
            std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).at(pid, "stat an open file")?;
        let rdev = meta.rdev();
        let key = if is_ptmx(rdev) {
            master_key(pid, fd, link)
        } else {
            slave_index(rdev).map(|i| (meta.dev(), i))
        };
        let Some(key) = key else {
            return Ok(None);
        };
        if self.tty.pty.pairs.is_none() {
            self.tty.pty.pairs = Some(scan(&self.tree));
        }
        let has_master = self
            .tty
            .pty
            .pairs
            .as_ref()
            .and_then(|p| p.get(&key))
            .is_some_and(|p| p.master.is_some());
        if !has_master {
            return Ok(None);
        }
        let (master_info, slave_info) = self.dump_pair(key)?;
        let info = if is_ptmx(rdev) {
            master_info
        } else {
            slave_info.ok_or_else(|| DumpError::UnsupportedFd {
                pid,
                fd,
                kind: format!("{link}, a pty slave the scan of the tree did not see"),
            })?
        };
        Ok(Some(self.push(super::tty::file_entry(info, flags))))
    }

    /// `/dev/tty` (fd `fd` of `pid`) when the task's controlling
    /// terminal is the slave of a pair whose master the tree holds: None
    /// otherwise.
    pub(crate) fn dump_dev_tty(
        &mut self,
        pid: i32,
        fd: i32,
        flags: u32,
    ) -> Result<Option<u32>, DumpError> {
        let st = crate::procfs::read_stat(pid).at(pid, "read stat")?;
        let Some(index) = slave_index(st.tty_nr as u32 as u64) else {
            return Ok(None);
        };
        if self.tty.pty.pairs.is_none() {
            self.tty.pty.pairs = Some(scan(&self.tree));
        }
        let pairs = self.tty.pty.pairs.as_ref().expect("scanned");
        let mut keys: Vec<PairKey> = pairs
            .iter()
            .filter(|(k, p)| k.1 == index && p.master.is_some())
            .map(|(k, _)| *k)
            .collect();
        if keys.len() > 1 {
            // several devpts have that index: the task's own /dev/pts
            let root = crate::procfs::ns_root(pid);
            let dev = std::fs::metadata(format!("{root}/dev/pts")).map(|m| m.dev());
            keys.retain(|k| dev.as_ref().is_ok_and(|d| *d == k.0));
        }
        let [key] = keys[..] else {
            return Ok(None);
        };
        self.dump_pair(key)?;
        let seen = self.tty.pty.pairs.as_ref().and_then(|p| p.get(&key));
        let info = match seen.and_then(|s| s.ctty_info) {
            Some(id) => id,
            None => {
                let rdev = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
                    .at(pid, "stat /dev/tty")?
                    .rdev();
                let id = self.tty.next_info_id();
                self.tty.infos.push(TtyInfoEntry {
                    id,
                    r#type: TtyType::Ctty as i32,
                    rdev: rdev as u32,
                    dev: Some(key.0 as u32),
                    crest_ctty_index: Some(index),
                    ..TtyInfoEntry::default()
                });
                if let Some(p) = self.tty.pty.pairs.as_mut().and_then(|p| p.get_mut(&key)) {
                    p.ctty_info = Some(id);
                }
                id
            }
        };
        Ok(Some(self.push(super::tty::file_entry(info, flags))))
    }

    /// The infos of pair `key` (the master's, the slave's if it is or was
    /// open), dumped with its queued bytes the first time.
    fn dump_pair(&mut self, key: PairKey) -> Result<(u32, Option<u32>), DumpError> {
        let seen = self
            .tty
            .pty
            .pairs
            .as_ref()
            .and_then(|p| p.get(&key))
            .expect("dump_pair on a scanned pair");
        if let Some(ids) = seen.infos {
            return Ok(ids);
        }
        let (mpid, mfd) = seen.master.expect("a pair with a master");
        let slave_held = seen.slave_held;
        let index = key.1;
        let pidfd = crest_sys::misc::pidfd_open(mpid).at(mpid, "pidfd_open")?;
        let master =
            crest_sys::misc::pidfd_getfd(&pidfd, mfd).at(mpid, "pidfd_getfd of a pty master")?;
        let link = crate::procfs::read_link(&format!("/proc/{mpid}/fd/{mfd}"))
            .at(mpid, "read an fd link")?;
        let mrdev = std::fs::metadata(format!("/proc/{mpid}/fd/{mfd}"))
            .at(mpid, "stat a pty master")?
            .rdev();
        let get = |req| crest_sys::misc::ioctl_get_int(&master, req);
        let locked = get(libc::TIOCGPTLCK).at(mpid, "TIOCGPTLCK of a pty pair")? != 0;
        let packet = get(libc::TIOCGPKT).at(mpid, "TIOCGPKT of a pty pair")? != 0;
        let excl = get(libc::TIOCGEXCL).at(mpid, "TIOCGEXCL of a pty pair")? != 0;
        let t = crest_sys::misc::tcgets(&master).at(mpid, "TCGETS of a pty pair")?;
        let tl =
            crest_sys::misc::tcgets_locked(&master).at(mpid, "TIOCGLCKTRMIOS of a pty pair")?;
        let w = crest_sys::misc::get_winsize(&master).at(mpid, "TIOCGWINSZ of a pty pair")?;
        let ev =
            crest_sys::misc::poll_one(&master, libc::POLLIN, 0).at(mpid, "poll of a pty pair")?;
        let hup = ev & libc::POLLHUP != 0 && !slave_held;
        let (sid, pgrp) = super::tty::controlled(&self.tree, slave_rdev(index));
        let winsize = crest_images::pb::WinsizeEntry {
            ws_row: u32::from(w.ws_row),
            ws_col: u32::from(w.ws_col),
            ws_xpixel: u32::from(w.ws_xpixel),
            ws_ypixel: u32::from(w.ws_ypixel),
        };
        let base = TtyInfoEntry {
            id: 0,
            r#type: TtyType::Pty as i32,
            locked: false,
            exclusive: false,
            packet_mode: false,
            sid,
            pgrp,
            rdev: 0,
            termios: Some(termios_entry(&t)),
            termios_locked: Some(termios_entry(&tl)),
            winsize: Some(winsize),
            pty: Some(TtyPtyEntry { index }),
            dev: Some(key.0 as u32),
            ..TtyInfoEntry::default()
        };
        // the queued bytes, read out and put back at once; the input only
        // goes back with TIOCSTI, so a crest that cannot use it leaves
        // the pair alone
        if slave_held && !can_push_input() {
            return Err(DumpError::Unsupported {
                pid: mpid,
                what: format!(
                    "pty {index} with its slave open: the input queued in it goes back only \
                     through TIOCSTI, which wants CAP_SYS_ADMIN in the initial user namespace"
                ),
            });
        }
        let peer = if slave_held || hup {
            Some(peer(&master).at(mpid, "TIOCGPTPEER of a pty pair")?)
        } else {
            None
        };
        let (output, status) =
            read_output(&master, packet, index).at(mpid, "read the output of a pty pair")?;
        let input = match &peer {
            Some(p) if slave_held => read_input(p, &t).at(mpid, "read the input of a pty pair")?,
            _ => Vec::new(),
        };
        put_status(&master, status).at(mpid, "put a pty pair's packet status back")?;
        if let Some(p) = &peer {
            put_output(p, &output).at(mpid, "put the output back of a pty pair")?;
            put_input(p, &input).at(mpid, "put the input back (TIOCSTI) of a pty pair")?;
        } else if !output.is_empty() {
            return Err(DumpError::Unsupported {
                pid: mpid,
                what: format!("output queued in pty {index}, whose slave was never opened"),
            });
        }
        let mid = self.tty.next_info_id();
        self.tty.infos.push(TtyInfoEntry {
            id: mid,
            locked,
            exclusive: excl,
            packet_mode: packet,
            rdev: mrdev as u32,
            crest_ptmx: Some(link),
            crest_slave_closed: Some(hup),
            crest_pkt_status: (status != 0).then_some(u32::from(status)),
            ..base.clone()
        });
        let sid_info = match &peer {
            Some(p) if slave_held => {
                let m = std::fs::File::from(p.try_clone().at(mpid, "dup")?)
                    .metadata()
                    .at(mpid, "stat the slave of a pty pair")?;
                let sexcl = crest_sys::misc::ioctl_get_int(p, libc::TIOCGEXCL)
                    .at(mpid, "TIOCGEXCL of the slave of a pty pair")?
                    != 0;
                let id = self.tty.next_info_id();
                self.tty.infos.push(TtyInfoEntry {
                    id,
                    exclusive: sexcl,
                    rdev: m.rdev() as u32,
                    crest_uid: Some(m.uid()),
                    crest_gid: Some(m.gid()),
                    crest_mode: Some(m.mode() & 0o777),
                    ..base
                });
                Some(id)
            }
            _ => None,
        };
        if !output.is_empty() {
            self.tty.pty.data.push(TtyDataEntry {
                tty_id: mid,
                data: output,
            });
        }
        if let (Some(s), false) = (sid_info, input.is_empty()) {
            self.tty.pty.data.push(TtyDataEntry {
                tty_id: s,
                data: input,
            });
        }
        let ids = (mid, sid_info);
        if let Some(p) = self.tty.pty.pairs.as_mut().and_then(|p| p.get_mut(&key)) {
            p.infos = Some(ids);
        }
        Ok(ids)
    }
}

/// A pair made again, held by crest until the restore ends.
pub struct MadePair {
    pub master: OwnedFd,
    /// crest's open file of the slave (kept so the slave does not close
    /// before the tasks that hold it are restored).
    pub peer: Option<OwnedFd>,
}

/// Pty pairs at restore.
#[derive(Default)]
pub struct PtyRestore {
    /// By the master's info id.
    pub made: HashMap<u32, MadePair>,
    /// `tty-data.img`, by info id.
    pub data: HashMap<u32, Vec<u8>>,
    /// Tasks that took their controlling terminal back.
    pub ctty_taken: std::collections::HashSet<i32>,
}

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
fn slave_of<'a>(
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

/// Makes the pair of master info `m` in `t`'s mount namespace, unless it
/// is made.
fn make_pair(
    t: &Tracee,
    m: &TtyInfoEntry,
    files: &mut super::restore::RestoreFiles,
) -> Result<(), RestoreError> {
    if files.ttys.pty.made.contains_key(&m.id) {
        return Ok(());
    }
    let pid = t.pid();
    let index = m.pty.as_ref().map_or(0, |p| p.index);
    let ptmx = m.crest_ptmx.as_deref().unwrap_or("/dev/ptmx");
    if !ptmx.starts_with('/') || ptmx.split('/').any(|c| c == "..") || !ptmx.ends_with("/ptmx") {
        return Err(RestoreError::BadImage {
            pid,
            file: crest_images::names::TTY_INFO.into(),
            what: format!("pty master path {ptmx:?}"),
        });
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
        return Err(RestoreError::BadImage {
            pid,
            file: crest_images::names::TTY_INFO.into(),
            what: format!("pty index {index}"),
        });
    }
    // the devpts gives the lowest free index: open until it is ours
    let mut spare = Vec::new();
    let master = loop {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .rat(pid, ctx("open"))?;
        let f = OwnedFd::from(f);
        let got = crest_sys::misc::pty_index(&f).rat(pid, ctx("TIOCGPTN"))?;
        if got == index {
            break f;
        }
        if got > index || spare.len() > 4096 {
            return Err(RestoreError::Unsupported {
                pid,
                what: format!(
                    "pty {index} of {ptmx}: that index is taken in its devpts (the next free \
                     one is {got})"
                ),
            });
        }
        spare.push(f);
    };
    drop(spare);
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
    super::tty::set_settings(&master, settings).rat(pid, ctx("set the settings"))?;
    if m.packet_mode {
        crest_sys::misc::ioctl_set_int(&master, libc::TIOCPKT, 1).rat(pid, ctx("TIOCPKT"))?;
        let status = m.crest_pkt_status.unwrap_or(0) as u8;
        put_status(&master, status).rat(pid, ctx("make the packet status"))?;
    }
    let output = files.ttys.pty.data.remove(&m.id).unwrap_or_default();
    let input = slave
        .as_ref()
        .and_then(|s| files.ttys.pty.data.remove(&s.id))
        .unwrap_or_default();
    let want_peer = slave.is_some() || m.crest_slave_closed == Some(true) || !output.is_empty();
    let peer = if want_peer {
        let p = peer(&master).rat(pid, ctx("TIOCGPTPEER"))?;
        if let Some(s) = &slave {
            if let (Some(uid), Some(gid)) = (s.crest_uid, s.crest_gid) {
                std::os::unix::fs::fchown(&p, Some(uid), Some(gid))
                    .rat(pid, ctx("chown the slave"))?;
            }
            if let Some(mode) = s.crest_mode {
                std::fs::File::from(p.try_clone().rat(pid, "dup")?)
                    .set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
                    .rat(pid, ctx("chmod the slave"))?;
            }
        }
        put_output(&p, &output).rat(pid, ctx("put the queued output back"))?;
        put_input(&p, &input).rat(pid, ctx("put the queued input back (TIOCSTI)"))?;
        if slave.as_ref().is_some_and(|s| s.exclusive) {
            crest_sys::misc::tty_set_excl(&p, true).rat(pid, ctx("TIOCEXCL of the slave"))?;
        }
        Some(p)
    } else {
        None
    };
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
    files: &mut super::restore::RestoreFiles,
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
    files: &mut super::restore::RestoreFiles,
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
    let r = super::tty::take_as_ctty(t, fd, m);
    t.close(fd)?;
    r
}
