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
//! A packet-mode master's status not read yet is made again the way the
//! kernel sets it (`put_status`): flushes of an empty queue, a settings
//! change under `EXTPROC`, flow control switched, the output stopped or
//! started. Not carried: a flush status over a queue that holds bytes
//! again, an `EXTPROC` status set before input was queued (both dropped
//! with a warning), a slave's
//! input before the slave was ever opened (it cannot be read without
//! opening it, which the master would see). A crest without CAP_SYS_ADMIN
//! refuses a pair whose slave is open (`TIOCSTI` wants it). A crest killed
//! between reading a pair's queues and putting them back loses them: the
//! window is the few system calls in between.

mod dump;
mod restore;

pub use restore::{master_of, open, take_ctty};

use super::context::terminals::MadePair;
use super::table::FileTable;
use super::table::{PairKey, PairSeen};
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::remote::Remote;
use crest_images::pb::{FileEntry, TtyDataEntry, TtyInfoEntry};
use crest_images::pb::{TermiosEntry, TtyPtyEntry, TtyType};
use crest_inject::{nr, Tracee};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

/// The most bytes crest carries queued in one direction of one pair (the
/// line discipline holds 4 KiB, the pty's buffers 64 KiB more).
const MOST_QUEUED: usize = 128 << 10;

/// `O_LARGEFILE` as the kernel has it on x86-64.
const O_LARGEFILE: i32 = 0o100000;

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
/// In packet mode each read starts with a status byte: the statuses not
/// read yet are returned beside the bytes.
fn read_output(master: &OwnedFd, packet: bool) -> std::io::Result<(Vec<u8>, u8)> {
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
    Ok((out, status))
}

/// The packet-mode statuses (`TIOCPKT_*`).
const TIOCPKT_FLUSHREAD: u8 = 0x01;
const TIOCPKT_FLUSHWRITE: u8 = 0x02;
const TIOCPKT_STOP: u8 = 0x04;
const TIOCPKT_START: u8 = 0x08;
const TIOCPKT_NOSTOP: u8 = 0x10;
const TIOCPKT_DOSTOP: u8 = 0x20;
const TIOCPKT_IOCTL: u8 = 0x40;

/// Puts a pair's queues and packet status back, as `take_queues` read
/// them (or the images hold them): the `output` through crest's open
/// file `peer` of the slave, the `input` through `TIOCSTI` on it (with
/// packet mode off where that would give a status), then `status` made
/// again (`put_status`).
fn refill(
    master: &OwnedFd,
    peer: Option<&OwnedFd>,
    packet: bool,
    (output, input, status): (&[u8], &[u8], u8),
    index: u32,
) -> std::io::Result<()> {
    // (the settings changes that put the bytes back would give statuses
    // of their own where flow control by ^S/^Q or EXTPROC is on; only then
    // is packet mode switched off for the time: a crest killed meanwhile
    // would leave it off)
    let t = crest_sys::misc::tcgets(master)?;
    let flow =
        t.c_iflag & libc::IXON != 0 && t.c_cc[libc::VSTOP] == 0o23 && t.c_cc[libc::VSTART] == 0o21;
    let noisy = flow || t.c_lflag & libc::EXTPROC != 0;
    let quiet = packet && noisy && (!output.is_empty() || !input.is_empty());
    if quiet {
        crest_sys::misc::ioctl_set_int(master, libc::TIOCPKT, 0)?;
    }
    if let Some(p) = peer {
        if status & TIOCPKT_STOP != 0 {
            // (a stopped slave takes no output: started for the time of
            // the refill, stopped again below)
            crest_sys::misc::tty_request(p, libc::TCXONC, libc::TCOOFF)?;
            crest_sys::misc::tty_request(p, libc::TCXONC, libc::TCOON)?;
        }
        put_output(p, output)?;
        put_input(p, input)?;
    }
    if packet {
        // (switched on from off, it starts with no status)
        crest_sys::misc::ioctl_set_int(master, libc::TIOCPKT, 1)?;
        let empty = (output.is_empty(), input.is_empty());
        let lost = put_status((master, peer), (status, &t), empty)?;
        if lost != 0 {
            crate::warn!("pty {index}: a packet-mode status {lost:#x} not read yet is not carried");
        }
    }
    Ok(())
}

/// Makes a packet-mode master's pending `status` again, each the way the
/// kernel sets it: a flush of the slave's input or output (where that
/// queue is empty: `empty`), a settings change under `EXTPROC`, the flow
/// control by ^S/^Q switched the other way and back, the output stopped
/// (and started); `t` is the slave's settings. Returns the statuses it
/// could not make.
fn put_status(
    (master, peer): (&OwnedFd, Option<&OwnedFd>),
    (status, t): (u8, &libc::termios),
    (output_empty, input_empty): (bool, bool),
) -> std::io::Result<u8> {
    let mut lost = 0;
    let t = *t;
    let extproc = t.c_lflag & libc::EXTPROC != 0;
    for (bit, what, empty) in [
        (TIOCPKT_FLUSHREAD, libc::TCIFLUSH, input_empty),
        (TIOCPKT_FLUSHWRITE, libc::TCOFLUSH, output_empty),
    ] {
        match peer {
            Some(p) if status & bit != 0 && empty => {
                crest_sys::misc::tty_request(p, libc::TCFLSH, what)?
            }
            _ if status & bit != 0 => lost |= bit,
            _ => {}
        }
    }
    if status & TIOCPKT_IOCTL != 0 {
        if extproc {
            // (a change under EXTPROC, even to the same settings)
            crest_sys::misc::tcsets(master, &t)?;
        } else if input_empty {
            // (switching EXTPROC moves the line discipline's line start:
            // only with no input queued)
            let mut on = t;
            on.c_lflag |= libc::EXTPROC;
            crest_sys::misc::tcsets(master, &on)?;
            crest_sys::misc::tcsets(master, &t)?;
        } else {
            lost |= TIOCPKT_IOCTL;
        }
    }
    if status & (TIOCPKT_NOSTOP | TIOCPKT_DOSTOP) != 0 {
        let mut other = t;
        if status & TIOCPKT_DOSTOP != 0 {
            other.c_iflag &= !libc::IXON;
        } else {
            other.c_iflag |= libc::IXON;
            other.c_cc[libc::VSTOP] = 0o23;
            other.c_cc[libc::VSTART] = 0o21;
        }
        crest_sys::misc::tcsets(master, &other)?;
        crest_sys::misc::tcsets(master, &t)?;
        if extproc && status & TIOCPKT_IOCTL == 0 {
            lost |= 0x80; // (an IOCTL status came of it)
        }
    }
    if status & (TIOCPKT_STOP | TIOCPKT_START) != 0 {
        match peer {
            Some(p) => stop_start(p, &t, status)?,
            None => lost |= status & (TIOCPKT_STOP | TIOCPKT_START),
        }
    }
    Ok(lost)
}

/// Stops the slave's output (`TIOCPKT_STOP`), or stops and starts it
/// again (`TIOCPKT_START`): by its ^S/^Q characters where it takes them
/// (so a ^Q typed later starts it, as it would have), else by `tcflow`.
fn stop_start(peer: &OwnedFd, t: &libc::termios, status: u8) -> std::io::Result<()> {
    let by_chars = t.c_iflag & libc::IXON != 0
        && t.c_cc[libc::VSTOP] != 0
        && t.c_cc[libc::VSTART] != 0
        && can_push_input();
    let started = status & TIOCPKT_START != 0;
    if by_chars {
        crest_sys::misc::tty_push_input(peer, t.c_cc[libc::VSTOP])?;
        if started {
            crest_sys::misc::tty_push_input(peer, t.c_cc[libc::VSTART])?;
        }
    } else {
        crest_sys::misc::tty_request(peer, libc::TCXONC, libc::TCOOFF)?;
        if started {
            crest_sys::misc::tty_request(peer, libc::TCXONC, libc::TCOON)?;
        }
    }
    Ok(())
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
