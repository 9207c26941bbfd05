//! Sockets: thin wrappers over the socket calls crest makes on its own
//! copies of a task's sockets (taken with `pidfd_getfd`) and on netlink.
//! Addresses travel as raw `sockaddr` bytes; callers build and parse them.

use crate::cvt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Room for any socket address (`sockaddr_storage`).
const ADDR_MAX: usize = 128;

fn ret(r: libc::c_int) -> io::Result<libc::c_long> {
    cvt(r as libc::c_long)
}

/// `socket(domain, type | SOCK_CLOEXEC, protocol)`.
pub fn socket(domain: i32, ty: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) };
    ret(fd)?;
    // SAFETY: on success the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `getsockopt(fd, level, name)` into a buffer of `len` bytes; returns the
/// bytes the kernel wrote.
pub fn getsockopt_bytes(
    fd: &impl AsRawFd,
    level: i32,
    name: i32,
    len: usize,
) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut l = len as libc::socklen_t;
    // SAFETY: `buf` has room for `l` bytes and `l` is a valid out pointer.
    let r =
        unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, buf.as_mut_ptr().cast(), &mut l) };
    ret(r)?;
    buf.truncate((l as usize).min(len));
    Ok(buf)
}

/// `getsockopt(fd, level, name)` with `buf` both the question the kernel
/// reads (an option like `MCAST_MSFILTER` takes one) and the room for its
/// answer; returns the length it reports.
pub fn getsockopt_inout(
    fd: &impl AsRawFd,
    level: i32,
    name: i32,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut l = buf.len() as libc::socklen_t;
    // SAFETY: `buf` is live and has room for `l` bytes; `l` is a valid out
    // pointer.
    let r =
        unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, buf.as_mut_ptr().cast(), &mut l) };
    ret(r)?;
    Ok(l as usize)
}

/// `getsockopt(fd, level, name)` of an int option.
pub fn getsockopt_int(fd: &impl AsRawFd, level: i32, name: i32) -> io::Result<i32> {
    let b = getsockopt_bytes(fd, level, name, 4)?;
    let mut a = [0u8; 4];
    a[..b.len().min(4)].copy_from_slice(&b[..b.len().min(4)]);
    Ok(i32::from_ne_bytes(a))
}

/// `setsockopt(fd, level, name, value)` with raw bytes.
pub fn setsockopt_bytes(fd: &impl AsRawFd, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is valid for its length.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    ret(r).map(drop)
}

/// `TCP_REPAIR` and its "off, without a window probe" value.
pub const TCP_REPAIR: i32 = 19;
pub const TCP_REPAIR_OFF_NO_WP: i32 = -1;

/// Takes a connection out of repair mode without a window probe, and gives
/// it back the `SO_REUSEADDR` that doing so clears.
pub fn tcp_repair_off(c: &impl AsRawFd, reuse: bool) {
    let _ = setsockopt_int(c, libc::SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
    if reuse {
        let _ = setsockopt_int(c, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    }
}

/// `setsockopt(fd, level, name, &int)`.
pub fn setsockopt_int(fd: &impl AsRawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    setsockopt_bytes(fd, level, name, &value.to_ne_bytes())
}

fn name_of(
    fd: &impl AsRawFd,
    f: unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int,
) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; ADDR_MAX];
    let mut l = ADDR_MAX as libc::socklen_t;
    // SAFETY: `buf` has room for `l` bytes; `f` is getsockname or
    // getpeername, which write at most `l` bytes and update `l`.
    let r = unsafe { f(fd.as_raw_fd(), buf.as_mut_ptr().cast(), &mut l) };
    ret(r)?;
    Ok(buf[..(l as usize).min(ADDR_MAX)].to_vec())
}

/// `getsockname(fd)` — the raw local address.
pub fn getsockname(fd: &impl AsRawFd) -> io::Result<Vec<u8>> {
    name_of(fd, libc::getsockname)
}

/// `getpeername(fd)` — the raw peer address.
pub fn getpeername(fd: &impl AsRawFd) -> io::Result<Vec<u8>> {
    name_of(fd, libc::getpeername)
}

/// `bind(fd, addr)` with a raw address.
pub fn bind(fd: &impl AsRawFd, addr: &[u8]) -> io::Result<()> {
    // SAFETY: `addr` is valid for its length.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            addr.as_ptr().cast(),
            addr.len() as libc::socklen_t,
        )
    };
    ret(r).map(drop)
}

/// `connect(fd, addr)` with a raw address.
pub fn connect(fd: &impl AsRawFd, addr: &[u8]) -> io::Result<()> {
    // SAFETY: `addr` is valid for its length.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            addr.as_ptr().cast(),
            addr.len() as libc::socklen_t,
        )
    };
    ret(r).map(drop)
}

/// `sendto(fd, data, flags, addr)`; no address when `addr` is empty.
pub fn sendto(fd: &impl AsRawFd, data: &[u8], flags: i32, addr: &[u8]) -> io::Result<usize> {
    let (p, l) = if addr.is_empty() {
        (std::ptr::null(), 0)
    } else {
        (addr.as_ptr(), addr.len())
    };
    // SAFETY: `data` and `addr` are valid for their lengths (or null/0).
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            flags,
            p.cast(),
            l as libc::socklen_t,
        )
    };
    cvt(r as libc::c_long).map(|n| n as usize)
}

/// `recv(fd, buf, flags)`.
pub fn recv(fd: &impl AsRawFd, buf: &mut [u8], flags: i32) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let r = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    cvt(r as libc::c_long).map(|n| n as usize)
}

/// What one `recvmsg` returned.
#[derive(Debug, Default)]
pub struct Received {
    /// Bytes of data.
    pub len: usize,
    /// `msg_flags` (MSG_TRUNC, MSG_CTRUNC, ...).
    pub flags: i32,
    /// The sender's raw address (datagram sockets).
    pub from: Vec<u8>,
    /// The file descriptors that came along (`SCM_RIGHTS`), crest's now,
    /// close-on-exec.
    pub fds: Vec<OwnedFd>,
    /// The sender's credentials (`SCM_CREDENTIALS`: pid, uid, gid, as
    /// crest sees them), when the socket has `SO_PASSCRED`.
    pub creds: Option<(i32, u32, u32)>,
}

/// `recvmsg(fd, flags | MSG_CMSG_CLOEXEC)` into `buf`, with room for a
/// sender address and control data for the most descriptors one message
/// can carry (`SCM_MAX_FD`, 253). Descriptors passed with `SCM_RIGHTS`
/// are returned (with `MSG_PEEK` they are copies: the message keeps
/// them); `MSG_CTRUNC` in `flags` says some were lost.
pub fn recvmsg(fd: &impl AsRawFd, buf: &mut [u8], flags: i32) -> io::Result<Received> {
    let mut name = [0u8; ADDR_MAX];
    // Room for credentials and 253 descriptors, 8-byte aligned.
    let mut control = [0u64; 160];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = name.as_mut_ptr().cast();
    msg.msg_namelen = ADDR_MAX as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: every pointer in `msg` points to a live buffer of the given
    // length.
    let r = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
    let len = cvt(r as libc::c_long)? as usize;
    let mut out = Received {
        len,
        flags: msg.msg_flags,
        from: name[..(msg.msg_namelen as usize).min(ADDR_MAX)].to_vec(),
        fds: Vec::new(),
        creds: None,
    };
    // SAFETY: `msg` was filled by the kernel; CMSG_FIRSTHDR/NXTHDR walk
    // within msg_controllen.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: `c` points to a complete cmsghdr inside `control`.
        let h = unsafe { &*c };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_CREDENTIALS {
            // SAFETY: CMSG_DATA points to a struct ucred inside `control`
            // (the kernel wrote a whole one for this type).
            let u = unsafe { (libc::CMSG_DATA(c) as *const libc::ucred).read_unaligned() };
            out.creds = Some((u.pid, u.uid, u.gid));
        }
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is the header length; the data holds ints.
            let hdr = unsafe { libc::CMSG_LEN(0) } as usize;
            let n = (h.cmsg_len as usize).saturating_sub(hdr) / 4;
            for i in 0..n {
                // SAFETY: CMSG_DATA points to `n` ints inside `control`.
                let fd = unsafe { (libc::CMSG_DATA(c) as *const i32).add(i).read_unaligned() };
                // SAFETY: the kernel just installed this fd for us.
                out.fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: as above.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    Ok(out)
}

/// `sendmsg(fd, data, flags)` to `to` (empty: the connected peer) with
/// `fds` passed beside the data (`SCM_RIGHTS`, at most 253) and, when
/// given, the credentials it claims (`SCM_CREDENTIALS`: pid, uid, gid;
/// others than the caller's need CAP_SYS_ADMIN, CAP_SETUID, CAP_SETGID).
pub fn send_with_fds(
    fd: &impl AsRawFd,
    data: &[u8],
    flags: i32,
    to: &[u8],
    (fds, creds): (&[std::os::fd::BorrowedFd<'_>], Option<(i32, u32, u32)>),
) -> io::Result<usize> {
    if fds.len() > 253 || to.len() > ADDR_MAX {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut name = [0u8; ADDR_MAX];
    name[..to.len()].copy_from_slice(to);
    let mut control = [0u64; 160];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    if !to.is_empty() {
        msg.msg_name = name.as_mut_ptr().cast();
        msg.msg_namelen = to.len() as libc::socklen_t;
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let ucred_len = std::mem::size_of::<libc::ucred>() as u32;
    // SAFETY: CMSG_SPACE only computes sizes.
    let (rights_space, creds_space) = unsafe {
        (
            if fds.is_empty() {
                0
            } else {
                libc::CMSG_SPACE((fds.len() * 4) as u32) as usize
            },
            if creds.is_none() {
                0
            } else {
                libc::CMSG_SPACE(ucred_len) as usize
            },
        )
    };
    if rights_space + creds_space > 0 {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = rights_space + creds_space;
        // SAFETY: `control` (1280 bytes) has room for CMSG_SPACE(253 * 4)
        // plus CMSG_SPACE of a ucred; each header is taken with
        // CMSG_FIRSTHDR/NXTHDR within msg_controllen, and its data written
        // within its CMSG_LEN.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            if !fds.is_empty() {
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as usize;
                let data = libc::CMSG_DATA(c) as *mut i32;
                for (i, f) in fds.iter().enumerate() {
                    data.add(i).write_unaligned(f.as_raw_fd());
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            if let Some((pid, uid, gid)) = creds {
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_CREDENTIALS;
                (*c).cmsg_len = libc::CMSG_LEN(ucred_len) as usize;
                (libc::CMSG_DATA(c) as *mut libc::ucred).write_unaligned(libc::ucred {
                    pid,
                    uid,
                    gid,
                });
            }
        }
    }
    // SAFETY: every pointer in `msg` points to a live buffer of the given
    // length; the fds are borrowed for the call.
    let r = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags) };
    Ok(cvt(r as libc::c_long)? as usize)
}

/// `ioctl(fd, request, &int)` of a request that returns one int
/// (`SIOCINQ`, `SIOCOUTQ`, `SIOCOUTQNSD`).
pub fn ioctl_int(fd: &impl AsRawFd, request: u64) -> io::Result<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: the request writes one int to the pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, &mut n) };
    ret(r)?;
    Ok(n)
}

/// `ioctl(sock, SIOCGIFINDEX)`: the index of interface `name` in the
/// network namespace of socket `sock`.
pub fn if_index(sock: &impl AsRawFd, name: &[u8]) -> io::Result<u32> {
    // SAFETY: ifreq is plain data; zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFINDEX reads the name and writes the index into `req`.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX as _, &mut req) };
    ret(r)?;
    // SAFETY: the kernel filled the union's index.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex } as u32)
}

/// `ioctl(sock, SIOCGIFNAME)`: the name of interface `index` in the
/// network namespace of socket `sock`.
pub fn if_name(sock: &impl AsRawFd, index: u32) -> io::Result<Vec<u8>> {
    // SAFETY: ifreq is plain data; zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_ifru.ifru_ifindex = index as libc::c_int;
    // SAFETY: SIOCGIFNAME reads the index and writes the name into `req`.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFNAME as _, &mut req) };
    ret(r)?;
    Ok(req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect())
}

/// `isatty(fd)` and `ttyname` through `/proc/self/fd` — the path of the
/// terminal behind one of crest's own fds, if it is one.
pub fn terminal_of(fd: i32) -> Option<String> {
    // SAFETY: plain integer argument.
    if unsafe { libc::isatty(fd) } != 1 {
        return None;
    }
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// `fcntl(fd, F_SETFL, flags)` — the status flags of the open file.
pub fn set_status_flags(fd: &impl AsRawFd, flags: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    ret(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) }).map(drop)
}

/// A socket's classic BPF filter (`SO_GET_FILTER`), each instruction as
/// `code | jt << 16 | jf << 24 | k << 32` (CRIU's `so_filter`); empty
/// without one.
pub fn get_filter(fd: &impl AsRawFd) -> io::Result<Vec<u64>> {
    // With a zero length the kernel answers the number of instructions.
    let mut n: libc::socklen_t = 0;
    // SAFETY: a null buffer with length 0 is allowed for SO_GET_FILTER.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::null_mut(),
            &mut n,
        )
    };
    ret(r)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut prog = vec![0u64; n as usize];
    // the length is counted in instructions, not bytes
    let mut len = n;
    // SAFETY: `prog` has room for `n` 8-byte instructions.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            prog.as_mut_ptr().cast(),
            &mut len,
        )
    };
    ret(r)?;
    prog.truncate(len as usize);
    Ok(prog)
}

/// Attaches a classic BPF filter (instructions as [`get_filter`] gives
/// them).
pub fn attach_filter(fd: &impl AsRawFd, prog: &[u64]) -> io::Result<()> {
    let insns: Vec<libc::sock_filter> = prog
        .iter()
        .map(|&i| libc::sock_filter {
            code: i as u16,
            jt: (i >> 16) as u8,
            jf: (i >> 24) as u8,
            k: (i >> 32) as u32,
        })
        .collect();
    let fprog = libc::sock_fprog {
        len: insns.len() as u16,
        filter: insns.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `insns`, alive for the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    ret(r).map(drop)
}
