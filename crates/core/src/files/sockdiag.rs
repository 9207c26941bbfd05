//! `NETLINK_SOCK_DIAG` for unix sockets: every unix socket of a network
//! namespace with its name, bound inode, peer, pending connections
//! (`UNIX_DIAG_ICONS`) and queue lengths; and for packet sockets what no
//! `getsockopt` shows: their multicast memberships and rings. The request
//! is built and the answer parsed here as plain bytes, so a short or odd
//! message is an error, never a panic.

#[cfg(test)]
use crate::netlink::{self, NLMSG_DONE, NLMSG_ERROR};
use crate::netlink::{u16_at, u32_at, Netlink, NLM_F_DUMP};
use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NETLINK_SOCK_DIAG: i32 = 4;

const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_VFS: u32 = 0x02;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_ICONS: u32 = 0x08;
const UDIAG_SHOW_RQLEN: u32 = 0x10;

const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// Most sockets crest takes from one namespace.
const MAX_SOCKETS: usize = 1 << 20;

/// One unix socket as sock_diag reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixDiag {
    pub ino: u32,
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
    pub ty: u8,
    /// `TCP_ESTABLISHED`, `TCP_LISTEN`, `TCP_CLOSE`, ...
    pub state: u8,
    /// The bound name as the kernel keeps it: a path without its final
    /// NUL, or an abstract name starting with a NUL byte.
    pub name: Option<Vec<u8>>,
    /// The inode and device of the socket file of a path name.
    pub vfs: Option<(u32, u32)>,
    pub peer: u32,
    /// Connections waiting to be accepted (listeners only).
    pub icons: Vec<u32>,
    /// Receive queue (bytes; pending connections for a listener) and
    /// send queue (bytes; the backlog for a listener).
    pub rqlen: (u32, u32),
    pub shutdown: u8,
}

/// A netlink sock_diag socket in the network namespace of `pid`.
fn diag_socket_in(pid: i32) -> io::Result<OwnedFd> {
    let path = format!("/proc/{pid}/ns/net");
    let theirs = std::fs::metadata(&path)?;
    let ours = std::fs::metadata("/proc/self/ns/net")?;
    use std::os::unix::fs::MetadataExt;
    let make = || crest_sys::net::socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_SOCK_DIAG);
    if theirs.ino() == ours.ino() && theirs.dev() == ours.dev() {
        return make();
    }
    // A socket belongs to the namespace it was made in: make it on a
    // thread that enters the task's namespace first.
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path)?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        make()
    })
    .join()
    .map_err(|_| io::Error::other("sock_diag thread panicked"))?
}

/// The payload of a dump request of every socket of `family`: the family,
/// then `rest` of the family's request (after its padding).
fn dump_request(family: i32, rest: &[u32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(4 + 4 * rest.len());
    m.push(family as u8);
    m.push(0); // protocol
    m.extend_from_slice(&0u16.to_ne_bytes());
    for w in rest {
        m.extend_from_slice(&w.to_ne_bytes());
    }
    m
}

/// The request for every unix socket, with everything crest needs shown:
/// every state, any inode, the shown parts, no cookie.
fn request() -> Vec<u8> {
    let show =
        UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
    dump_request(libc::AF_UNIX, &[u32::MAX, 0, show, u32::MAX, u32::MAX])
}

/// Hands each attribute (type, value) after a message's fixed part to
/// `on_attr`.
fn attrs(mut a: &[u8], on_attr: &mut dyn FnMut(u16, &[u8])) -> io::Result<()> {
    while a.len() >= 4 {
        let len = u16_at(a, 0).ok_or_else(|| bad("short attribute"))? as usize;
        let ty = u16_at(a, 2).ok_or_else(|| bad("short attribute"))?;
        if len < 4 || len > a.len() {
            return Err(bad("an attribute longer than its message"));
        }
        on_attr(ty, &a[4..len]);
        let next = (len + 3) & !3;
        a = a.get(next..).unwrap_or(&[]);
    }
    Ok(())
}

/// Every unix socket of the network namespace `pid` is in, by inode.
pub fn unix_sockets_of(pid: i32) -> io::Result<HashMap<u32, UnixDiag>> {
    let mut out = HashMap::new();
    ask(pid, &request(), &mut |body| {
        let d = parse_msg(body)?;
        out.insert(d.ino, d);
        if out.len() > MAX_SOCKETS {
            return Err(io::Error::other("sock_diag: too many unix sockets"));
        }
        Ok(())
    })?;
    Ok(out)
}

/// Sends `req` to sock_diag in the network namespace of `pid` and hands
/// every answer's body to `on_msg` until the dump ends.
fn ask(pid: i32, req: &[u8], on_msg: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    let mut nl = Netlink::from_fd(diag_socket_in(pid)?);
    let seq = nl.send(SOCK_DIAG_BY_FAMILY, NLM_F_DUMP, req)?;
    for m in nl.answer(seq, MAX_SOCKETS)? {
        if m.ty == SOCK_DIAG_BY_FAMILY {
            on_msg(&m.payload)?;
        }
    }
    Ok(())
}

/// A packet socket's memberships and rings, as sock_diag reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PacketDiag {
    /// (ifindex, count, type, address) of each membership.
    pub mclist: Vec<(u32, u32, u16, Vec<u8>)>,
    /// The rings' settings (`struct packet_diag_ring`: block size and
    /// count, frame size and count, retire timeout, private size,
    /// features).
    pub rx_ring: Option<[u32; 7]>,
    pub tx_ring: Option<[u32; 7]>,
    /// The protocol it was made for (`pdiag_num`, host order).
    pub num: u16,
}

const PACKET_SHOW_MCLIST: u32 = 0x2;
const PACKET_SHOW_RING_CFG: u32 = 0x4;
const PACKET_DIAG_MCLIST: u16 = 1;
const PACKET_DIAG_RX_RING: u16 = 2;
const PACKET_DIAG_TX_RING: u16 = 3;
/// `struct packet_diag_mclist`: index, count, type, alen, addr[32].
const MCLIST_SIZE: usize = 44;

/// The packet socket `ino` of the network namespace `pid` is in (None if
/// sock_diag does not list it).
pub fn packet_socket(pid: i32, ino: u32) -> io::Result<Option<PacketDiag>> {
    // (any inode: the answers are filtered here)
    let show = PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG;
    let m = dump_request(libc::AF_PACKET, &[0, show, u32::MAX, u32::MAX]);
    let mut found = None;
    ask(pid, &m, &mut |body| {
        if u32_at(body, 4) == Some(ino) {
            found = Some(parse_packet(body)?);
        }
        Ok(())
    })?;
    Ok(found)
}

/// One `packet_diag_msg` (16 bytes) and its attributes.
fn parse_packet(body: &[u8]) -> io::Result<PacketDiag> {
    let mut d = PacketDiag {
        num: u16_at(body, 2).unwrap_or(0),
        ..PacketDiag::default()
    };
    let a = body.get(16..).ok_or_else(|| bad("short packet_diag_msg"))?;
    attrs(a, &mut |ty, v| match ty {
        PACKET_DIAG_MCLIST => {
            for m in v.chunks_exact(MCLIST_SIZE) {
                let alen = usize::from(u16_at(m, 10).unwrap_or(0)).min(32);
                d.mclist.push((
                    u32_at(m, 0).unwrap_or(0),
                    u32_at(m, 4).unwrap_or(0),
                    u16_at(m, 8).unwrap_or(0),
                    m[12..12 + alen].to_vec(),
                ));
            }
        }
        PACKET_DIAG_RX_RING => d.rx_ring = ring_of(v),
        PACKET_DIAG_TX_RING => d.tx_ring = ring_of(v),
        _ => {}
    })?;
    Ok(d)
}

/// A `struct packet_diag_ring` (seven u32).
fn ring_of(v: &[u8]) -> Option<[u32; 7]> {
    let mut r = [0u32; 7];
    for (i, w) in r.iter_mut().enumerate() {
        *w = u32_at(v, i * 4)?;
    }
    Some(r)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"))
}

/// Parses one datagram of sock_diag answers into `out`; true at the end
/// of the dump (the form of [`ask`]'s answers, for the tests).
#[cfg(test)]
fn parse_batch(b: &[u8], out: &mut HashMap<u32, UnixDiag>) -> io::Result<bool> {
    for m in netlink::split(b).map_err(|e| bad(&e.to_string()))? {
        match m.ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                return Err(io::Error::from_raw_os_error(-netlink::error_code(
                    &m.payload,
                )))
            }
            SOCK_DIAG_BY_FAMILY => {
                let d = parse_msg(&m.payload)?;
                out.insert(d.ino, d);
            }
            _ => {}
        }
    }
    Ok(false)
}

/// One `unix_diag_msg` and its attributes.
fn parse_msg(body: &[u8]) -> io::Result<UnixDiag> {
    if body.len() < 16 {
        return Err(bad("short unix_diag_msg"));
    }
    let mut d = UnixDiag {
        ty: body[1],
        state: body[2],
        ino: u32_at(body, 4).ok_or_else(|| bad("short unix_diag_msg"))?,
        ..UnixDiag::default()
    };
    attrs(&body[16..], &mut |ty, v| match ty {
        UNIX_DIAG_NAME => {
            let mut name = v.to_vec();
            if name.first() != Some(&0) {
                while name.last() == Some(&0) {
                    name.pop();
                }
            }
            d.name = Some(name);
        }
        UNIX_DIAG_VFS => {
            d.vfs = u32_at(v, 0).zip(u32_at(v, 4));
        }
        UNIX_DIAG_PEER => d.peer = u32_at(v, 0).unwrap_or(0),
        UNIX_DIAG_ICONS => {
            d.icons = v.chunks_exact(4).filter_map(|c| u32_at(c, 0)).collect();
        }
        UNIX_DIAG_RQLEN => {
            d.rqlen = (u32_at(v, 0).unwrap_or(0), u32_at(v, 4).unwrap_or(0));
        }
        UNIX_DIAG_SHUTDOWN => d.shutdown = v.first().copied().unwrap_or(0),
        _ => {}
    })?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, v: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(v);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn msg(ty: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn parses_a_listener_and_the_end() {
        let mut body = vec![1u8, 1, 10, 0];
        body.extend_from_slice(&77u32.to_ne_bytes());
        body.extend_from_slice(&[0u8; 8]);
        body.extend(attr(UNIX_DIAG_NAME, b"/tmp/s\0"));
        body.extend(attr(UNIX_DIAG_ICONS, &[5, 0, 0, 0, 6, 0, 0, 0]));
        body.extend(attr(UNIX_DIAG_RQLEN, &[2, 0, 0, 0, 16, 0, 0, 0]));
        body.extend(attr(UNIX_DIAG_PEER, &[0, 0, 0, 0]));
        let mut batch = msg(SOCK_DIAG_BY_FAMILY, &body);
        batch.extend(msg(NLMSG_DONE, &[0, 0, 0, 0]));
        let mut out = HashMap::new();
        assert!(parse_batch(&batch, &mut out).expect("parse"));
        let d = &out[&77];
        assert_eq!(d.name.as_deref(), Some(&b"/tmp/s"[..]));
        assert_eq!(d.icons, vec![5, 6]);
        assert_eq!(d.rqlen, (2, 16));
        assert_eq!(d.state, 10);
    }

    #[test]
    fn abstract_names_keep_their_nul() {
        let mut body = vec![1u8, 2, 7, 0];
        body.extend_from_slice(&9u32.to_ne_bytes());
        body.extend_from_slice(&[0u8; 8]);
        body.extend(attr(UNIX_DIAG_NAME, b"\0ab\0"));
        let mut out = HashMap::new();
        assert!(!parse_batch(&msg(SOCK_DIAG_BY_FAMILY, &body), &mut out).expect("parse"));
        assert_eq!(out[&9].name.as_deref(), Some(&b"\0ab\0"[..]));
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut body = vec![1u8, 2, 7, 0];
        body.extend_from_slice(&9u32.to_ne_bytes());
        body.extend_from_slice(&[0u8; 8]);
        body.extend(attr(UNIX_DIAG_NAME, b"/x"));
        let m = msg(SOCK_DIAG_BY_FAMILY, &body);
        for cut in 1..m.len() {
            let mut out = HashMap::new();
            let _ = parse_batch(&m[..cut], &mut out);
        }
        let mut long = m.clone();
        long[0] = 200;
        assert!(parse_batch(&long, &mut HashMap::new()).is_err());
    }
}
