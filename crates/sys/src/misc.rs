//! Small calls on another process: rlimits, robust list, pidfds.

use crate::cvt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `prlimit64(pid, resource, new, old)` — reads a resource limit of
/// another process and optionally sets it. Returns the old (cur, max).
pub fn prlimit(pid: i32, resource: u32, new: Option<(u64, u64)>) -> io::Result<(u64, u64)> {
    let newlim = new.map(|(cur, max)| libc::rlimit64 {
        rlim_cur: cur,
        rlim_max: max,
    });
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let newp = newlim
        .as_ref()
        .map_or(std::ptr::null(), |l| l as *const libc::rlimit64);
    // SAFETY: `newp` is null or points at a live rlimit64; `old` is a valid
    // out-pointer.
    let ret = unsafe { libc::prlimit64(pid, resource as _, newp, &mut old) };
    cvt(ret as libc::c_long)?;
    Ok((old.rlim_cur, old.rlim_max))
}

/// `get_robust_list(tid)` — the robust futex list head and its length.
pub fn get_robust_list(tid: i32) -> io::Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: both out-pointers are valid for the kernel to write one word.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    };
    cvt(ret)?;
    Ok((head, len as u64))
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = cvt(ret)?;
    // SAFETY: on success the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the process a pidfd refers to has exited (`poll` says the
/// pidfd is readable then); it cannot have been replaced by another while
/// it has not.
pub fn pidfd_exited(pidfd: &impl AsRawFd) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a zero timeout never blocks.
    let ret = unsafe { libc::poll(&mut p, 1, 0) };
    ret != 0
}

/// A close-on-exec copy of crest's own fd `fd` (one its caller handed
/// it, e.g. for `--inherit-fd`).
pub fn dup_own(fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; fcntl checks that `fd` is open.
    let ret = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    let new = cvt(ret as libc::c_long)?;
    // SAFETY: on success the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(new as i32) })
}

/// `fcntl(fd, F_DUPFD_CLOEXEC, min)` — a close-on-exec copy of `fd` at
/// `min` or above, out of the way of the low numbers a caller names.
pub fn dup_above(fd: &impl AsRawFd, min: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; fcntl checks that `fd` is open.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    let new = cvt(ret as libc::c_long)?;
    // SAFETY: on success the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(new as i32) })
}

/// `fcntl(fd, F_DUPFD, 3)` — a copy of `fd` that a spawned program
/// inherits (no close-on-exec).
pub fn dup_inheritable(fd: &impl AsRawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; fcntl checks that `fd` is open.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, 3) };
    let new = cvt(ret as libc::c_long)?;
    // SAFETY: on success the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(new as i32) })
}

/// `recvmsg(sock, buf)` — one message and the fd passed beside it with
/// `SCM_RIGHTS`, if any (close-on-exec); extra fds are closed.
pub fn recv_with_fd(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: every pointer in `msg` points to a live buffer of its length.
    let r = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    let len = cvt(r as libc::c_long)? as usize;
    let mut got = None;
    // SAFETY: the kernel filled `msg`; CMSG_FIRSTHDR/NXTHDR stay within
    // msg_controllen.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: `c` points to a complete cmsghdr inside `control`.
        let h = unsafe { &*c };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is the header length.
            let hdr = unsafe { libc::CMSG_LEN(0) } as usize;
            let n = (h.cmsg_len as usize).saturating_sub(hdr) / 4;
            for i in 0..n {
                // SAFETY: CMSG_DATA points to `n` ints inside `control`.
                let fd = unsafe { (libc::CMSG_DATA(c) as *const i32).add(i).read_unaligned() };
                // SAFETY: the kernel just installed this fd for us.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if got.is_none() {
                    got = Some(owned);
                }
            }
        }
        // SAFETY: as above.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    Ok((len, got))
}

/// `kill(pid, sig)`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    let ret = unsafe { libc::kill(pid, sig) };
    cvt(ret as libc::c_long).map(drop)
}

/// `tgkill(tgid, tid, sig)`.
pub fn tgkill(tgid: i32, tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) };
    cvt(ret).map(drop)
}

/// `struct pm_scan_arg` of `PAGEMAP_SCAN`.
#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`
const PAGEMAP_SCAN: libc::c_ulong = 0xc060_6610;

/// `PAGEMAP_SCAN` page categories.
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
/// `PAGEMAP_SCAN` flags: write-protect the pages that match (the
/// userfaultfd's asynchronous write-protection armed again), and fail
/// with `EPERM` on a range not registered for it.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// What a `PAGEMAP_SCAN` asks: pages whose categories hold all of `all`
/// and (when nonzero) one of `any`, reported by the categories of
/// `report`; `flags` as [`PM_SCAN_WP_MATCHING`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanQuery {
    pub flags: u64,
    pub all: u64,
    pub any: u64,
    pub report: u64,
}

/// `ioctl(PAGEMAP_SCAN)` over `[start, end)` of an open
/// `/proc/PID/pagemap`: the matching ranges as (start, end, categories),
/// in address order, the whole range walked (the ioctl is repeated from
/// where a full result vector stopped it).
pub fn pagemap_scan(
    pagemap: &impl AsRawFd,
    start: u64,
    end: u64,
    q: ScanQuery,
) -> io::Result<Vec<(u64, u64, u64)>> {
    const VEC: usize = 512;
    let mut out = Vec::new();
    let mut regions = vec![[0u64; 3]; VEC];
    let mut at = start;
    while at < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: q.flags,
            start: at,
            end,
            walk_end: 0,
            vec: regions.as_mut_ptr() as u64,
            vec_len: VEC as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: q.all,
            category_anyof_mask: q.any,
            return_mask: q.report,
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose vector points to
        // `VEC` writable `struct page_region`s (three u64 each) that
        // outlive the call.
        let ret = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
        let n = cvt(ret as i64)? as usize;
        for r in &regions[..n.min(VEC)] {
            // adjacent regions of the same categories are one
            match out.last_mut() {
                Some((_, e, c)) if *e == r[0] && *c == r[2] => *e = r[1],
                _ => out.push((r[0], r[1], r[2])),
            }
        }
        if arg.walk_end <= at {
            break;
        }
        at = arg.walk_end;
    }
    Ok(out)
}

/// Whether the kernel gives a userfaultfd asynchronous write protection
/// (`UFFD_FEATURE_WP_ASYNC`): one is made here, its API agreed, closed.
pub fn uffd_wp_async_supported() -> bool {
    const UFFD_USER_MODE_ONLY: libc::c_long = 1;
    const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
    const WP_ASYNC: u64 = 1 << 15;
    // SAFETY: plain integer flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC as libc::c_long | UFFD_USER_MODE_ONLY,
        )
    };
    let Ok(fd) = cvt(ret) else {
        return false;
    };
    // SAFETY: the kernel returned a new fd that we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut api: [u64; 3] = [0xaa, WP_ASYNC, 0];
    // SAFETY: UFFDIO_API reads and writes one struct uffdio_api (three
    // u64) at the pointer.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, api.as_mut_ptr()) };
    ret == 0 && api[1] & WP_ASYNC != 0
}

/// `ioctl(PAGEMAP_SCAN)` probe: does the kernel know the request? Runs it
/// over an empty range of the caller's own pagemap.
pub fn pagemap_scan_supported() -> bool {
    let Ok(file) = std::fs::File::open("/proc/self/pagemap") else {
        return false;
    };
    let page = 0x1000_0000u64;
    let q = ScanQuery {
        any: PAGE_IS_WPALLOWED,
        report: PAGE_IS_WPALLOWED,
        ..ScanQuery::default()
    };
    // an empty range: the ioctl runs once and walks nothing
    let arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        flags: 0,
        start: page,
        end: page,
        walk_end: 0,
        vec: 0,
        vec_len: 0,
        max_pages: 0,
        category_inverted: 0,
        category_mask: q.all,
        category_anyof_mask: q.any,
        return_mask: q.report,
    };
    // SAFETY: `arg` is a valid pm_scan_arg with no output vector.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), PAGEMAP_SCAN as _, &arg) };
    ret >= 0
}

/// `kcmp(pid1, pid2, type, 0, 0)` — 0 when the two tasks share the kernel
/// object of `kind` (`KCMP_FILES` = 2, `KCMP_FS` = 3, `KCMP_VM` = 1,
/// `KCMP_SIGHAND` = 4).
pub fn kcmp(pid1: i32, pid2: i32, kind: i32) -> io::Result<i32> {
    // SAFETY: plain integer arguments; no pointers for these kinds.
    let ret = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, kind, 0, 0) };
    cvt(ret).map(|v| v as i32)
}

pub const KCMP_VM: i32 = 1;
pub const KCMP_FILES: i32 = 2;
pub const KCMP_FS: i32 = 3;

/// `KCMP_FILE`: the two fds are the same open file description.
pub const KCMP_FILE: i32 = 0;
/// `KCMP_EPOLL_TFD`: a file is the target an epoll instance watches.
pub const KCMP_EPOLL_TFD: i32 = 7;

/// `kcmp(pid1, pid2, KCMP_FILE, fd1, fd2)` — 0 when fd `fd1` of `pid1` and
/// fd `fd2` of `pid2` are one open file description.
pub fn kcmp_file(pid1: i32, pid2: i32, fd1: i32, fd2: i32) -> io::Result<i32> {
    // SAFETY: plain integer arguments; KCMP_FILE takes no pointers.
    let ret = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) };
    cvt(ret).map(|v| v as i32)
}

/// `kcmp(pid, pid, KCMP_EPOLL_TFD, fd, &slot)` — 0 when fd `fd` of `pid`
/// is the file the epoll instance at `efd` watches as target fd `tfd`.
pub fn kcmp_epoll_tfd(pid: i32, fd: i32, efd: i32, tfd: i32) -> io::Result<i32> {
    kcmp_epoll_tfd_of(pid, fd, pid, (efd, tfd))
}

/// `kcmp(holder, owner, KCMP_EPOLL_TFD, fd, {efd, tfd, 0})`: 0 when fd `fd`
/// of `holder` is the file the epoll instance at `efd` of `owner` watches
/// as fd `tfd`.
pub fn kcmp_epoll_tfd_of(
    holder: i32,
    fd: i32,
    owner: i32,
    (efd, tfd): (i32, i32),
) -> io::Result<i32> {
    #[repr(C)]
    struct Slot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    let slot = Slot {
        efd: efd as u32,
        tfd: tfd as u32,
        toff: 0,
    };
    // SAFETY: `slot` is a live kcmp_epoll_slot the kernel only reads.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            holder,
            owner,
            KCMP_EPOLL_TFD,
            fd,
            &slot as *const Slot,
        )
    };
    cvt(ret).map(|v| v as i32)
}

/// `sendmsg(sock, SCM_RIGHTS [fd])` — passes one fd over a unix socket,
/// with a single byte of data.
pub fn send_fd(sock: &impl AsRawFd, fd: &impl AsRawFd) -> io::Result<()> {
    send_with_fd(sock, &[0u8], Some(fd.as_raw_fd())).map(drop)
}

/// `sendmsg(sock, data, SCM_RIGHTS [fd])` — sends `data` as one message,
/// with `fd` passed beside it when given. Returns the bytes sent.
pub fn send_with_fd(sock: &impl AsRawFd, data: &[u8], fd: Option<i32>) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    // SAFETY: msghdr is plain data; zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `control`, which holds `space`
        // bytes (at most 32), so the first header and its data fit.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
        }
    }
    // SAFETY: `msg` and everything it points at (the caller's `data`,
    // which the kernel only reads) live across the call.
    let ret = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    cvt(ret as libc::c_long).map(|n| n as usize)
}

/// `getsockopt(SO_PEERCRED)` — the pid, uid and gid of the process at the
/// other end of a unix socket (as it was when it connected).
pub fn peer_cred(sock: &impl AsRawFd) -> io::Result<(i32, u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a ucred the kernel fills, `len` its size.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    cvt(ret as libc::c_long).map(|_| (cred.pid, cred.uid, cred.gid))
}

/// Takes fd `fd` of this process (given on the command line) as owned.
/// Fails with EBADF when it is not open.
pub fn own_fd(fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the fd table.
    let ret = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    cvt(ret as libc::c_long)?;
    // SAFETY: the fd is open (checked above) and the caller hands its
    // ownership over: nothing else in crest uses a number it was given.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `open_by_handle_at(mount_fd, handle, O_PATH)` — opens the file a handle
/// (`name_to_handle_at`) names, on the filesystem of `mount_fd`.
pub fn open_by_handle(mount_fd: &impl AsRawFd, kind: i32, handle: &[u8]) -> io::Result<OwnedFd> {
    if handle.len() > 128 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // struct file_handle: u32 bytes, i32 type, then the handle.
    let mut raw = vec![0u8; 8 + handle.len()];
    raw[..4].copy_from_slice(&(handle.len() as u32).to_ne_bytes());
    raw[4..8].copy_from_slice(&kind.to_ne_bytes());
    raw[8..].copy_from_slice(handle);
    // SAFETY: `raw` is a complete file_handle of its stated size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            raw.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    let fd = cvt(ret)?;
    // SAFETY: on success the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `ioctl(fd, TCGETS)` — a terminal's settings.
pub fn tcgets(fd: &impl AsRawFd) -> io::Result<libc::termios> {
    // SAFETY: termios is plain data; zero is a valid value to overwrite.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: TCGETS writes one termios into `t`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS, &mut t) };
    cvt(ret as libc::c_long).map(|_| t)
}

/// `ioctl(fd, TCSETS)` — sets a terminal's settings (on a pty master, the
/// slave's).
pub fn tcsets(fd: &impl AsRawFd, t: &libc::termios) -> io::Result<()> {
    // SAFETY: TCSETS reads one termios from `t`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCSETS, t) };
    cvt(ret as libc::c_long).map(drop)
}

/// `ioctl(fd, TIOCGWINSZ)` — a terminal's window size.
pub fn get_winsize(fd: &impl AsRawFd) -> io::Result<libc::winsize> {
    let mut w = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `w`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut w) };
    cvt(ret as libc::c_long).map(|_| w)
}

/// `ioctl(fd, TIOCSWINSZ)` — sets a terminal's window size.
pub fn set_winsize(fd: &impl AsRawFd, w: &libc::winsize) -> io::Result<()> {
    // SAFETY: TIOCSWINSZ reads one winsize from `w`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, w) };
    cvt(ret as libc::c_long).map(drop)
}

/// `ioctl(fd, TIOCGPTN)` — the index of a pty master's slave.
pub fn pty_index(fd: &impl AsRawFd) -> io::Result<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int into `n`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGPTN, &mut n) };
    cvt(ret as libc::c_long).map(|_| n)
}

/// `ioctl(fd, TIOCSPTLCK, 0)` — unlocks a pty master's slave so that it
/// can be opened.
pub fn pty_unlock(fd: &impl AsRawFd) -> io::Result<()> {
    let zero: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from `zero`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSPTLCK, &zero) };
    cvt(ret as libc::c_long).map(drop)
}

/// `ioctl(fd, req, &int)` for a request that writes one int (TIOCGPKT,
/// TIOCGPTLCK, TIOCGEXCL, TIOCGETD, FIONREAD).
pub fn ioctl_get_int(fd: &impl AsRawFd, req: libc::c_ulong) -> io::Result<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: the request writes one int into `n`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut n) };
    cvt(ret as libc::c_long).map(|_| n)
}

/// `ioctl(fd, req, &int)` for a request that reads one int (TIOCPKT,
/// TIOCSPTLCK, TIOCSETD).
pub fn ioctl_set_int(fd: &impl AsRawFd, req: libc::c_ulong, v: i32) -> io::Result<()> {
    let n: libc::c_int = v;
    // SAFETY: the request reads one int from `n`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req, &n) };
    cvt(ret as libc::c_long).map(drop)
}

/// `ioctl(fd, TIOCEXCL)` or `ioctl(fd, TIOCNXCL)`: a terminal's exclusive
/// mode on or off.
pub fn tty_set_excl(fd: &impl AsRawFd, on: bool) -> io::Result<()> {
    let req = if on { libc::TIOCEXCL } else { libc::TIOCNXCL };
    // SAFETY: neither request takes an argument.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req) };
    cvt(ret as libc::c_long).map(drop)
}

/// `ioctl(master, TIOCGPTPEER, flags)`: a new open file of a pty master's
/// slave, as if opened by path through the master's devpts.
pub fn pty_peer(master: &impl AsRawFd, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: TIOCGPTPEER takes the open flags by value and returns an fd.
    let ret = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    cvt(ret as libc::c_long)?;
    // SAFETY: the ioctl returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

/// `ioctl(fd, TIOCSTI, &b)`: byte `b` taken by the terminal's line
/// discipline as if it had arrived (wants CAP_SYS_ADMIN unless `fd` is the
/// caller's controlling terminal).
pub fn tty_push_input(fd: &impl AsRawFd, b: u8) -> io::Result<()> {
    let c: libc::c_char = b as libc::c_char;
    // SAFETY: TIOCSTI reads one char from `c`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSTI, &c) };
    cvt(ret as libc::c_long).map(drop)
}

/// `fcntl(fd, F_SETFL, flags)`: the status flags of the open file.
pub fn set_status_flags(fd: &impl AsRawFd, flags: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) };
    cvt(ret as libc::c_long).map(drop)
}

/// `ioctl(fd, TIOCGLCKTRMIOS)`: a terminal's locked settings.
pub fn tcgets_locked(fd: &impl AsRawFd) -> io::Result<libc::termios> {
    // SAFETY: termios is plain data; zero is a valid value to overwrite.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGLCKTRMIOS writes one termios into `t`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGLCKTRMIOS, &mut t) };
    cvt(ret as libc::c_long).map(|_| t)
}

/// `ioctl(fd, TIOCSLCKTRMIOS)`: sets a terminal's locked settings (wants
/// CAP_SYS_ADMIN).
pub fn tcsets_locked(fd: &impl AsRawFd, t: &libc::termios) -> io::Result<()> {
    // SAFETY: TIOCSLCKTRMIOS reads one termios from `t`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSLCKTRMIOS, t) };
    cvt(ret as libc::c_long).map(drop)
}

/// `poll` of one fd for `events`, waiting at most `ms` milliseconds: the
/// events that came (0 on timeout).
pub fn poll_one(fd: &impl AsRawFd, events: i16, ms: i32) -> io::Result<i16> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let ret = unsafe { libc::poll(&mut p, 1, ms) };
        match cvt(ret as libc::c_long) {
            Ok(0) => return Ok(0),
            Ok(_) => return Ok(p.revents),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A thread's scheduling: `sched_getscheduler` (policy, with
/// `SCHED_RESET_ON_FORK`), `sched_getparam` (the static priority) and
/// `getpriority(PRIO_PROCESS)` (nice, -20..19).
pub fn get_sched(tid: i32) -> io::Result<(u32, u32, i32)> {
    // SAFETY: plain call on a tid.
    let policy = unsafe { libc::sched_getscheduler(tid) };
    cvt(policy as libc::c_long)?;
    let mut p = libc::sched_param { sched_priority: 0 };
    // SAFETY: `p` is a valid out-pointer.
    cvt(unsafe { libc::sched_getparam(tid, &mut p) } as libc::c_long)?;
    // getpriority can return -1 legitimately: errno tells.
    // SAFETY: errno is this thread's; plain call on a tid.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t)
    };
    if nice == -1 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(0) {
            return Err(e);
        }
    }
    Ok((policy as u32, p.sched_priority as u32, nice))
}

/// Sets a thread's nice value and then its policy and static priority.
pub fn set_sched(tid: i32, policy: u32, prio: u32, nice: i32) -> io::Result<()> {
    // SAFETY: plain call on a tid.
    cvt(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) } as libc::c_long)?;
    let p = libc::sched_param {
        sched_priority: prio as i32,
    };
    // SAFETY: `p` is a valid sched_param.
    cvt(unsafe { libc::sched_setscheduler(tid, policy as i32, &p) } as libc::c_long)?;
    Ok(())
}

/// `fcntl(F_GETOWN_EX)`: who gets SIGIO for a file (type: 0 a thread, 1 a
/// process, 2 a process group; pid 0: nobody).
pub fn get_owner(fd: &impl AsRawFd) -> io::Result<(i32, i32)> {
    // struct f_owner_ex { int type; pid_t pid; }
    let mut o = [0i32; 2];
    // SAFETY: `o` has the layout of struct f_owner_ex.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWN_EX, o.as_mut_ptr()) } as libc::c_long)?;
    Ok((o[0], o[1]))
}

/// fcntl commands the libc crate lacks (asm-generic/fcntl.h).
pub const F_SETOWN_EX: i32 = 15;
pub const F_GETOWN_EX: i32 = 16;
pub const F_SETSIG: i32 = 10;
pub const F_GETSIG: i32 = 11;

/// `fcntl(F_GETSIG)`: the signal sent for I/O (0: SIGIO).
pub fn get_sig(fd: &impl AsRawFd) -> io::Result<i32> {
    // SAFETY: plain fcntl on an fd.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), F_GETSIG) };
    cvt(r as libc::c_long)?;
    Ok(r)
}

/// `fcntl(F_SETOWN_EX)`: see [`get_owner`].
pub fn set_owner(fd: &impl AsRawFd, kind: i32, pid: i32) -> io::Result<()> {
    let o = [kind, pid];
    // SAFETY: `o` has the layout of struct f_owner_ex.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), F_SETOWN_EX, o.as_ptr()) } as libc::c_long)?;
    Ok(())
}

/// `fcntl(F_SETSIG)`.
pub fn set_sig(fd: &impl AsRawFd, sig: i32) -> io::Result<()> {
    // SAFETY: plain fcntl on an fd.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), F_SETSIG, sig) } as libc::c_long)?;
    Ok(())
}

/// A thread's CPU affinity mask (`sched_getaffinity`), as the kernel's
/// bytes.
pub fn get_affinity(tid: i32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            tid,
            buf.len(),
            buf.as_mut_ptr(),
        )
    };
    let n = cvt(n)?;
    buf.truncate(n as usize);
    Ok(buf)
}

/// Sets a thread's CPU affinity mask (`sched_setaffinity`).
pub fn set_affinity(tid: i32, mask: &[u8]) -> io::Result<()> {
    // SAFETY: `mask` is readable for its length.
    cvt(unsafe { libc::syscall(libc::SYS_sched_setaffinity, tid, mask.len(), mask.as_ptr()) })?;
    Ok(())
}

/// crest's mask before [`pin_to_current_cpu`], and the one-CPU mask it
/// pinned the calling thread to.
static PINNED: std::sync::Mutex<Option<(Vec<u8>, Vec<u8>)>> = std::sync::Mutex::new(None);

/// Pins the calling thread to the CPU it runs on, keeping its mask for
/// [`unpin`] and [`pinned`]; false where nothing was pinned.
pub fn pin_to_current_cpu() -> bool {
    let (Ok(before), Some(cpu)) = (get_affinity(0), current_cpu()) else {
        return false;
    };
    let mut one = vec![0u8; cpu / 8 + 1];
    one[cpu / 8] |= 1 << (cpu % 8);
    if set_affinity(0, &one).is_err() {
        return false;
    }
    if let Ok(mut p) = PINNED.lock() {
        *p = Some((before, one));
    }
    true
}

/// Gives the calling thread back the mask it had before it was pinned.
pub fn unpin() {
    if let Some((before, _)) = PINNED.lock().ok().and_then(|mut p| p.take()) {
        let _ = set_affinity(0, &before);
    }
}

/// (the mask before the pin, the pin's one-CPU mask), while pinned.
pub fn pinned() -> Option<(Vec<u8>, Vec<u8>)> {
    PINNED.lock().ok().and_then(|p| p.clone())
}

/// The CPU the calling thread runs on (`sched_getcpu`).
pub fn current_cpu() -> Option<usize> {
    // SAFETY: no arguments; returns a CPU number or -1.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// The calling thread's CPU affinity as it is now, put back when this is
/// dropped (the dump moves crest's thread after the threads it injects
/// into).
pub struct AffinityKept(Option<Vec<u8>>);

impl AffinityKept {
    pub fn now() -> AffinityKept {
        AffinityKept(get_affinity(0).ok())
    }
}

impl Drop for AffinityKept {
    fn drop(&mut self) {
        if let Some(mask) = &self.0 {
            let _ = set_affinity(0, mask);
        }
    }
}

/// Whether a file lives on hugetlbfs (`fstatfs`).
pub fn is_hugetlbfs(fd: &impl AsRawFd) -> io::Result<bool> {
    // SAFETY: zeroed statfs is a valid out-buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer.
    cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } as libc::c_long)?;
    const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
    Ok(st.f_type as i64 == HUGETLBFS_MAGIC)
}

/// `futimens`: a file's access and modification times, (seconds, ns).
pub fn set_times(fd: &impl AsRawFd, atime: (i64, u32), mtime: (i64, u32)) -> io::Result<()> {
    let ts = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: i64::from(atime.1),
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: i64::from(mtime.1),
        },
    ];
    // SAFETY: `ts` holds the two timespecs futimens reads.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), ts.as_ptr()) } as libc::c_long)?;
    Ok(())
}

/// The data extents of a file, (offset, length), found with `SEEK_DATA`
/// and `SEEK_HOLE` (a file system without them reports one extent).
pub fn data_extents(fd: &impl AsRawFd, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut at: i64 = 0;
    while (at as u64) < size {
        // SAFETY: plain lseek on an fd.
        let start = unsafe { libc::lseek(fd.as_raw_fd(), at, libc::SEEK_DATA) };
        if start < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(e);
        }
        // SAFETY: plain lseek on an fd.
        let end = unsafe { libc::lseek(fd.as_raw_fd(), start, libc::SEEK_HOLE) };
        cvt(end as libc::c_long)?;
        let end = (end as u64).min(size);
        if end <= start as u64 {
            break;
        }
        out.push((start as u64, end - start as u64));
        at = end as i64;
    }
    Ok(out)
}

/// `io_uring_register(fd, IORING_REGISTER_PROBE, header, 0)` on an
/// io_uring crest holds: a question that changes nothing, and that the
/// kernel answers `EEXIST` when another task is the ring's only submitter
/// (`IORING_SETUP_SINGLE_ISSUER`) and `EACCES` when the ring is
/// restricted.
pub fn uring_probe(ring: &impl AsRawFd) -> io::Result<()> {
    const IORING_REGISTER_PROBE: libc::c_long = 8;
    // struct io_uring_probe's header, zeroed: room for no op
    let mut header = [0u8; 16];
    // SAFETY: with nr_args 0 the kernel reads and writes the 16-byte
    // header only, which lives for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd(),
            IORING_REGISTER_PROBE,
            header.as_mut_ptr(),
            0,
        )
    };
    cvt(ret).map(drop)
}

/// `io_uring_enter(fd, 0, 0, IORING_ENTER_GETEVENTS)`: waits for no
/// completion and submits nothing; the kernel answers `EEXIST` when the
/// ring runs its completions only in its submitter
/// (`IORING_SETUP_DEFER_TASKRUN`) and `EBADFD` when it is still disabled
/// (`IORING_SETUP_R_DISABLED`).
pub fn uring_getevents(ring: &impl AsRawFd) -> io::Result<()> {
    const IORING_ENTER_GETEVENTS: libc::c_long = 1;
    // SAFETY: no argument pointer (NULL, size 0).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_uring_enter,
            ring.as_raw_fd(),
            0,
            0,
            IORING_ENTER_GETEVENTS,
            std::ptr::null::<u8>(),
            0,
        )
    };
    cvt(ret).map(drop)
}

/// Whether an eventfd is registered with the io_uring crest holds: crest
/// registers its own `efd` (`EBUSY` when one is there) and unregisters it
/// again at once.
pub fn uring_has_eventfd(ring: &impl AsRawFd, efd: &impl AsRawFd) -> io::Result<bool> {
    const IORING_REGISTER_EVENTFD: libc::c_long = 4;
    const IORING_UNREGISTER_EVENTFD: libc::c_long = 5;
    let fd: i32 = efd.as_raw_fd();
    // SAFETY: the kernel reads one int at the pointer, which lives for the
    // call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd(),
            IORING_REGISTER_EVENTFD,
            &fd as *const i32,
            1,
        )
    };
    match cvt(ret) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(true),
        Err(e) => Err(e),
        Ok(_) => {
            // SAFETY: no argument pointer.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_io_uring_register,
                    ring.as_raw_fd(),
                    IORING_UNREGISTER_EVENTFD,
                    std::ptr::null::<u8>(),
                    0,
                )
            };
            cvt(ret).map(|_| false)
        }
    }
}

/// Whether `len` bytes of the io_uring region at `offset` can be mapped
/// (the kernel refuses a mapping larger than the region): maps them
/// read-only in crest and unmaps them again.
pub fn uring_region_fits(ring: &impl AsRawFd, offset: u64, len: usize) -> bool {
    SharedMap::new(ring, offset, len, false).is_ok()
}

/// A shared mapping crest makes of a kernel object's fd (a packet
/// socket's rings, an io_uring region), unmapped when dropped. Its bytes
/// are the kernel's too, so they are read and written one word at a time
/// (volatile), never borrowed.
pub struct SharedMap {
    at: *mut libc::c_void,
    len: usize,
    writable: bool,
}

impl SharedMap {
    /// Maps `len` bytes of `fd` at `offset`, writable or not.
    pub fn new(
        fd: &impl AsRawFd,
        offset: u64,
        len: usize,
        writable: bool,
    ) -> io::Result<SharedMap> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a new shared mapping the kernel places; nothing of
        // crest's is touched.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedMap { at, len, writable })
    }

    /// The word at `off` (4-byte aligned), None past the end.
    pub fn u32_at(&self, off: usize) -> Option<u32> {
        if !off.is_multiple_of(4) || off.checked_add(4).is_none_or(|e| e > self.len) {
            return None;
        }
        // SAFETY: an aligned word inside the mapping (checked above),
        // which lives as long as `self`; volatile as the kernel writes it.
        Some(unsafe { std::ptr::read_volatile((self.at as *const u8).add(off) as *const u32) })
    }

    /// Writes word `v` at `off` (4-byte aligned) of a writable mapping;
    /// false where it cannot.
    pub fn set_u32(&self, off: usize, v: u32) -> bool {
        if !self.writable
            || !off.is_multiple_of(4)
            || off.checked_add(4).is_none_or(|e| e > self.len)
        {
            return false;
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: an aligned word inside a writable mapping (checked
        // above) of the kernel object, not of any Rust value.
        unsafe { std::ptr::write_volatile((self.at as *mut u8).add(off) as *mut u32, v) };
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        true
    }

    /// A copy of the `each` bytes at `off`; empty past the end.
    pub fn copy(&self, off: usize, each: usize) -> Vec<u8> {
        if off.checked_add(each).is_none_or(|e| e > self.len) {
            return Vec::new();
        }
        (0..each)
            // SAFETY: each byte is inside the mapping (checked above).
            .map(|i| unsafe { std::ptr::read_volatile((self.at as *const u8).add(off + i)) })
            .collect()
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping `new` made; nothing refers into it.
        unsafe { libc::munmap(self.at, self.len) };
    }
}

/// A new close-on-exec eventfd of crest's, counter 0.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    let ret = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    cvt(libc::c_long::from(ret))?;
    // SAFETY: on success the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

/// `ioctl(fd, TCFLSH, what)` (`tcflush`) or `ioctl(fd, TCXONC, what)`
/// (`tcflow`): a terminal request that takes its int argument by value.
pub fn tty_request(fd: &impl AsRawFd, req: libc::c_ulong, what: i32) -> io::Result<()> {
    // SAFETY: both requests take an int by value and touch no memory of
    // crest's.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req, what as libc::c_long) };
    cvt(ret as libc::c_long).map(drop)
}

/// Copies of `each` bytes at each of `offsets` in the first `len` bytes
/// a socket (a packet socket's rings) maps: crest maps them read-only,
/// copies and unmaps them.
pub fn read_socket_map(
    sock: &impl AsRawFd,
    len: usize,
    offsets: &[usize],
    each: usize,
) -> io::Result<Vec<u8>> {
    if offsets
        .iter()
        .any(|o| o.checked_add(each).is_none_or(|e| e > len))
    {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let map = SharedMap::new(sock, 0, len, false)?;
    let mut out = Vec::with_capacity(offsets.len() * each);
    for &o in offsets {
        out.extend_from_slice(&map.copy(o, each));
    }
    Ok(out)
}
