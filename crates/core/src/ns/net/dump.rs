//! Reading a network namespace at dump: its devices, addresses, routes,
//! rules, neighbours and sysctls, from a crest thread inside it; veth
//! peers matched across the tree's namespaces.

use super::sysctl::{read_conf, CONF4, CONF6, EXTRA};
use super::*;
use crate::error::RoomError;
use crate::ns::error::NsError;

/// The payloads of an rtnetlink dump of `ty` for `family` that `keep`
/// accepts, at most MAX_ITEMS; `steps` name the listing and the parsing.
pub(super) fn dump_kept(
    nl: &mut Rtnl,
    ty: u16,
    family: i32,
    steps: (&'static str, &'static str),
    keep: impl Fn(&[u8]) -> Result<bool, rtnl::Malformed>,
) -> Result<Vec<Vec<u8>>, Fail> {
    let mut out = Vec::new();
    for p in nl.dump(ty, family).map_err(io_at(steps.0))? {
        if keep(&p).map_err(|e| Fail::Io(steps.1, io::Error::other(e)))? && out.len() < MAX_ITEMS {
            out.push(p);
        }
    }
    Ok(out)
}

pub(super) fn io_at(step: &'static str) -> impl FnOnce(io::Error) -> Fail {
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
pub(super) fn enter_failed(pid: i32, source: io::Error) -> DumpError {
    if source.raw_os_error() == Some(libc::EPERM) {
        NsError::Unsupported {
            what: "a net namespace of the tree's own in an unprivileged dump (crest reads one \
                   from inside, which needs CAP_SYS_ADMIN where crest runs)"
                .into(),
        }
        .in_dump(pid)
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
pub(super) fn check_netfilter() -> Result<(), Fail> {
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_GETTABLE: u16 = 1;
    const NFTA_TABLE_NAME: u16 = 1;
    let mut tables = Vec::new();
    // a kernel without nf_tables has nothing to lose
    if let Ok(mut nl) = Rtnl::open_proto(libc::NETLINK_NETFILTER) {
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE;
        // struct nfgenmsg: family (all), version, resource id
        let seq =
            nl.0.send(ty, rtnl::NLM_F_DUMP, &[libc::AF_UNSPEC as u8, 0, 0, 0])
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

/// The state of the network namespace the calling thread is in: its
/// devices, addresses, routes, rules, neighbours, conf lists and sysctls;
/// netfilter tables are refused.
pub(super) fn read_inside() -> Result<NetNs, Fail> {
    check_netfilter()?;
    let mut nl = Rtnl::open().map_err(io_at("open an rtnetlink socket"))?;
    let links = nl.links().map_err(io_at("list network devices"))?;
    if links.len() > MAX_ITEMS {
        return Err(Fail::Refuse(format!("{} network devices", links.len())));
    }
    let mut n = NetNs {
        devs: links.into_iter().map(device).collect::<Result<_, _>>()?,
        ..NetNs::default()
    };
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
    read_routing(&mut nl, &mut n)?;
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

/// Network device `l` of the namespace with its conf lists; a device
/// crest cannot make again is refused.
fn device(l: rtnl::Link) -> Result<Dev, Fail> {
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
    Ok(Dev {
        link: l,
        conf4,
        conf6,
        peer_ns: None,
        external: false,
        outside_name: None,
    })
}

/// The routes, rules and neighbours of both families crest keeps (those
/// the kernel does not make by itself).
fn read_routing(nl: &mut Rtnl, n: &mut NetNs) -> Result<(), Fail> {
    for (family, v4) in [(libc::AF_INET, true), (libc::AF_INET6, false)] {
        let routes = dump_kept(
            nl,
            rtnl::RTM_GETROUTE,
            family,
            ("list routes", "parse a route"),
            |p| rtnl::parse_route(p).map(|r| r.kept()),
        )?;
        let rules = dump_kept(
            nl,
            policy::RTM_GETRULE,
            family,
            ("list rules", "parse a rule"),
            |p| policy::parse_rule(p).map(|r| r.kept()),
        )?;
        let neighs = dump_kept(
            nl,
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
    Ok(())
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
                    return Err(NsError::Unsupported {
                        what: format!(
                            "dumping network device {}, a veth whose peer is outside the tree (an \
                             external device), without --external veth[{}]:OUTSIDE_NAME (which \
                             restore takes too, to make the peer OUTSIDE_NAME in crest's network \
                             namespace)",
                            d.link.name, d.link.name
                        ),
                    }
                    .in_dump(pid))
                }
            }
        }
    }
    Ok(())
}

// ---- images -------------------------------------------------------------

pub(super) fn nd_type(l: &Link) -> NdType {
    match l.kind.as_deref() {
        _ if is_lo(l) => NdType::Loopback,
        Some("veth") => NdType::Veth,
        Some("bridge") => NdType::Bridge,
        _ => NdType::Extlink,
    }
}
