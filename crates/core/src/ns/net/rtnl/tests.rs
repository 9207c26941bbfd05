//! Tests of `rtnl`.

use super::*;
use crate::netlink::{error_code, NLMSG_DONE};

fn link_msg() -> Vec<u8> {
    let mut b = ifinfomsg(3, 0x1003, 0);
    b[2..4].copy_from_slice(&1u16.to_ne_bytes());
    put_str(&mut b, IFLA_IFNAME, "v0");
    put(&mut b, IFLA_MTU, &1400u32.to_ne_bytes());
    put(&mut b, IFLA_ADDRESS, &[2, 0, 0, 0, 0, 1]);
    put(&mut b, IFLA_LINK, &4u32.to_ne_bytes());
    nest(&mut b, IFLA_LINKINFO, |b| {
        put_str(b, IFLA_INFO_KIND, "veth")
    });
    b
}

#[test]
fn link_round_trip() {
    let l = parse_link(&link_msg()).expect("parse");
    assert_eq!(l.index, 3);
    assert_eq!(l.name, "v0");
    assert_eq!(l.mtu, 1400);
    assert_eq!(l.kind.as_deref(), Some("veth"));
    assert_eq!(l.link, Some(4));
    assert_eq!(l.link_netnsid, None);
    assert_eq!(l.address.as_deref(), Some(&[2u8, 0, 0, 0, 0, 1][..]));
    let peer = Peer {
        index: 4,
        name: "v1".into(),
        ns_fd: Some(9),
    };
    let made = new_link(&l, Some(&peer));
    let back = parse_link(&made).expect("parse new_link");
    assert_eq!((back.index, back.name.as_str(), back.mtu), (3, "v0", 1400));
    assert_eq!(back.kind.as_deref(), Some("veth"));
    // the peer sits in IFLA_LINKINFO / IFLA_INFO_DATA / VETH_INFO_PEER
    let top = attrs(&made[16..]).expect("attrs");
    let info = attrs(find(&top, IFLA_LINKINFO).expect("linkinfo")).expect("info");
    let data = attrs(find(&info, IFLA_INFO_DATA).expect("data")).expect("data");
    let p = find(&data, VETH_INFO_PEER).expect("peer");
    let pl = parse_link(p).expect("peer link");
    assert_eq!((pl.index, pl.name.as_str()), (4, "v1"));
    let pattrs = attrs(&p[16..]).expect("peer attrs");
    assert_eq!(attr_u32(&pattrs, IFLA_NET_NS_FD), Some(9));
}

#[test]
fn split_messages_and_bad_lengths() {
    let mut buf = encode(RTM_NEWLINK, 2, 7, &link_msg());
    buf.extend(encode(NLMSG_DONE, 2, 7, &0u32.to_ne_bytes()));
    let msgs = split(&buf).expect("split");
    assert_eq!(msgs.len(), 2);
    assert_eq!((msgs[0].ty, msgs[0].seq), (RTM_NEWLINK, 7));
    assert_eq!(msgs[1].ty, NLMSG_DONE);
    // a length past the end, a length below the header, stray bytes
    let mut bad = buf.clone();
    bad[0..4].copy_from_slice(&10_000u32.to_ne_bytes());
    assert!(split(&bad).is_err());
    bad[0..4].copy_from_slice(&3u32.to_ne_bytes());
    assert!(split(&bad).is_err());
    assert!(split(&buf[..buf.len() - 2]).is_err());
    // attributes that overrun their buffer
    let mut b = link_msg();
    b[16..18].copy_from_slice(&200u16.to_ne_bytes());
    assert!(parse_link(&b).is_err());
    assert!(parse_link(&[0u8; 8]).is_err());
    assert_eq!(error_code(&(-17i32).to_ne_bytes()), -17);
}

fn addr_msg(family: u8, prefix: u8, index: u32, a: &[u8], proto: Option<u8>) -> Vec<u8> {
    let mut b = vec![family, prefix, 0x80, 0, 0, 0, 0, 0];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    put(&mut b, IFA_ADDRESS, a);
    put(&mut b, IFA_FLAGS, &0x80u32.to_ne_bytes());
    if let Some(p) = proto {
        put(&mut b, IFA_PROTO, &[p]);
    }
    b
}

#[test]
fn addresses_the_kernel_makes() {
    let v4 = libc::AF_INET as u8;
    let v6 = libc::AF_INET6 as u8;
    let lo1 = parse_addr(&addr_msg(v4, 8, 1, &[127, 0, 0, 1], None)).expect("p");
    assert!(lo1.kernel_made(Some(1)));
    assert_eq!(lo1.text(), "127.0.0.1/8");
    let lo2 = parse_addr(&addr_msg(v4, 8, 1, &[127, 0, 0, 2], None)).expect("p");
    assert!(!lo2.kernel_made(Some(1)));
    let mut one = [0u8; 16];
    one[15] = 1;
    assert!(parse_addr(&addr_msg(v6, 128, 1, &one, None))
        .expect("p")
        .kernel_made(Some(1)));
    let mut ll = [0u8; 16];
    ll[0] = 0xfe;
    ll[1] = 0x80;
    ll[15] = 7;
    assert!(parse_addr(&addr_msg(v6, 64, 2, &ll, None))
        .expect("p")
        .kernel_made(Some(1)));
    // IFA_PROTO decides when the kernel gives it
    assert!(!parse_addr(&addr_msg(v6, 64, 2, &ll, Some(0)))
        .expect("p")
        .kernel_made(Some(1)));
    assert!(parse_addr(&addr_msg(v4, 8, 1, &[127, 0, 0, 1], Some(1)))
        .expect("p")
        .kernel_made(Some(1)));
    // replay: IPv6 gets NODAD in both places, IPv4 is untouched
    let m = addr_msg(v6, 64, 2, &ll, Some(0));
    assert_eq!(replay_addr(&m, Some(2)).expect("replay"), m);
    let r = replay_addr(&m, Some(1)).expect("replay");
    assert_eq!(r[2] & IFA_F_NODAD as u8, IFA_F_NODAD as u8);
    let list = attrs(&r[8..]).expect("attrs");
    assert_eq!(attr_u32(&list, IFA_FLAGS), Some(0x80 | IFA_F_NODAD));
    assert_eq!(find(&list, IFA_ADDRESS), Some(&ll[..]));
    let m4 = addr_msg(v4, 8, 1, &[127, 0, 0, 2], None);
    assert_eq!(replay_addr(&m4, Some(1)).expect("replay"), m4);
}

#[test]
fn routes_kept_and_replayed() {
    let mut b = vec![libc::AF_INET as u8, 16, 0, 0, 254, 3, 0, 1];
    b.extend_from_slice(&(0x10u32 | RTNH_F_ONLINK).to_ne_bytes()); // linkdown|onlink
    put(&mut b, RTA_TABLE, &254u32.to_ne_bytes());
    put(&mut b, RTA_DST, &[10, 10, 0, 0]);
    put(&mut b, RTA_GATEWAY, &[10, 9, 0, 2]);
    put(&mut b, RTA_OIF, &2u32.to_ne_bytes());
    put(&mut b, RTA_CACHEINFO, &[0u8; 32]);
    let r = parse_route(&b).expect("parse");
    assert!(r.kept());
    assert_eq!(
        r.text(|i| format!("if{i}")),
        "10.10.0.0/16 via 10.9.0.2 dev if2"
    );
    let again = replay_route(&b).expect("replay");
    assert_eq!(u32_at(&again, 8), Some(RTNH_F_ONLINK));
    let list = attrs(&again[12..]).expect("attrs");
    assert!(find(&list, RTA_CACHEINFO).is_none());
    assert_eq!(parse_route(&again).expect("parse"), r);
    // kernel routes and the local table are left to the kernel
    let mut k = b.clone();
    k[5] = 2;
    assert!(!parse_route(&k).expect("parse").kept());
    let at = 12 + 4; // RTA_TABLE's data
    let mut local = b.clone();
    local[4] = 255;
    local[at..at + 4].copy_from_slice(&255u32.to_ne_bytes());
    assert!(!parse_route(&local).expect("parse").kept());
    // a table of policy routing is kept, and named
    let mut other = b.clone();
    other[4] = 100;
    other[at..at + 4].copy_from_slice(&100u32.to_ne_bytes());
    let o = parse_route(&other).expect("parse");
    assert!(o.kept());
    assert!(o.text(|i| format!("if{i}")).ends_with(" table 100"));
}

#[test]
fn bridge_options_changed_from_a_new_bridge() {
    let mut data = Vec::new();
    put(&mut data, 1, &500u32.to_ne_bytes()); // forward_delay, changed
    put(&mut data, 2, &200u32.to_ne_bytes()); // hello_time, default
    put(&mut data, 5, &1u32.to_ne_bytes()); // stp_state
    put(&mut data, 7, &[0]); // vlan_filtering off: left out
    put(&mut data, 8, &[0x81, 0x00]); // 802.1Q: left out
    put(&mut data, 13, &[0u8; 8]); // a timer, read-only: left out
    let kept = bridge_options(&data).expect("options");
    assert_eq!(bridge_text(&kept), "forward_delay 500 stp_state 1");
    assert_eq!(bridge_options(&kept).expect("again"), kept);
    let mut bad = Vec::new();
    put(&mut bad, 6, &[0u8; 8]);
    assert!(bridge_options(&bad).is_err());
}

#[test]
fn saved_files() {
    let m = addr_msg(libc::AF_INET as u8, 8, 1, &[127, 0, 0, 2], None);
    let f = save_file(IFADDR_SAVE_MAGIC, RTM_NEWADDR, std::slice::from_ref(&m));
    assert_eq!(&f[..4], &0x4736_1222u32.to_ne_bytes());
    assert_eq!(
        load_file(&f, IFADDR_SAVE_MAGIC, RTM_NEWADDR).expect("load"),
        vec![m]
    );
    assert!(load_file(&f, ROUTE_SAVE_MAGIC, RTM_NEWADDR).is_err());
    assert!(load_file(&f, IFADDR_SAVE_MAGIC, RTM_NEWROUTE).is_err());
    assert!(load_file(&f[..2], IFADDR_SAVE_MAGIC, RTM_NEWADDR).is_err());
    assert!(load_file(&f[..f.len() - 3], IFADDR_SAVE_MAGIC, RTM_NEWADDR).is_err());
}
