//! Socket options (`sk_opts_entry`): read from crest's copy of a task's
//! socket at dump, set on crest's copy of the new socket at restore (the
//! copy and the task's fd are one socket). CRIU's fields carry the common
//! ones, the bound device and a classic BPF filter; every other option of
//! [`RAW`] that applies to the socket's family and protocol rides as
//! `crest_raw` (level, name, bytes) and is set again where the new socket
//! differs: those that decide what `bind` may do before it
//! ([`restore_early`]), the rest after, `SO_LOCK_FILTER` after the filter
//! and `SO_BUF_LOCK` last (setting a buffer size locks it).

use crest_images::pb::crest::CrestSockopt;
use crest_images::pb::SkOptsEntry;
use crest_sys::net::{getsockopt_bytes, getsockopt_int, setsockopt_bytes, setsockopt_int};
use std::io;
use std::os::fd::AsFd;

const SOL: i32 = libc::SOL_SOCKET;

/// Options newer than the libc crate's tables.
const SO_BUF_LOCK: i32 = 72;
const TCP_FASTOPEN_NO_COOKIE: i32 = 34;
const IPV6_FREEBIND: i32 = 78;

/// Which sockets an option applies to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum For {
    Any,
    Inet,
    Ip4,
    Ip6,
    Tcp,
    /// A TCP socket not connected (closed or listening).
    TcpIdle,
    Udp,
    /// Not on a stream socket (the kernel refuses to set multicast options
    /// there).
    Ip4Dgram,
    Ip6Dgram,
}

/// When it is set: before `bind`, after everything, or in between.
#[derive(Clone, Copy, PartialEq, Eq)]
enum When {
    Early,
    Normal,
    Last,
}

/// The options carried raw: (level, name, sockets, when, byte length).
const RAW: &[(i32, i32, For, When, usize)] = &[
    (SOL, libc::SO_KEEPALIVE, For::Any, When::Normal, 4),
    (SOL, libc::SO_OOBINLINE, For::Any, When::Normal, 4),
    (SOL, libc::SO_BROADCAST, For::Any, When::Normal, 4),
    (SOL, libc::SO_LINGER, For::Any, When::Normal, 8),
    (SOL, libc::SO_TIMESTAMP, For::Any, When::Normal, 4),
    (SOL, libc::SO_TIMESTAMPNS, For::Any, When::Normal, 4),
    (SOL, libc::SO_PEEK_OFF, For::Any, When::Normal, 4),
    (SOL, libc::SO_BUSY_POLL, For::Any, When::Normal, 4),
    (SOL, libc::SO_SELECT_ERR_QUEUE, For::Any, When::Normal, 4),
    (SOL, libc::SO_RXQ_OVFL, For::Any, When::Normal, 4),
    (SOL, libc::SO_WIFI_STATUS, For::Any, When::Normal, 4),
    (SOL, libc::SO_ZEROCOPY, For::Inet, When::Normal, 4),
    (SOL, libc::SO_LOCK_FILTER, For::Any, When::Last, 4),
    (SOL, SO_BUF_LOCK, For::Any, When::Last, 4),
    (libc::SOL_IP, libc::IP_FREEBIND, For::Ip4, When::Early, 4),
    (libc::SOL_IP, libc::IP_TRANSPARENT, For::Ip4, When::Early, 4),
    (
        libc::SOL_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        For::Ip4,
        When::Early,
        4,
    ),
    (libc::SOL_IP, libc::IP_TOS, For::Ip4, When::Normal, 4),
    (libc::SOL_IP, libc::IP_TTL, For::Ip4, When::Normal, 4),
    (libc::SOL_IP, libc::IP_RECVERR, For::Ip4, When::Normal, 4),
    (libc::SOL_IP, libc::IP_PKTINFO, For::Ip4, When::Normal, 4),
    (libc::SOL_IP, libc::IP_RECVTOS, For::Ip4, When::Normal, 4),
    (libc::SOL_IP, libc::IP_RECVTTL, For::Ip4, When::Normal, 4),
    (libc::SOL_IP, libc::IP_RECVOPTS, For::Ip4, When::Normal, 4),
    (libc::SOL_IP, libc::IP_RETOPTS, For::Ip4, When::Normal, 4),
    (
        libc::SOL_IP,
        libc::IP_RECVORIGDSTADDR,
        For::Ip4,
        When::Normal,
        4,
    ),
    (
        libc::SOL_IP,
        libc::IP_MTU_DISCOVER,
        For::Ip4,
        When::Normal,
        4,
    ),
    (
        libc::SOL_IP,
        libc::IP_MULTICAST_TTL,
        For::Ip4Dgram,
        When::Normal,
        4,
    ),
    (
        libc::SOL_IP,
        libc::IP_MULTICAST_LOOP,
        For::Ip4Dgram,
        When::Normal,
        4,
    ),
    (
        libc::SOL_IP,
        libc::IP_MULTICAST_ALL,
        For::Ip4Dgram,
        When::Normal,
        4,
    ),
    (libc::SOL_IPV6, IPV6_FREEBIND, For::Ip6, When::Early, 4),
    (
        libc::SOL_IPV6,
        libc::IPV6_TRANSPARENT,
        For::Ip6,
        When::Early,
        4,
    ),
    (
        libc::SOL_IPV6,
        libc::IPV6_UNICAST_HOPS,
        For::Ip6,
        When::Normal,
        4,
    ),
    (libc::SOL_IPV6, libc::IPV6_TCLASS, For::Ip6, When::Normal, 4),
    (
        libc::SOL_IPV6,
        libc::IPV6_RECVPKTINFO,
        For::Ip6,
        When::Normal,
        4,
    ),
    (
        libc::SOL_IPV6,
        libc::IPV6_RECVERR,
        For::Ip6,
        When::Normal,
        4,
    ),
    (
        libc::SOL_IPV6,
        libc::IPV6_RECVTCLASS,
        For::Ip6,
        When::Normal,
        4,
    ),
    (
        libc::SOL_IPV6,
        libc::IPV6_RECVHOPLIMIT,
        For::Ip6,
        When::Normal,
        4,
    ),
    (
        libc::SOL_IPV6,
        libc::IPV6_MTU_DISCOVER,
        For::Ip6,
        When::Normal,
        4,
    ),
    (
        libc::SOL_IPV6,
        libc::IPV6_MULTICAST_HOPS,
        For::Ip6Dgram,
        When::Normal,
        4,
    ),
    (
        libc::SOL_IPV6,
        libc::IPV6_MULTICAST_LOOP,
        For::Ip6Dgram,
        When::Normal,
        4,
    ),
    (
        libc::SOL_IPV6,
        libc::IPV6_DONTFRAG,
        For::Ip6,
        When::Normal,
        4,
    ),
    (
        libc::SOL_IPV6,
        libc::IPV6_AUTOFLOWLABEL,
        For::Ip6,
        When::Normal,
        4,
    ),
    (libc::SOL_TCP, libc::TCP_NODELAY, For::Tcp, When::Normal, 4),
    (libc::SOL_TCP, libc::TCP_CORK, For::Tcp, When::Normal, 4),
    (libc::SOL_TCP, libc::TCP_KEEPIDLE, For::Tcp, When::Normal, 4),
    (
        libc::SOL_TCP,
        libc::TCP_KEEPINTVL,
        For::Tcp,
        When::Normal,
        4,
    ),
    (libc::SOL_TCP, libc::TCP_KEEPCNT, For::Tcp, When::Normal, 4),
    (
        libc::SOL_TCP,
        libc::TCP_USER_TIMEOUT,
        For::Tcp,
        When::Normal,
        4,
    ),
    (libc::SOL_TCP, libc::TCP_SYNCNT, For::Tcp, When::Normal, 4),
    (libc::SOL_TCP, libc::TCP_LINGER2, For::Tcp, When::Normal, 4),
    (
        libc::SOL_TCP,
        libc::TCP_DEFER_ACCEPT,
        For::Tcp,
        When::Normal,
        4,
    ),
    (
        libc::SOL_TCP,
        libc::TCP_NOTSENT_LOWAT,
        For::Tcp,
        When::Normal,
        4,
    ),
    (
        libc::SOL_TCP,
        libc::TCP_THIN_LINEAR_TIMEOUTS,
        For::Tcp,
        When::Normal,
        4,
    ),
    (
        libc::SOL_TCP,
        libc::TCP_CONGESTION,
        For::Tcp,
        When::Normal,
        16,
    ),
    // what the user set on a socket not connected (the kernel answers its
    // own figures once it is)
    (
        libc::SOL_TCP,
        libc::TCP_MAXSEG,
        For::TcpIdle,
        When::Normal,
        4,
    ),
    (
        libc::SOL_TCP,
        libc::TCP_WINDOW_CLAMP,
        For::TcpIdle,
        When::Normal,
        4,
    ),
    (
        libc::SOL_TCP,
        libc::TCP_FASTOPEN,
        For::TcpIdle,
        When::Normal,
        4,
    ),
    // (settable only before listen)
    (
        libc::SOL_TCP,
        libc::TCP_FASTOPEN_CONNECT,
        For::TcpIdle,
        When::Early,
        4,
    ),
    (
        libc::SOL_TCP,
        TCP_FASTOPEN_NO_COOKIE,
        For::Tcp,
        When::Normal,
        4,
    ),
    (libc::SOL_UDP, libc::UDP_CORK, For::Udp, When::Normal, 4),
    (libc::SOL_UDP, libc::UDP_SEGMENT, For::Udp, When::Normal, 4),
    (libc::SOL_UDP, libc::UDP_GRO, For::Udp, When::Normal, 4),
];

/// Whether option row `f` applies to a socket of `family` and `proto`
/// (`idle`: a TCP socket closed or listening).
fn applies(f: For, family: i32, proto: i32, idle: bool) -> bool {
    let inet = family == libc::AF_INET || family == libc::AF_INET6;
    match f {
        For::Any => true,
        For::Inet => inet,
        For::Ip4 => family == libc::AF_INET,
        For::Ip6 => family == libc::AF_INET6,
        For::Tcp => inet && proto == libc::IPPROTO_TCP,
        For::TcpIdle => inet && proto == libc::IPPROTO_TCP && idle,
        For::Udp => inet && proto == libc::IPPROTO_UDP,
        For::Ip4Dgram => family == libc::AF_INET && proto != libc::IPPROTO_TCP,
        For::Ip6Dgram => family == libc::AF_INET6 && proto != libc::IPPROTO_TCP,
    }
}

/// The options of [`RAW`] a socket has (one the kernel refuses to read
/// for this socket is left out).
fn dump_raw(fd: &impl AsFd) -> Vec<CrestSockopt> {
    let fd = fd.as_fd();
    let family = getsockopt_int(&fd, SOL, libc::SO_DOMAIN).unwrap_or(-1);
    let proto = getsockopt_int(&fd, SOL, libc::SO_PROTOCOL).unwrap_or(-1);
    // TCP_CLOSE 7, TCP_LISTEN 10: the first byte of TCP_INFO
    let idle = getsockopt_bytes(&fd, libc::SOL_TCP, libc::TCP_INFO, 1)
        .is_ok_and(|b| b.first().is_some_and(|s| [7, 10].contains(s)));
    RAW.iter()
        .filter(|r| applies(r.2, family, proto, idle))
        .filter_map(|&(level, name, _, _, len)| {
            let value = getsockopt_bytes(&fd, level, name, len).ok()?;
            Some(CrestSockopt { level, name, value })
        })
        .collect()
}

/// Sets the carried options of one phase that differ on the new socket.
fn restore_raw(fd: &impl AsFd, o: &SkOptsEntry, when: When) -> io::Result<()> {
    let fd = fd.as_fd();
    for opt in &o.crest_raw {
        let phase = RAW
            .iter()
            .find(|r| r.0 == opt.level && r.1 == opt.name)
            .map_or(When::Normal, |r| r.3);
        if phase != when {
            continue;
        }
        let now = getsockopt_bytes(&fd, opt.level, opt.name, opt.value.len().max(4)).ok();
        if now.as_deref() == Some(&opt.value[..]) {
            continue;
        }
        setsockopt_bytes(&fd, opt.level, opt.name, &opt.value).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("setsockopt(level {}, option {}): {e}", opt.level, opt.name),
            )
        })?;
    }
    Ok(())
}

/// The options that must be in place before the socket is bound
/// (`IP_FREEBIND`, `IP_TRANSPARENT`, the bound device, ...).
pub fn restore_early(fd: &impl AsFd, o: &SkOptsEntry) -> io::Result<()> {
    let fd = fd.as_fd();
    if let Some(dev) = o.so_bound_dev.as_deref().filter(|d| !d.is_empty()) {
        setsockopt_bytes(&fd, SOL, libc::SO_BINDTODEVICE, dev.as_bytes())
            .map_err(|e| io::Error::new(e.kind(), format!("SO_BINDTODEVICE {dev}: {e}")))?;
    }
    restore_raw(&fd, o, When::Early)
}

fn timeval(fd: &impl AsFd, name: i32) -> io::Result<(u64, u64)> {
    let b = getsockopt_bytes(&fd.as_fd(), SOL, name, 16)?;
    let word = |i: usize| {
        b.get(i..i + 8)
            .and_then(|s| s.try_into().ok())
            .map_or(0, i64::from_ne_bytes)
    };
    Ok((word(0).max(0) as u64, word(8).max(0) as u64))
}

/// The options of a socket.
pub fn dump(fd: &impl AsFd) -> io::Result<SkOptsEntry> {
    let fd = fd.as_fd();
    let int = |name| getsockopt_int(&fd, SOL, name);
    let flag = |name| int(name).map(|v| v != 0);
    let (snd_s, snd_us) = timeval(&fd, libc::SO_SNDTIMEO)?;
    let (rcv_s, rcv_us) = timeval(&fd, libc::SO_RCVTIMEO)?;
    Ok(SkOptsEntry {
        so_sndbuf: int(libc::SO_SNDBUF)? as u32,
        so_rcvbuf: int(libc::SO_RCVBUF)? as u32,
        so_snd_tmo_sec: snd_s,
        so_snd_tmo_usec: snd_us,
        so_rcv_tmo_sec: rcv_s,
        so_rcv_tmo_usec: rcv_us,
        // The kernel does not know every option for every family: such
        // an option is left out.
        reuseaddr: flag(libc::SO_REUSEADDR).ok(),
        so_priority: int(libc::SO_PRIORITY).ok().map(|v| v as u32),
        so_rcvlowat: int(libc::SO_RCVLOWAT).ok().map(|v| v as u32),
        so_mark: int(libc::SO_MARK).ok().map(|v| v as u32),
        so_passcred: flag(libc::SO_PASSCRED).ok(),
        so_passsec: flag(libc::SO_PASSSEC).ok(),
        so_dontroute: flag(libc::SO_DONTROUTE).ok(),
        so_no_check: flag(libc::SO_NO_CHECK).ok(),
        so_bound_dev: getsockopt_bytes(&fd, SOL, libc::SO_BINDTODEVICE, 16)
            .ok()
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .trim_end_matches('\0')
                    .to_string()
            })
            .filter(|d| !d.is_empty()),
        so_filter: crest_sys::net::get_filter(&fd).map_err(|e| {
            if e.raw_os_error() == Some(libc::EACCES) {
                // (the kernel keeps no program it can give back for a
                // filter attached with SO_ATTACH_BPF)
                io::Error::other("an eBPF socket filter (SO_ATTACH_BPF), which crest cannot read")
            } else {
                e
            }
        })?,
        so_reuseport: flag(libc::SO_REUSEPORT).ok(),
        crest_raw: dump_raw(&fd),
        crest_mcast: Vec::new(),
    })
}

/// Sets a buffer size with `force` (`SO_SNDBUFFORCE`, `SO_RCVBUFFORCE`)
/// to `half` (the kernel doubles it); without CAP_NET_ADMIN (an
/// unprivileged restore) with `plain`, which the kernel caps at
/// `net.core.[wr]mem_max`. Returns the size the kernel reports now.
pub fn set_buf(fd: &impl AsFd, plain: i32, force: i32, half: i32) -> io::Result<i32> {
    let fd = fd.as_fd();
    match setsockopt_int(&fd, SOL, force, half) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            setsockopt_int(&fd, SOL, plain, half)?;
        }
        r => r?,
    }
    getsockopt_int(&fd, SOL, plain)
}

/// The last of a socket made again: its options ([`restore`]) and its
/// file status flags (`O_NONBLOCK`, `O_ASYNC` of `flags`).
pub fn restore_last(fd: &impl AsFd, o: &SkOptsEntry, flags: u32) -> io::Result<()> {
    restore(fd, o)?;
    let status = libc::O_NONBLOCK | libc::O_ASYNC;
    crest_sys::net::set_status_flags(&fd.as_fd(), flags as i32 & status)
}

/// Sets the options of `o` that differ from what the new socket has (after
/// [`restore_early`] and `bind`). A buffer size is set with the `*FORCE`
/// option to half the value read at dump (the kernel doubles what it is
/// given), so it comes back exact.
pub fn restore(fd: &impl AsFd, o: &SkOptsEntry) -> io::Result<()> {
    let fd = fd.as_fd();
    let int = |name| getsockopt_int(&fd, SOL, name);
    let set = |name, v: i32| setsockopt_int(&fd, SOL, name, v);
    for (plain, force, want) in [
        (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, o.so_sndbuf),
        (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, o.so_rcvbuf),
    ] {
        if int(plain)? as u32 != want {
            let got = set_buf(&fd, plain, force, (want / 2) as i32)?;
            if got as u32 != want {
                return Err(io::Error::other(format!(
                    "{} of {want} bytes: the kernel gave {got} (more than net.core.{}mem_max, \
                     and forcing it needs CAP_NET_ADMIN)",
                    if plain == libc::SO_SNDBUF {
                        "SO_SNDBUF"
                    } else {
                        "SO_RCVBUF"
                    },
                    if plain == libc::SO_SNDBUF { 'w' } else { 'r' }
                )));
            }
        }
    }
    for (name, s, us) in [
        (libc::SO_SNDTIMEO, o.so_snd_tmo_sec, o.so_snd_tmo_usec),
        (libc::SO_RCVTIMEO, o.so_rcv_tmo_sec, o.so_rcv_tmo_usec),
    ] {
        if s != 0 || us != 0 {
            let mut tv = (s as i64).to_ne_bytes().to_vec();
            tv.extend_from_slice(&(us as i64).to_ne_bytes());
            setsockopt_bytes(&fd, SOL, name, &tv)?;
        }
    }
    let flags = [
        (libc::SO_REUSEADDR, o.reuseaddr),
        (libc::SO_PASSCRED, o.so_passcred),
        (libc::SO_PASSSEC, o.so_passsec),
        (libc::SO_DONTROUTE, o.so_dontroute),
        (libc::SO_NO_CHECK, o.so_no_check),
        (libc::SO_REUSEPORT, o.so_reuseport),
    ];
    for (name, v) in flags {
        if let Some(v) = v {
            if (int(name)? != 0) != v {
                set(name, i32::from(v))?;
            }
        }
    }
    for (name, v) in [
        (libc::SO_PRIORITY, o.so_priority),
        (libc::SO_RCVLOWAT, o.so_rcvlowat),
        (libc::SO_MARK, o.so_mark),
    ] {
        if let Some(v) = v {
            if int(name)? as u32 != v {
                set(name, v as i32)?;
            }
        }
    }
    restore_raw(&fd, o, When::Normal)?;
    if !o.so_filter.is_empty() {
        crest_sys::net::attach_filter(&fd, &o.so_filter)
            .map_err(|e| io::Error::new(e.kind(), format!("SO_ATTACH_FILTER: {e}")))?;
    }
    restore_raw(&fd, o, When::Last)
}
