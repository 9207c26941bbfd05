//! IPv4 and IPv6 sockets: TCP listening, bound or fresh; UDP bound or
//! connected, with its queued datagrams (`crest-udp-queues.img`: CRIU's
//! `sk_packet_entry` and the bytes, each sender's address in crest's
//! field); and, with `--tcp-established`, established TCP
//! connections through `TCP_REPAIR` (`tcp-stream-<ino>.img`, CRIU's
//! layout: the entry, then the receive queue, then the send queue).
//!
//! At dump an established connection is put in repair mode through
//! crest's copy of the fd (the same socket). It stays so only when the
//! dump succeeds and the tree is killed: the dying tasks' sockets then go
//! without a FIN or RST. Otherwise repair mode ends when the dump's
//! [`InetDump`] is dropped, and the connection runs on.

use super::context::sockets::MAX_PACKETS;
use super::kept::Kept;
use super::skopts;
use super::table::FileTable;
use super::table::InetDump;
use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::files::error::FileError;
use crate::remote::Remote;
use crest_images::carry::Carrier;
use crest_images::pb::crest::CrestUdpPacket;
use crest_images::pb::SkPacketEntry;
use crest_images::pb::{FdTypes, FileEntry, FownEntry, InetSkEntry, TcpStreamEntry};
use crest_images::MAX_QUEUE;
use crest_images::{magic, names, ImageReader, ImageWriter};
use crest_inject::{nr, Tracee};
use crest_sys::net::{getsockopt_bytes, getsockopt_int, setsockopt_bytes, setsockopt_int};
use std::os::fd::OwnedFd;
use std::path::Path;

use crest_sys::net::{TCP_REPAIR, TCP_REPAIR_OFF_NO_WP};
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCP_NO_QUEUE: i32 = 0;
const SIOCINQ: u64 = 0x541B;
const SIOCOUTQ: u64 = 0x5411;
const SIOCOUTQNSD: u64 = 0x894B;

const TCPI_OPT_TIMESTAMPS: u32 = 1;
const TCPI_OPT_SACK: u32 = 2;
const TCPI_OPT_WSCALE: u32 = 4;

const ESTABLISHED: u32 = 1;
const CLOSE: u32 = 7;
const LISTEN: u32 = 10;

impl Drop for InetDump {
    fn drop(&mut self) {
        if self.keep_repair {
            return;
        }
        for (c, reuse) in &self.repair {
            crest_sys::net::tcp_repair_off(c, *reuse);
        }
    }
}

fn state_name(s: u32) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "an unknown state",
    }
}

/// A raw sockaddr → (family, address words as in memory, port).
fn parse_addr(a: &[u8]) -> Option<(u32, Vec<u32>, u32)> {
    let family = u16::from_ne_bytes(a.get(0..2)?.try_into().ok()?);
    let port = u32::from(u16::from_be_bytes(a.get(2..4)?.try_into().ok()?));
    let words = |r: std::ops::Range<usize>| -> Option<Vec<u32>> {
        a.get(r)?
            .chunks_exact(4)
            .map(|c| c.try_into().ok().map(u32::from_ne_bytes))
            .collect()
    };
    match i32::from(family) {
        libc::AF_INET => Some((libc::AF_INET as u32, words(4..8)?, port)),
        libc::AF_INET6 => Some((libc::AF_INET6 as u32, words(8..24)?, port)),
        _ => None,
    }
}

/// (family, address words, port) → a raw sockaddr.
fn make_addr(family: u32, words: &[u32], port: u32) -> Vec<u8> {
    let mut a = (family as u16).to_ne_bytes().to_vec();
    a.extend_from_slice(&(port as u16).to_be_bytes());
    if family == libc::AF_INET6 as u32 {
        a.extend_from_slice(&[0u8; 4]);
        for i in 0..4 {
            a.extend_from_slice(&words.get(i).copied().unwrap_or(0).to_ne_bytes());
        }
        a.extend_from_slice(&[0u8; 4]);
    } else {
        a.extend_from_slice(&words.first().copied().unwrap_or(0).to_ne_bytes());
        a.extend_from_slice(&[0u8; 8]);
    }
    a
}

fn tcp_info(c: &OwnedFd) -> std::io::Result<Vec<u8>> {
    getsockopt_bytes(c, libc::SOL_TCP, libc::TCP_INFO, 104)
}

fn word(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

/// `IPV6_V6ONLY` of socket `c` of `family` (none for IPv4).
fn v6only_of(c: &OwnedFd, family: u32) -> std::io::Result<Option<bool>> {
    if family != libc::AF_INET6 as u32 {
        return Ok(None);
    }
    Ok(Some(
        getsockopt_int(c, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)? != 0,
    ))
}

/// One end of an inet connection: the address (as 32-bit words) and port.
type End = (Vec<u32>, u32);

/// The local end of socket `c` and its peer's, if it is connected (None:
/// a local address crest cannot read).
fn ends_of(c: &OwnedFd) -> std::io::Result<Option<(End, Option<End>)>> {
    let local = crest_sys::net::getsockname(c)?;
    let Some((_, src, sport)) = parse_addr(&local) else {
        return Ok(None);
    };
    let peer = crest_sys::net::getpeername(c)
        .ok()
        .map(|p| parse_addr(&p).map_or((Vec::new(), 0), |(_, a, port)| (a, port)));
    Ok(Some(((src, sport), peer)))
}

impl FileTable {
    /// Dumps the inet socket `ino` behind `fd` of `pid` (`copy` is crest's
    /// copy); returns its file id.
    pub(crate) fn dump_inet(
        &mut self,
        pid: i32,
        fd: i32,
        ino: u32,
        flags: u32,
        copy: OwnedFd,
    ) -> Result<u32, DumpError> {
        let unsupported = |kind: String| FileError::UnsupportedFd { fd, kind }.in_dump(pid);
        let int = |l, n| getsockopt_int(&copy, l, n);
        let family = int(libc::SOL_SOCKET, libc::SO_DOMAIN).at(pid, "SO_DOMAIN")? as u32;
        let ty = int(libc::SOL_SOCKET, libc::SO_TYPE).at(pid, "SO_TYPE")? as u32;
        let proto = int(libc::SOL_SOCKET, libc::SO_PROTOCOL).at(pid, "SO_PROTOCOL")? as u32;
        let ((src, sport), peer) = ends_of(&copy)
            .at(pid, "getsockname")?
            .ok_or_else(|| unsupported("an inet socket with an odd address".into()))?;
        let (dst, dport) = peer.clone().unwrap_or_default();
        let is_tcp = proto == libc::IPPROTO_TCP as u32 && ty == libc::SOCK_STREAM as u32;
        let is_udp = proto == libc::IPPROTO_UDP as u32 && ty == libc::SOCK_DGRAM as u32;
        if !is_tcp && !is_udp {
            return Err(unsupported(format!(
                "an inet socket of type {ty}, protocol {proto}"
            )));
        }
        let (state, backlog) = if is_tcp {
            self.tcp_state(pid, fd, &copy, (sport, dport))?
        } else if peer.is_some() {
            (ESTABLISHED, 0)
        } else {
            (CLOSE, 0)
        };
        let v6only = v6only_of(&copy, family).at(pid, "IPV6_V6ONLY")?;
        // a connection --tcp-close dropped: neither its ends nor its
        // queues are kept
        let dropped = is_tcp && self.tcp_close && state == CLOSE && peer.is_some();
        let (src, sport, dst, dport) = if dropped {
            (vec![0; src.len()], 0, Vec::new(), 0)
        } else {
            (src, sport, dst, dport)
        };
        let mut opts = skopts::dump(&copy).at(pid, "read socket options")?;
        if is_udp {
            opts.crest_mcast =
                super::mcast::dump(pid, &copy, family).at(pid, "read multicast groups")?;
        }
        let id = self.push(FileEntry {
            r#type: FdTypes::Inetsk as i32,
            id: 0,
            isk: Some(InetSkEntry {
                id: 0,
                ino,
                family,
                r#type: ty,
                proto,
                state,
                src_port: sport,
                dst_port: dport,
                flags,
                backlog,
                src_addr: src,
                dst_addr: dst,
                fown: FownEntry::default(),
                opts,
                v6only,
                ip_opts: None,
                ifname: None,
                ns_id: None,
            }),
            ..FileEntry::default()
        });
        if is_udp {
            self.keep_udp_queue((pid, fd), id, &copy)?;
        }
        if state == ESTABLISHED && is_tcp {
            self.take_connection(pid, fd, ino, copy)?;
        }
        Ok(id)
    }

    /// Keeps the datagrams queued on UDP socket file `id` (crest's `copy`
    /// of fd `fd` of `pid`) for `crest-udp-queues.img`.
    fn keep_udp_queue(
        &mut self,
        (pid, fd): (i32, i32),
        id: u32,
        copy: &OwnedFd,
    ) -> Result<(), DumpError> {
        let packets = peek_udp(copy).at(pid, "peek at a UDP socket's queue")?;
        if packets.len() > MAX_PACKETS {
            return Err(FileError::UnsupportedFd {
                fd,
                kind: "a UDP socket with too many datagrams queued".into(),
            }
            .in_dump(pid));
        }
        self.inet
            .udp
            .extend(packets.into_iter().map(|(from, d)| (id, from, d)));
        Ok(())
    }

    /// The state and backlog a TCP socket is dumped with (`sport`,
    /// `dport`: its ports, for messages): a listener with connections not
    /// accepted yet, an established connection without
    /// `--tcp-established`, or a socket in another state is refused;
    /// `--tcp-close` closes connections.
    fn tcp_state(
        &self,
        pid: i32,
        fd: i32,
        copy: &OwnedFd,
        (sport, dport): (u32, u32),
    ) -> Result<(u32, u32), DumpError> {
        let unsupported = |kind: String| FileError::UnsupportedFd { fd, kind }.in_dump(pid);
        let info = tcp_info(copy).at(pid, "TCP_INFO")?;
        let state = u32::from(info.first().copied().unwrap_or(0));
        Ok(match state {
            // --tcp-close: the connection is not taken, the socket
            // comes back closed and unbound (CRIU's)
            s if self.tcp_close && s != LISTEN && s != CLOSE => (CLOSE, 0),
            LISTEN => {
                let (pending, backlog) = (word(&info, 24), word(&info, 28));
                if pending != 0 && !self.tcp_skip_in_flight {
                    return Err(unsupported(format!(
                        "a listening TCP socket (port {sport}) with {pending} connection(s) \
                         not accepted yet; crest cannot carry those (--skip-in-flight \
                         leaves them behind, as CRIU does)"
                    )));
                }
                if pending != 0 {
                    crate::warn!(
                        "fd {fd} of pid {pid}: {pending} connection(s) waiting on the TCP \
                         listener at port {sport} are left behind (--skip-in-flight)"
                    );
                }
                (LISTEN, backlog)
            }
            CLOSE => (CLOSE, 0),
            ESTABLISHED if !self.tcp_established => {
                return Err(unsupported(format!(
                    "an established TCP connection (port {sport} to port {dport}); dump \
                     with --tcp-established to take it"
                )))
            }
            ESTABLISHED => (ESTABLISHED, 0),
            s => {
                return Err(unsupported(format!(
                    "a TCP socket in state {} (port {sport}), which crest does not dump",
                    state_name(s)
                )))
            }
        })
    }

    /// Takes established connection `ino` (crest's `copy`) in repair mode
    /// and reads its stream state.
    fn take_connection(
        &mut self,
        pid: i32,
        fd: i32,
        ino: u32,
        copy: OwnedFd,
    ) -> Result<(), DumpError> {
        let unsupported = |kind: String| FileError::UnsupportedFd { fd, kind }.in_dump(pid);
        // The guard first (it ends the repair if crest dies), then
        // repair mode: from here on ending it is the drop's job.
        let reuse = getsockopt_int(&copy, libc::SOL_SOCKET, libc::SO_REUSEADDR)
            .at(pid, "SO_REUSEADDR of an established connection")?
            != 0;
        crate::guard::hold_connection(&copy, reuse)
            .at(pid, "hand a connection to the dump's guard")?;
        setsockopt_int(&copy, libc::SOL_TCP, TCP_REPAIR, 1)
            .at(pid, "TCP_REPAIR on an established connection")?;
        let copy = {
            self.inet.repair.push((copy, reuse));
            &self
                .inet
                .repair
                .last()
                .ok_or_else(|| unsupported("a connection just kept is gone".into()))?
                .0
        };
        let (entry, inq, outq) = tcp_stream(copy).at(pid, "read a TCP connection")?;
        self.inet.streams.push((ino, entry, inq, outq));
        Ok(())
    }
}

/// Every datagram waiting on a UDP socket with its sender, read with
/// `MSG_PEEK` from offset 0.
fn peek_udp(c: &OwnedFd) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let old = getsockopt_int(c, libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
    setsockopt_int(c, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let res = loop {
        match crest_sys::net::recvmsg(c, &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
            Ok(r) => {
                out.push((r.from, buf[..r.len.min(buf.len())].to_vec()));
                if out.len() > MAX_PACKETS {
                    break Ok(());
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    setsockopt_int(c, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old)?;
    res.map(|()| out)
}

/// Reads a connection in repair mode: sequence numbers, queues, options
/// and window.
fn tcp_stream(c: &OwnedFd) -> std::io::Result<(TcpStreamEntry, Vec<u8>, Vec<u8>)> {
    let ioctl = |r| crest_sys::net::ioctl_int(c, r).map(|n| n.max(0) as u32);
    let (inq_len, outq_len, unsq_len) = (ioctl(SIOCINQ)?, ioctl(SIOCOUTQ)?, ioctl(SIOCOUTQNSD)?);
    if inq_len as usize > MAX_QUEUE || outq_len as usize > MAX_QUEUE {
        return Err(std::io::Error::other("a TCP queue larger than crest keeps"));
    }
    let queue = |q: i32, len: u32| -> std::io::Result<(u32, Vec<u8>)> {
        setsockopt_int(c, libc::SOL_TCP, TCP_REPAIR_QUEUE, q)?;
        let seq = getsockopt_int(c, libc::SOL_TCP, TCP_QUEUE_SEQ)? as u32;
        let mut data = vec![0u8; len as usize];
        if len > 0 {
            let n = crest_sys::net::recv(c, &mut data, libc::MSG_PEEK | libc::MSG_DONTWAIT)?;
            if n != len as usize {
                return Err(std::io::Error::other(format!(
                    "read {n} of {len} queued bytes"
                )));
            }
        }
        Ok((seq, data))
    };
    let (inq_seq, inq) = queue(TCP_RECV_QUEUE, inq_len)?;
    let (outq_seq, outq) = queue(TCP_SEND_QUEUE, outq_len)?;
    setsockopt_int(c, libc::SOL_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)?;
    let info = tcp_info(c)?;
    let opt_mask = u32::from(info.get(5).copied().unwrap_or(0));
    let ws = info.get(6).copied().unwrap_or(0);
    let mss = getsockopt_int(c, libc::SOL_TCP, libc::TCP_MAXSEG)? as u32;
    let timestamp = getsockopt_int(c, libc::SOL_TCP, libc::TCP_TIMESTAMP)? as u32;
    let w = getsockopt_bytes(c, libc::SOL_TCP, TCP_REPAIR_WINDOW, 20)?;
    let flag = |n| getsockopt_int(c, libc::SOL_TCP, n).map(|v| v != 0);
    let entry = TcpStreamEntry {
        inq_len,
        inq_seq,
        outq_len,
        outq_seq,
        opt_mask,
        snd_wscale: u32::from(ws & 0xf),
        mss_clamp: mss,
        rcv_wscale: Some(u32::from(ws >> 4)),
        timestamp: Some(timestamp),
        cork: Some(flag(libc::TCP_CORK)?),
        nodelay: Some(flag(libc::TCP_NODELAY)?),
        unsq_len: Some(unsq_len),
        snd_wl1: (w.len() == 20).then(|| word(&w, 0)),
        snd_wnd: (w.len() == 20).then(|| word(&w, 4)),
        max_window: (w.len() == 20).then(|| word(&w, 8)),
        rcv_wnd: (w.len() == 20).then(|| word(&w, 12)),
        rcv_wup: (w.len() == 20).then(|| word(&w, 16)),
    };
    Ok((entry, inq, outq))
}

impl InetDump {
    /// Writes `tcp-stream-<ino>.img` per connection and
    /// `crest-udp-queues.img`.
    pub fn write(&self, dir: &Path) -> Result<(), DumpError> {
        for (ino, e, inq, outq) in &self.streams {
            let mut w = ImageWriter::create(dir, &names::tcp_stream(*ino), magic::TCP_STREAM)?;
            w.write_entry(e)?;
            w.write_payload(inq)?;
            w.write_payload(outq)?;
            w.finish()?;
        }
        if !self.udp.is_empty() {
            let mut w = ImageWriter::create(dir, names::CREST_UDP_QUEUES, magic::SK_QUEUES)?;
            for (id, from, data) in &self.udp {
                w.write_entry(&SkPacketEntry::wrap(CrestUdpPacket {
                    id_for: *id,
                    from: from.clone(),
                    length: data.len() as u32,
                }))?;
                w.write_payload(data)?;
            }
            w.finish()?;
        }
        Ok(())
    }
}

fn bad(pid: i32, file: String, what: String) -> RestoreError {
    FileError::BadImage { file, what }.in_restore(pid)
}

/// Puts socket `c` in repair mode and sets the sequence numbers its
/// queues start from (those of stream `e`), before it is bound and
/// connected; a failed step is named.
fn repair_start(c: &OwnedFd, e: &TcpStreamEntry) -> Result<(), (&'static str, std::io::Error)> {
    setsockopt_int(c, libc::SOL_TCP, TCP_REPAIR, 1).map_err(|x| ("TCP_REPAIR", x))?;
    for (q, seq, len) in [
        (TCP_RECV_QUEUE, e.inq_seq, e.inq_len),
        (TCP_SEND_QUEUE, e.outq_seq, e.outq_len),
    ] {
        setsockopt_int(c, libc::SOL_TCP, TCP_REPAIR_QUEUE, q)
            .map_err(|x| ("TCP_REPAIR_QUEUE", x))?;
        setsockopt_int(
            c,
            libc::SOL_TCP,
            TCP_QUEUE_SEQ,
            seq.wrapping_sub(len) as i32,
        )
        .map_err(|x| ("TCP_QUEUE_SEQ", x))?;
    }
    Ok(())
}

/// Makes the inet socket of `s` in task `t` (see [`super::context::socket_once`]).
pub(crate) fn make(
    t: &mut Tracee,
    s: &InetSkEntry,
    files: &mut super::context::RestoreFiles,
    kept: &mut Kept,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    if ![libc::AF_INET as u32, libc::AF_INET6 as u32].contains(&s.family) {
        return Err(bad(
            pid,
            names::FILES.into(),
            format!("inet socket {} of family {}", s.id, s.family),
        ));
    }
    let c = kept.new_socket(t, s.id, (s.family, s.r#type, s.proto))?;
    let at = |what: &str| format!("inet socket {} (port {}): {what}", s.id, s.src_port);
    if let Some(v) = s.v6only {
        setsockopt_int(&c, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, i32::from(v))
            .rat(pid, at("IPV6_V6ONLY"))?;
    }
    skopts::restore_early(&c, &s.opts).rat(pid, at("options before bind"))?;
    let tcp = s.proto == libc::IPPROTO_TCP as u32;
    // --tcp-close: a connection in the images comes back as a socket that
    // was never connected (CRIU's), unbound
    let dropped = tcp && files.socks.tcp_close && s.state != LISTEN && s.state != CLOSE;
    if dropped {
        return skopts::restore_last(&c, &s.opts, s.flags).rat(pid, at("options and flags"));
    }
    let stream = (tcp && s.state == ESTABLISHED)
        .then(|| read_stream(files, s.ino))
        .transpose()?;
    setsockopt_int(&c, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).rat(pid, at("SO_REUSEADDR"))?;
    if let Some((e, _, _)) = &stream {
        repair_start(&c, e).map_err(|(what, source)| RestoreError::Io {
            pid,
            step: at(what),
            source,
        })?;
    }
    let local = make_addr(s.family, &s.src_addr, s.src_port);
    if s.src_port != 0 || s.src_addr.iter().any(|w| *w != 0) {
        crest_sys::net::bind(&c, &local).rat(pid, at("bind"))?;
    }
    if s.state == LISTEN {
        rustix::net::listen(&c, s.backlog as i32).rat(pid, at("listen"))?;
    }
    if s.state == ESTABLISHED {
        let remote = make_addr(s.family, &s.dst_addr, s.dst_port);
        match crest_sys::net::connect(&c, &remote) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) && stream.is_none() => {}
            Err(e) => return Err(e).rat(pid, at("connect")),
        }
    }
    if let Some((e, inq, outq)) = &stream {
        repair_finish(pid, &c, e, inq, outq).map_err(|source| RestoreError::Io {
            pid,
            step: at("restore the TCP connection"),
            source,
        })?;
    }
    skopts::restore(&c, &s.opts).rat(pid, at("options"))?;
    super::mcast::restore(&c, &s.opts.crest_mcast).rat(pid, at("multicast groups"))?;
    if s.opts.reuseaddr != Some(true) {
        setsockopt_int(&c, libc::SOL_SOCKET, libc::SO_REUSEADDR, 0).rat(pid, at("SO_REUSEADDR"))?;
    }
    if let Some(packets) = files.socks.udp.get(&s.id) {
        refill_udp(t, s, &local, packets, kept)?;
    }
    let status = libc::O_NONBLOCK | libc::O_ASYNC;
    crest_sys::net::set_status_flags(&c, s.flags as i32 & status).rat(pid, at("flags"))?;
    Ok(())
}

/// `tcp-stream-<ino>.img`: the entry and both queues.
fn read_stream(
    files: &super::context::RestoreFiles,
    ino: u32,
) -> Result<(TcpStreamEntry, Vec<u8>, Vec<u8>), RestoreError> {
    let name = names::tcp_stream(ino);
    let mut r = ImageReader::open(&files.socks.dir, &name, magic::TCP_STREAM)?;
    let e: TcpStreamEntry = r
        .next_entry()?
        .ok_or_else(|| bad(0, name.clone(), "no tcp_stream_entry".into()))?;
    if e.inq_len as usize > MAX_QUEUE || e.outq_len as usize > MAX_QUEUE {
        return Err(bad(
            0,
            name,
            format!("queues of {} and {} bytes", e.inq_len, e.outq_len),
        ));
    }
    let inq = r.read_payload(u64::from(e.inq_len))?;
    let outq = r.read_payload(u64::from(e.outq_len))?;
    Ok((e, inq, outq))
}

/// After `connect` in repair mode: options, timestamp, queues, window,
/// then out of repair mode.
fn repair_finish(
    pid: i32,
    c: &OwnedFd,
    e: &TcpStreamEntry,
    inq: &[u8],
    outq: &[u8],
) -> std::io::Result<()> {
    let _ = pid;
    let mut opts = Vec::new();
    let mut opt = |code: u32, val: u32| {
        opts.extend_from_slice(&code.to_ne_bytes());
        opts.extend_from_slice(&val.to_ne_bytes());
    };
    opt(2, e.mss_clamp);
    if e.opt_mask & TCPI_OPT_WSCALE != 0 {
        opt(3, e.snd_wscale | (e.rcv_wscale.unwrap_or(0) << 16));
    }
    if e.opt_mask & TCPI_OPT_TIMESTAMPS != 0 {
        opt(8, 0);
    }
    if e.opt_mask & TCPI_OPT_SACK != 0 {
        opt(4, 0);
    }
    let ctx = |e: std::io::Error, what: &str| std::io::Error::new(e.kind(), format!("{what}: {e}"));
    setsockopt_bytes(c, libc::SOL_TCP, TCP_REPAIR_OPTIONS, &opts)
        .map_err(|e| ctx(e, "TCP_REPAIR_OPTIONS"))?;
    if e.opt_mask & TCPI_OPT_TIMESTAMPS != 0 {
        if let Some(ts) = e.timestamp {
            setsockopt_int(c, libc::SOL_TCP, libc::TCP_TIMESTAMP, ts as i32)
                .map_err(|e| ctx(e, "TCP_TIMESTAMP"))?;
        }
    }
    // The whole send queue goes back as sent: what was never sent goes
    // out with the retransmission timer, by when the peer (restored later
    // in the same restore) is there to take it.
    for (q, data) in [(TCP_RECV_QUEUE, inq), (TCP_SEND_QUEUE, outq)] {
        setsockopt_int(c, libc::SOL_TCP, TCP_REPAIR_QUEUE, q)?;
        send_fully(c, data).map_err(|e| ctx(e, "refill a queue"))?;
    }
    setsockopt_int(c, libc::SOL_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)?;
    if let (Some(a), Some(b), Some(m), Some(r), Some(u)) =
        (e.snd_wl1, e.snd_wnd, e.max_window, e.rcv_wnd, e.rcv_wup)
    {
        let mut w = Vec::with_capacity(20);
        for x in [a, b, m, r, u] {
            w.extend_from_slice(&x.to_ne_bytes());
        }
        setsockopt_bytes(c, libc::SOL_TCP, TCP_REPAIR_WINDOW, &w)
            .map_err(|e| ctx(e, "TCP_REPAIR_WINDOW"))?;
    }
    if let Some(v) = e.nodelay {
        setsockopt_int(c, libc::SOL_TCP, libc::TCP_NODELAY, i32::from(v))?;
    }
    if let Some(v) = e.cork {
        setsockopt_int(c, libc::SOL_TCP, libc::TCP_CORK, i32::from(v))?;
    }
    // Out of repair mode without a window probe: the peer may not be
    // restored yet, and a probe to nobody would bring back a reset.
    setsockopt_int(c, libc::SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
}

fn send_fully(c: &OwnedFd, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let n = crest_sys::net::sendto(c, data, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL, &[])?;
        if n == 0 {
            return Err(std::io::Error::other("a TCP queue took no more data"));
        }
        data = &data[n..];
    }
    Ok(())
}

/// Sends the queued datagrams again, each from a throwaway socket bound
/// to its first sender's address, to the socket's own address.
fn refill_udp(
    t: &mut Tracee,
    s: &InetSkEntry,
    local: &[u8],
    packets: &[(Vec<u8>, Vec<u8>)],
    kept: &mut Kept,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    // A socket bound to any address gets the datagram on loopback.
    let mut to = local.to_vec();
    if s.src_addr.iter().all(|w| *w == 0) {
        let lo: Vec<u32> = if s.family == libc::AF_INET6 as u32 {
            vec![0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]
        } else {
            vec![u32::from_ne_bytes([127, 0, 0, 1])]
        };
        to = make_addr(s.family, &lo, s.src_port);
    }
    for (from, data) in packets {
        let Some((fam, _, _)) = parse_addr(from) else {
            return Err(bad(
                pid,
                names::CREST_UDP_QUEUES.into(),
                "a datagram with an odd sender".into(),
            ));
        };
        let ty = (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64;
        let fd = t
            .syscall(nr::SOCKET, &[u64::from(fam), ty, 0])
            .rat(pid, "socket for a queued datagram")?;
        let c = kept.copy(t, fd);
        let r = c.and_then(|c| {
            let step = format!("send a queued datagram to UDP port {}", s.src_port);
            setsockopt_int(&c, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).rat(pid, step.clone())?;
            crest_sys::net::bind(&c, from)
                .rat(pid, format!("{step}: bind to its sender's address"))?;
            crest_sys::net::sendto(&c, data, libc::MSG_DONTWAIT, &to).rat(pid, step)?;
            Ok(())
        });
        t.close(fd)?;
        r?;
    }
    Ok(())
}
