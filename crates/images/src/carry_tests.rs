//! Tests of crest's additions carried in CRIU's messages, and of the
//! reading of the older crest-only files.

use prost::Message;

use crate::carry::{self, CarriedReader, Carrier, MountsReader};
use crate::pb::crest::{
    CrestCgroupMember, CrestFsEntry, CrestMntNsHead, CrestMountEntry, CrestNsEntry,
    CrestThreadExtra, CrestUdpPacket,
};
use crate::pb::{self, CgroupEntry, NsFileEntry, PipeDataEntry, SkPacketEntry};
use crate::tests::TempDir;
use crate::*;

fn ns_entry(id: u32, nstype: u32) -> CrestNsEntry {
    CrestNsEntry {
        id,
        nstype,
        owner_userns: 1,
        parent: None,
        lo_up: Some(true),
        monotonic_sec: Some(3600),
        monotonic_nsec: Some(5),
        boottime_sec: None,
        boottime_nsec: None,
        mnt_private: None,
        cgroup_root: Some("/a".into()),
        external_key: None,
    }
}

/// The per-file magic of an image (its second word).
fn file_magic(d: &TempDir, name: &str) -> u32 {
    let b = std::fs::read(d.path().join(name)).unwrap();
    u32::from_le_bytes(b[4..8].try_into().unwrap())
}

#[test]
fn ns_entries_ride_in_ns_file_entries_and_legacy_files_still_read() {
    let d = TempDir::new("carry-ns");
    let list = vec![ns_entry(2, 0x0400_0000), ns_entry(3, 0x2000_0000)];
    carry::write::<NsFileEntry>(d.path(), names::CREST_NS, list.clone()).unwrap();
    assert_eq!(file_magic(&d, names::CREST_NS), magic::NS_FILES);
    // what CRIU's tools see: ns_file_entry with its required fields
    let raw: Vec<NsFileEntry> = read_image(d.path(), names::CREST_NS, magic::NS_FILES).unwrap();
    assert_eq!(
        (raw[1].id, raw[1].ns_id, raw[1].ns_cflag, raw[1].flags),
        (3, 3, 0x2000_0000, 0)
    );
    let got = carry::read::<NsFileEntry>(d.path(), names::CREST_NS, magic::CREST_NS).unwrap();
    assert_eq!(got, list);
    // decode_file tells the file by its magic and recodes it exactly
    let p = d.path().join(names::CREST_NS);
    assert_eq!(decode_file(&p).unwrap().kind, ImageKind::NsFiles);
    assert!(recode_matches(&p).unwrap());

    // an older crest's crest-ns.img: crest's magic, the entries bare
    write_image(d.path(), names::CREST_NS, magic::CREST_NS, &list).unwrap();
    let r = CarriedReader::<NsFileEntry>::open(d.path(), names::CREST_NS, magic::CREST_NS).unwrap();
    assert!(r.is_legacy());
    assert_eq!(r.read_all().unwrap(), list);
    assert_eq!(decode_file(&p).unwrap().kind, ImageKind::CrestNs);
}

#[test]
fn a_carrier_without_crests_field_is_refused_naming_the_file() {
    let d = TempDir::new("carry-missing");
    let plain = NsFileEntry {
        id: 1,
        ns_id: 1,
        ns_cflag: 0,
        flags: 0,
        crest_ns: None,
    };
    write_image(d.path(), names::CREST_NS, magic::NS_FILES, &[plain]).unwrap();
    let e = carry::read::<NsFileEntry>(d.path(), names::CREST_NS, magic::CREST_NS).unwrap_err();
    assert!(matches!(e, ImageError::NotCarried { offset: 8, .. }), "{e}");
    assert!(e.to_string().contains(names::CREST_NS), "{e}");

    // another magic altogether
    write_image(
        d.path(),
        names::CREST_NS,
        magic::CGROUP,
        &[CgroupEntry::default()],
    )
    .unwrap();
    let e = carry::read::<NsFileEntry>(d.path(), names::CREST_NS, magic::CREST_NS).unwrap_err();
    assert!(
        matches!(e, ImageError::BadMagic { found, .. } if found == magic::CGROUP),
        "{e}"
    );
}

#[test]
fn cgroup_members_round_trip() {
    let d = TempDir::new("carry-cg");
    let list = vec![CrestCgroupMember {
        pid: 7,
        path: "/x/y".into(),
        ..CrestCgroupMember::default()
    }];
    carry::write::<CgroupEntry>(d.path(), names::CREST_CGROUPS, list.clone()).unwrap();
    assert_eq!(file_magic(&d, names::CREST_CGROUPS), magic::CGROUP);
    let p = d.path().join(names::CREST_CGROUPS);
    assert_eq!(decode_file(&p).unwrap().kind, ImageKind::Cgroup);
    let got =
        carry::read::<CgroupEntry>(d.path(), names::CREST_CGROUPS, magic::CREST_CGROUPS).unwrap();
    assert_eq!(got, list);
    write_image(d.path(), names::CREST_CGROUPS, magic::CREST_CGROUPS, &list).unwrap();
    let got =
        carry::read::<CgroupEntry>(d.path(), names::CREST_CGROUPS, magic::CREST_CGROUPS).unwrap();
    assert_eq!(got, list);
}

fn fs_entry(path: &str, size: Option<u64>) -> CrestFsEntry {
    CrestFsEntry {
        path: path.into(),
        mode: 0o100_644,
        uid: 0,
        gid: 0,
        size,
        target: None,
        mtime_sec: Some(1),
        mtime_nsec: Some(2),
        rdev: None,
    }
}

#[test]
fn tmpfs_files_ride_in_pipe_data_entries_with_their_bytes() {
    let d = TempDir::new("carry-tmpfs");
    let name = names::crest_tmpfs(3, 40);
    let files = [
        (fs_entry("", None), vec![]),
        (fs_entry("f", Some(5)), b"hello".to_vec()),
    ];
    for legacy in [false, true] {
        let m = if legacy {
            magic::CREST_TMPFS
        } else {
            magic::PIPES_DATA
        };
        let mut w = ImageWriter::create(d.path(), &name, m).unwrap();
        for (e, data) in &files {
            if legacy {
                w.write_entry(e).unwrap();
            } else {
                w.write_entry(&PipeDataEntry::wrap(e.clone())).unwrap();
            }
            w.write_payload(data).unwrap();
        }
        w.finish().unwrap();
        let mut r =
            CarriedReader::<PipeDataEntry>::open(d.path(), &name, magic::CREST_TMPFS).unwrap();
        assert_eq!(r.is_legacy(), legacy);
        for (e, data) in &files {
            let got = r.next_entry().unwrap().unwrap();
            assert_eq!(&got, e);
            assert_eq!(&r.read_payload(got.size.unwrap_or(0)).unwrap(), data);
        }
        assert!(r.next_entry().unwrap().is_none());
    }
    // `bytes` (what crit skips) must agree with the file's size
    let mut bad = PipeDataEntry::wrap(fs_entry("f", Some(5)));
    bad.bytes = 4;
    write_image(d.path(), &name, magic::PIPES_DATA, &[bad]).unwrap();
    let mut r = CarriedReader::<PipeDataEntry>::open(d.path(), &name, magic::CREST_TMPFS).unwrap();
    assert!(matches!(
        r.next_entry().unwrap_err(),
        ImageError::NotCarried { .. }
    ));
}

#[test]
fn udp_datagrams_ride_in_sk_packet_entries() {
    let d = TempDir::new("carry-udp");
    let pkt = CrestUdpPacket {
        id_for: 9,
        from: vec![2, 0, 0, 53, 127, 0, 0, 1],
        length: 3,
    };
    let e = SkPacketEntry::wrap(pkt.clone());
    assert_eq!((e.id_for, e.length), (9, 3));
    let mut w = ImageWriter::create(d.path(), names::CREST_UDP_QUEUES, magic::SK_QUEUES).unwrap();
    w.write_entry(&e).unwrap();
    w.write_payload(b"abc").unwrap();
    w.finish().unwrap();
    let mut r = CarriedReader::<SkPacketEntry>::open(
        d.path(),
        names::CREST_UDP_QUEUES,
        magic::CREST_UDP_QUEUES,
    )
    .unwrap();
    assert_eq!(r.next_entry().unwrap(), Some(pkt));
    assert_eq!(r.read_payload(3).unwrap(), b"abc");
    // a unix socket's packet (no sender) is not one of crest's datagrams
    let unix = SkPacketEntry {
        id_for: 9,
        length: 0,
        ..SkPacketEntry::default()
    };
    write_image(d.path(), names::CREST_UDP_QUEUES, magic::SK_QUEUES, &[unix]).unwrap();
    let e =
        carry::read::<SkPacketEntry>(d.path(), names::CREST_UDP_QUEUES, 0x4352_5310).unwrap_err();
    assert!(matches!(e, ImageError::NotCarried { .. }), "{e}");
}

fn mount(id: u32, parent: u32, at: &str, fstype: &str, opts: &str) -> CrestMountEntry {
    CrestMountEntry {
        mnt_id: id,
        parent_id: parent,
        mountpoint: at.into(),
        root: "/".into(),
        fstype: fstype.into(),
        source: fstype.into(),
        mnt_opts: opts.into(),
        super_opts: "rw".into(),
        shared: Some(4),
        master: None,
        unbindable: None,
        kind: 1,
        bind_source: None,
        has_contents: None,
        external_key: None,
    }
}

fn head(count: u32) -> CrestMntNsHead {
    CrestMntNsHead {
        executor: 100,
        count,
        proc_pidns: Some(2),
        base: None,
    }
}

fn read_mounts(d: &TempDir, id: u32) -> (String, CrestMntNsHead, Vec<CrestMountEntry>) {
    let mut r = MountsReader::open(d.path(), id).unwrap();
    let mut out = Vec::new();
    while let Some(m) = r.next_mount().unwrap() {
        out.push(m);
    }
    (r.name().to_string(), r.head(), out)
}

#[test]
fn mounts_are_criu_mnt_entries_carrying_crests() {
    let d = TempDir::new("carry-mnt");
    let mounts = vec![
        mount(20, 1, "/", "ext4", "rw,relatime"),
        mount(21, 20, "/proc", "proc", "ro,nosuid"),
    ];
    assert!(!MountsReader::exists(d.path(), 5));
    carry::write_mounts(d.path(), 5, head(2), &mounts).unwrap();
    assert!(MountsReader::exists(d.path(), 5));
    let name = names::mountpoints(5);
    let raw: Vec<pb::MntEntry> = read_image(d.path(), &name, magic::MNTS).unwrap();
    assert_eq!(
        (
            raw[1].fstype,
            raw[1].flags,
            raw[1].parent_mnt_id,
            raw[1].shared_id
        ),
        (pb::Fstype::Proc as u32, 1 | 2, 20, Some(4))
    );
    assert_eq!(raw[0].fsname.as_deref(), Some("ext4"));
    assert_eq!(
        decode_file(&d.path().join(&name)).unwrap().kind,
        ImageKind::Mnts
    );
    assert_eq!(read_mounts(&d, 5), (name, head(2), mounts.clone()));

    // no mount at all: the header has an entry of its own
    carry::write_mounts(d.path(), 6, head(0), &[]).unwrap();
    assert_eq!(read_mounts(&d, 6), (names::mountpoints(6), head(0), vec![]));

    // an older crest's crest-mnt-<id>.img: the header, then the mounts bare
    let mut w = ImageWriter::create(d.path(), &names::crest_mnt(7), magic::CREST_MNT).unwrap();
    w.write_entry(&head(2)).unwrap();
    for m in &mounts {
        w.write_entry(m).unwrap();
    }
    w.finish().unwrap();
    assert!(MountsReader::exists(d.path(), 7));
    assert_eq!(read_mounts(&d, 7), (names::crest_mnt(7), head(2), mounts));
}

#[test]
fn a_mounts_file_without_crests_header_or_with_two_is_refused() {
    let d = TempDir::new("carry-mnt-bad");
    let name = names::mountpoints(5);
    write_image(d.path(), &name, magic::MNTS, &[pb::MntEntry::default()]).unwrap();
    let e = MountsReader::open(d.path(), 5).err().unwrap();
    assert!(matches!(e, ImageError::NotCarried { .. }), "{e}");
    let with_head = pb::MntEntry {
        crest_mnt_head: Some(head(1)),
        ..pb::MntEntry::default()
    };
    write_image(
        d.path(),
        &name,
        magic::MNTS,
        &[with_head.clone(), with_head],
    )
    .unwrap();
    let mut r = MountsReader::open(d.path(), 5).unwrap();
    assert!(r.next_mount().is_err());
}

#[test]
fn userns_files_are_found_by_name() {
    let d = TempDir::new("carry-userns");
    for n in [
        "userns-3.img",
        "userns-1.img",
        "userns-x.img",
        "utsns-2.img",
    ] {
        d.write(n, b"");
    }
    assert_eq!(carry::userns_ids(d.path()).unwrap(), vec![1, 3]);
}

#[test]
fn crests_fields_use_the_reserved_numbers() {
    // core_entry.crest_thread = 1000, length-delimited: tag 8002 = c2 3e
    let core = pb::CoreEntry {
        mtype: 1,
        crest_thread: Some(CrestThreadExtra {
            xsave_size: Some(4),
            ..CrestThreadExtra::default()
        }),
        ..pb::CoreEntry::default()
    };
    let b = core.encode_to_vec();
    assert_eq!(b[2..4], [0xc2, 0x3e]);
    // what a reader that knows only CRIU's fields keeps: the same core
    // without the field (prost, like crit's protobuf, skips it)
    #[derive(Clone, PartialEq, prost::Message)]
    struct CriuCore {
        #[prost(int32, required, tag = "1")]
        mtype: i32,
    }
    assert_eq!(CriuCore::decode(b.as_slice()).unwrap().mtype, 1);
    // net_device_entry 1000, netns_entry 1000-1002, ipc_var_entry 1000
    let netns = pb::NetnsEntry {
        crest_rules6: vec![vec![1]],
        crest_neighs: vec![vec![2]],
        ..pb::NetnsEntry::default()
    };
    assert_eq!(netns.encode_to_vec(), [0xca, 0x3e, 1, 1, 0xd2, 0x3e, 1, 2]);
}
