//! The sysctls of a network namespace: CRIU's per-device conf lists
//! (positional in the images) and a few namespace-wide ones by name.
//! They are read and written through /proc/sys by a thread inside the
//! namespace.

use super::{step, NetNs, Step};
use crest_images::pb::{SysctlEntry, SysctlType};

/// CRIU's lists of per-device IPv4 and IPv6 sysctls (the order is the
/// image format: entry i of a conf list is the i-th name).
pub(super) const CONF4: [&str; 30] = [
    "accept_local",
    "accept_redirects",
    "accept_source_route",
    "arp_accept",
    "arp_announce",
    "arp_filter",
    "arp_ignore",
    "arp_notify",
    "bootp_relay",
    "disable_policy",
    "disable_xfrm",
    "force_igmp_version",
    "forwarding",
    "igmpv2_unsolicited_report_interval",
    "igmpv3_unsolicited_report_interval",
    "log_martians",
    "medium_id",
    "promote_secondaries",
    "proxy_arp",
    "proxy_arp_pvlan",
    "route_localnet",
    "rp_filter",
    "secure_redirects",
    "send_redirects",
    "shared_media",
    "src_valid_mark",
    "tag",
    "ignore_routes_with_linkdown",
    "drop_gratuitous_arp",
    "drop_unicast_in_l2_multicast",
];
pub(super) const CONF6: [&str; 42] = [
    "accept_dad",
    "accept_ra",
    "accept_ra_defrtr",
    "accept_ra_from_local",
    "accept_ra_min_hop_limit",
    "accept_ra_mtu",
    "accept_ra_pinfo",
    "accept_ra_rt_info_max_plen",
    "accept_ra_rtr_pref",
    "accept_redirects",
    "accept_source_route",
    "autoconf",
    "dad_transmits",
    "disable_ipv6",
    "drop_unicast_in_l2_multicast",
    "drop_unsolicited_na",
    "force_mld_version",
    "force_tllao",
    "forwarding",
    "hop_limit",
    "ignore_routes_with_linkdown",
    "keep_addr_on_down",
    "max_addresses",
    "max_desync_factor",
    "mldv1_unsolicited_report_interval",
    "mldv2_unsolicited_report_interval",
    "mtu",
    "ndisc_notify",
    "optimistic_dad",
    "proxy_ndp",
    "regen_max_retry",
    "router_probe_interval",
    "router_solicitation_delay",
    "router_solicitation_interval",
    "router_solicitations",
    "stable_secret",
    "suppress_frag_ndisc",
    "temp_prefered_lft",
    "temp_valid_lft",
    "use_oif_addrs_only",
    "use_optimistic",
    "use_tempaddr",
];

/// Namespace sysctls outside the conf lists that programs see, by path
/// under /proc/sys.
pub(super) const EXTRA: [&str; 6] = [
    "net/core/somaxconn",
    "net/unix/max_dgram_qlen",
    "net/ipv4/ip_local_port_range",
    "net/ipv4/ping_group_range",
    "net/ipv4/ip_unprivileged_port_start",
    "net/ipv4/ip_default_ttl",
];

pub(super) fn read_sysctl(path: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/sys/{path}")).ok()?;
    Some(s.trim_end_matches('\n').to_string())
}

/// A conf list of device `dev` ("all", "default" or a name): absent
/// sysctls (and an unset stable_secret, which reads EIO) have no value.
pub(super) fn read_conf(proto: &str, dev: &str, list: &[&str]) -> Vec<SysctlEntry> {
    list.iter()
        .map(|name| {
            let v = read_sysctl(&format!("net/{proto}/conf/{dev}/{name}"));
            if *name == "stable_secret" {
                SysctlEntry {
                    r#type: SysctlType::CtlStr as i32,
                    iarg: None,
                    sarg: v,
                }
            } else {
                SysctlEntry {
                    r#type: SysctlType::Ctl32 as i32,
                    iarg: v.and_then(|v| v.trim().parse().ok()),
                    sarg: None,
                }
            }
        })
        .collect()
}

/// Writes a sysctl whose value differs from `want`.
fn set_sysctl(path: &str, want: &str) -> Result<(), Step> {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    if read_sysctl(path).is_some_and(|now| norm(&now) == norm(want)) {
        return Ok(());
    }
    step(std::fs::write(format!("/proc/sys/{path}"), want), || {
        format!("write {} = {want:?}", path.replace('/', "."))
    })
}

fn set_conf(proto: &str, dev: &str, list: &[&str], conf: &[SysctlEntry]) -> Result<(), Step> {
    // accept_redirects after forwarding, which resets it
    let mut order: Vec<usize> = (0..conf.len().min(list.len())).collect();
    order.sort_by_key(|i| list[*i] == "accept_redirects");
    for i in order {
        let c = &conf[i];
        let want = match (c.iarg, &c.sarg) {
            (Some(v), _) => v.to_string(),
            (None, Some(s)) => s.clone(),
            _ => continue,
        };
        set_sysctl(&format!("net/{proto}/conf/{dev}/{}", list[i]), &want)?;
    }
    Ok(())
}

pub(super) fn set_sysctls(n: &NetNs) -> Result<(), Step> {
    for (proto, list, all, def) in [
        ("ipv4", &CONF4[..], &n.all4, &n.def4),
        ("ipv6", &CONF6[..], &n.all6, &n.def6),
    ] {
        set_conf(proto, "all", list, all)?;
        set_conf(proto, "default", list, def)?;
        for d in &n.devs {
            let conf = if proto == "ipv4" { &d.conf4 } else { &d.conf6 };
            set_conf(proto, &d.link.name, list, conf)?;
        }
    }
    for (path, value) in &n.extra {
        set_sysctl(path, value)?;
    }
    Ok(())
}
