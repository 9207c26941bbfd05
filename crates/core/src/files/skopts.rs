//! Socket options every socket kind has (`sk_opts_entry`): read from
//! crest's copy of a task's socket at dump, set on crest's copy of the new
//! socket at restore (the copy and the task's fd are one socket).

use crest_images::pb::SkOptsEntry;
use crest_sys::net::{getsockopt_bytes, getsockopt_int, setsockopt_bytes, setsockopt_int};
use std::io;
use std::os::fd::AsFd;

const SOL: i32 = libc::SOL_SOCKET;

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
        so_bound_dev: None,
        so_filter: Vec::new(),
        so_reuseport: flag(libc::SO_REUSEPORT).ok(),
    })
}

/// Sets the options of `o` that differ from what the new socket has. A
/// buffer size is set with the `*FORCE` option to half the value read at
/// dump (the kernel doubles what it is given), so it comes back exact.
pub fn restore(fd: &impl AsFd, o: &SkOptsEntry) -> io::Result<()> {
    let fd = fd.as_fd();
    let int = |name| getsockopt_int(&fd, SOL, name);
    let set = |name, v: i32| setsockopt_int(&fd, SOL, name, v);
    if int(libc::SO_SNDBUF)? as u32 != o.so_sndbuf {
        set(libc::SO_SNDBUFFORCE, (o.so_sndbuf / 2) as i32)?;
    }
    if int(libc::SO_RCVBUF)? as u32 != o.so_rcvbuf {
        set(libc::SO_RCVBUFFORCE, (o.so_rcvbuf / 2) as i32)?;
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
    Ok(())
}
