//! rtnetlink messages: building requests and parsing what the kernel (or
//! an image) holds, with every length checked. No syscalls here; the
//! socket side is in [`super::Rtnl`], the framing in [`crate::netlink`].

pub use crate::netlink::split;
use crate::netlink::{align4, encode, u16_at, u32_at, Framing};
pub use crate::netlink::{NLM_F_ACK, NLM_F_DUMP};

use std::fmt::Write as _;

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_GETNSID: u16 = 90;

pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;

pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MTU: u16 = 4;
pub const IFLA_LINK: u16 = 5;
pub const IFLA_MASTER: u16 = 10;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_INFO_KIND: u16 = 1;
pub const IFLA_INFO_DATA: u16 = 2;
pub const VETH_INFO_PEER: u16 = 1;
pub const IFLA_NET_NS_FD: u16 = 28;
pub const IFLA_LINK_NETNSID: u16 = 37;

pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const IFA_FLAGS: u16 = 8;
pub const IFA_PROTO: u16 = 11;
pub const IFA_F_NODAD: u32 = 0x02;

pub const RTA_DST: u16 = 1;
pub const RTA_OIF: u16 = 4;
pub const RTA_GATEWAY: u16 = 5;
pub const RTA_CACHEINFO: u16 = 12;
pub const RTA_TABLE: u16 = 15;
pub const RT_TABLE_MAIN: u32 = 254;
pub const RTNH_F_ONLINK: u32 = 4;

pub const NETNSA_NSID: u16 = 1;
pub const NETNSA_FD: u16 = 3;

/// `ip addr save` writes this word before the messages.
pub const IFADDR_SAVE_MAGIC: u32 = 0x4736_1222;
/// `ip route save` writes this word before the messages.
pub const ROUTE_SAVE_MAGIC: u32 = 0x4531_1224;

/// An rtnetlink message (from the kernel or an image) crest cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error(transparent)]
    Framing(#[from] Framing),
    #[error("an attribute of length {len} at offset {at}")]
    Attribute { len: usize, at: usize },
    #[error("bridge option {ty} of {len} bytes")]
    BridgeOption { ty: u16, len: usize },
    /// A payload shorter than its fixed header (`what`: its kind).
    #[error("{what} message of {len} bytes")]
    Short { what: &'static str, len: usize },
    #[error("{0}")]
    Missing(&'static str),
    #[error("magic {got:#x}, expected {want:#x}")]
    Magic { got: u32, want: u32 },
    #[error("no magic")]
    NoMagic,
    #[error("a message of type {got}, expected {want}")]
    Type { got: u16, want: u16 },
}

/// One attribute: its type (without the nested/byte-order bits) and data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    pub ty: u16,
    pub data: &'a [u8],
}

/// The attributes of a buffer.
pub fn attrs(buf: &[u8]) -> Result<Vec<Attr<'_>>, Malformed> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= buf.len() {
        let len = u16_at(buf, at).unwrap_or(0) as usize;
        if len < 4 || len > buf.len() - at {
            return Err(Malformed::Attribute { len, at });
        }
        out.push(Attr {
            ty: u16_at(buf, at + 2).unwrap_or(0) & 0x3fff,
            data: &buf[at + 4..at + len],
        });
        at += align4(len);
    }
    Ok(out)
}

pub(super) fn find<'a>(list: &[Attr<'a>], ty: u16) -> Option<&'a [u8]> {
    list.iter().find(|a| a.ty == ty).map(|a| a.data)
}

pub(super) fn attr_u32(list: &[Attr<'_>], ty: u16) -> Option<u32> {
    u32_at(find(list, ty)?, 0)
}

pub fn attr_str(list: &[Attr<'_>], ty: u16) -> Option<String> {
    let d = find(list, ty)?;
    let end = d.iter().position(|b| *b == 0).unwrap_or(d.len());
    Some(String::from_utf8_lossy(&d[..end]).into_owned())
}

/// Appends an attribute.
pub fn put(out: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(align4(out.len()), 0);
}

/// Appends a NUL-terminated string attribute.
pub fn put_str(out: &mut Vec<u8>, ty: u16, s: &str) {
    let mut d = s.as_bytes().to_vec();
    d.push(0);
    put(out, ty, &d);
}

/// Appends a nested attribute whose contents `f` writes.
pub fn nest(out: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(ty | 0x8000).to_ne_bytes());
    f(out);
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// `struct ifinfomsg`.
pub fn ifinfomsg(index: i32, flags: u32, change: u32) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// A network device as `RTM_NEWLINK` describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    /// ARPHRD_* type.
    pub hw_type: u16,
    pub flags: u32,
    pub name: String,
    pub mtu: u32,
    pub address: Option<Vec<u8>>,
    pub kind: Option<String>,
    pub master: Option<u32>,
    /// The peer's ifindex (veth), in the peer's namespace.
    pub link: Option<u32>,
    /// The peer's namespace as this one numbers it, when it is another.
    pub link_netnsid: Option<i32>,
    /// A bridge's settable options ([`BRIDGE_OPTIONS`]), netlink-encoded.
    pub bridge: Vec<u8>,
}

/// The `IFLA_BR_*` options of a bridge that crest sets again, with their
/// names for text and a new bridge's value (the option's bytes read as a
/// native u32): forward delay, hello time, max age, ageing time, STP,
/// priority, VLAN filtering and protocol, group forward mask, multicast
/// router and snooping, default PVID. Only options changed from that
/// value are kept: a kernel without VLAN filtering refuses even a 0.
pub const BRIDGE_OPTIONS: [(u16, &str, u32); 12] = [
    (1, "forward_delay", 1500),
    (2, "hello_time", 200),
    (3, "max_age", 2000),
    (4, "ageing_time", 30000),
    (5, "stp_state", 0),
    (6, "priority", 32768),
    (7, "vlan_filtering", 0),
    (8, "vlan_protocol", 0x81), // ETH_P_8021Q, big-endian
    (9, "group_fwd_mask", 0),
    (22, "mcast_router", 1),
    (23, "mcast_snooping", 1),
    (39, "vlan_default_pvid", 1),
];

/// An option's bytes (1 to 4) as a native u32.
fn option_value(data: &[u8]) -> u32 {
    let mut v = [0u8; 4];
    let n = data.len().min(4);
    v[..n].copy_from_slice(&data[..n]);
    u32::from_ne_bytes(v)
}

/// The bridge options of `data` (an `IFLA_INFO_DATA` body) crest keeps, in
/// the same encoding; an error for a malformed body or option.
pub fn bridge_options(data: &[u8]) -> Result<Vec<u8>, Malformed> {
    let mut out = Vec::new();
    for a in attrs(data)? {
        let Some((_, _, default)) = BRIDGE_OPTIONS.iter().find(|(t, ..)| *t == a.ty) else {
            continue;
        };
        if a.data.is_empty() || a.data.len() > 4 {
            return Err(Malformed::BridgeOption {
                ty: a.ty,
                len: a.data.len(),
            });
        }
        if option_value(a.data) != *default {
            put(&mut out, a.ty, a.data);
        }
    }
    Ok(out)
}

/// The options as text ("stp_state 1 priority 4096 ...").
pub fn bridge_text(opts: &[u8]) -> String {
    let Ok(list) = attrs(opts) else {
        return "?".into();
    };
    list.iter()
        .map(|a| {
            let name = BRIDGE_OPTIONS
                .iter()
                .find(|(t, ..)| *t == a.ty)
                .map_or("?", |(_, n, _)| n);
            format!("{name} {}", option_value(a.data))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses an `RTM_NEWLINK` payload.
pub fn parse_link(p: &[u8]) -> Result<Link, Malformed> {
    if p.len() < 16 {
        return Err(Malformed::Short {
            what: "a link",
            len: p.len(),
        });
    }
    let list = attrs(&p[16..])?;
    let info = find(&list, IFLA_LINKINFO).map(attrs).transpose()?;
    let kind = info.as_deref().and_then(|i| attr_str(i, IFLA_INFO_KIND));
    Ok(Link {
        index: u32_at(p, 4).unwrap_or(0),
        hw_type: u16_at(p, 2).unwrap_or(0),
        flags: u32_at(p, 8).unwrap_or(0),
        name: attr_str(&list, IFLA_IFNAME).ok_or(Malformed::Missing("a link without a name"))?,
        mtu: attr_u32(&list, IFLA_MTU).unwrap_or(0),
        address: find(&list, IFLA_ADDRESS).map(<[u8]>::to_vec),
        kind: kind.clone(),
        master: attr_u32(&list, IFLA_MASTER).filter(|m| *m != 0),
        link: attr_u32(&list, IFLA_LINK).filter(|l| *l != 0),
        link_netnsid: attr_u32(&list, IFLA_LINK_NETNSID).map(|v| v as i32),
        bridge: match (info.as_deref(), kind.as_deref()) {
            (Some(i), Some("bridge")) => find(i, IFLA_INFO_DATA)
                .map(bridge_options)
                .transpose()?
                .unwrap_or_default(),
            _ => Vec::new(),
        },
    })
}

/// Where the peer of a new veth goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub index: u32,
    pub name: String,
    /// An fd (in crest) of the peer's network namespace; None: this one.
    pub ns_fd: Option<i32>,
}

/// The `RTM_NEWLINK` payload that creates device `l` (with `peer` for a
/// veth) at its old index.
pub fn new_link(l: &Link, peer: Option<&Peer>) -> Vec<u8> {
    let mut b = ifinfomsg(l.index as i32, 0, 0);
    put_str(&mut b, IFLA_IFNAME, &l.name);
    if l.mtu != 0 {
        put(&mut b, IFLA_MTU, &l.mtu.to_ne_bytes());
    }
    nest(&mut b, IFLA_LINKINFO, |b| {
        put_str(b, IFLA_INFO_KIND, l.kind.as_deref().unwrap_or(""));
        if !l.bridge.is_empty() {
            put(b, IFLA_INFO_DATA, &l.bridge);
        }
        if let Some(p) = peer {
            nest(b, IFLA_INFO_DATA, |b| {
                nest(b, VETH_INFO_PEER, |b| {
                    b.extend_from_slice(&ifinfomsg(p.index as i32, 0, 0));
                    put_str(b, IFLA_IFNAME, &p.name);
                    if let Some(fd) = p.ns_fd {
                        put(b, IFLA_NET_NS_FD, &(fd as u32).to_ne_bytes());
                    }
                });
            });
        }
    });
    b
}

/// The `RTM_NEWLINK` payload that sets the MTU, address and master of an
/// existing device (no flags).
pub fn set_link(index: u32, mtu: u32, address: Option<&[u8]>, master: Option<u32>) -> Vec<u8> {
    let mut b = ifinfomsg(index as i32, 0, 0);
    if mtu != 0 {
        put(&mut b, IFLA_MTU, &mtu.to_ne_bytes());
    }
    if let Some(a) = address {
        put(&mut b, IFLA_ADDRESS, a);
    }
    if let Some(m) = master {
        put(&mut b, IFLA_MASTER, &m.to_ne_bytes());
    }
    b
}

/// The `RTM_NEWLINK` payload that sets (or clears) `IFF_UP`.
pub fn set_up(index: u32, up: bool) -> Vec<u8> {
    let f = libc::IFF_UP as u32;
    ifinfomsg(index as i32, if up { f } else { 0 }, f)
}

/// The payload of a dump request for one family.
pub fn dump_request(ty: u16, family: u8) -> Vec<u8> {
    match ty {
        RTM_GETLINK => {
            let mut b = ifinfomsg(0, 0, 0);
            b[0] = family;
            b
        }
        RTM_GETADDR => vec![family, 0, 0, 0, 0, 0, 0, 0],
        _ => {
            let mut b = vec![0u8; 12];
            b[0] = family;
            b
        }
    }
}

/// The `RTM_GETNSID` payload asking for the id of the namespace of `fd`.
pub fn nsid_request(fd: i32) -> Vec<u8> {
    let mut b = vec![0u8; 4]; // struct rtgenmsg, padded
    put(&mut b, NETNSA_FD, &(fd as u32).to_ne_bytes());
    b
}

/// The id an `RTM_NEWNSID` answer gives.
pub fn parse_nsid(p: &[u8]) -> Option<i32> {
    let list = attrs(p.get(4..)?).ok()?;
    attr_u32(&list, NETNSA_NSID).map(|v| v as i32)
}

/// What crest needs to know of an `RTM_NEWADDR` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub family: u8,
    pub prefix: u8,
    pub index: u32,
    pub address: Vec<u8>,
    /// `IFA_PROTO`: who made it (1 loopback, 2 link-local, 3 RA: the
    /// kernel), when the kernel says.
    pub proto: Option<u8>,
}

pub fn parse_addr(p: &[u8]) -> Result<Addr, Malformed> {
    if p.len() < 8 {
        return Err(Malformed::Short {
            what: "an address",
            len: p.len(),
        });
    }
    let list = attrs(&p[8..])?;
    let address = find(&list, IFA_LOCAL)
        .or_else(|| find(&list, IFA_ADDRESS))
        .ok_or(Malformed::Missing("an address message without an address"))?
        .to_vec();
    Ok(Addr {
        family: p[0],
        prefix: p[1],
        index: u32_at(p, 4).unwrap_or(0),
        address,
        proto: find(&list, IFA_PROTO).and_then(|d| d.first().copied()),
    })
}

impl Addr {
    /// Whether the kernel makes this address by itself (the loopback's
    /// 127.0.0.1/8 and ::1, IPv6 link-local and autoconfigured ones), so
    /// restore must not add it again.
    pub fn kernel_made(&self, lo_index: Option<u32>) -> bool {
        if let Some(p) = self.proto {
            return (1..=3).contains(&p);
        }
        let on_lo = lo_index == Some(self.index);
        match (self.family as i32, self.address.as_slice()) {
            (libc::AF_INET, [127, 0, 0, 1]) => on_lo && self.prefix == 8,
            (libc::AF_INET6, a) if a.len() == 16 => {
                (on_lo && a[..15].iter().all(|b| *b == 0) && a[15] == 1)
                    || (a[0] == 0xfe && a[1] & 0xc0 == 0x80 && self.prefix == 64)
            }
            _ => false,
        }
    }

    /// The address as `ip` prints it, with its prefix.
    pub fn text(&self) -> String {
        format!("{}/{}", ip_text(self.family, &self.address), self.prefix)
    }
}

/// An IPv4 or IPv6 address in its usual notation.
pub fn ip_text(family: u8, a: &[u8]) -> String {
    if let (libc::AF_INET, Ok(b)) = (family as i32, <[u8; 4]>::try_from(a)) {
        return std::net::Ipv4Addr::from(b).to_string();
    }
    if let Ok(b) = <[u8; 16]>::try_from(a) {
        return std::net::Ipv6Addr::from(b).to_string();
    }
    a.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The `RTM_NEWADDR` payload that adds a saved address again: IPv6 ones
/// of devices other than `lo_index` (where there is none) skip duplicate
/// address detection: they passed it before the dump, and a tentative
/// address could not be bound by the sockets restored next.
pub fn replay_addr(p: &[u8], lo_index: Option<u32>) -> Result<Vec<u8>, Malformed> {
    let a = parse_addr(p)?;
    if a.family as i32 != libc::AF_INET6 || Some(a.index) == lo_index {
        return Ok(p.to_vec());
    }
    let mut out = p[..8].to_vec();
    out[2] |= IFA_F_NODAD as u8;
    let mut flags = u32::from(out[2]);
    for at in attrs(&p[8..])? {
        if at.ty == IFA_FLAGS {
            flags |= u32_at(at.data, 0).unwrap_or(0);
        } else {
            put(&mut out, at.ty, at.data);
        }
    }
    put(&mut out, IFA_FLAGS, &(flags | IFA_F_NODAD).to_ne_bytes());
    Ok(out)
}

/// What crest needs to know of an `RTM_NEWROUTE` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub family: u8,
    pub dst_len: u8,
    pub table: u32,
    pub protocol: u8,
    pub kind: u8,
    pub dst: Option<Vec<u8>>,
    pub gateway: Option<Vec<u8>>,
    pub oif: Option<u32>,
}

pub fn parse_route(p: &[u8]) -> Result<Route, Malformed> {
    if p.len() < 12 {
        return Err(Malformed::Short {
            what: "a route",
            len: p.len(),
        });
    }
    let list = attrs(&p[12..])?;
    Ok(Route {
        family: p[0],
        dst_len: p[1],
        table: attr_u32(&list, RTA_TABLE).unwrap_or(u32::from(p[4])),
        protocol: p[5],
        kind: p[7],
        dst: find(&list, RTA_DST).map(<[u8]>::to_vec),
        gateway: find(&list, RTA_GATEWAY).map(<[u8]>::to_vec),
        oif: attr_u32(&list, RTA_OIF),
    })
}

impl Route {
    /// A route someone added (not the kernel, not learnt) in any table
    /// but the kernel's `local` one: what restore adds again.
    pub fn kept(&self) -> bool {
        const RTPROT_REDIRECT: u8 = 1;
        const RTPROT_KERNEL: u8 = 2;
        const RTPROT_RA: u8 = 9;
        const RT_TABLE_LOCAL: u32 = 255;
        self.table != RT_TABLE_LOCAL
            && self.table != 0
            && ![RTPROT_REDIRECT, RTPROT_KERNEL, RTPROT_RA].contains(&self.protocol)
            && matches!(self.kind as i32, 1 | 6..=8) // unicast, blackhole, unreachable, prohibit
    }

    /// The route as a line like `ip route` prints, with device names from
    /// `dev`.
    pub fn text(&self, dev: impl Fn(u32) -> String) -> String {
        let mut s = match &self.dst {
            Some(d) => format!("{}/{}", ip_text(self.family, d), self.dst_len),
            None => "default".into(),
        };
        if let Some(g) = &self.gateway {
            let _ = write!(s, " via {}", ip_text(self.family, g));
        }
        if let Some(o) = self.oif {
            let _ = write!(s, " dev {}", dev(o));
        }
        if self.table != RT_TABLE_MAIN {
            let _ = write!(s, " table {}", self.table);
        }
        s
    }
}

/// The `RTM_NEWROUTE` payload that adds a saved route again: flags the
/// kernel only reports are cleared, cache information left out.
pub fn replay_route(p: &[u8]) -> Result<Vec<u8>, Malformed> {
    if p.len() < 12 {
        return Err(Malformed::Short {
            what: "a route",
            len: p.len(),
        });
    }
    let mut out = p[..12].to_vec();
    let flags = u32_at(p, 8).unwrap_or(0) & RTNH_F_ONLINK;
    out[8..12].copy_from_slice(&flags.to_ne_bytes());
    for at in attrs(&p[12..])? {
        if at.ty != RTA_CACHEINFO {
            put(&mut out, at.ty, at.data);
        }
    }
    Ok(out)
}

/// A saved file (`ip addr save` / `ip route save` layout): the magic, then
/// each payload as a whole message of type `ty`.
pub fn save_file(magic: u32, ty: u16, payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = magic.to_ne_bytes().to_vec();
    for p in payloads {
        out.extend(encode(ty, 0, 0, p));
    }
    out
}

/// The payloads of a saved file whose messages must all be of type `ty`.
pub fn load_file(buf: &[u8], magic: u32, ty: u16) -> Result<Vec<Vec<u8>>, Malformed> {
    match u32_at(buf, 0) {
        Some(m) if m == magic => {}
        Some(m) => {
            return Err(Malformed::Magic {
                got: m,
                want: magic,
            })
        }
        None => return Err(Malformed::NoMagic),
    }
    split(&buf[4..])?
        .into_iter()
        .map(|m| {
            if m.ty == ty {
                Ok(m.payload)
            } else {
                Err(Malformed::Type {
                    got: m.ty,
                    want: ty,
                })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
