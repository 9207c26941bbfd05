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

mod dump;
mod image;
mod policy;
mod restore;
mod rtnl;
mod sysctl;

use crate::error::RoomError;
use crate::ns::error::NsError;
pub use dump::{collect, lo_state_in, resolve_peers};
pub use image::{read, write};
pub use restore::restore;

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

/// Link kinds crest creates again (besides the loopback device).
const KINDS: [&str; 4] = ["veth", "dummy", "bridge", "ifb"];

/// The loopback device of a new namespace's MTU.
pub(super) const LO_MTU: u32 = 65536;

/// A failed restore step: what, and the error.
pub(super) type Step = (String, io::Error);

pub(super) fn step<T>(r: io::Result<T>, what: impl FnOnce() -> String) -> Result<T, Step> {
    r.map_err(|e| (what(), e))
}

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
struct Rtnl(crate::netlink::Netlink);

impl Rtnl {
    fn open() -> io::Result<Rtnl> {
        Rtnl::open_proto(libc::NETLINK_ROUTE)
    }

    /// A netlink socket of another protocol (`NETLINK_NETFILTER`), spoken
    /// the same way.
    fn open_proto(proto: i32) -> io::Result<Rtnl> {
        Ok(Rtnl(crate::netlink::Netlink::open(proto)?))
    }

    /// The payloads of the answer to request `seq`.
    fn answer(&mut self, seq: u32) -> io::Result<Vec<Vec<u8>>> {
        let msgs = self.0.answer(seq, 4 * MAX_ITEMS)?;
        Ok(msgs.into_iter().map(|m| m.payload).collect())
    }

    fn dump(&mut self, ty: u16, family: i32) -> io::Result<Vec<Vec<u8>>> {
        let seq = self
            .0
            .send(ty, rtnl::NLM_F_DUMP, &rtnl::dump_request(ty, family as u8))?;
        self.answer(seq)
    }

    fn call(&mut self, ty: u16, flags: u16, payload: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let seq = self.0.send(ty, flags | rtnl::NLM_F_ACK, payload)?;
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
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
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
            Fail::Refuse(what) => NsError::Unsupported { what }.in_dump(pid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::image::*;
    use super::sysctl::{read_conf, CONF4};
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
