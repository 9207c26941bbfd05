//! Multicast group memberships of a UDP socket (`IP_ADD_MEMBERSHIP`,
//! `MCAST_JOIN_GROUP`, `MCAST_JOIN_SOURCE_GROUP` and their IPv6 twins) with
//! their source filters. The kernel lists no socket's groups, so crest asks
//! the socket about every group that some socket of the namespace joined
//! (`/proc/PID/net/igmp`, `igmp6`): `getsockopt(MCAST_MSFILTER)` answers a
//! joined group's filter mode and sources, and `EADDRNOTAVAIL` for any
//! other. They ride as `sk_opts_entry.crest_mcast`; at restore the socket
//! joins each group again (`MCAST_JOIN_GROUP`) and gets its filter back.

use crest_images::pb::crest::CrestMcast;
use crest_sys::net::{getsockopt_inout, setsockopt_bytes};
use std::io;
use std::os::fd::AsFd;

const MCAST_JOIN_GROUP: i32 = 42;
const MCAST_MSFILTER: i32 = 48;
const MCAST_INCLUDE: u32 = 1;
/// `struct group_filter`: interface, group, mode, count, then the sources
/// (each a `sockaddr_storage`).
const SS: usize = 128;
const GF_GROUP: usize = 8;
const GF_FMODE: usize = GF_GROUP + SS;
const GF_NUMSRC: usize = GF_FMODE + 4;
const GF_SLIST: usize = GF_NUMSRC + 4;
/// Most sources a filter may hold for crest (the kernel's own limits,
/// `igmp_max_msf` and `mld_max_msf`, are 10 and 64 by default).
const MAX_SOURCES: usize = 4096;

/// A `sockaddr_storage` holding `addr` (4 bytes for IPv4, 16 for IPv6).
fn sockaddr(addr: &[u8]) -> [u8; SS] {
    let mut ss = [0u8; SS];
    if addr.len() == 4 {
        ss[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        ss[4..8].copy_from_slice(addr);
    } else if addr.len() == 16 {
        ss[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        ss[8..24].copy_from_slice(addr);
    }
    ss
}

/// The address a `sockaddr_storage` holds.
fn addr_of(ss: &[u8]) -> Vec<u8> {
    let family = ss.get(..2).map_or(0, |b| u16::from_ne_bytes([b[0], b[1]]));
    match i32::from(family) {
        libc::AF_INET => ss.get(4..8).map(<[u8]>::to_vec).unwrap_or_default(),
        libc::AF_INET6 => ss.get(8..24).map(<[u8]>::to_vec).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The (interface index, group) pairs of `/proc/PID/net/igmp`: a device
/// line starts with its index, its groups follow indented, each as the
/// 32-bit word in hex the way the host stores it.
pub fn parse_igmp(text: &str) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dev: Option<u32> = None;
    for line in text.lines().skip(1) {
        let first = line.split_whitespace().next().unwrap_or("");
        if !line.starts_with(char::is_whitespace) {
            dev = first.parse().ok();
            continue;
        }
        let (Some(ifindex), Ok(word)) = (dev, u32::from_str_radix(first, 16)) else {
            continue;
        };
        out.push((ifindex, word.to_ne_bytes().to_vec()));
    }
    out
}

/// The (interface index, group) pairs of `/proc/PID/net/igmp6`: index,
/// device, the group as 32 hex digits, then counters.
pub fn parse_igmp6(text: &str) -> Vec<(u32, Vec<u8>)> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let ifindex = f.next()?.parse().ok()?;
            let hex = f.nth(1)?;
            if hex.len() != 32 {
                return None;
            }
            let group = (0..16)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            Some((ifindex, group))
        })
        .collect()
}

/// The level a group's options are at: IP for an IPv4 group (an IPv6
/// socket may join those too), IPv6 for an IPv6 one.
fn level(group: &[u8]) -> i32 {
    if group.len() == 16 {
        libc::IPPROTO_IPV6
    } else {
        libc::IPPROTO_IP
    }
}

/// The groups socket `fd` (of `family`, in the network namespace of task
/// `pid`) joined, with their filters: IPv4 groups, and for an IPv6 socket
/// IPv6 groups too.
pub fn dump(pid: i32, fd: &impl AsFd, family: u32) -> io::Result<Vec<CrestMcast>> {
    let mut kinds = vec![("igmp", parse_igmp as fn(&str) -> Vec<(u32, Vec<u8>)>)];
    if family == libc::AF_INET6 as u32 {
        kinds.push(("igmp6", parse_igmp6));
    }
    let mut out = Vec::new();
    for (file, parse) in kinds {
        let path = format!("/proc/{pid}/net/{file}");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // (no IPv6 in the namespace)
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{path}: {e}"))),
        };
        let mut groups = parse(&text);
        groups.sort();
        groups.dedup();
        for (ifindex, group) in groups {
            if let Some(m) = ask(fd, ifindex, &group)? {
                out.push(m);
            }
        }
    }
    Ok(out)
}

/// The socket's membership of `group` on `ifindex`, if it has one.
fn ask(fd: &impl AsFd, ifindex: u32, group: &[u8]) -> io::Result<Option<CrestMcast>> {
    let mut room = 16usize;
    loop {
        let mut buf = vec![0u8; GF_SLIST + room * SS];
        buf[..4].copy_from_slice(&ifindex.to_ne_bytes());
        buf[GF_GROUP..GF_FMODE].copy_from_slice(&sockaddr(group));
        buf[GF_NUMSRC..GF_SLIST].copy_from_slice(&(room as u32).to_ne_bytes());
        match getsockopt_inout(&fd.as_fd(), level(group), MCAST_MSFILTER, &mut buf) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => return Ok(None),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("MCAST_MSFILTER of group {group:?} on interface {ifindex}: {e}"),
                ))
            }
        }
        let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let count = word(GF_NUMSRC) as usize;
        if count > room {
            if count > MAX_SOURCES {
                return Err(io::Error::other(format!(
                    "a multicast group with {count} sources, more than {MAX_SOURCES}"
                )));
            }
            room = count;
            continue;
        }
        let sources = (0..count)
            .map(|i| addr_of(&buf[GF_SLIST + i * SS..GF_SLIST + (i + 1) * SS]))
            .collect();
        return Ok(Some(CrestMcast {
            ifindex,
            group: group.to_vec(),
            fmode: word(GF_FMODE),
            sources,
        }));
    }
}

/// Joins socket `fd` to each group again, with its filter.
pub fn restore(fd: &impl AsFd, groups: &[CrestMcast]) -> io::Result<()> {
    let fd = fd.as_fd();
    for m in groups {
        if m.sources.len() > MAX_SOURCES || ![4, 16].contains(&m.group.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a multicast group of {} bytes with {} sources",
                    m.group.len(),
                    m.sources.len()
                ),
            ));
        }
        let mut req = vec![0u8; GF_FMODE];
        req[..4].copy_from_slice(&m.ifindex.to_ne_bytes());
        req[GF_GROUP..].copy_from_slice(&sockaddr(&m.group));
        let what = |e: io::Error, opt: &str| {
            io::Error::new(
                e.kind(),
                format!(
                    "{opt} of group {:?} on interface {}: {e}",
                    m.group, m.ifindex
                ),
            )
        };
        setsockopt_bytes(&fd, level(&m.group), MCAST_JOIN_GROUP, &req)
            .map_err(|e| what(e, "MCAST_JOIN_GROUP"))?;
        if m.fmode != MCAST_INCLUDE && m.sources.is_empty() {
            continue; // (what a plain join gives)
        }
        let mut gf = vec![0u8; GF_SLIST + m.sources.len() * SS];
        gf[..GF_FMODE].copy_from_slice(&req);
        gf[GF_FMODE..GF_NUMSRC].copy_from_slice(&m.fmode.to_ne_bytes());
        gf[GF_NUMSRC..GF_SLIST].copy_from_slice(&(m.sources.len() as u32).to_ne_bytes());
        for (i, s) in m.sources.iter().enumerate() {
            gf[GF_SLIST + i * SS..GF_SLIST + (i + 1) * SS].copy_from_slice(&sockaddr(s));
        }
        setsockopt_bytes(&fd, level(&m.group), MCAST_MSFILTER, &gf)
            .map_err(|e| what(e, "MCAST_MSFILTER"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn igmp_lists_groups_by_device() {
        let text = "Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter\n\
                    1\tlo        :     2      V3\n\
                    \t\t\t\t030201EF     1 0:00000000\t\t0\n\
                    \t\t\t\t010000E0     1 0:00000000\t\t0\n\
                    2\teth0      :     1      V3\n\
                    \t\t\t\t010000E0     1 0:00000000\t\t0\n";
        let g = parse_igmp(text);
        let host = |w: u32| w.to_ne_bytes().to_vec();
        assert_eq!(
            g,
            vec![
                (1, host(0x0302_01EF)),
                (1, host(0x0100_00E0)),
                (2, host(0x0100_00E0))
            ]
        );
        if cfg!(target_endian = "little") {
            assert_eq!(g[0].1, vec![239, 1, 2, 3]);
        }
    }

    #[test]
    fn igmp6_lists_groups() {
        let text = "1    lo              ff150000000000000000000000000001     1 00000004 0\n\
                    2    eth0            ff020000000000000000000000000001     1 0000000C 0\n\
                    bad line\n";
        let g = parse_igmp6(text);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].0, 1);
        assert_eq!(g[0].1[0], 0xff);
        assert_eq!(g[0].1[1], 0x15);
        assert_eq!(g[0].1[15], 1);
    }

    #[test]
    fn sockaddrs_hold_their_address() {
        for a in [vec![239u8, 1, 2, 3], (0u8..16).collect::<Vec<u8>>()] {
            assert_eq!(addr_of(&sockaddr(&a)), a);
        }
        assert!(addr_of(&[0u8; SS]).is_empty());
    }
}
