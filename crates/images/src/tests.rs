//! Framing, round-trip and wire-format tests.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use prost::Message;

use crate::pb::{self, crest::CrestThreadExtra, crest::CrestUsernsEntry};
use crate::*;

/// A scratch directory removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("crest-images-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
    pub(crate) fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn le(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn pstree(pid: u32, ppid: u32) -> pb::PstreeEntry {
    pb::PstreeEntry {
        pid,
        ppid,
        pgid: pid,
        sid: pid,
        threads: vec![pid, pid + 1],
    }
}

fn sample_core() -> pb::CoreEntry {
    pb::CoreEntry {
        mtype: pb::core_entry::March::X8664 as i32,
        thread_info: Some(pb::ThreadInfoX86 {
            clear_tid_addr: 0x7f00_0000_1000,
            gpregs: pb::UserX86RegsEntry {
                ip: 0x40_1000,
                sp: 0x7ffe_0000,
                ax: u64::MAX,
                mode: Some(pb::UserX86RegsMode::Native as i32),
                ..Default::default()
            },
            fpregs: pb::UserX86FpregsEntry {
                mxcsr: 0x1f80,
                st_space: vec![0; 32],
                xmm_space: vec![7; 64],
                xsave: Some(pb::UserX86XsaveEntry {
                    xstate_bv: 7,
                    ymmh_space: vec![1; 64],
                    ..Default::default()
                }),
                ..Default::default()
            },
            tls: vec![pb::UserDescT {
                entry_number: 12,
                read_exec_only: true,
                seg_not_present: true,
                ..Default::default()
            }],
        }),
        tc: Some(pb::TaskCoreEntry {
            task_state: 1,
            comm: "sleep".into(),
            blk_sigset: 1 << 9,
            rlimits: Some(pb::TaskRlimitsEntry {
                rlimits: vec![pb::RlimitEntry {
                    cur: 8 << 20,
                    max: u64::MAX,
                }],
            }),
            sigactions: vec![pb::SaEntry {
                sigaction: 0,
                flags: 0x0400_0000,
                restorer: 0x7f00,
                mask: 0,
                compat_sigaction: Some(false),
            }],
            oom_score_adj: Some(-500),
            child_subreaper: Some(false),
            ..Default::default()
        }),
        ids: Some(pb::TaskKobjIdsEntry {
            vm_id: 1,
            files_id: 2,
            fs_id: 3,
            sighand_id: 4,
            user_ns_id: Some(10),
            time_ns_id: Some(12),
            ..Default::default()
        }),
        thread_core: Some(pb::ThreadCoreEntry {
            futex_rla: 0x7f00_0000_2000,
            futex_rla_len: 24,
            sched_nice: Some(-5),
            creds: Some(pb::CredsEntry {
                uid: 1000,
                cap_eff: vec![u32::MAX, 0x1ff],
                groups: vec![1000, 27],
                no_new_privs: Some(1),
                ..Default::default()
            }),
            rseq_entry: Some(pb::RseqEntry {
                rseq_abi_pointer: 0x7f00_0000_3000,
                rseq_abi_size: 32,
                signature: 0x5305_3053,
                rseq_cs_pointer: None,
            }),
            ..Default::default()
        }),
        crest_thread: None,
    }
}

// ---- round trips ----------------------------------------------------------

#[test]
fn pstree_round_trip() {
    let d = TempDir::new("pstree");
    let entries = vec![pstree(42, 1), pstree(43, 42), pstree(44, 42)];
    write_image(d.path(), names::PSTREE, magic::PSTREE, &entries).unwrap();
    let back: Vec<pb::PstreeEntry> = read_image(d.path(), names::PSTREE, magic::PSTREE).unwrap();
    assert_eq!(back, entries);
}

#[test]
fn core_round_trip() {
    let d = TempDir::new("core");
    let core = sample_core();
    write_image(
        d.path(),
        &names::core(42),
        magic::CORE,
        std::slice::from_ref(&core),
    )
    .unwrap();
    let back: pb::CoreEntry = read_one(d.path(), &names::core(42), magic::CORE).unwrap();
    assert_eq!(back, core);
}

#[test]
fn mm_and_pagemap_round_trip() {
    let d = TempDir::new("mm");
    let mm = pb::MmEntry {
        mm_start_code: 0x40_0000,
        mm_saved_auxv: vec![33, 0x7fff_0000, 0, 0],
        vmas: vec![pb::VmaEntry {
            start: 0x40_0000,
            end: 0x40_1000,
            prot: 5,
            flags: 2,
            status: 1,
            fd: -1,
            madv: Some(0),
            ..Default::default()
        }],
        dumpable: Some(1),
        ..Default::default()
    };
    write_image(
        d.path(),
        &names::mm(7),
        magic::MM,
        std::slice::from_ref(&mm),
    )
    .unwrap();
    assert_eq!(
        read_one::<pb::MmEntry>(d.path(), &names::mm(7), magic::MM).unwrap(),
        mm
    );

    let head = pb::PagemapHead { pages_id: 3 };
    let runs = [
        pb::PagemapEntry {
            vaddr: 0x40_0000,
            compat_nr_pages: 1,
            flags: Some(PE_PRESENT),
            nr_pages: Some(1),
            ..Default::default()
        },
        pb::PagemapEntry {
            vaddr: 0x60_0000,
            compat_nr_pages: 2,
            flags: Some(PE_PRESENT | PE_LAZY),
            nr_pages: Some(2),
            ..Default::default()
        },
    ];
    let mut w = ImageWriter::create(d.path(), &names::pagemap(7), magic::PAGEMAP).unwrap();
    w.write_entry(&head).unwrap();
    for r in &runs {
        w.write_entry(r).unwrap();
    }
    w.finish().unwrap();
    let mut r = ImageReader::open(d.path(), &names::pagemap(7), magic::PAGEMAP).unwrap();
    assert_eq!(r.next_entry::<pb::PagemapHead>().unwrap(), Some(head));
    assert_eq!(r.read_all::<pb::PagemapEntry>().unwrap(), runs);
    assert!(recode_matches(&d.path().join(names::pagemap(7))).unwrap());
}

#[test]
fn files_and_crest_round_trip() {
    let d = TempDir::new("files");
    let file = pb::FileEntry {
        r#type: pb::FdTypes::Reg as i32,
        id: 5,
        reg: Some(pb::RegFileEntry {
            id: 5,
            flags: 0o2,
            pos: 17,
            fown: pb::FownEntry::default(),
            name: "/tmp/x".into(),
            mnt_id: Some(-1),
            size: Some(100),
            mode: Some(0o100644),
            ..Default::default()
        }),
        ..Default::default()
    };
    write_image(
        d.path(),
        names::FILES,
        magic::FILES,
        std::slice::from_ref(&file),
    )
    .unwrap();
    let back: Vec<pb::FileEntry> = read_image(d.path(), names::FILES, magic::FILES).unwrap();
    assert_eq!(back, vec![file]);

    let extra = CrestThreadExtra {
        xsave: Some(vec![0xa5; 2696]),
        xsave_size: Some(2696),
        outer_uids: vec![100_000, 100_000, 100_000, 100_000],
        outer_gids: vec![1, 2, 3, 4],
        outer_groups: vec![5, 6],
        ns_tids: vec![4242, 1],
        ns_pgids: vec![4242, 1],
        ns_sids: vec![4242, 0],
        pid_for_children: Some(3),
        time_for_children: None,
        timer_slack_ns: Some(50_000),
        cpu_affinity: Some(vec![1]),
        mempolicy_mode: Some(3),
        mempolicy_nodes: vec![1],
        tsc_mode: Some(2),
        mce_kill: Some(1),
    };
    let name = names::crest_thread(42);
    write_image(
        d.path(),
        &name,
        magic::CREST_THREAD,
        std::slice::from_ref(&extra),
    )
    .unwrap();
    assert_eq!(
        read_one::<CrestThreadExtra>(d.path(), &name, magic::CREST_THREAD).unwrap(),
        extra
    );

    let ns = vec![
        CrestUsernsEntry {
            id: 1,
            parent_id: None,
            depth: 0,
            owner_uid: None,
            setgroups_allow: None,
        },
        CrestUsernsEntry {
            id: 2,
            parent_id: Some(1),
            depth: 1,
            owner_uid: Some(1000),
            setgroups_allow: Some(false),
        },
    ];
    write_image(d.path(), names::CREST_USERNS, magic::CREST_USERNS, &ns).unwrap();
    assert_eq!(
        read_image::<CrestUsernsEntry>(d.path(), names::CREST_USERNS, magic::CREST_USERNS).unwrap(),
        ns
    );
}

// ---- files on disk ----------------------------------------------------------

#[test]
fn files_are_created_0600_even_if_they_existed() {
    let d = TempDir::new("mode");
    let p = d.write(names::PSTREE, b"old contents that must go");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    write_image(d.path(), names::PSTREE, magic::PSTREE, &[pstree(1, 0)]).unwrap();
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    assert_eq!(
        read_image::<pb::PstreeEntry>(d.path(), names::PSTREE, magic::PSTREE)
            .unwrap()
            .len(),
        1
    );

    let mut raw = create_raw(d.path(), &names::pages(1)).unwrap();
    raw.write_all(&[0u8; 4096]).unwrap();
    raw.finish().unwrap();
    let meta = std::fs::metadata(d.path().join(names::pages(1))).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta.len(), 4096);
}

#[test]
fn inventory_has_no_common_magic() {
    let d = TempDir::new("inv");
    let inv = pb::InventoryEntry {
        img_version: INVENTORY_IMG_VERSION,
        fdinfo_per_id: Some(true),
        ns_per_id: Some(true),
        lsmtype: Some(pb::Lsmtype::NoLsm as i32),
        ..Default::default()
    };
    write_image(
        d.path(),
        names::INVENTORY,
        magic::INVENTORY,
        std::slice::from_ref(&inv),
    )
    .unwrap();
    let bytes = std::fs::read(d.path().join(names::INVENTORY)).unwrap();
    assert_eq!(bytes[..4], magic::INVENTORY.to_le_bytes());
    assert_eq!(bytes.len(), 4 + 4 + inv.encoded_len());
    assert_eq!(
        read_one::<pb::InventoryEntry>(d.path(), names::INVENTORY, magic::INVENTORY).unwrap(),
        inv
    );
}

#[test]
fn bad_names_are_refused() {
    let d = TempDir::new("names");
    for name in ["", "..", "../x.img", "a/b.img"] {
        let err = write_image::<pb::FsEntry>(d.path(), name, magic::FS, &[]).unwrap_err();
        assert!(matches!(err, ImageError::BadName { .. }), "{name}: {err}");
    }
}

// ---- hostile input ------------------------------------------------------------

#[test]
fn wrong_common_magic_is_refused() {
    let d = TempDir::new("badcommon");
    d.write("core-1.img", &le(&[0xdead_beef, magic::CORE]));
    let err = ImageReader::open(d.path(), "core-1.img", magic::CORE)
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            ImageError::BadMagic {
                offset: 0,
                found: 0xdead_beef,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("core-1.img") && msg.contains("0x54564319") && msg.contains("0xdeadbeef"),
        "{msg}"
    );
}

#[test]
fn wrong_image_magic_is_refused() {
    let d = TempDir::new("badmagic");
    write_image(d.path(), "mm-1.img", magic::CORE, &[sample_core()]).unwrap();
    let err = ImageReader::open(d.path(), "mm-1.img", magic::MM)
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        matches!(err, ImageError::BadMagic { offset: 4, .. }),
        "{msg}"
    );
    assert_eq!(
        msg,
        format!(
            "{} at offset 4: bad image magic: expected 0x57492820, found 0x55053847",
            d.path().join("mm-1.img").display()
        )
    );
    // An ordinary image is not an inventory, and the other way round.
    let err = ImageReader::open(d.path(), "mm-1.img", magic::INVENTORY)
        .err()
        .unwrap();
    assert!(
        matches!(err, ImageError::BadMagic { offset: 0, .. }),
        "{err}"
    );
}

fn truncated_at(err: ImageError) -> (u64, &'static str) {
    match err {
        ImageError::Truncated { offset, what, .. } => (offset, what),
        other => panic!("expected Truncated, got {other}"),
    }
}

#[test]
fn truncated_header_length_and_payload() {
    let d = TempDir::new("trunc");
    d.write("core-1.img", &[]);
    let e = ImageReader::open(d.path(), "core-1.img", magic::CORE)
        .err()
        .unwrap();
    assert_eq!(truncated_at(e), (0, "common magic"));

    d.write("core-1.img", &[0x19, 0x43]);
    let e = ImageReader::open(d.path(), "core-1.img", magic::CORE)
        .err()
        .unwrap();
    assert_eq!(truncated_at(e), (0, "common magic"));

    let mut bytes = le(&[magic::IMG_COMMON]);
    bytes.extend_from_slice(&[0x47, 0x38]);
    d.write("core-1.img", &bytes);
    let e = ImageReader::open(d.path(), "core-1.img", magic::CORE)
        .err()
        .unwrap();
    let msg = e.to_string();
    assert_eq!(truncated_at(e), (4, "image magic"));
    assert!(msg.contains("core-1.img at offset 4"), "{msg}");

    let mut bytes = le(&[magic::IMG_COMMON, magic::CORE]);
    bytes.extend_from_slice(&[10, 0]);
    d.write("core-1.img", &bytes);
    let mut r = ImageReader::open(d.path(), "core-1.img", magic::CORE).unwrap();
    let e = r.next_entry::<pb::CoreEntry>().unwrap_err();
    assert_eq!(truncated_at(e), (8, "entry length"));

    let mut bytes = le(&[magic::IMG_COMMON, magic::CORE, 10]);
    bytes.extend_from_slice(&[8, 1, 0]);
    d.write("core-1.img", &bytes);
    let mut r = ImageReader::open(d.path(), "core-1.img", magic::CORE).unwrap();
    let e = r.next_entry::<pb::CoreEntry>().unwrap_err();
    let msg = e.to_string();
    assert_eq!(truncated_at(e), (12, "entry payload"));
    assert!(
        msg.ends_with("at offset 12: truncated entry payload: needed 10 bytes, found 3"),
        "{msg}"
    );
}

#[test]
fn absurd_lengths_are_refused_before_allocating() {
    let d = TempDir::new("huge");
    d.write(
        "core-42.img",
        &le(&[magic::IMG_COMMON, magic::CORE, u32::MAX]),
    );
    let mut r = ImageReader::open(d.path(), "core-42.img", magic::CORE).unwrap();
    let e = r.next_entry::<pb::CoreEntry>().unwrap_err();
    assert!(matches!(
        e,
        ImageError::EntryTooLarge {
            offset: 8,
            len: 0xffff_ffff,
            ..
        }
    ));
    assert!(
        e.to_string()
            .ends_with("core-42.img at offset 8: entry length 4294967295 exceeds 33554432 bytes"),
        "{e}"
    );

    // 1 MiB claimed, 20-byte file: refused from the file size, not by reading.
    let mut bytes = le(&[magic::IMG_COMMON, magic::CORE, 1 << 20]);
    bytes.extend_from_slice(&[0; 8]);
    assert_eq!(bytes.len(), 20);
    d.write("core-42.img", &bytes);
    let mut r = ImageReader::open(d.path(), "core-42.img", magic::CORE).unwrap();
    let e = r.next_entry::<pb::CoreEntry>().unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::Truncated {
                offset: 12,
                needed: 1_048_576,
                found: 8,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn garbage_payload_is_a_decode_error() {
    let d = TempDir::new("garbage");
    let mut bytes = le(&[magic::IMG_COMMON, magic::PSTREE, 3]);
    bytes.extend_from_slice(&[0x0f, 0xff, 0xff]);
    d.write(names::PSTREE, &bytes);
    let e = read_image::<pb::PstreeEntry>(d.path(), names::PSTREE, magic::PSTREE).unwrap_err();
    assert!(matches!(e, ImageError::Decode { offset: 8, .. }), "{e}");
    assert!(
        e.to_string()
            .contains("pstree.img at offset 8: decode entry:"),
        "{e}"
    );
    assert!(matches!(
        decode_file(&d.path().join(names::PSTREE)),
        Err(ImageError::Decode { .. })
    ));
}

#[test]
fn read_one_wants_exactly_one() {
    let d = TempDir::new("one");
    write_image::<pb::FsEntry>(d.path(), &names::fs(1), magic::FS, &[]).unwrap();
    let e = read_one::<pb::FsEntry>(d.path(), &names::fs(1), magic::FS).unwrap_err();
    assert!(matches!(e, ImageError::Missing { .. }), "{e}");
    assert!(e.to_string().contains("fs-1.img"));

    let fs = pb::FsEntry {
        cwd_id: 1,
        root_id: 2,
        umask: Some(0o22),
    };
    write_image(d.path(), &names::fs(1), magic::FS, &[fs, fs]).unwrap();
    let e = read_one::<pb::FsEntry>(d.path(), &names::fs(1), magic::FS).unwrap_err();
    assert!(
        matches!(e, ImageError::ExtraEntry { offset, .. } if offset == 12 + fs.encoded_len() as u64),
        "{e}"
    );
}

#[test]
fn every_prefix_and_corruption_is_an_error_not_a_panic() {
    let d = TempDir::new("fuzz");
    write_image(d.path(), &names::core(9), magic::CORE, &[sample_core()]).unwrap();
    let good = std::fs::read(d.path().join(names::core(9))).unwrap();
    for cut in 0..good.len() {
        let p = d.write(&names::core(9), &good[..cut]);
        let r = decode_file(&p);
        // Only a cut exactly after the header is a valid (empty) image.
        assert_eq!(r.is_ok(), cut == 8, "cut at {cut}");
    }
    let mut seed = 0x1234_5678_u32;
    for _ in 0..2000 {
        let mut bad = good.clone();
        for _ in 0..3 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let i = (seed >> 8) as usize % bad.len();
            bad[i] ^= (seed >> 24) as u8 | 1;
        }
        let p = d.write(&names::core(9), &bad);
        let _ = decode_file(&p);
    }
}

// ---- decode / recode ------------------------------------------------------------

#[test]
fn recode_matches_written_files() {
    let d = TempDir::new("recode");
    write_image(
        d.path(),
        names::PSTREE,
        magic::PSTREE,
        &[pstree(1, 0), pstree(2, 1)],
    )
    .unwrap();
    write_image(d.path(), &names::core(1), magic::CORE, &[sample_core()]).unwrap();
    write_image(
        d.path(),
        names::INVENTORY,
        magic::INVENTORY,
        &[pb::InventoryEntry {
            img_version: 2,
            ..Default::default()
        }],
    )
    .unwrap();
    let userns = pb::UsernsEntry {
        uid_map: vec![pb::UidGidExtent {
            first: 0,
            lower_first: 100_000,
            count: 65536,
        }],
        gid_map: vec![],
        crest_userns: Some(CrestUsernsEntry {
            id: 11,
            parent_id: Some(1),
            depth: 1,
            owner_uid: Some(0),
            setgroups_allow: Some(true),
        }),
    };
    write_image(d.path(), &names::userns(11), magic::USERNS, &[userns]).unwrap();
    write_image(
        d.path(),
        &names::utsns(12),
        magic::UTSNS,
        &[pb::UtsnsEntry {
            nodename: "box".into(),
            domainname: "(none)".into(),
        }],
    )
    .unwrap();
    let mut raw = create_raw(d.path(), &names::pages(1)).unwrap();
    raw.write_all(&[1u8; 8192]).unwrap();
    raw.finish().unwrap();
    for entry in std::fs::read_dir(d.path()).unwrap() {
        let p = entry.unwrap().path();
        assert!(recode_matches(&p).unwrap(), "{}", p.display());
    }
    let raw = decode_file(&d.path().join(names::pages(1))).unwrap();
    assert_eq!(
        (raw.kind, raw.magic, raw.entries.len()),
        (ImageKind::RawPages, 0, 0)
    );
}

#[test]
fn recode_notices_undeclared_fields() {
    let d = TempDir::new("unknown");
    // fs_entry with an extra field 15 (varint 1) this crate does not declare.
    let mut body = pb::FsEntry {
        cwd_id: 1,
        root_id: 2,
        umask: None,
    }
    .encode_to_vec();
    body.extend_from_slice(&[15 << 3, 1]);
    let mut bytes = le(&[magic::IMG_COMMON, magic::FS, body.len() as u32]);
    bytes.extend_from_slice(&body);
    let p = d.write(&names::fs(3), &bytes);
    assert!(!recode_matches(&p).unwrap());
}

#[test]
fn decode_file_by_name_and_by_magic_prints_json() {
    let d = TempDir::new("show");
    write_image(d.path(), names::PSTREE, magic::PSTREE, &[pstree(42, 1)]).unwrap();
    let img = decode_file(&d.path().join(names::PSTREE)).unwrap();
    assert_eq!(img.kind, ImageKind::Pstree);
    let json = serde_json::to_string(&img).unwrap();
    assert_eq!(
        json,
        format!(
            r#"{{"kind":"Pstree","magic":{},"entries":[{{"pid":42,"ppid":1,"pgid":42,"sid":42,"threads":[42,43]}}]}}"#,
            magic::PSTREE
        )
    );
    // An unfamiliar name is recognised by its magic.
    std::fs::rename(d.path().join(names::PSTREE), d.path().join("renamed")).unwrap();
    assert_eq!(decode_file(&d.path().join("renamed")).unwrap(), img);
    d.write("junk", &le(&[magic::IMG_COMMON, 0x1111_1111]));
    let e = decode_file(&d.path().join("junk")).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::Unknown {
                found: 0x1111_1111,
                ..
            }
        ),
        "{e}"
    );
    let core_json = serde_json::to_value(AnyEntry::Core(Box::new(sample_core()))).unwrap();
    assert_eq!(core_json["tc"]["comm"], "sleep");
}

// ---- CRIU wire format -------------------------------------------------------------

#[test]
fn wire_format_matches_criu_field_numbers() {
    // pstree_entry: pid=1 ppid=2 pgid=3 sid=4, threads=5 unpacked (proto2).
    let bytes = pstree(42, 1).encode_to_vec();
    assert_eq!(
        bytes,
        [0x08, 0x2a, 0x10, 0x01, 0x18, 0x2a, 0x20, 0x2a, 0x28, 0x2a, 0x28, 0x2b]
    );
    // The whole file: common magic, pstree magic, length, message.
    let d = TempDir::new("wire");
    write_image(d.path(), names::PSTREE, magic::PSTREE, &[pstree(42, 1)]).unwrap();
    let file = std::fs::read(d.path().join(names::PSTREE)).unwrap();
    let mut want = vec![0x19, 0x43, 0x56, 0x54, 0x30, 0x30, 0x27, 0x50, 12, 0, 0, 0];
    want.extend_from_slice(&bytes);
    assert_eq!(file, want);

    // task_kobj_ids_entry: vm=1 files=2 fs=3 sighand=4 ... time_ns=12.
    let ids = pb::TaskKobjIdsEntry {
        vm_id: 1,
        files_id: 2,
        fs_id: 3,
        sighand_id: 4,
        user_ns_id: Some(5),
        time_ns_id: Some(6),
        ..Default::default()
    };
    assert_eq!(
        ids.encode_to_vec(),
        [0x08, 1, 0x10, 2, 0x18, 3, 0x20, 4, 0x50, 5, 0x60, 6]
    );

    // vma_entry.fd is sint64 field 8: -1 zigzags to 1.
    let vma = pb::VmaEntry {
        fd: -1,
        ..Default::default()
    };
    assert_eq!(vma.encode_to_vec()[14..], [0x40, 0x01]);

    // core_entry: mtype=1, tc=3, thread_core=5 with creds=10 inside.
    let core = pb::CoreEntry {
        mtype: 1,
        thread_core: Some(pb::ThreadCoreEntry {
            creds: Some(pb::CredsEntry::default()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let b = core.encode_to_vec();
    assert_eq!(b[..3], [0x08, 0x01, 0x2a]);
    assert!(b.windows(1).any(|w| w[0] == 0x52), "creds tag (10<<3|2)");

    // pagemap_entry: vaddr=1 compat_nr_pages=2 in_parent=3 flags=4 nr_pages=5.
    let pe = pb::PagemapEntry {
        vaddr: 0x1000,
        compat_nr_pages: 1,
        in_parent: Some(false),
        flags: Some(PE_PRESENT),
        nr_pages: Some(1),
    };
    assert_eq!(
        pe.encode_to_vec(),
        [0x08, 0x80, 0x20, 0x10, 1, 0x18, 0, 0x20, 4, 0x28, 1]
    );

    // fdinfo_entry type enum and file_entry.reg=3.
    assert_eq!(pb::FdTypes::Pidfd as i32, 20);
    assert_eq!(pb::FdTypes::AutofsPipe as i32, 65535);
    let f = pb::FdinfoEntry {
        id: 1,
        flags: 0,
        r#type: pb::FdTypes::Pipe as i32,
        fd: 3,
        ..Default::default()
    };
    assert_eq!(f.encode_to_vec(), [0x08, 1, 0x10, 0, 0x18, 2, 0x20, 3]);
}
