//! Network namespaces of the tree's own: their devices, addresses, routes
//! and sysctls, as far as a namespace can be rebuilt from inside.
//!
//! Dump reads the namespace over rtnetlink and /proc/sys/net from a crest
//! thread that entered it with setns(2) (a netlink socket and a sysctl
//! lookup belong to the namespace of the thread that makes them). Restore
//! does the same in the namespace a helper made inside the owning user
//! namespace: it creates the devices at their old ifindex, sets their MTU,
//! address, bridge, sysctls and up state, then adds the addresses and the
//! routes again.
//!
//! Rebuilt: the loopback device; `veth` pairs with both ends in namespaces
//! of the tree; `dummy`, `bridge` and `ifb` devices; a `veth` whose peer is
//! outside the tree only when named with `--external veth[NAME]:OUTSIDE`
//! (restore makes the peer OUTSIDE in crest's own namespace). Any other
//! device fails the dump with its name and kind.
//!
//! Images (CRIU's where CRIU has them): `netdev-<id>.img`
//! (`net_device_entry` per device, with its IPv4/IPv6 conf sysctls),
//! `netns-<id>.img` (the "all" and "default" conf sysctls),
//! `ifaddr-<id>.img`, `route-<id>.img`, `route6-<id>.img` (raw rtnetlink
//! messages after the magic of `ip addr save` / `ip route save`, as CRIU
//! stores them). crest's additions ride in CRIU's messages: device kinds,
//! external peers and bridge options in `net_device_entry`, other
//! namespace sysctls, IPv6 rules and permanent neighbours in `netns_entry`
//! (an older crest's `crest-netdev-`, `crest-net-sysctl-`, `crest-rule6-`
//! and `crest-neigh-<id>.img` are still read).

mod policy;
mod rtnl;
mod sysctl;

use crate::error::{DumpError, RestoreError};
use crate::opts::{veth_bridges, veth_externals};
use crest_images::pb::crest::{CrestNetdevExtra, CrestSysctl};
use crest_images::pb::{NdType, NetDeviceEntry, NetnsEntry, SysctlEntry};
use crest_images::{magic, names};
use rtnl::Link;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use sysctl::{read_conf, set_sysctls, CONF4, CONF6, EXTRA};

/// Link kinds crest creates again (besides the loopback device).
const KINDS: [&str; 4] = ["veth", "dummy", "bridge", "ifb"];

/// Most devices, addresses or routes crest takes from one namespace.
const MAX_ITEMS: usize = 4096;
/// Largest raw image (addresses, routes) crest reads.
const MAX_RAW: u64 = 16 << 20;

/// One device of a namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Dev {
    pub link: Link,
    /// The IPv4 and IPv6 conf sysctls, positional (CONF4, CONF6).
    pub conf4: Vec<SysctlEntry>,
    pub conf6: Vec<SysctlEntry>,
    /// veth: the crest id of the namespace of the peer, when another of
    /// the tree holds it.
    pub peer_ns: Option<u32>,
    /// veth whose peer is outside the tree (named with --external).
    pub external: bool,
    pub outside_name: Option<String>,
}

/// The network state of one namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetNs {
    pub devs: Vec<Dev>,
    /// `RTM_NEWADDR` payloads the kernel does not make by itself.
    pub addrs: Vec<Vec<u8>>,
    /// `RTM_NEWROUTE` payloads of the main tables (IPv4, IPv6).
    pub routes4: Vec<Vec<u8>>,
    pub routes6: Vec<Vec<u8>>,
    /// `RTM_NEWRULE` payloads of the rules someone added (IPv4, IPv6).
    pub rules4: Vec<Vec<u8>>,
    pub rules6: Vec<Vec<u8>>,
    /// `RTM_NEWNEIGH` payloads of permanent neighbour entries.
    pub neighs: Vec<Vec<u8>>,
    /// "all" and "default" conf sysctls (CONF4, CONF6).
    pub all4: Vec<SysctlEntry>,
    pub def4: Vec<SysctlEntry>,
    pub all6: Vec<SysctlEntry>,
    pub def6: Vec<SysctlEntry>,
    /// EXTRA sysctls: (path, value).
    pub extra: Vec<(String, String)>,
    /// At dump, a task inside.
    pid: i32,
}

/// How many of [`raw_files`] are CRIU's raw images, which crest writes;
/// the others are an older crest's (IPv6 rules and neighbours now ride in
/// `netns_entry`), read when they are there.
const CRIU_RAW: usize = 4;

/// The raw rtnetlink images of namespace `id` (laid out like `ip ...
/// save` output): file, magic, message type; in the order of
/// [`NetNs::raw_lists`].
fn raw_files(id: u32) -> [(String, u32, u16); 6] {
    [
        (
            names::ifaddr(id),
            rtnl::IFADDR_SAVE_MAGIC,
            rtnl::RTM_NEWADDR,
        ),
        (names::route(id), rtnl::ROUTE_SAVE_MAGIC, rtnl::RTM_NEWROUTE),
        (
            names::route6(id),
            rtnl::ROUTE_SAVE_MAGIC,
            rtnl::RTM_NEWROUTE,
        ),
        (
            names::rule(id),
            policy::RULE_SAVE_MAGIC,
            policy::RTM_NEWRULE,
        ),
        (
            names::crest_rule6(id),
            policy::RULE_SAVE_MAGIC,
            policy::RTM_NEWRULE,
        ),
        (
            names::crest_neigh(id),
            policy::NEIGH_SAVE_MAGIC,
            policy::RTM_NEWNEIGH,
        ),
    ]
}

impl NetNs {
    fn raw_lists(&self) -> [&Vec<Vec<u8>>; 6] {
        [
            &self.addrs,
            &self.routes4,
            &self.routes6,
            &self.rules4,
            &self.rules6,
            &self.neighs,
        ]
    }

    fn raw_lists_mut(&mut self) -> [&mut Vec<Vec<u8>>; 6] {
        [
            &mut self.addrs,
            &mut self.routes4,
            &mut self.routes6,
            &mut self.rules4,
            &mut self.rules6,
            &mut self.neighs,
        ]
    }

    /// The loopback device is up.
    pub fn lo_up(&self) -> bool {
        self.devs
            .iter()
            .any(|d| is_lo(&d.link) && d.link.flags & libc::IFF_UP as u32 != 0)
    }

    /// The loopback device's MTU, when the namespace has one.
    pub fn lo_mtu(&self) -> Option<u32> {
        self.devs
            .iter()
            .find(|d| is_lo(&d.link))
            .map(|d| d.link.mtu)
            .filter(|&m| m != 0)
    }

    /// A namespace that only has a loopback device, up or down, with a new
    /// namespace's MTU (images written before crest saved devices).
    pub fn bare(lo_up: bool) -> NetNs {
        Self::bare_with(lo_up, LO_MTU)
    }

    /// A namespace that only has a loopback device, up or down, with its
    /// MTU.
    pub fn bare_with(lo_up: bool, mtu: u32) -> NetNs {
        let link = Link {
            index: 1,
            hw_type: libc::ARPHRD_LOOPBACK,
            flags: libc::IFF_LOOPBACK as u32 | if lo_up { libc::IFF_UP as u32 } else { 0 },
            name: "lo".into(),
            mtu,
            ..Link::default()
        };
        NetNs {
            devs: vec![Dev {
                link,
                conf4: Vec::new(),
                conf6: Vec::new(),
                peer_ns: None,
                external: false,
                outside_name: None,
            }],
            ..NetNs::default()
        }
    }

    fn name_of(&self, index: u32) -> String {
        self.devs
            .iter()
            .find(|d| d.link.index == index)
            .map_or_else(|| format!("if{index}"), |d| d.link.name.clone())
    }

    /// One line of text for `crest show --ns`: devices, addresses, routes.
    pub fn render(&self) -> String {
        let mut devs: Vec<String> = Vec::new();
        for d in &self.devs {
            let l = &d.link;
            let mut s = format!(
                "{} {} {} mtu {}",
                l.name,
                l.kind.as_deref().unwrap_or("loopback"),
                if l.flags & libc::IFF_UP as u32 != 0 {
                    "up"
                } else {
                    "down"
                },
                l.mtu
            );
            if let Some(a) = l.address.as_ref().filter(|_| !is_lo(l)) {
                s.push(' ');
                s.push_str(
                    &a.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                );
            }
            if let Some(m) = l.master {
                s.push_str(&format!(" master {}", self.name_of(m)));
            }
            if !l.bridge.is_empty() {
                s.push_str(&format!(" [{}]", rtnl::bridge_text(&l.bridge)));
            }
            if d.external {
                s.push_str(" peer outside");
            } else if let (Some(p), None) = (l.link, d.peer_ns) {
                s.push_str(&format!(" peer {}", self.name_of(p)));
            } else if let (Some(p), Some(n)) = (l.link, d.peer_ns) {
                s.push_str(&format!(" peer if{p} of net ns {n}"));
            }
            devs.push(s);
        }
        let addrs: Vec<String> = self
            .addrs
            .iter()
            .filter_map(|p| rtnl::parse_addr(p).ok())
            .map(|a| format!("{} {}", self.name_of(a.index), a.text()))
            .collect();
        let routes: Vec<String> = self
            .routes4
            .iter()
            .chain(&self.routes6)
            .filter_map(|p| rtnl::parse_route(p).ok())
            .map(|r| r.text(|i| self.name_of(i)))
            .chain(
                self.rules4
                    .iter()
                    .chain(&self.rules6)
                    .filter_map(|p| policy::parse_rule(p).ok())
                    .map(|r| r.text()),
            )
            .chain(
                self.neighs
                    .iter()
                    .filter_map(|p| policy::parse_neigh(p).ok())
                    .map(|n| n.text(|i| self.name_of(i))),
            )
            .collect();
        format!(
            "devices [{}] addresses [{}] routes [{}]",
            devs.join(", "),
            addrs.join(", "),
            routes.join(", ")
        )
    }
}

fn is_lo(l: &Link) -> bool {
    l.flags & libc::IFF_LOOPBACK as u32 != 0
}

// ---- rtnetlink over a socket --------------------------------------------

/// An rtnetlink socket in the namespace of the thread that opened it.
struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

impl Rtnl {
    fn open() -> io::Result<Rtnl> {
        Rtnl::open_proto(libc::NETLINK_ROUTE)
    }

    /// A netlink socket of another protocol (`NETLINK_NETFILTER`), spoken
    /// the same way.
    fn open_proto(proto: i32) -> io::Result<Rtnl> {
        let fd = crest_sys::net::socket(libc::AF_NETLINK, libc::SOCK_RAW, proto)?;
        Ok(Rtnl { fd, seq: 0 })
    }

    fn send(&mut self, ty: u16, flags: u16, payload: &[u8]) -> io::Result<u32> {
        self.seq += 1;
        let msg = rtnl::encode(ty, flags | rtnl::NLM_F_REQUEST, self.seq, payload);
        let mut kernel = [0u8; 12];
        kernel[..2].copy_from_slice(&(libc::AF_NETLINK as u16).to_ne_bytes());
        crest_sys::net::sendto(&self.fd, &msg, 0, &kernel)?;
        Ok(self.seq)
    }

    /// The messages of the answer to request `seq`, up to its end (the
    /// ack, or NLMSG_DONE of a dump).
    fn answer(&mut self, seq: u32) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = crest_sys::net::recv(&self.fd, &mut buf, libc::MSG_TRUNC)?;
            if n > buf.len() {
                return Err(io::Error::other(format!("a netlink answer of {n} bytes")));
            }
            let msgs = rtnl::split(&buf[..n]).map_err(io::Error::other)?;
            for m in msgs.into_iter().filter(|m| m.seq == seq) {
                match m.ty {
                    rtnl::NLMSG_ERROR | rtnl::NLMSG_DONE => {
                        let code = if m.payload.len() >= 4 {
                            rtnl::error_code(&m.payload)
                        } else {
                            0
                        };
                        if code < 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        return Ok(out);
                    }
                    _ => {
                        if out.len() >= 4 * MAX_ITEMS {
                            return Err(io::Error::other("too many netlink messages"));
                        }
                        out.push(m.payload);
                    }
                }
            }
        }
    }

    fn dump(&mut self, ty: u16, family: i32) -> io::Result<Vec<Vec<u8>>> {
        let seq = self.send(ty, rtnl::NLM_F_DUMP, &rtnl::dump_request(ty, family as u8))?;
        self.answer(seq)
    }

    fn call(&mut self, ty: u16, flags: u16, payload: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let seq = self.send(ty, flags | rtnl::NLM_F_ACK, payload)?;
        self.answer(seq)
    }

    fn links(&mut self) -> io::Result<Vec<Link>> {
        self.dump(rtnl::RTM_GETLINK, libc::AF_UNSPEC)?
            .iter()
            .map(|p| rtnl::parse_link(p).map_err(io::Error::other))
            .collect()
    }

    /// The id this namespace gives the namespace of `fd` (-1: none yet).
    fn nsid_of(&mut self, fd: &OwnedFd) -> io::Result<i32> {
        let r = self.call(rtnl::RTM_GETNSID, 0, &rtnl::nsid_request(fd.as_raw_fd()))?;
        Ok(r.iter().find_map(|p| rtnl::parse_nsid(p)).unwrap_or(-1))
    }
}

/// Runs `f` on a new thread that has entered the network namespace `ns`.
fn in_ns<R: Send>(ns: &OwnedFd, f: impl FnOnce() -> R + Send) -> io::Result<R> {
    std::thread::scope(|s| {
        s.spawn(|| -> io::Result<R> {
            crest_sys::ns::setns(ns, libc::CLONE_NEWNET)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("a thread in a network namespace panicked")))
    })
}

fn open_ns(path: &str) -> io::Result<OwnedFd> {
    Ok(File::open(path)?.into())
}

// ---- dump ---------------------------------------------------------------

/// Why reading a namespace stopped.
enum Fail {
    Io(&'static str, io::Error),
    Refuse(String),
}

impl Fail {
    fn dump(self, pid: i32) -> DumpError {
        match self {
            Fail::Io(step, source) => DumpError::Io { pid, step, source },
            Fail::Refuse(what) => DumpError::Unsupported { pid, what },
        }
    }
}

/// The payloads of an rtnetlink dump of `ty` for `family` that `keep`
/// accepts, at most MAX_ITEMS; `steps` name the listing and the parsing.
fn dump_kept(
    nl: &mut Rtnl,
    ty: u16,
    family: i32,
    steps: (&'static str, &'static str),
    keep: impl Fn(&[u8]) -> Result<bool, String>,
) -> Result<Vec<Vec<u8>>, Fail> {
    let mut out = Vec::new();
    for p in nl.dump(ty, family).map_err(io_at(steps.0))? {
        if keep(&p).map_err(|e| Fail::Io(steps.1, io::Error::other(e)))? && out.len() < MAX_ITEMS {
            out.push(p);
        }
    }
    Ok(out)
}

fn io_at(step: &'static str) -> impl FnOnce(io::Error) -> Fail {
    move |e| Fail::Io(step, e)
}

/// Reads the network namespace `fd` of task `pid`.
pub fn collect(pid: i32, fd: &OwnedFd) -> Result<NetNs, DumpError> {
    let mut n = in_ns(fd, read_inside)
        .map_err(|source| enter_failed(pid, source))?
        .map_err(|f| f.dump(pid))?;
    n.pid = pid;
    Ok(n)
}

/// The loopback device of a new namespace's MTU.
const LO_MTU: u32 = 65536;

/// Whether the loopback device of the network namespace `fd` (task
/// `pid`'s) is up, and its MTU: all crest keeps of a namespace left empty.
pub fn lo_state_in(pid: i32, fd: &OwnedFd) -> Result<(bool, u32), DumpError> {
    in_ns(fd, || -> Result<(bool, u32), Fail> {
        let mut nl = Rtnl::open().map_err(io_at("open an rtnetlink socket"))?;
        let links = nl.links().map_err(io_at("list network devices"))?;
        Ok(links
            .iter()
            .find(|l| is_lo(l))
            .map_or((false, LO_MTU), |l| {
                (l.flags & libc::IFF_UP as u32 != 0, l.mtu)
            }))
    })
    .map_err(|source| enter_failed(pid, source))?
    .map_err(|f| f.dump(pid))
}

/// Why crest could not enter a task's network namespace to read it: an
/// unprivileged crest (no CAP_SYS_ADMIN where it runs) never can.
fn enter_failed(pid: i32, source: io::Error) -> DumpError {
    if source.raw_os_error() == Some(libc::EPERM) {
        DumpError::Unsupported {
            pid,
            what: "a net namespace of the tree's own in an unprivileged dump (crest reads one \
                   from inside, which needs CAP_SYS_ADMIN where crest runs)"
                .into(),
        }
    } else {
        DumpError::Io {
            pid,
            step: "enter a network namespace",
            source,
        }
    }
}

/// Netfilter state crest does not dump yet: nftables tables (asked over
/// `NETLINK_NETFILTER`) and legacy iptables tables of the calling
/// thread's namespace; restored without them, a container would lose its
/// firewall.
fn check_netfilter() -> Result<(), Fail> {
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_GETTABLE: u16 = 1;
    const NFTA_TABLE_NAME: u16 = 1;
    let mut tables = Vec::new();
    // a kernel without nf_tables has nothing to lose
    if let Ok(mut nl) = Rtnl::open_proto(libc::NETLINK_NETFILTER) {
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE;
        // struct nfgenmsg: family (all), version, resource id
        let seq = nl
            .send(ty, rtnl::NLM_F_DUMP, &[libc::AF_UNSPEC as u8, 0, 0, 0])
            .map_err(io_at("ask for nftables tables"))?;
        for p in nl.answer(seq).map_err(io_at("list nftables tables"))? {
            let name = p
                .get(4..)
                .and_then(|a| rtnl::attrs(a).ok())
                .and_then(|a| rtnl::attr_str(&a, NFTA_TABLE_NAME));
            tables.push(format!("nftables {}", name.unwrap_or_default()));
        }
    }
    for (file, kind) in [
        ("ip_tables_names", "iptables"),
        ("ip6_tables_names", "ip6tables"),
    ] {
        let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}"));
        for t in text.unwrap_or_default().split_whitespace() {
            tables.push(format!("{kind} {t}"));
        }
    }
    if tables.is_empty() {
        return Ok(());
    }
    Err(Fail::Refuse(format!(
        "netfilter tables in a network namespace ({}; crest does not dump firewall state)",
        tables.join(", ")
    )))
}

fn read_inside() -> Result<NetNs, Fail> {
    check_netfilter()?;
    let mut nl = Rtnl::open().map_err(io_at("open an rtnetlink socket"))?;
    let links = nl.links().map_err(io_at("list network devices"))?;
    if links.len() > MAX_ITEMS {
        return Err(Fail::Refuse(format!("{} network devices", links.len())));
    }
    let mut n = NetNs::default();
    for l in links {
        let known = l.kind.as_deref().is_some_and(|k| KINDS.contains(&k));
        if !is_lo(&l) && !known {
            return Err(Fail::Refuse(format!(
                "network device {} ({}) in a net namespace of the tree's own (crest rebuilds \
                 loopback, {} devices)",
                l.name,
                l.kind.as_deref().map_or(
                    "no rtnetlink kind: a physical or moved-in device".into(),
                    |k| { format!("kind {k}") }
                ),
                KINDS.join(", ")
            )));
        }
        let conf4 = read_conf("ipv4", &l.name, &CONF4);
        let conf6 = read_conf("ipv6", &l.name, &CONF6);
        n.devs.push(Dev {
            link: l,
            conf4,
            conf6,
            peer_ns: None,
            external: false,
            outside_name: None,
        });
    }
    let lo = n.devs.iter().find(|d| is_lo(&d.link)).map(|d| d.link.index);
    for p in nl
        .dump(rtnl::RTM_GETADDR, libc::AF_UNSPEC)
        .map_err(io_at("list addresses"))?
    {
        let a =
            rtnl::parse_addr(&p).map_err(|e| Fail::Io("parse an address", io::Error::other(e)))?;
        if !a.kernel_made(lo) && n.addrs.len() < MAX_ITEMS {
            n.addrs.push(p);
        }
    }
    for (family, v4) in [(libc::AF_INET, true), (libc::AF_INET6, false)] {
        let routes = dump_kept(
            &mut nl,
            rtnl::RTM_GETROUTE,
            family,
            ("list routes", "parse a route"),
            |p| rtnl::parse_route(p).map(|r| r.kept()),
        )?;
        let rules = dump_kept(
            &mut nl,
            policy::RTM_GETRULE,
            family,
            ("list rules", "parse a rule"),
            |p| policy::parse_rule(p).map(|r| r.kept()),
        )?;
        let neighs = dump_kept(
            &mut nl,
            policy::RTM_GETNEIGH,
            family,
            ("list neighbours", "parse a neighbour"),
            |p| policy::parse_neigh(p).map(|e| e.kept() && e.family == family as u8),
        )?;
        let (r, u) = if v4 {
            (&mut n.routes4, &mut n.rules4)
        } else {
            (&mut n.routes6, &mut n.rules6)
        };
        *r = routes;
        *u = rules;
        n.neighs.extend(neighs);
    }
    n.neighs.truncate(MAX_ITEMS);
    n.all4 = read_conf("ipv4", "all", &CONF4);
    n.def4 = read_conf("ipv4", "default", &CONF4);
    n.all6 = read_conf("ipv6", "all", &CONF6);
    n.def6 = read_conf("ipv6", "default", &CONF6);
    n.extra = EXTRA
        .iter()
        .filter_map(|p| Some((p.to_string(), sysctl::read_sysctl(p)?)))
        .collect();
    Ok(n)
}

/// Finds where the peer of every veth lives: another namespace of the
/// tree (`nets`: crest id and state), or outside it, which is refused
/// unless `external` names the device (None: describe only, for `crest
/// show`).
pub fn resolve_peers(
    nets: &mut [(u32, &mut NetNs)],
    external: Option<&[String]>,
) -> Result<(), DumpError> {
    let fds: Vec<(u32, OwnedFd)> = nets
        .iter()
        // (a namespace left empty, --empty-ns net, was not read)
        .filter(|(_, n)| n.pid != 0)
        .map(|(id, n)| {
            open_ns(&format!("/proc/{}/ns/net", n.pid))
                .map(|fd| (*id, fd))
                .map_err(|source| DumpError::Io {
                    pid: n.pid,
                    step: "open a network namespace",
                    source,
                })
        })
        .collect::<Result<_, _>>()?;
    let ext = veth_externals(external.unwrap_or(&[]));
    for (id, n) in nets.iter_mut() {
        let (id, pid) = (*id, n.pid);
        let Some((_, me)) = fds.iter().find(|f| f.0 == id) else {
            continue;
        };
        for d in n.devs.iter_mut() {
            let Some(want) = d
                .link
                .link_netnsid
                .filter(|_| d.link.kind.as_deref() == Some("veth"))
            else {
                continue;
            };
            let others: Vec<(u32, &OwnedFd)> = fds
                .iter()
                .filter(|f| f.0 != id)
                .map(|f| (f.0, &f.1))
                .collect();
            let found = in_ns(me, || -> io::Result<Option<u32>> {
                let mut nl = Rtnl::open()?;
                for (oid, ofd) in &others {
                    if nl.nsid_of(ofd)? == want {
                        return Ok(Some(*oid));
                    }
                }
                Ok(None)
            })
            .and_then(|r| r)
            .map_err(|source| DumpError::Io {
                pid,
                step: "find the namespace of a veth peer",
                source,
            })?;
            if let Some(o) = found {
                d.peer_ns = Some(o);
                continue;
            }
            d.external = true;
            match (external, ext.iter().find(|e| e.0 == d.link.name)) {
                (None, _) => {}
                (Some(_), Some(e)) => d.outside_name = e.1.clone(),
                (Some(_), None) => {
                    return Err(DumpError::Unsupported {
                        pid,
                        what: format!(
                            "dumping network device {}, a veth whose peer is outside the tree (an \
                             external device), without --external veth[{}]:OUTSIDE_NAME (which \
                             restore takes too, to make the peer OUTSIDE_NAME in crest's network \
                             namespace)",
                            d.link.name, d.link.name
                        ),
                    })
                }
            }
        }
    }
    Ok(())
}

// ---- images -------------------------------------------------------------

fn nd_type(l: &Link) -> NdType {
    match l.kind.as_deref() {
        _ if is_lo(l) => NdType::Loopback,
        Some("veth") => NdType::Veth,
        Some("bridge") => NdType::Bridge,
        _ => NdType::Extlink,
    }
}

/// Writes the images of namespace `id`: crest's additions ride in
/// `net_device_entry.crest_netdev` and in `netns_entry` (sysctls, IPv6
/// rules, neighbours).
pub fn write(dir: &Path, id: u32, n: &NetNs) -> Result<(), DumpError> {
    let devs: Vec<NetDeviceEntry> = n
        .devs
        .iter()
        .map(|d| NetDeviceEntry {
            r#type: nd_type(&d.link) as i32,
            ifindex: d.link.index,
            mtu: d.link.mtu,
            flags: d.link.flags,
            name: d.link.name.clone(),
            address: d.link.address.clone(),
            conf4: d.conf4.clone(),
            conf6: d.conf6.clone(),
            peer_ifindex: d.link.link,
            peer_nsid: d.peer_ns,
            master: d.link.master,
            crest_netdev: Some(CrestNetdevExtra {
                ifindex: d.link.index,
                kind: d.link.kind.clone(),
                external: Some(d.external),
                outside_name: d.outside_name.clone(),
                bridge_options: Some(d.link.bridge.clone()).filter(|b| !b.is_empty()),
            }),
        })
        .collect();
    crest_images::write_image(dir, &names::netdev(id), magic::NETDEV, &devs)?;
    let e = NetnsEntry {
        def_conf4: n.def4.clone(),
        all_conf4: n.all4.clone(),
        def_conf6: n.def6.clone(),
        all_conf6: n.all6.clone(),
        nsids: Vec::new(),
        crest_sysctls: n
            .extra
            .iter()
            .map(|(name, value)| CrestSysctl {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        crest_rules6: n.rules6.clone(),
        crest_neighs: n.neighs.clone(),
    };
    crest_images::write_image(dir, &names::netns(id), magic::NETNS, &[e])?;
    for ((name, m, ty), list) in raw_files(id).into_iter().zip(n.raw_lists()).take(CRIU_RAW) {
        if list.is_empty() {
            // nothing to add again: no raw file crit cannot read either
            continue;
        }
        let mut w = crest_images::create_raw(dir, &name)?;
        w.write_all(&rtnl::save_file(m, ty, list))?;
        w.finish()?;
    }
    Ok(())
}

/// Reads the images of namespace `id`; None when there are none (images
/// of a crest that saved only the loopback state).
pub fn read(dir: &Path, id: u32) -> Result<Option<NetNs>, RestoreError> {
    if !dir.join(names::netdev(id)).exists() {
        return Ok(None);
    }
    let bad = |file: String, what: String| RestoreError::BadImage { pid: 0, file, what };
    let mut devs: Vec<NetDeviceEntry> =
        crest_images::read_image(dir, &names::netdev(id), magic::NETDEV)?;
    // crest's part of each device: in the entry, or in an older crest's
    // file of its own.
    let (extra_file, extra) = if dir.join(names::crest_netdev(id)).exists() {
        let name = names::crest_netdev(id);
        let extra: Vec<CrestNetdevExtra> =
            crest_images::read_image(dir, &name, magic::CREST_NETDEV)?;
        (name, extra)
    } else {
        let mut extra = Vec::with_capacity(devs.len().min(MAX_ITEMS));
        for d in devs.iter_mut().take(MAX_ITEMS) {
            extra.push(d.crest_netdev.take().ok_or_else(|| {
                bad(
                    names::netdev(id),
                    format!("device {:?} without crest's entry (field 1000)", d.name),
                )
            })?);
        }
        (names::netdev(id), extra)
    };
    if devs.len() > MAX_ITEMS || extra.len() != devs.len() {
        return Err(bad(
            extra_file,
            format!(
                "{} devices for the {} of {}",
                extra.len(),
                devs.len(),
                names::netdev(id)
            ),
        ));
    }
    let mut n = NetNs::default();
    for (d, x) in devs.into_iter().zip(extra) {
        let conf_ok = d.conf4.len() <= CONF4.len() && d.conf6.len() <= CONF6.len();
        let name_ok = !d.name.is_empty() && d.name.len() < 16 && !d.name.contains(['/', '\0']);
        if x.ifindex != d.ifindex || !conf_ok || !name_ok || d.ifindex == 0 {
            return Err(bad(
                names::netdev(id),
                format!("a bad device entry {:?}", d.name),
            ));
        }
        let lo = d.r#type == NdType::Loopback as i32;
        if !lo && !x.kind.as_deref().is_some_and(|k| KINDS.contains(&k)) {
            return Err(bad(
                extra_file,
                format!(
                    "device {} of kind {:?}, which crest does not make",
                    d.name, x.kind
                ),
            ));
        }
        let bridge = match x.bridge_options {
            Some(b) if x.kind.as_deref() == Some("bridge") => rtnl::bridge_options(&b)
                .ok()
                .filter(|k| *k == b)
                .ok_or_else(|| {
                    bad(
                        extra_file.clone(),
                        format!("bad bridge options of {}", d.name),
                    )
                })?,
            Some(_) => {
                return Err(bad(
                    extra_file,
                    format!("bridge options of {}, which is no bridge", d.name),
                ))
            }
            None => Vec::new(),
        };
        n.devs.push(Dev {
            link: Link {
                index: d.ifindex,
                hw_type: if lo { libc::ARPHRD_LOOPBACK } else { 0 },
                flags: d.flags,
                name: d.name,
                mtu: d.mtu,
                address: d.address,
                kind: x.kind,
                master: d.master,
                link: d.peer_ifindex,
                link_netnsid: None,
                bridge,
            },
            conf4: d.conf4,
            conf6: d.conf6,
            peer_ns: d.peer_nsid,
            external: x.external.unwrap_or(false),
            outside_name: x.outside_name,
        });
    }
    let mut e: NetnsEntry = crest_images::read_one(dir, &names::netns(id), magic::NETNS)?;
    if [&e.def_conf4, &e.all_conf4]
        .iter()
        .any(|c| c.len() > CONF4.len())
        || [&e.def_conf6, &e.all_conf6]
            .iter()
            .any(|c| c.len() > CONF6.len())
    {
        return Err(bad(
            names::netns(id),
            "longer conf lists than crest knows".into(),
        ));
    }
    (n.def4, n.all4, n.def6, n.all6) = (e.def_conf4, e.all_conf4, e.def_conf6, e.all_conf6);
    let (sysctl_file, sysctls) = if dir.join(names::crest_net_sysctl(id)).exists() {
        let name = names::crest_net_sysctl(id);
        let list: Vec<CrestSysctl> = crest_images::read_image(dir, &name, magic::CREST_NET_SYSCTL)?;
        (name, list)
    } else {
        (names::netns(id), std::mem::take(&mut e.crest_sysctls))
    };
    for s in sysctls {
        if !EXTRA.contains(&s.name.as_str()) || s.value.len() > 256 {
            return Err(bad(sysctl_file, format!("sysctl {:?}", s.name)));
        }
        n.extra.push((s.name, s.value));
    }
    for (ty, list) in [
        (policy::RTM_NEWRULE, &e.crest_rules6),
        (policy::RTM_NEWNEIGH, &e.crest_neighs),
    ] {
        check_payloads(&names::netns(id), ty, list)?;
    }
    (n.rules6, n.neighs) = (e.crest_rules6, e.crest_neighs);
    for ((name, m, ty), slot) in raw_files(id).into_iter().zip(n.raw_lists_mut()) {
        let path = dir.join(&name);
        if !path.exists() {
            // an empty list is not written; rules: images of crest before
            // it saved them; IPv6 rules and neighbours: in netns_entry
            // unless an older crest wrote them
            continue;
        }
        let len = std::fs::metadata(&path)
            .map_err(|e| bad(name.clone(), e.to_string()))?
            .len();
        if len > MAX_RAW {
            return Err(bad(name, format!("{len} bytes")));
        }
        let buf = std::fs::read(&path).map_err(|e| bad(name.clone(), e.to_string()))?;
        let list = rtnl::load_file(&buf, m, ty).map_err(|w| bad(name.clone(), w))?;
        check_payloads(&name, ty, &list)?;
        *slot = list;
    }
    Ok(Some(n))
}

/// Refuses rtnetlink payloads of type `ty` (from image `file`) that crest
/// cannot parse, or too many of them.
fn check_payloads(file: &str, ty: u16, list: &[Vec<u8>]) -> Result<(), RestoreError> {
    let bad = |what: String| RestoreError::BadImage {
        pid: 0,
        file: file.to_string(),
        what,
    };
    if list.len() > MAX_ITEMS {
        return Err(bad(format!("{} entries", list.len())));
    }
    for p in list {
        let ok = match ty {
            rtnl::RTM_NEWADDR => rtnl::parse_addr(p).map(drop),
            rtnl::RTM_NEWROUTE => rtnl::parse_route(p).map(drop),
            policy::RTM_NEWRULE => policy::parse_rule(p).map(drop),
            _ => policy::parse_neigh(p).map(drop),
        };
        ok.map_err(bad)?;
    }
    Ok(())
}

// ---- restore ------------------------------------------------------------

/// A failed restore step: what, and the error.
pub(super) type Step = (String, io::Error);

pub(super) fn step<T>(r: io::Result<T>, what: impl FnOnce() -> String) -> Result<T, Step> {
    r.map_err(|e| (what(), e))
}

/// Rebuilds the namespaces `nets` (crest id, state, pid of the helper
/// that holds it): devices first in all of them (a veth pair may span
/// two), then in each its devices' settings, sysctls, addresses and
/// routes. `external` names the outside ends of external veths.
pub fn restore(nets: &[(u32, &NetNs, i32)], external: &[String]) -> Result<(), RestoreError> {
    let rerr = |pid: i32| {
        move |(what, source): Step| RestoreError::Io {
            pid,
            step: what,
            source,
        }
    };
    let fds: Vec<(u32, OwnedFd)> = nets
        .iter()
        .map(|(id, _, pid)| {
            open_ns(&format!("/proc/{pid}/ns/net"))
                .map(|fd| (*id, fd))
                .map_err(|e| ("open the network namespace of a helper".into(), e))
                .map_err(rerr(*pid))
        })
        .collect::<Result<_, _>>()?;
    let crest_ns = open_ns("/proc/self/ns/net")
        .map_err(|e| rerr(0)(("open crest's network namespace".into(), e)))?;
    let ext = veth_externals(external);
    for ((id, n, pid), (_, fd)) in nets.iter().zip(&fds) {
        let peers = |d: &Dev| -> Result<Option<rtnl::Peer>, RestoreError> {
            peer_of(*id, n, d, nets, &fds, &crest_ns, &ext)
        };
        let mut plan = Vec::new();
        for d in &n.devs {
            plan.push((d, peers(d)?));
        }
        in_ns(fd, || create(&plan))
            .and_then(|r| r.map_err(|(w, e)| io::Error::new(e.kind(), format!("{w}: {e}"))))
            .map_err(|e| RestoreError::Io {
                pid: *pid,
                step: format!("make the devices of net namespace {id}"),
                source: e,
            })?;
    }
    outside_up(nets, &ext, &veth_bridges(external)).map_err(rerr(0))?;
    for ((id, n, pid), (_, fd)) in nets.iter().zip(&fds) {
        in_ns(fd, || configure(n))
            .map_err(|e| (format!("enter net namespace {id}"), e))
            .and_then(|r| r)
            .map_err(rerr(*pid))?;
    }
    Ok(())
}

/// In crest's own namespace, puts the outside end of each external veth
/// in the bridge `bridges` names for it, and brings it up when its inside
/// end was up.
fn outside_up(
    nets: &[(u32, &NetNs, i32)],
    ext: &[(String, Option<String>)],
    bridges: &[(String, String)],
) -> Result<(), Step> {
    let names: Vec<String> = nets
        .iter()
        .flat_map(|n| n.1.devs.iter())
        .filter(|d| d.external && d.link.flags & libc::IFF_UP as u32 != 0)
        .filter_map(|d| {
            let given = ext
                .iter()
                .find(|e| e.0 == d.link.name)
                .and_then(|e| e.1.clone());
            given.or_else(|| d.outside_name.clone())
        })
        .collect();
    if names.is_empty() && bridges.is_empty() {
        return Ok(());
    }
    let mut nl = step(Rtnl::open(), || "open an rtnetlink socket".into())?;
    let have = step(nl.links(), || "list crest's devices".into())?;
    for (out, bridge) in bridges {
        let index = |n: &str| have.iter().find(|l| l.name == n).map(|l| l.index);
        let (Some(o), Some(b)) = (index(out), index(bridge)) else {
            return Err((
                format!("put the outside veth {out} in bridge {bridge}"),
                io::Error::from_raw_os_error(libc::ENODEV),
            ));
        };
        step(
            nl.call(rtnl::RTM_NEWLINK, 0, &rtnl::set_link(o, 0, None, Some(b))),
            || format!("put the outside veth {out} in bridge {bridge}"),
        )?;
    }
    for name in names {
        let Some(l) = have.iter().find(|l| l.name == name) else {
            continue;
        };
        step(
            nl.call(rtnl::RTM_NEWLINK, 0, &rtnl::set_up(l.index, true)),
            || format!("bring the outside veth {name} up"),
        )?;
    }
    Ok(())
}

/// The peer to make with device `d` of namespace `id`, when this end is
/// the one that makes the pair (Ok(None): not a veth, or the other end
/// makes it).
fn peer_of(
    id: u32,
    n: &NetNs,
    d: &Dev,
    nets: &[(u32, &NetNs, i32)],
    fds: &[(u32, OwnedFd)],
    crest_ns: &OwnedFd,
    ext: &[(String, Option<String>)],
) -> Result<Option<rtnl::Peer>, RestoreError> {
    if d.link.kind.as_deref() != Some("veth") {
        return Ok(None);
    }
    let bad = |what: String| RestoreError::BadImage {
        pid: 0,
        file: names::netdev(id),
        what,
    };
    if d.external {
        let given = ext
            .iter()
            .find(|e| e.0 == d.link.name)
            .and_then(|e| e.1.clone());
        let Some(outside) = given.or_else(|| d.outside_name.clone()) else {
            return Err(RestoreError::Unsupported {
                pid: 0,
                what: format!(
                    "restoring the veth {} of net namespace {id}, whose peer is outside the \
                     tree (an external device), without --external veth[{}]:OUTSIDE_NAME (the \
                     name of the peer to make in crest's network namespace)",
                    d.link.name, d.link.name
                ),
            });
        };
        return Ok(Some(rtnl::Peer {
            index: 0,
            name: outside,
            ns_fd: Some(crest_ns.as_raw_fd()),
        }));
    }
    let pidx = d
        .link
        .link
        .ok_or_else(|| bad(format!("veth {} without a peer", d.link.name)))?;
    let (pns, pn) = match d.peer_ns {
        None => (id, n),
        Some(o) => {
            let pn = nets
                .iter()
                .find(|x| x.0 == o)
                .map(|x| x.1)
                .ok_or_else(|| bad(format!("veth {}: no net namespace {o}", d.link.name)))?;
            (o, pn)
        }
    };
    let peer = pn
        .devs
        .iter()
        .find(|p| p.link.index == pidx)
        .ok_or_else(|| bad(format!("veth {}: no peer device {pidx}", d.link.name)))?;
    if (pns, pidx) < (id, d.link.index) {
        return Ok(None); // the other end makes the pair
    }
    let ns_fd = if pns == id {
        None
    } else {
        fds.iter().find(|f| f.0 == pns).map(|f| f.1.as_raw_fd())
    };
    Ok(Some(rtnl::Peer {
        index: pidx,
        name: peer.link.name.clone(),
        ns_fd,
    }))
}

/// Makes the devices of the namespace this thread is in.
fn create(plan: &[(&Dev, Option<rtnl::Peer>)]) -> Result<(), Step> {
    let mut nl = step(Rtnl::open(), || "open an rtnetlink socket".into())?;
    let have = step(nl.links(), || "list devices".into())?;
    for (d, peer) in plan {
        let l = &d.link;
        if is_lo(l) || have.iter().any(|h| h.index == l.index && h.name == l.name) {
            continue;
        }
        if l.kind.as_deref() == Some("veth") && peer.is_none() {
            continue; // made with its peer
        }
        let flags = rtnl::NLM_F_CREATE | rtnl::NLM_F_EXCL;
        step(
            nl.call(rtnl::RTM_NEWLINK, flags, &rtnl::new_link(l, peer.as_ref())),
            || {
                format!(
                    "create device {} ({}) at index {}",
                    l.name,
                    l.kind.as_deref().unwrap_or("?"),
                    l.index
                )
            },
        )?;
    }
    Ok(())
}

/// Sets what the devices of the namespace this thread is in had, then its
/// sysctls, addresses and routes.
fn configure(n: &NetNs) -> Result<(), Step> {
    let mut nl = step(Rtnl::open(), || "open an rtnetlink socket".into())?;
    let have = step(nl.links(), || "list devices".into())?;
    for d in &n.devs {
        let l = &d.link;
        if !have.iter().any(|h| h.index == l.index && h.name == l.name) {
            return Err((
                format!("find device {} at index {}", l.name, l.index),
                io::Error::from_raw_os_error(libc::ENODEV),
            ));
        }
    }
    // bridge ports first (a bridge's MTU follows its ports), then MTU and
    // address of each
    for pass in 0..2 {
        for d in &n.devs {
            let l = &d.link;
            let msg = match pass {
                0 if l.master.is_some() => rtnl::set_link(l.index, 0, None, l.master),
                1 if !is_lo(l) => rtnl::set_link(l.index, l.mtu, l.address.as_deref(), None),
                1 if l.mtu != 0 => rtnl::set_link(l.index, l.mtu, None, None),
                _ => continue,
            };
            step(nl.call(rtnl::RTM_NEWLINK, 0, &msg), || {
                format!("set the master, MTU and address of device {}", l.name)
            })?;
        }
    }
    set_sysctls(n)?;
    for d in n
        .devs
        .iter()
        .filter(|d| d.link.flags & libc::IFF_UP as u32 != 0)
    {
        step(
            nl.call(rtnl::RTM_NEWLINK, 0, &rtnl::set_up(d.link.index, true)),
            || format!("bring device {} up", d.link.name),
        )?;
    }
    let lo = n.devs.iter().find(|d| is_lo(&d.link)).map(|d| d.link.index);
    for p in &n.addrs {
        let text = rtnl::parse_addr(p).map(|a| a.text()).unwrap_or_default();
        let msg = rtnl::replay_addr(p, lo)
            .map_err(|w| (format!("address {text}"), io::Error::other(w)))?;
        match nl.call(
            rtnl::RTM_NEWADDR,
            rtnl::NLM_F_CREATE | rtnl::NLM_F_EXCL,
            &msg,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            r => {
                step(r, || format!("add address {text}"))?;
            }
        }
    }
    add_routes(&mut nl, n)?;
    add_rules_and_neighbours(&mut nl, n)
}

/// Adds the rules and the permanent neighbour entries again.
fn add_rules_and_neighbours(nl: &mut Rtnl, n: &NetNs) -> Result<(), Step> {
    for p in n.rules4.iter().chain(&n.rules6) {
        let text = policy::parse_rule(p).map(|r| r.text()).unwrap_or_default();
        match nl.call(
            policy::RTM_NEWRULE,
            rtnl::NLM_F_CREATE | rtnl::NLM_F_EXCL,
            p,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            r => {
                step(r, || format!("add {text}"))?;
            }
        }
    }
    for p in &n.neighs {
        let text = policy::parse_neigh(p)
            .map(|e| e.text(|i| n.name_of(i)))
            .unwrap_or_default();
        let msg = policy::replay_neigh(p).map_err(|w| (text.clone(), io::Error::other(w)))?;
        let r = nl.call(
            policy::RTM_NEWNEIGH,
            rtnl::NLM_F_CREATE | rtnl::NLM_F_EXCL,
            &msg,
        );
        step(r, || format!("add {text}"))?;
    }
    Ok(())
}

/// Adds the routes again, in passes: a route through a gateway needs the
/// route that reaches it first.
fn add_routes(nl: &mut Rtnl, n: &NetNs) -> Result<(), Step> {
    let mut left: Vec<&Vec<u8>> = n.routes4.iter().chain(&n.routes6).collect();
    while !left.is_empty() {
        let mut failed = Vec::new();
        let mut last = None;
        for p in &left {
            let text = rtnl::parse_route(p)
                .map(|r| r.text(|i| n.name_of(i)))
                .unwrap_or_default();
            let msg = rtnl::replay_route(p)
                .map_err(|w| (format!("route {text}"), io::Error::other(w)))?;
            match nl.call(
                rtnl::RTM_NEWROUTE,
                rtnl::NLM_F_CREATE | rtnl::NLM_F_EXCL,
                &msg,
            ) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => {
                    failed.push(*p);
                    last = Some((format!("add route {text}"), e));
                }
            }
        }
        if failed.len() == left.len() {
            return Err(
                last.unwrap_or_else(|| ("add routes".into(), io::Error::other("no progress")))
            );
        }
        left = failed;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crest_images::pb::SysctlType;

    #[test]
    fn external_veth_syntax() {
        let e = veth_externals(&[
            "veth[eth0]:out0".into(),
            "veth[eth1]".into(),
            "mnt[/x]:y".into(),
            "veth[broken".into(),
        ]);
        assert_eq!(
            e,
            vec![
                ("eth0".to_string(), Some("out0".to_string())),
                ("eth1".to_string(), None)
            ]
        );
        let b = ["veth[eth0]:out0@br0".to_string(), "veth[eth1]:out1".into()];
        assert_eq!(
            veth_externals(&b),
            vec![
                ("eth0".to_string(), Some("out0".to_string())),
                ("eth1".to_string(), Some("out1".to_string()))
            ]
        );
        assert_eq!(
            veth_bridges(&b),
            vec![("out0".to_string(), "br0".to_string())]
        );
    }

    #[test]
    fn images_round_trip() {
        let dir = std::env::temp_dir().join(format!("crest-net-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut n = NetNs::bare(true);
        n.devs[0].conf4 = read_conf("ipv4", "no-such-device", &CONF4);
        n.devs.push(Dev {
            link: Link {
                index: 2,
                flags: 1,
                name: "v0".into(),
                mtu: 1400,
                address: Some(vec![2, 0, 0, 0, 0, 1]),
                kind: Some("veth".into()),
                link: Some(3),
                ..Link::default()
            },
            conf4: Vec::new(),
            conf6: Vec::new(),
            peer_ns: Some(7),
            external: false,
            outside_name: None,
        });
        let mut a = vec![libc::AF_INET as u8, 8, 0, 0, 1, 0, 0, 0];
        rtnl::put(&mut a, rtnl::IFA_LOCAL, &[127, 0, 0, 2]);
        n.addrs.push(a);
        n.all4 = vec![SysctlEntry {
            r#type: SysctlType::Ctl32 as i32,
            iarg: Some(1),
            sarg: None,
        }];
        n.extra.push(("net/core/somaxconn".into(), "1000".into()));
        write(&dir, 5, &n).expect("write");
        let back = read(&dir, 5).expect("read").expect("some");
        assert_eq!(back, n);
        assert!(
            back.render().contains("lo 127.0.0.2/8"),
            "{}",
            back.render()
        );
        // a device of a kind crest does not make is refused by name
        let mut odd = n.clone();
        odd.devs[1].link.kind = Some("vxlan".into());
        write(&dir, 6, &odd).expect("write");
        let err = read(&dir, 6).expect_err("refused").to_string();
        assert!(err.contains("v0") && err.contains("vxlan"), "{err}");
        // a truncated route file names itself
        std::fs::write(dir.join(names::route(5)), [0x24, 0x12]).expect("write");
        let err = read(&dir, 5).expect_err("truncated").to_string();
        assert!(err.contains("route-5.img"), "{err}");
        assert!(read(&dir, 9).expect("absent").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
