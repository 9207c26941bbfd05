//! `crest lazy-pages`: the daemon that fills a lazily restored tree.
//!
//! One thread does everything, in a loop: it waits on the restore's
//! connection, every userfaultfd and a signalfd of SIGCHLD; serves the
//! faults first (the page and what follows it in its run, up to 64 KiB,
//! or a zero page where the images had none); follows the events (a
//! fork's child gets a copy of what is still to come, a move carries it,
//! dropped or unmapped pages are forgotten); passes on the signals and
//! stops of the seized tasks; and between these pushes the rest, 1 MiB at
//! a time. When nothing is left it closes the userfaultfds (the kernel
//! unregisters the mappings), lets the tasks go and exits.
//!
//! A copy the kernel answers with EAGAIN (the address space is changing:
//! an event is on its way) is put back and done after the event.

use super::*;
use crate::error::RestoreError;
use crate::error::RoomError;
use crate::mm::error::MmError;
use crest_images::manifest::Deferred;
use crest_sys::{ptrace, uffd};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

/// What a fault brings in at most: the page and those after it.
const CLUSTER: u64 = 64 << 10;
/// What one background push brings in.
const PUSH: u64 = 1 << 20;
/// Signals that stop a task (a group stop is kept with `PTRACE_LISTEN`).
const STOPS: [i32; 4] = [libc::SIGSTOP, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU];

/// What a daemon did.
#[derive(Debug, Default)]
pub struct Served {
    pub faults: u64,
    pub zero_pages: u64,
    pub bytes_on_fault: u64,
    pub bytes_pushed: u64,
    /// From the tree's resume to the last page in.
    pub lazy_secs: f64,
}

/// One address space being filled.
struct Space {
    uffd: OwnedFd,
    pending: Pending,
    files: Rc<Vec<File>>,
    paths: Rc<Vec<String>>,
    /// Gone (exited, or exec'd into another address space).
    gone: bool,
}

/// The daemon's state.
struct Daemon {
    dir: PathBuf,
    spaces: Vec<Space>,
    traced: HashSet<i32>,
    buf: Vec<u8>,
    served: Served,
    /// Faults that met a changing address space, served after its event.
    retry: Vec<(usize, u64)>,
    /// A pages file that failed: the daemon stops.
    broken: Option<String>,
    /// The pages files whose chunks are checked here as they are first
    /// read (the restore deferred them: their manifest lists the chunks'
    /// sums), by path.
    checks: HashMap<String, Deferred>,
    /// The chunk read and checked last: its file, index and bytes.
    cache: Option<(String, usize, Vec<u8>)>,
    /// The chunk lists of each images directory seen.
    manifests: HashMap<PathBuf, std::collections::BTreeMap<String, Deferred>>,
    /// The holder of second copies of the userfaultfds.
    holder: Option<super::holder::Holder>,
}

/// Serves one lazy restore on `listener` (bound to the work directory's
/// socket) from the images in `dir`; returns once every page is in and
/// the tasks are let go, or fails when the restore fails.
pub fn serve(listener: &OwnedFd, dir: &Path) -> Result<Served, RestoreError> {
    let io = |step: &str| {
        let step = step.to_string();
        move |e: std::io::Error| RestoreError::Io {
            pid: 0,
            step,
            source: e,
        }
    };
    let sigchld = uffd::sigchld_fd().map_err(io("signalfd for SIGCHLD"))?;
    let conn = rustix::net::accept_with(listener, rustix::net::SocketFlags::CLOEXEC)
        .map_err(std::io::Error::from)
        .map_err(io("accept the restore"))?;
    // (a restore of the same user, or root's)
    let me = rustix::process::getuid().as_raw();
    match crest_sys::misc::peer_cred(&conn) {
        Ok((_, uid, _)) if uid == me || uid == 0 => {}
        Ok((pid, uid, _)) => {
            return Err(fail(format!(
                "pid {pid} of uid {uid} connected: only uid {me} or root may restore through \
                 this daemon"
            )))
        }
        Err(e) => return Err(fail(format!("the restore's credentials: {e}"))),
    }
    // (a second copy of every userfaultfd, held until the tree is killed
    // should the daemon die)
    let holder = super::holder::Holder::start()
        .inspect_err(|e| crate::warn!("no holder for the userfaultfds: {e}"))
        .ok();
    let mut d = Daemon {
        dir: dir.to_path_buf(),
        spaces: Vec::new(),
        traced: HashSet::new(),
        buf: vec![0u8; PUSH as usize],
        served: Served::default(),
        retry: Vec::new(),
        broken: None,
        checks: HashMap::new(),
        cache: None,
        manifests: HashMap::new(),
        holder,
    };
    let res = d.run(&conn, &sigchld);
    if res.is_err() {
        // (a tree that runs is killed rather than left to read zeros
        // where its pages were; those seized but not seen yet die with
        // the daemon)
        for &tid in &d.traced {
            let _ = crest_sys::misc::kill(tid, libc::SIGKILL);
        }
        return res.map(|()| Served::default());
    }
    // (closing the userfaultfds first, the holder's then the daemon's: no
    // thread waits on a fault while the tasks are let go)
    if let Some(h) = d.holder.take() {
        h.release();
    }
    d.spaces.clear();
    d.release();
    Ok(d.served)
}

impl Daemon {
    /// Long because it is the loop itself: poll, then the restore's
    /// messages, the faults and events, the tasks' stops, one push.
    fn run(&mut self, conn: &OwnedFd, sigchld: &OwnedFd) -> Result<(), RestoreError> {
        let mut going: Option<Instant> = None;
        loop {
            let pushing = self.spaces.iter().any(|s| !s.gone && !s.pending.is_empty());
            if going.is_some() && !pushing && self.retry.is_empty() {
                self.served.lazy_secs = going.map_or(0.0, |g| g.elapsed().as_secs_f64());
                return Ok(());
            }
            let mut fds: Vec<(i32, i16)> = vec![(sigchld.as_raw_fd(), libc::POLLIN)];
            if going.is_none() {
                fds.push((conn.as_raw_fd(), libc::POLLIN));
            }
            fds.extend(
                self.spaces
                    .iter()
                    .map(|s| (s.uffd.as_raw_fd(), libc::POLLIN)),
            );
            let wait = if pushing || !self.retry.is_empty() {
                0
            } else {
                -1
            };
            let rev = uffd::poll(&fds, wait).map_err(|e| fail(format!("poll: {e}")))?;
            if rev[0] != 0 {
                self.on_sigchld(sigchld);
            }
            let first_space = if going.is_none() {
                if rev[1] != 0 && self.on_restore(conn)? {
                    going = Some(Instant::now());
                }
                2
            } else {
                1
            };
            for i in 0..self.spaces.len() {
                if rev.get(first_space + i).is_some_and(|r| *r != 0) {
                    self.on_uffd(i);
                }
            }
            for (i, addr) in std::mem::take(&mut self.retry) {
                self.fault(i, addr);
            }
            // (a push each round, faults served first: a fault waits at
            // most for one push)
            if pushing {
                self.push();
                if going.is_some() {
                    crest_sys::fault::point("lazy-pages: a stretch pushed to the running tree")?;
                }
            }
            if let Some(why) = self.broken.take() {
                return Err(fail(why));
            }
        }
    }

    /// A message of the restore; true once the tree runs.
    fn on_restore(&mut self, conn: &OwnedFd) -> Result<bool, RestoreError> {
        let mut buf = vec![0u8; MAX_MSG];
        let (n, fd) = crest_sys::misc::recv_with_fd(conn, &mut buf)
            .map_err(|e| fail(format!("read the restore's message: {e}")))?;
        let m = &buf[..n];
        let reply = |ok: Result<(), String>| {
            let mut a = Vec::new();
            match &ok {
                Ok(()) => a.push(OK),
                Err(why) => {
                    a.push(FAILED);
                    a.extend_from_slice(why.as_bytes());
                }
            }
            let _ = rustix::net::send(conn, &a, rustix::net::SendFlags::NOSIGNAL);
            ok.map_err(fail)
        };
        match (m.first(), fd) {
            (None, _) => Err(fail(
                "the restore ended before the tree ran: it failed".into(),
            )),
            (Some(&TASK), Some(fd)) if n >= 9 && (n - 9) % 16 == 0 => {
                let img_pid = u32::from_le_bytes([m[1], m[2], m[3], m[4]]);
                let ranges: Vec<(u64, u64)> = m[9..]
                    .chunks_exact(16)
                    .map(|c| (le64(&c[..8]), le64(&c[8..])))
                    .collect();
                reply(self.add(img_pid, fd, &ranges))?;
                Ok(false)
            }
            (Some(&GO), None) if (n - 1) % 4 == 0 => {
                let pids: Vec<i32> = m[1..]
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                reply(self.seize(&pids))?;
                Ok(true)
            }
            _ => reply(Err(format!("a message crest does not know ({n} bytes)"))).map(|()| false),
        }
    }

    /// A task's userfaultfd: its pages in the images that fall in the
    /// registered `ranges` are to come.
    fn add(&mut self, img_pid: u32, uffd: OwnedFd, ranges: &[(u64, u64)]) -> Result<(), String> {
        let (pages_id, pagemap) =
            crate::mm::image::read_pagemap(&self.dir, img_pid).map_err(|e| e.to_string())?;
        let pages = crate::mm::restore::Pages::load(&self.dir, img_pid, pages_id, &pagemap)
            .map_err(|e| e.to_string())?;
        let files = pages.open(img_pid as i32).map_err(|e| e.to_string())?;
        // (a pages file whose chunks' sums are listed: the restore left
        // its content to be checked here, a chunk as it is first read)
        for path in &pages.paths {
            let p = Path::new(path);
            let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
                continue;
            };
            if !self.manifests.contains_key(dir) {
                let listed = crest_images::manifest::deferred(dir).map_err(|e| e.to_string())?;
                self.manifests.insert(dir.to_path_buf(), listed);
            }
            if let Some(d) = self.manifests[dir].get(name.to_string_lossy().as_ref()) {
                self.checks.insert(path.clone(), d.clone());
            }
        }
        let (lazy, _) = split_by(&pages.runs, ranges);
        self.hold(&uffd);
        self.spaces.push(Space {
            uffd,
            pending: Pending::new(lazy),
            files: Rc::new(files),
            paths: Rc::new(pages.paths),
            gone: false,
        });
        Ok(())
    }

    /// Gives the holder a copy of `uffd`.
    fn hold(&self, uffd: &OwnedFd) {
        if let Some(Err(e)) = self.holder.as_ref().map(|h| h.hold(uffd)) {
            crate::warn!("the holder did not take a userfaultfd: {e}");
        }
    }

    /// Every message waiting on space `i`'s userfaultfd.
    fn on_uffd(&mut self, i: usize) {
        let mut m = [0u8; uffd::MSG_SIZE];
        loop {
            let got = rustix::io::read(&self.spaces[i].uffd, &mut m);
            match got {
                Ok(n) if n == uffd::MSG_SIZE => {}
                _ => return,
            }
            match uffd::parse(&m) {
                uffd::Msg::Fault { addr } => self.fault(i, addr),
                uffd::Msg::Fork { ufd } => match crest_sys::misc::own_fd(ufd) {
                    Ok(fd) => {
                        self.hold(&fd);
                        let s = &self.spaces[i];
                        let child = Space {
                            uffd: fd,
                            pending: s.pending.clone(),
                            files: s.files.clone(),
                            paths: s.paths.clone(),
                            gone: false,
                        };
                        self.spaces.push(child);
                    }
                    Err(e) => crate::warn!("a fork's userfaultfd {ufd}: {e}"),
                },
                uffd::Msg::Remap { from, to, len } => self.spaces[i].pending.moved(from, to, len),
                uffd::Msg::Remove { start, end } | uffd::Msg::Unmap { start, end } => {
                    self.spaces[i].pending.remove(start, end)
                }
                uffd::Msg::Other(e) => crate::warn!("userfaultfd event {e:#x} not known"),
            }
        }
    }

    /// Serves the fault at `addr` in space `i`.
    fn fault(&mut self, i: usize, addr: u64) {
        self.served.faults += 1;
        let page = addr & !(PAGE - 1);
        match self.spaces[i].pending.take_at(page, CLUSTER) {
            Some(r) => match self.fill(i, r) {
                Some(n) => self.served.bytes_on_fault += n,
                None => self.retry.push((i, addr)),
            },
            None => {
                // (never saved, or dropped since: zeros)
                let s = &self.spaces[i];
                match uffd::zeropage(&s.uffd, page, PAGE) {
                    Ok(()) => self.served.zero_pages += 1,
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                        self.retry.push((i, addr));
                    }
                    Err(_) => {
                        let _ = uffd::wake(&s.uffd, page, PAGE);
                    }
                }
            }
        }
    }

    /// Copies run `r` into space `i` (the part of it in one chunk of its
    /// pages file, when that file's chunks are checked here; the rest is
    /// put back): the bytes done, or None when the address space is
    /// changing (the run is put back to be copied after the event).
    fn fill(&mut self, i: usize, mut r: Run) -> Option<u64> {
        let Daemon {
            spaces,
            buf,
            checks,
            cache,
            broken,
            ..
        } = self;
        let s = &mut spaces[i];
        let path = &s.paths[r.src];
        let data: &[u8] = match checks.get_mut(path.as_str()) {
            Some(c) => {
                let k = r.off / c.chunk;
                let end = (k + 1) * c.chunk;
                if r.off + r.len > end {
                    s.pending.put_back(Run {
                        addr: r.addr + (end - r.off),
                        len: r.off + r.len - end,
                        off: end,
                        src: r.src,
                    });
                    r.len = end - r.off;
                }
                let k = k as usize;
                let hit = matches!(cache, Some((p, n, _)) if p == path && *n == k);
                if !hit {
                    let mut b = cache.take().map(|c| c.2).unwrap_or_default();
                    if let Err(e) =
                        crest_images::manifest::check_chunk(Path::new(path), c, k, &mut b)
                    {
                        *broken = Some(e.to_string());
                        return Some(r.len);
                    }
                    *cache = Some((path.clone(), k, b));
                }
                let b = &cache.as_ref().map_or(&[][..], |c| &c.2[..]);
                let from = (r.off - k as u64 * c.chunk) as usize;
                match b.get(from..from + r.len as usize) {
                    Some(d) => d,
                    None => {
                        *broken = Some(format!("{path}: a run past the end of its chunk {k}"));
                        return Some(r.len);
                    }
                }
            }
            None => {
                let b = &mut buf[..r.len as usize];
                if let Err(e) = s.files[r.src].read_exact_at(b, r.off) {
                    // (the restore checked the file; one that fails since
                    // ends the daemon, and the tree with it, rather than
                    // feed zeros)
                    *broken = Some(format!("read {} bytes at {} of {path}: {e}", r.len, r.off));
                    return Some(r.len);
                }
                b
            }
        };
        copy_in(s, r, data)
    }

    /// Pushes the next stretch still to come, of the spaces in turn.
    fn push(&mut self) {
        let Some(i) = self
            .spaces
            .iter()
            .position(|s| !s.gone && !s.pending.is_empty())
        else {
            return;
        };
        if let Some(r) = self.spaces[i].pending.take_first(PUSH) {
            if let Some(n) = self.fill(i, r) {
                self.served.bytes_pushed += n;
            }
        }
    }

    /// Seizes every task of the tree: killed if the daemon dies, its forks
    /// followed.
    fn seize(&mut self, pids: &[i32]) -> Result<(), String> {
        let opts = libc::PTRACE_O_EXITKILL
            | libc::PTRACE_O_TRACEFORK
            | libc::PTRACE_O_TRACEVFORK
            | libc::PTRACE_O_TRACECLONE;
        for &p in pids {
            match ptrace::seize(p, opts as u32) {
                Ok(()) => {
                    self.traced.insert(p);
                }
                // (exited already)
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(format!("seize pid {p}: {e}")),
            }
        }
        Ok(())
    }

    /// The stops of the seized tasks: each goes on, with its signal.
    fn on_sigchld(&mut self, sigchld: &OwnedFd) {
        let mut b = [0u8; 128];
        while rustix::io::read(sigchld, &mut b).is_ok_and(|n| n > 0) {}
        while let Ok(Some((tid, st))) = ptrace::wait_any(true) {
            match st {
                ptrace::WaitStatus::Stopped { sig, event } => {
                    self.traced.insert(tid);
                    let _ = if event == libc::PTRACE_EVENT_STOP && STOPS.contains(&sig) {
                        ptrace::listen(tid)
                    } else if event == 0 {
                        ptrace::cont(tid, sig)
                    } else {
                        ptrace::cont(tid, 0)
                    };
                }
                _ => {
                    self.traced.remove(&tid);
                }
            }
        }
    }

    /// Lets every seized task go (a signal it was stopped for delivered),
    /// new ones seized by a fork meanwhile too.
    fn release(&mut self) {
        for &tid in &self.traced {
            let _ = ptrace::interrupt(tid);
        }
        while let Ok(Some((tid, st))) = ptrace::wait_any(false) {
            if let ptrace::WaitStatus::Stopped { sig, event } = st {
                let give = if event == 0 { sig } else { 0 };
                let _ = ptrace::detach(tid, give);
            }
            self.traced.remove(&tid);
        }
    }
}

/// Copies `data` to run `r` of space `s` (see [`Daemon::fill`]).
fn copy_in(s: &mut Space, r: Run, data: &[u8]) -> Option<u64> {
    let mut at = 0u64;
    while at < r.len {
        match uffd::copy(&s.uffd, r.addr + at, &data[at as usize..]) {
            Ok(n) => at += n.max(PAGE),
            Err((e, n)) => {
                at += n;
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => {
                        s.pending.put_back(Run {
                            addr: r.addr + at,
                            len: r.len - at,
                            off: r.off + at,
                            src: r.src,
                        });
                        return None;
                    }
                    // (a page there already: the next one)
                    Some(libc::EEXIST) => {
                        let _ = uffd::wake(&s.uffd, r.addr + at, PAGE);
                        at += PAGE;
                    }
                    // (the address space is gone)
                    Some(libc::ESRCH) => {
                        s.gone = true;
                        s.pending = Pending::default();
                        return Some(r.len);
                    }
                    // (unmapped meanwhile: the event drops the rest)
                    _ => return Some(r.len),
                }
            }
        }
    }
    Some(r.len)
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

fn fail(what: String) -> RestoreError {
    MmError::Failed { what }.in_restore(0)
}
