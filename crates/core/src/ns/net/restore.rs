//! Rebuilding a network namespace at restore: devices at their old
//! ifindex (veth peers outside the tree in crest's namespace, put in their
//! bridges), their settings, addresses, rules, neighbours and routes.

use super::sysctl::set_sysctls;
use super::*;
use crate::error::RoomError;
use crate::ns::error::NsError;

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
pub(super) fn outside_up(
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
pub(super) fn peer_of(
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
    let bad = |what: String| {
        NsError::BadImage {
            file: names::netdev(id),
            what,
        }
        .in_tree_restore()
    };
    if d.external {
        let given = ext
            .iter()
            .find(|e| e.0 == d.link.name)
            .and_then(|e| e.1.clone());
        let Some(outside) = given.or_else(|| d.outside_name.clone()) else {
            return Err(NsError::Unsupported {
                what: format!(
                    "restoring the veth {} of net namespace {id}, whose peer is outside the \
                     tree (an external device), without --external veth[{}]:OUTSIDE_NAME (the \
                     name of the peer to make in crest's network namespace)",
                    d.link.name, d.link.name
                ),
            }
            .in_tree_restore());
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
pub(super) fn create(plan: &[(&Dev, Option<rtnl::Peer>)]) -> Result<(), Step> {
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
pub(super) fn configure(n: &NetNs) -> Result<(), Step> {
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
pub(super) fn add_rules_and_neighbours(nl: &mut Rtnl, n: &NetNs) -> Result<(), Step> {
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
pub(super) fn add_routes(nl: &mut Rtnl, n: &NetNs) -> Result<(), Step> {
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
