//! Netlink sockets, in CRIU's `netlink_sk_entry` (`file_entry.nlsk`).
//!
//! Dump reads everything from crest's copy of the socket: the protocol and
//! type, the port id it is bound to (`getsockname`), its multicast groups
//! (`NETLINK_LIST_MEMBERSHIPS`, any number of them), the port or group it
//! is connected to (`getpeername`), the `SOL_NETLINK` flags and the socket
//! options. A socket with messages waiting to be read is refused (they
//! are the kernel's answers or events, which crest cannot queue again),
//! as CRIU does.
//!
//! Restore makes the socket in the task (so it lives in the task's net
//! namespace), binds it to the same port id with the groups, connects it,
//! and sets the flags and options on crest's copy.

use super::kept::Kept;
use super::skopts;
use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::files::error::FileError;
use crest_images::names;
use crest_images::pb::{FdTypes, FileEntry, FownEntry, NetlinkSkEntry, NlSkOptsEntry};
use crest_inject::Tracee;
use crest_sys::net::{getsockopt_bytes, getsockopt_int, setsockopt_bytes, setsockopt_int};
use std::os::fd::OwnedFd;

const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_PKTINFO: i32 = 3;
const NETLINK_BROADCAST_ERROR: i32 = 4;
const NETLINK_NO_ENOBUFS: i32 = 5;
const NETLINK_LISTEN_ALL_NSID: i32 = 8;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;
const NETLINK_GET_STRICT_CHK: i32 = 12;
const CONNECTED: u32 = 1;
/// Most group words crest reads (8192 groups; generic netlink hands out
/// group numbers far below that).
const MAX_GROUP_WORDS: usize = 256;

/// `struct sockaddr_nl` for a port id and a group bitmap (32 groups).
fn sockaddr_nl(portid: u32, groups: u32) -> Vec<u8> {
    let mut a = (libc::AF_NETLINK as u16).to_ne_bytes().to_vec();
    a.extend_from_slice(&[0, 0]);
    a.extend_from_slice(&portid.to_ne_bytes());
    a.extend_from_slice(&groups.to_ne_bytes());
    a
}

/// (port id, groups) of a `struct sockaddr_nl`.
fn parse_nl(a: &[u8]) -> Option<(u32, u32)> {
    let word = |i: usize| Some(u32::from_ne_bytes(a.get(i..i + 4)?.try_into().ok()?));
    Some((word(4)?, word(8)?))
}

/// The group bitmap without its trailing empty words.
fn trim_groups(mut words: Vec<u32>) -> Vec<u32> {
    while words.last() == Some(&0) {
        words.pop();
    }
    words
}

/// Group numbers (1-based) of a bitmap.
fn group_numbers(words: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        for bit in 0..32 {
            if w & (1 << bit) != 0 {
                out.push(i as u32 * 32 + bit + 1);
            }
        }
    }
    out
}

impl super::table::FileTable {
    pub(crate) fn dump_netlink(
        &mut self,
        pid: i32,
        fd: i32,
        ino: u32,
        flags: u32,
        copy: &OwnedFd,
    ) -> Result<u32, DumpError> {
        let unsupported = |kind: String| FileError::UnsupportedFd { fd, kind }.in_dump(pid);
        let int = |l, n| getsockopt_int(copy, l, n);
        let ty = int(libc::SOL_SOCKET, libc::SO_TYPE).at(pid, "SO_TYPE")? as u32;
        let protocol = int(libc::SOL_SOCKET, libc::SO_PROTOCOL).at(pid, "SO_PROTOCOL")? as u32;
        // a message waiting (MSG_PEEK leaves it there)
        let mut probe = [0u8; 1];
        match crest_sys::net::recv(copy, &mut probe, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
            Ok(_) => {
                return Err(unsupported(format!(
                    "a netlink socket (protocol {protocol}) with messages waiting to be read"
                )))
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
            Err(e) => return Err(e).at(pid, "peek at a netlink socket"),
        }
        let local = crest_sys::net::getsockname(copy).at(pid, "getsockname")?;
        let (portid, _) = parse_nl(&local)
            .ok_or_else(|| unsupported("a netlink socket with an odd address".into()))?;
        let groups = groups_of(copy).at(pid, "NETLINK_LIST_MEMBERSHIPS")?;
        if portid == 0 && !groups.is_empty() {
            return Err(unsupported(
                "a netlink socket in multicast groups without a port id".into(),
            ));
        }
        let (dst_portid, dst_mask) = crest_sys::net::getpeername(copy)
            .ok()
            .as_deref()
            .and_then(parse_nl)
            .unwrap_or((0, 0));
        let dst_group = if dst_mask == 0 {
            0
        } else {
            dst_mask.trailing_zeros() + 1
        };
        let nl_opts = nl_opts(pid, copy)?;
        let opts = skopts::dump(copy).at(pid, "read socket options")?;
        let id = self.push(FileEntry {
            r#type: FdTypes::Netlinksk as i32,
            id: 0,
            nlsk: Some(NetlinkSkEntry {
                id: 0,
                ino,
                protocol,
                state: if dst_portid != 0 || dst_group != 0 {
                    CONNECTED
                } else {
                    0
                },
                flags,
                portid,
                groups,
                dst_portid,
                dst_group,
                fown: FownEntry::default(),
                opts,
                ns_id: None,
                nl_opts: Some(nl_opts),
                crest_type: Some(ty),
            }),
            ..FileEntry::default()
        });
        Ok(id)
    }
}

/// The netlink options of socket `copy` (of `pid`) CRIU carries, and the
/// two crest adds (extended acks, strict checking).
fn nl_opts(pid: i32, copy: &OwnedFd) -> Result<NlSkOptsEntry, DumpError> {
    let flag = |n| getsockopt_int(copy, SOL_NETLINK, n).map(|v| v != 0);
    Ok(NlSkOptsEntry {
        pktinfo: flag(NETLINK_PKTINFO).at(pid, "NETLINK_PKTINFO")?,
        broadcast_error: flag(NETLINK_BROADCAST_ERROR).at(pid, "NETLINK_BROADCAST_ERROR")?,
        no_enobufs: flag(NETLINK_NO_ENOBUFS).at(pid, "NETLINK_NO_ENOBUFS")?,
        listen_all_nsid: flag(NETLINK_LISTEN_ALL_NSID).at(pid, "NETLINK_LISTEN_ALL_NSID")?,
        cap_ack: flag(NETLINK_CAP_ACK).at(pid, "NETLINK_CAP_ACK")?,
        crest_ext_ack: flag(NETLINK_EXT_ACK).ok(),
        crest_get_strict_chk: flag(NETLINK_GET_STRICT_CHK).ok(),
    })
}

/// The multicast groups socket `copy` is in, as a bit mask of words.
fn groups_of(copy: &OwnedFd) -> std::io::Result<Vec<u32>> {
    let raw = getsockopt_bytes(
        copy,
        SOL_NETLINK,
        NETLINK_LIST_MEMBERSHIPS,
        MAX_GROUP_WORDS * 4,
    )?;
    Ok(trim_groups(
        raw.chunks_exact(4)
            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    ))
}

/// Makes the netlink socket of `s` in task `t` (see [`super::context::socket_once`]).
pub(crate) fn make(
    t: &mut Tracee,
    s: &NetlinkSkEntry,
    _: &mut super::context::RestoreFiles,
    kept: &mut Kept,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let at = |what: &str| format!("netlink socket {} (protocol {}): {what}", s.id, s.protocol);
    let ty = s.crest_type.unwrap_or(libc::SOCK_RAW as u32);
    if ty != libc::SOCK_RAW as u32 && ty != libc::SOCK_DGRAM as u32
        || s.groups.len() > MAX_GROUP_WORDS
    {
        return Err(FileError::BadImage {
            file: names::FILES.into(),
            what: at(&format!("type {ty} with {} group words", s.groups.len())),
        }
        .in_restore(pid));
    }
    let c = kept.new_socket(t, s.id, (libc::AF_NETLINK as u32, ty, s.protocol))?;
    skopts::restore_early(&c, &s.opts).rat(pid, at("options before bind"))?;
    if s.portid != 0 {
        let first = s.groups.first().copied().unwrap_or(0);
        crest_sys::net::bind(&c, &sockaddr_nl(s.portid, first))
            .rat(pid, at(&format!("bind to port id {}", s.portid)))?;
        for g in group_numbers(s.groups.get(1..).unwrap_or(&[])) {
            let g = g + 32;
            setsockopt_bytes(&c, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g.to_ne_bytes())
                .rat(pid, at(&format!("join group {g}")))?;
        }
    }
    if s.state == CONNECTED {
        let mask = match s.dst_group {
            0 => 0,
            g @ 1..=32 => 1u32 << (g - 1),
            g => {
                return Err(FileError::Unsupported {
                    what: at(&format!("a connection to group {g} (above 32)")),
                }
                .in_restore(pid))
            }
        };
        crest_sys::net::connect(&c, &sockaddr_nl(s.dst_portid, mask)).rat(pid, at("connect"))?;
    }
    if let Some(o) = &s.nl_opts {
        for (name, on, what) in [
            (NETLINK_PKTINFO, Some(o.pktinfo), "NETLINK_PKTINFO"),
            (
                NETLINK_BROADCAST_ERROR,
                Some(o.broadcast_error),
                "NETLINK_BROADCAST_ERROR",
            ),
            (NETLINK_NO_ENOBUFS, Some(o.no_enobufs), "NETLINK_NO_ENOBUFS"),
            (
                NETLINK_LISTEN_ALL_NSID,
                Some(o.listen_all_nsid),
                "NETLINK_LISTEN_ALL_NSID",
            ),
            (NETLINK_CAP_ACK, Some(o.cap_ack), "NETLINK_CAP_ACK"),
            (NETLINK_EXT_ACK, o.crest_ext_ack, "NETLINK_EXT_ACK"),
            (
                NETLINK_GET_STRICT_CHK,
                o.crest_get_strict_chk,
                "NETLINK_GET_STRICT_CHK",
            ),
        ] {
            let Some(on) = on else { continue };
            if getsockopt_int(&c, SOL_NETLINK, name).map(|v| v != 0).ok() != Some(on) {
                setsockopt_int(&c, SOL_NETLINK, name, i32::from(on)).rat(pid, at(what))?;
            }
        }
    }
    skopts::restore_last(&c, &s.opts, s.flags).rat(pid, at("options and flags"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_number() {
        assert_eq!(group_numbers(&[0b101, 1]), [1, 3, 33]);
        assert_eq!(trim_groups(vec![1, 0, 0]), [1]);
        assert!(trim_groups(vec![0, 0]).is_empty());
    }

    #[test]
    fn addresses_round_trip() {
        let a = sockaddr_nl(4242, 0x10);
        assert_eq!(a.len(), 12);
        assert_eq!(parse_nl(&a), Some((4242, 0x10)));
        assert_eq!(parse_nl(&a[..6]), None);
    }
}
