//! A network namespace's images: written at dump, read and checked at
//! restore (CRIU's `netdev-`, `netns-`, `ifaddr-`, `route-` and `route6-`
//! images, and an older crest's own).

use super::dump::nd_type;
use super::sysctl::{CONF4, CONF6, EXTRA};
use super::*;
use crate::error::RoomError;
use crate::ns::error::NsError;

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
    let mut n = NetNs {
        devs: read_devices(dir, id)?,
        ..NetNs::default()
    };
    read_netns(dir, id, &mut n)?;
    read_raw_lists(dir, id, &mut n)?;
    Ok(Some(n))
}

/// The devices of namespace `id` (`netdev-ID.img`, with crest's part of
/// each), checked.
fn read_devices(dir: &Path, id: u32) -> Result<Vec<Dev>, RestoreError> {
    let bad = |file: String, what: String| NsError::BadImage { file, what }.in_tree_restore();
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
    devs.into_iter()
        .zip(extra)
        .map(|(d, x)| device(d, x, &extra_file, id))
        .collect()
}

/// Device `d` with crest's part `x` (from `extra_file`), checked: a name
/// and settings crest knows, a kind crest makes.
fn device(
    d: NetDeviceEntry,
    x: CrestNetdevExtra,
    extra_file: &str,
    id: u32,
) -> Result<Dev, RestoreError> {
    let bad = |file: String, what: String| NsError::BadImage { file, what }.in_tree_restore();
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
            extra_file.to_string(),
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
                    extra_file.to_string(),
                    format!("bad bridge options of {}", d.name),
                )
            })?,
        Some(_) => {
            return Err(bad(
                extra_file.to_string(),
                format!("bridge options of {}, which is no bridge", d.name),
            ))
        }
        None => Vec::new(),
    };
    Ok(Dev {
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
    })
}

/// The namespace-wide settings of namespace `id` (`netns-ID.img`):
/// default and all conf lists, sysctls, IPv6 rules and neighbours.
fn read_netns(dir: &Path, id: u32, n: &mut NetNs) -> Result<(), RestoreError> {
    let bad = |file: String, what: String| NsError::BadImage { file, what }.in_tree_restore();
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
    Ok(())
}

/// The raw rtnetlink lists of namespace `id` (addresses, routes, rules
/// ...), each from its file where it was written.
fn read_raw_lists(dir: &Path, id: u32, n: &mut NetNs) -> Result<(), RestoreError> {
    let bad = |file: String, what: String| NsError::BadImage { file, what }.in_tree_restore();
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
        let list = rtnl::load_file(&buf, m, ty).map_err(|w| bad(name.clone(), w.to_string()))?;
        check_payloads(&name, ty, &list)?;
        *slot = list;
    }
    Ok(())
}

/// Refuses rtnetlink payloads of type `ty` (from image `file`) that crest
/// cannot parse, or too many of them.
pub(super) fn check_payloads(file: &str, ty: u16, list: &[Vec<u8>]) -> Result<(), RestoreError> {
    let bad = |what: String| {
        NsError::BadImage {
            file: file.to_string(),
            what,
        }
        .in_tree_restore()
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
        ok.map_err(|w| bad(w.to_string()))?;
    }
    Ok(())
}
