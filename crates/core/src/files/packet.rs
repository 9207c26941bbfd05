//! Packet sockets (`AF_PACKET`, `SOCK_RAW` and `SOCK_DGRAM`), in CRIU's
//! `packet_sock_entry` (`file_entry.psk`).
//!
//! Dump reads from crest's copy the protocol, the interface it is bound to
//! (`getsockname`), the `SOL_PACKET` options and its fanout group, and from
//! sock_diag its multicast memberships (no `getsockopt` shows them). An
//! old `SOCK_PACKET` socket is bound by device name and has no
//! `SOL_PACKET` options: its name and protocol are carried. Its rings
//! (`PACKET_RX_RING`/`TX_RING`) are `packet_ring`'s. One crest cannot see
//! in sock_diag is refused.
//! Packets waiting in its queue are frames off the wire: they are left
//! behind, as CRIU does, and the log says how many bytes.
//!
//! Restore makes the socket in the task (its net namespace), sets the
//! options, binds it to the same interface index, joins its memberships
//! and its fanout group, on crest's copy.

use super::kept::Kept;
use super::{packet_ring, skopts};
use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::files::error::FileError;
use crest_images::names;
use crest_images::pb::{FdTypes, FileEntry, FownEntry, PacketMclist, PacketRing, PacketSockEntry};
use crest_inject::Tracee;
use crest_sys::net::{getsockopt_int, setsockopt_bytes, setsockopt_int};
use std::os::fd::OwnedFd;

const SOL_PACKET: i32 = 263;
/// The old packet interface's socket type (libc marks it deprecated).
const SOCK_PACKET: i32 = 10;
const PACKET_ADD_MEMBERSHIP: i32 = 1;
const PACKET_COPY_THRESH: i32 = 7;
const PACKET_AUXDATA: i32 = 8;
const PACKET_ORIGDEV: i32 = 9;
const PACKET_VERSION: i32 = 10;
const PACKET_RESERVE: i32 = 12;
const PACKET_LOSS: i32 = 14;
const PACKET_VNET_HDR: i32 = 15;
const PACKET_TIMESTAMP: i32 = 17;
const PACKET_FANOUT: i32 = 18;
const PACKET_QDISC_BYPASS: i32 = 20;
const PACKET_IGNORE_OUTGOING: i32 = 23;
const TPACKET_V3: u32 = 2;
/// Most memberships crest takes from an image for one socket.
const MAX_MEMBERSHIPS: usize = 4096;

/// `struct sockaddr_ll` bound to `ifindex` for `protocol` (network order).
fn sockaddr_ll(protocol: u16, ifindex: u32) -> Vec<u8> {
    let mut a = (libc::AF_PACKET as u16).to_ne_bytes().to_vec();
    a.extend_from_slice(&protocol.to_ne_bytes());
    a.extend_from_slice(&ifindex.to_ne_bytes());
    a.extend_from_slice(&[0u8; 12]);
    a
}

/// (protocol, ifindex) of a `struct sockaddr_ll`.
fn parse_ll(a: &[u8]) -> Option<(u16, u32)> {
    let p = u16::from_ne_bytes(a.get(2..4)?.try_into().ok()?);
    let i = u32::from_ne_bytes(a.get(4..8)?.try_into().ok()?);
    Some((p, i))
}

/// The multicast memberships of a packet socket, one entry per
/// membership (sock_diag gives each address once with its count).
fn mclist_of(diag: &[(u32, u32, u16, Vec<u8>)]) -> Vec<PacketMclist> {
    let mut out = Vec::new();
    for (index, count, ty, addr) in diag {
        for _ in 0..*count {
            out.push(PacketMclist {
                index: *index,
                r#type: u32::from(*ty),
                addr: addr.clone(),
            });
        }
    }
    out
}

/// `struct packet_mreq`: ifindex, type, alen, address[8].
fn packet_mreq(index: u32, ty: u16, addr: &[u8]) -> Vec<u8> {
    let mut m = index.to_ne_bytes().to_vec();
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&(addr.len().min(8) as u16).to_ne_bytes());
    let mut a = [0u8; 8];
    a[..addr.len().min(8)].copy_from_slice(&addr[..addr.len().min(8)]);
    m.extend_from_slice(&a);
    m
}

/// The rings of packet socket `copy` (fd `fd` of `pid`, of TPACKET
/// `version`) and how far the kernel moved on in the RX one, refused
/// where crest cannot make them again where the kernel stood.
fn rings(
    pid: i32,
    fd: i32,
    copy: &OwnedFd,
    version: u32,
    diag: &super::sockdiag::PacketDiag,
) -> Result<(Option<PacketRing>, Option<PacketRing>, u32), DumpError> {
    let (rx, tx) = (
        diag.rx_ring.map(packet_ring::entry),
        diag.tx_ring.map(packet_ring::entry),
    );
    if rx.is_none() && tx.is_none() {
        return Ok((rx, tx, 0));
    }
    let advance = packet_ring::position(copy, version, (rx.as_ref(), tx.as_ref()))
        .at(pid, "read a packet socket's rings")?
        .map_err(|kind| FileError::UnsupportedFd { fd, kind }.in_dump(pid))?;
    if advance > 0 && diag.num == 0 {
        return Err(FileError::UnsupportedFd {
            fd,
            kind: "a packet socket of protocol 0 whose RX ring the kernel wrote into".into(),
        }
        .in_dump(pid));
    }
    Ok((rx, tx, advance))
}

impl super::table::FileTable {
    pub(crate) fn dump_packet(
        &mut self,
        pid: i32,
        fd: i32,
        ino: u32,
        flags: u32,
        copy: &OwnedFd,
    ) -> Result<u32, DumpError> {
        let unsupported = |kind: String| FileError::UnsupportedFd { fd, kind }.in_dump(pid);
        let int = |n| getsockopt_int(copy, SOL_PACKET, n);
        let ty = getsockopt_int(copy, libc::SOL_SOCKET, libc::SO_TYPE).at(pid, "SO_TYPE")?;
        if ty != libc::SOCK_RAW && ty != libc::SOCK_DGRAM && ty != SOCK_PACKET {
            return Err(unsupported(format!("a packet socket of type {ty}")));
        }
        let ctx = self.unix.ctx.unwrap_or(pid);
        let diag = super::sockdiag::packet_socket(ctx, ino)
            .at(pid, "sock_diag of packet sockets")?
            .ok_or_else(|| {
                unsupported(format!(
                    "a packet socket (inode {ino}) sock_diag does not list"
                ))
            })?;
        let local = crest_sys::net::getsockname(copy).at(pid, "getsockname")?;
        if ty == SOCK_PACKET {
            return self.dump_spkt(pid, fd, flags, copy, &local, diag.num);
        }
        let (protocol, ifindex) = parse_ll(&local)
            .ok_or_else(|| unsupported("a packet socket with an odd address".into()))?;
        let version = int(PACKET_VERSION).at(pid, "PACKET_VERSION")? as u32;
        let (rx, tx, advance) = rings(pid, fd, copy, version, &diag)?;
        let mclist = mclist_of(&diag.mclist);
        let queued = crest_sys::net::ioctl_int(copy, libc::FIONREAD).unwrap_or(0);
        if queued > 0 {
            crate::warn!(
                "fd {fd} of pid {pid}: the {queued} bytes of frames waiting on a packet socket \
                 are left behind"
            );
        }
        let fanout = int(PACKET_FANOUT).at(pid, "PACKET_FANOUT")? as u32;
        let flag = |n| int(n).map(|v| v != 0);
        let entry = PacketSockEntry {
            id: 0,
            r#type: ty as u32,
            protocol: u32::from(protocol),
            flags,
            ifindex,
            fown: FownEntry::default(),
            opts: skopts::dump(copy).at(pid, "read socket options")?,
            version,
            reserve: int(PACKET_RESERVE).at(pid, "PACKET_RESERVE")? as u32,
            aux_data: flag(PACKET_AUXDATA).at(pid, "PACKET_AUXDATA")?,
            orig_dev: flag(PACKET_ORIGDEV).at(pid, "PACKET_ORIGDEV")?,
            vnet_hdr: flag(PACKET_VNET_HDR).at(pid, "PACKET_VNET_HDR")?,
            loss: flag(PACKET_LOSS).at(pid, "PACKET_LOSS")?,
            timestamp: int(PACKET_TIMESTAMP).at(pid, "PACKET_TIMESTAMP")? as u32,
            // (the kernel keeps no readable copy threshold; CRIU writes 0)
            copy_thresh: 0,
            mclist,
            fanout: (fanout != 0).then_some(fanout),
            rx_ring: rx,
            tx_ring: tx,
            crest_qdisc_bypass: flag(PACKET_QDISC_BYPASS).ok(),
            crest_ignore_outgoing: flag(PACKET_IGNORE_OUTGOING).ok(),
            crest_rx_advance: (advance > 0).then_some(advance),
        };
        let id = self.push(FileEntry {
            r#type: FdTypes::Packetsk as i32,
            id: 0,
            psk: Some(PacketSockEntry { id: 0, ..entry }),
            ..FileEntry::default()
        });
        Ok(id)
    }
}

impl super::table::FileTable {
    /// An old `SOCK_PACKET` socket: bound by device name (`sockaddr_pkt`,
    /// whose name is kept as the device's index in the socket's network
    /// namespace), its protocol from sock_diag; it has no `SOL_PACKET`
    /// options.
    fn dump_spkt(
        &mut self,
        pid: i32,
        fd: i32,
        flags: u32,
        copy: &OwnedFd,
        local: &[u8],
        num: u16,
    ) -> Result<u32, DumpError> {
        let name = local.get(2..16).unwrap_or_default();
        let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
        let ifindex = if name.is_empty() {
            0
        } else {
            crest_sys::net::if_index(copy, name).map_err(|e| {
                FileError::UnsupportedFd {
                    fd,
                    kind: format!(
                        "a SOCK_PACKET socket bound to {} ({e})",
                        String::from_utf8_lossy(name)
                    ),
                }
                .in_dump(pid)
            })?
        };
        let entry = PacketSockEntry {
            id: 0,
            r#type: SOCK_PACKET as u32,
            // (network order, as the other types keep it)
            protocol: u32::from(num.to_be()),
            flags,
            ifindex,
            fown: FownEntry::default(),
            opts: skopts::dump(copy).at(pid, "read socket options")?,
            ..PacketSockEntry::default()
        };
        Ok(self.push(FileEntry {
            r#type: FdTypes::Packetsk as i32,
            id: 0,
            psk: Some(entry),
            ..FileEntry::default()
        }))
    }
}

/// Makes an old `SOCK_PACKET` socket of `s` in task `t`: bound by the
/// name its interface has in the task's network namespace.
fn make_spkt(t: &mut Tracee, s: &PacketSockEntry, kept: &mut Kept) -> Result<(), RestoreError> {
    let pid = t.pid();
    let at = |what: &str| {
        format!(
            "SOCK_PACKET socket {} (ifindex {}): {what}",
            s.id, s.ifindex
        )
    };
    let c = kept.new_socket(t, s.id, (libc::AF_PACKET as u32, s.r#type, s.protocol))?;
    skopts::restore_early(&c, &s.opts).rat(pid, at("options before bind"))?;
    if s.ifindex != 0 {
        let name = crest_sys::net::if_name(&c, s.ifindex).rat(pid, at("SIOCGIFNAME"))?;
        // struct sockaddr_pkt: family, device[14], protocol
        let mut a = (libc::AF_PACKET as u16).to_ne_bytes().to_vec();
        let mut dev = [0u8; 14];
        let n = name.len().min(13);
        dev[..n].copy_from_slice(&name[..n]);
        a.extend_from_slice(&dev);
        a.extend_from_slice(&(s.protocol as u16).to_ne_bytes());
        // (bind wants the size of a struct sockaddr)
        a.truncate(16);
        crest_sys::net::bind(&c, &a).rat(pid, at("bind"))?;
    }
    skopts::restore_last(&c, &s.opts, s.flags).rat(pid, at("options and flags"))
}

/// Sets the packet options of `s` on socket `c`, the ring format first
/// (the others may depend on it); a failed one is named.
fn set_packet_opts(c: &OwnedFd, s: &PacketSockEntry) -> Result<(), (&'static str, std::io::Error)> {
    let set = |n: i32, v: i32, what: &'static str| -> Result<(), (&'static str, std::io::Error)> {
        if getsockopt_int(c, SOL_PACKET, n).ok() != Some(v) {
            setsockopt_int(c, SOL_PACKET, n, v).map_err(|e| (what, e))?;
        }
        Ok(())
    };
    set(PACKET_VERSION, s.version as i32, "PACKET_VERSION")?;
    set(PACKET_RESERVE, s.reserve as i32, "PACKET_RESERVE")?;
    set(PACKET_AUXDATA, i32::from(s.aux_data), "PACKET_AUXDATA")?;
    set(PACKET_ORIGDEV, i32::from(s.orig_dev), "PACKET_ORIGDEV")?;
    set(PACKET_VNET_HDR, i32::from(s.vnet_hdr), "PACKET_VNET_HDR")?;
    set(PACKET_LOSS, i32::from(s.loss), "PACKET_LOSS")?;
    set(PACKET_TIMESTAMP, s.timestamp as i32, "PACKET_TIMESTAMP")?;
    if s.copy_thresh != 0 {
        setsockopt_int(c, SOL_PACKET, PACKET_COPY_THRESH, s.copy_thresh as i32)
            .map_err(|e| ("PACKET_COPY_THRESH", e))?;
    }
    if let Some(v) = s.crest_qdisc_bypass {
        set(PACKET_QDISC_BYPASS, i32::from(v), "PACKET_QDISC_BYPASS")?;
    }
    if let Some(v) = s.crest_ignore_outgoing {
        set(
            PACKET_IGNORE_OUTGOING,
            i32::from(v),
            "PACKET_IGNORE_OUTGOING",
        )?;
    }
    Ok(())
}

/// Whether the packet socket of `s` (not `SOCK_PACKET`) is one crest
/// makes, and its RX ring one to move on: what in the image is not is
/// named.
fn checked(s: &PacketSockEntry) -> Result<bool, String> {
    let ty = s.r#type;
    if (ty != libc::SOCK_RAW as u32 && ty != libc::SOCK_DGRAM as u32)
        || s.protocol > 0xffff
        || s.mclist.len() > MAX_MEMBERSHIPS
        || !s
            .rx_ring
            .iter()
            .chain(s.tx_ring.iter())
            .all(packet_ring::sane)
    {
        return Err(format!(
            "type {ty}, protocol {:#x}, {} memberships, rings {:?} and {:?}",
            s.protocol,
            s.mclist.len(),
            s.rx_ring,
            s.tx_ring
        ));
    }
    let advance = s.crest_rx_advance.unwrap_or(0);
    match (&s.rx_ring, s.version == TPACKET_V3) {
        _ if advance == 0 => Ok(false),
        (Some(r), true) if advance <= r.block_nr && s.protocol != 0 => Ok(true),
        (Some(r), false) if advance < r.frame_nr && s.protocol != 0 => Ok(true),
        _ => Err(format!(
            "an RX ring moved on by {advance} (protocol {:#x}, ring {:?})",
            s.protocol, s.rx_ring
        )),
    }
}

/// Makes the packet socket of `s` in task `t` (see [`super::context::socket_once`]).
pub(crate) fn make(
    t: &mut Tracee,
    s: &PacketSockEntry,
    _: &mut super::context::RestoreFiles,
    kept: &mut Kept,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let at = |what: &str| format!("packet socket {} (ifindex {}): {what}", s.id, s.ifindex);
    let ty = s.r#type;
    if ty == SOCK_PACKET as u32 && s.protocol <= 0xffff && s.mclist.is_empty() {
        return make_spkt(t, s, kept);
    }
    let moved = checked(s).map_err(|what| {
        FileError::BadImage {
            file: names::FILES.into(),
            what: at(&what),
        }
        .in_restore(pid)
    })?;
    // (a ring to move on gets no frame but crest's until it is bound)
    let made_for = if moved { 0 } else { s.protocol };
    let c = kept.new_socket(t, s.id, (libc::AF_PACKET as u32, ty, made_for))?;
    skopts::restore_early(&c, &s.opts).rat(pid, at("options before bind"))?;
    set_packet_opts(&c, s).map_err(|(what, e)| RestoreError::Io {
        pid,
        step: at(what),
        source: e,
    })?;
    // (the rings after the version and reserve they are laid out by)
    for (r, tx) in [(&s.rx_ring, false), (&s.tx_ring, true)] {
        if let Some(r) = r {
            packet_ring::set(&c, s.version, r, tx).rat(pid, at("set a ring"))?;
        }
    }
    if let (true, Some(r)) = (moved, &s.rx_ring) {
        move_ring_on(t, &c, s, r)?;
    }
    if s.ifindex != 0 || moved {
        crest_sys::net::bind(&c, &sockaddr_ll(s.protocol as u16, s.ifindex))
            .rat(pid, at("bind"))?;
    }
    for m in &s.mclist {
        setsockopt_bytes(
            &c,
            SOL_PACKET,
            PACKET_ADD_MEMBERSHIP,
            &packet_mreq(m.index, m.r#type as u16, &m.addr),
        )
        .rat(
            pid,
            at(&format!(
                "join membership of type {} on {}",
                m.r#type, m.index
            )),
        )?;
    }
    if let Some(f) = s.fanout {
        setsockopt_int(&c, SOL_PACKET, PACKET_FANOUT, f as i32).rat(pid, at("PACKET_FANOUT"))?;
    }
    skopts::restore_last(&c, &s.opts, s.flags).rat(pid, at("options and flags"))
}

/// Moves the kernel on in the new RX ring `r` of socket `c` (of `s`) as
/// far as the image says ([`packet_ring::advance`]): `c` is bound to lo
/// for crest's ethertype, and a packet socket made in the task (its net
/// namespace), closed there once crest has its copy, sends the frames.
fn move_ring_on(
    t: &mut Tracee,
    c: &OwnedFd,
    s: &PacketSockEntry,
    r: &PacketRing,
) -> Result<(), RestoreError> {
    use crate::remote::{take_fd, Remote};
    let pid = t.pid();
    let by = s.crest_rx_advance.unwrap_or(0);
    let at = |what: &str| {
        format!(
            "packet socket {}: move the RX ring on by {by}: {what}",
            s.id
        )
    };
    let kind = (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64;
    let sock = t.call(
        crest_inject::nr::SOCKET,
        &[libc::AF_PACKET as u64, kind, 0],
        &at("a socket to send frames"),
    )?;
    let sender = t.with_fd(sock, |t, fd| take_fd(t.pid(), fd as u32))?;
    let lo = crest_sys::net::if_index(&sender, b"lo").rat(pid, at("find lo"))?;
    crest_sys::net::bind(c, &sockaddr_ll(packet_ring::FILL_ETHERTYPE.to_be(), lo))
        .rat(pid, at("bind to lo (is lo up in the task's namespace?)"))?;
    let total = (packet_ring::len(r) + s.tx_ring.as_ref().map_or(0, packet_ring::len)) as usize;
    packet_ring::advance(c, &sender, lo, (s.version, r, total), by).rat(pid, at("send frames"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a = sockaddr_ll(0x0300, 7);
        assert_eq!(a.len(), 20);
        assert_eq!(parse_ll(&a), Some((0x0300, 7)));
        let m = packet_mreq(1, 1, &[]);
        assert_eq!(m.len(), 16);
    }
}
