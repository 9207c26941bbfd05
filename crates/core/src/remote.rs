//! Acting inside a task: typed injected calls that dump and restore share.
//!
//! Every room that makes a task open, close, enter or read something goes
//! through [`Remote`], so the steps and their errors read the same
//! everywhere, and an fd made in the task for a while is closed again by
//! [`Remote::with_fd`] whatever the work in between returns. Files pass
//! between crest and a task here too ([`Remote::give_fd`], [`take_fd`]).
//! This room uses only the injection layer (`crest_inject`) and
//! `crest_sys`: every other room may use it.

use crest_inject::{nr, InjectError, Tracee};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;

/// What went wrong inside a task: the task, the step and the cause.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("pid {pid}: {step}: {source}")]
    Inject {
        pid: i32,
        step: String,
        #[source]
        source: InjectError,
    },
    #[error("pid {pid}: {step}: {source}")]
    Io {
        pid: i32,
        step: String,
        #[source]
        source: io::Error,
    },
}

impl RemoteError {
    /// The same error, naming `pid` instead: for a helper task that acts
    /// for a task of the tree (a namespace reader).
    pub fn for_task(self, pid: i32) -> Self {
        match self {
            RemoteError::Inject { step, source, .. } => RemoteError::Inject { pid, step, source },
            RemoteError::Io { step, source, .. } => RemoteError::Io { pid, step, source },
        }
    }
}

pub type Result<T> = std::result::Result<T, RemoteError>;

/// Most bytes [`Remote::read_file`] reads.
const MAX_READ: usize = 16 << 20;

/// The calls crest makes a task run. Each error names the task and the
/// step.
pub trait Remote {
    /// Runs `nr` with `args`; a negative result is an error naming `step`.
    fn call(&mut self, nr: u64, args: &[u64], step: &str) -> Result<u64>;

    /// Opens `path` as the task sees it (relative paths from its cwd),
    /// close-on-exec.
    fn open(&mut self, path: &str, flags: i32) -> Result<u64>;

    /// Opens a file of crest's (under `/proc`, or an image) for the task:
    /// crest opens it with `flags` and hands it over ([`Remote::give_fd`]),
    /// so it is reached whatever mount namespace, root or credentials the
    /// task has by now. The open file is crest's (its `f_cred`).
    fn open_crest_side(&mut self, path: &str, flags: i32) -> Result<u64>;

    /// Closes the task's `fd`.
    fn close(&mut self, fd: u64) -> Result<()>;

    /// Closes the task's `fd`, for a path that is failing already.
    fn close_quietly(&mut self, fd: u64);

    /// Runs `work` with the task's `fd`, then closes it, also when `work`
    /// failed (whose error wins).
    fn with_fd<T, E: From<RemoteError>>(
        &mut self,
        fd: u64,
        work: impl FnOnce(&mut Self, u64) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E>;

    /// `fcntl(fd, cmd, arg)`, naming `what` on failure.
    fn fcntl(&mut self, fd: u64, cmd: i32, arg: u64, what: &str) -> Result<u64>;

    /// `dup3(old, new, flags)`, naming `what` on failure.
    fn dup3(&mut self, old: u64, new: u64, flags: u64, what: &str) -> Result<u64>;

    /// Moves the task into the namespace `fd` (of kind `nstype`, or 0),
    /// naming `what` on failure.
    fn setns(&mut self, fd: u64, nstype: u64, what: &str) -> Result<()>;

    /// `prctl(option, args..)` with `args` = [option, arg2, ..], naming
    /// `what` on failure.
    fn prctl(&mut self, args: &[u64], what: &str) -> Result<u64>;

    /// Puts `file` (crest's) into the task as a new fd with the same open
    /// file description: the task makes a datagram socketpair, crest sends
    /// the fd into one end (`SCM_RIGHTS`) and the task receives it from
    /// the other. Works whatever namespaces the task is in.
    fn give_fd(&mut self, file: &OwnedFd) -> Result<u64>;

    /// Reads a whole file as the task sees it (its namespaces, its root),
    /// at most 16 MiB.
    fn read_file(&mut self, path: &str) -> Result<String>;
}

/// Injected calls gathered to run in one batch ([`Tracee::batch`]), each
/// named for its error: calls that need no answer but success, of plain
/// values.
#[derive(Default)]
pub struct Calls {
    calls: Vec<(u64, [crest_inject::Arg; 6])>,
    what: Vec<String>,
    data: Vec<u8>,
}

impl Calls {
    /// Adds `bytes` to the data the calls point into; returns the
    /// argument that is their address in the task.
    pub fn data(&mut self, bytes: &[u8]) -> crest_inject::Arg {
        let at = self.data.len().div_ceil(8) * 8;
        self.data.resize(at, 0);
        self.data.extend_from_slice(bytes);
        crest_inject::Arg::Data(at)
    }

    /// Adds call `nr` with `args`, values or data ([`Calls::data`]).
    pub fn push_args(&mut self, nr: u64, args: [crest_inject::Arg; 6], what: String) {
        self.calls.push((nr, args));
        self.what.push(what);
    }

    /// Adds call `nr` with `args` (at most 6), named `what`.
    pub fn push(&mut self, nr: u64, args: &[u64], what: String) {
        let a = |i: usize| crest_inject::Arg::Val(args.get(i).copied().unwrap_or(0));
        self.calls.push((nr, [a(0), a(1), a(2), a(3), a(4), a(5)]));
        self.what.push(what);
    }

    /// Runs the calls gathered ([`Tracee::batch`]) and forgets them; the
    /// first that fails is the error.
    pub fn run(&mut self, t: &mut Tracee) -> Result<()> {
        let pid = t.pid();
        let calls = std::mem::take(&mut self.calls);
        let what = std::mem::take(&mut self.what);
        let data = std::mem::take(&mut self.data);
        let Some(first) = what.first() else {
            return Ok(());
        };
        let done = t
            .batch(&data, &calls)
            .map_err(inject_err(pid, first.clone()))?;
        match done.last() {
            Some(&r) if (-4095..0).contains(&r) => Err(RemoteError::Io {
                pid,
                step: what[done.len() - 1].clone(),
                source: io::Error::from_raw_os_error(-r as i32),
            }),
            _ => Ok(()),
        }
    }
}

fn inject_err(pid: i32, step: impl Into<String>) -> impl FnOnce(InjectError) -> RemoteError {
    let step = step.into();
    move |source| RemoteError::Inject { pid, step, source }
}

impl Remote for Tracee {
    fn call(&mut self, nr: u64, args: &[u64], step: &str) -> Result<u64> {
        let pid = self.pid();
        self.syscall(nr, args).map_err(inject_err(pid, step))
    }

    fn open(&mut self, path: &str, flags: i32) -> Result<u64> {
        let pid = self.pid();
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        let addr = self
            .put(&p)
            .map_err(inject_err(pid, format!("write path {path}")))?;
        self.call(
            nr::OPENAT,
            &[
                libc::AT_FDCWD as u64,
                addr,
                (flags | libc::O_CLOEXEC) as u64,
                0,
            ],
            &format!("open {path}"),
        )
    }

    fn open_crest_side(&mut self, path: &str, flags: i32) -> Result<u64> {
        let f = std::fs::OpenOptions::new()
            .read(flags & libc::O_ACCMODE != libc::O_WRONLY)
            .write(flags & libc::O_ACCMODE != libc::O_RDONLY)
            .custom_flags((flags & !libc::O_ACCMODE) | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| RemoteError::Io {
                pid: self.pid(),
                step: format!("open {path} for the task"),
                source,
            })?;
        self.give_fd(&OwnedFd::from(f))
    }

    fn close(&mut self, fd: u64) -> Result<()> {
        self.call(nr::CLOSE, &[fd], &format!("close fd {fd}"))
            .map(|_| ())
    }

    fn close_quietly(&mut self, fd: u64) {
        let _ = self.syscall(nr::CLOSE, &[fd]);
    }

    fn with_fd<T, E: From<RemoteError>>(
        &mut self,
        fd: u64,
        work: impl FnOnce(&mut Self, u64) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        match work(self, fd) {
            Ok(v) => {
                self.close(fd)?;
                Ok(v)
            }
            Err(e) => {
                self.close_quietly(fd);
                Err(e)
            }
        }
    }

    fn fcntl(&mut self, fd: u64, cmd: i32, arg: u64, what: &str) -> Result<u64> {
        self.call(nr::FCNTL, &[fd, cmd as u64, arg], what)
    }

    fn dup3(&mut self, old: u64, new: u64, flags: u64, what: &str) -> Result<u64> {
        self.call(nr::DUP3, &[old, new, flags], what)
    }

    fn setns(&mut self, fd: u64, nstype: u64, what: &str) -> Result<()> {
        self.call(nr::SETNS, &[fd, nstype], what).map(|_| ())
    }

    fn prctl(&mut self, args: &[u64], what: &str) -> Result<u64> {
        self.call(nr::PRCTL, args, what)
    }

    fn give_fd(&mut self, file: &OwnedFd) -> Result<u64> {
        let pid = self.pid();
        let buf = self
            .scratch((CONTROL + CONTROL_LEN) as usize)
            .map_err(inject_err(pid, "scratch"))?;
        let kind = (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64;
        self.call(
            nr::SOCKETPAIR,
            &[libc::AF_UNIX as u64, kind, 0, buf],
            "socketpair to pass an fd",
        )?;
        let mut raw = [0u8; 8];
        self.read_mem(buf, &mut raw)
            .map_err(inject_err(pid, "read socketpair fds"))?;
        let a = u64::from(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]));
        let b = u64::from(u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]));
        self.with_fd(a, |t, a| t.with_fd(b, |t, b| pass(t, file, buf, a, b)))
    }

    fn read_file(&mut self, path: &str) -> Result<String> {
        let pid = self.pid();
        let fd = self.open(path, libc::O_RDONLY)?;
        self.with_fd(fd, |t, fd| {
            const CHUNK: usize = 1 << 16;
            let step = format!("read {path}");
            let buf = t.scratch(CHUNK).map_err(inject_err(pid, &step))?;
            let mut out = Vec::new();
            loop {
                let n = t.call(nr::READ, &[fd, buf, CHUNK as u64], &step)? as usize;
                if n == 0 || out.len() + n > MAX_READ {
                    break;
                }
                let mut raw = vec![0u8; n];
                t.read_mem(buf, &mut raw).map_err(inject_err(pid, &step))?;
                out.extend_from_slice(&raw);
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        })
    }
}

/// A copy of fd `fd` of the (stopped) task `pid`, in crest.
pub fn take_fd(pid: i32, fd: u32) -> Result<OwnedFd> {
    let io = |step: String| move |source| RemoteError::Io { pid, step, source };
    let pidfd = crest_sys::misc::pidfd_open(pid).map_err(io("pidfd_open".into()))?;
    rustix::process::pidfd_getfd(&pidfd, fd as i32, rustix::process::PidfdGetfdFlags::empty())
        .map_err(std::io::Error::from)
        .map_err(io(format!("pidfd_getfd of fd {fd}")))
}

/// Layout of the `recvmsg` arguments in the task's scratch memory.
const MSGHDR: u64 = 0;
const IOV: u64 = 56;
const BYTE: u64 = 72;
const CONTROL: u64 = 80;
const CONTROL_LEN: u64 = 24;

/// Sends `file` into the task's socket `a` and has the task receive it
/// from `b`.
fn pass(t: &mut Tracee, file: &OwnedFd, buf: u64, a: u64, b: u64) -> Result<u64> {
    let pid = t.pid();
    let end = take_fd(pid, a as u32)?;
    crest_sys::misc::send_fd(&end, file).map_err(|source| RemoteError::Io {
        pid,
        step: "send an fd to the task".into(),
        source,
    })?;
    drop(end);
    let mut msg = vec![0u8; (CONTROL + CONTROL_LEN) as usize];
    let mut put = |off: u64, v: u64| {
        msg[off as usize..off as usize + 8].copy_from_slice(&v.to_le_bytes());
    };
    put(MSGHDR + 16, buf + IOV); // msg_iov
    put(MSGHDR + 24, 1); // msg_iovlen
    put(MSGHDR + 32, buf + CONTROL); // msg_control
    put(MSGHDR + 40, CONTROL_LEN); // msg_controllen
    put(IOV, buf + BYTE);
    put(IOV + 8, 1);
    t.write_mem(buf, &msg)
        .map_err(inject_err(pid, "write msghdr"))?;
    let flags = (libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) as u64;
    t.call(nr::RECVMSG, &[b, buf, flags], "recvmsg of a passed fd")?;
    let mut ctl = [0u8; CONTROL_LEN as usize];
    t.read_mem(buf + CONTROL, &mut ctl)
        .map_err(inject_err(pid, "read the passed fd"))?;
    let level = i32::from_le_bytes([ctl[8], ctl[9], ctl[10], ctl[11]]);
    let kind = i32::from_le_bytes([ctl[12], ctl[13], ctl[14], ctl[15]]);
    if level != libc::SOL_SOCKET || kind != libc::SCM_RIGHTS {
        return Err(RemoteError::Io {
            pid,
            step: "receive a passed fd".into(),
            source: io::Error::other("the fd passed over the socket did not arrive"),
        });
    }
    Ok(u64::from(u32::from_le_bytes([
        ctl[16], ctl[17], ctl[18], ctl[19],
    ])))
}
