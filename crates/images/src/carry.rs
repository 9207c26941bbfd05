//! crest's additions carried inside CRIU's messages, so that every file
//! crest writes is one CRIU's `crit` decodes, and the reading of crest's
//! older images, which had crest's own magics and bare crest messages.
//!
//! The registry of crest's field numbers (1000-1999 in CRIU's messages) is
//! the comment at the top of `proto/crest.proto`. A [`Carrier`] is a CRIU
//! message that carries one crest message per entry; [`CarriedReader`]
//! reads a file of them, or the same file as an older crest wrote it (the
//! crest message bare, after crest's magic). Additions that ride in CRIU's
//! own per-object files (`core-<tid>.img`, `userns-<id>.img`,
//! `netdev-<id>.img`, `netns-<id>.img`, `ipcns-var-<id>.img`) are plain
//! fields of those messages; their readers in crest-core keep reading the
//! older side files when they are there.

use std::marker::PhantomData;
use std::path::Path;

use crate::framing::{ImageReader, ImageWriter};
use crate::pb::crest::{
    CrestCgroupMember, CrestFsEntry, CrestMntNsHead, CrestMountEntry, CrestNsEntry, CrestUdpPacket,
};
use crate::pb::{CgroupEntry, Fstype, MntEntry, NsFileEntry, PipeDataEntry, SkPacketEntry};
use crate::{magic, names, ImageError};

/// A CRIU message that carries one crest message per entry.
pub trait Carrier: prost::Message + Default {
    /// The crest message it carries.
    type Inner: prost::Message + Default;
    /// The (CRIU) magic of files of such entries.
    const MAGIC: u32;
    /// What is carried, for error messages.
    const WHAT: &'static str;
    /// The entry carrying `inner`, CRIU's required fields filled.
    fn wrap(inner: Self::Inner) -> Self;
    /// The carried message; `None` when it is missing or disagrees with
    /// CRIU's fields that frame the file (a payload length).
    fn unwrap(self) -> Option<Self::Inner>;
}

/// `crest-ns.img`: `ns_file_entry` with `id` = `ns_id` = the namespace's
/// id, `ns_cflag` its type, `flags` 0.
impl Carrier for NsFileEntry {
    type Inner = CrestNsEntry;
    const MAGIC: u32 = magic::NS_FILES;
    const WHAT: &'static str = "namespace entry (ns_file_entry field 1000)";
    fn wrap(inner: CrestNsEntry) -> NsFileEntry {
        NsFileEntry {
            id: inner.id,
            ns_id: inner.id,
            ns_cflag: inner.nstype,
            flags: 0,
            crest_ns: Some(inner),
        }
    }
    fn unwrap(self) -> Option<CrestNsEntry> {
        self.crest_ns
    }
}

/// `crest-cgroups.img`: one `cgroup_entry` per task.
impl Carrier for CgroupEntry {
    type Inner = CrestCgroupMember;
    const MAGIC: u32 = magic::CGROUP;
    const WHAT: &'static str = "cgroup member (cgroup_entry field 1000)";
    fn wrap(inner: CrestCgroupMember) -> CgroupEntry {
        CgroupEntry {
            crest_member: Some(inner),
            ..CgroupEntry::default()
        }
    }
    fn unwrap(self) -> Option<CrestCgroupMember> {
        self.crest_member
    }
}

/// `crest-tmpfs-<ns>-<mnt>.img`: a `pipe_data_entry` per file, `bytes`
/// the length of the contents that follow (what crit skips).
impl Carrier for PipeDataEntry {
    type Inner = CrestFsEntry;
    const MAGIC: u32 = magic::PIPES_DATA;
    const WHAT: &'static str = "tmpfs file (pipe_data_entry field 1000, its size in bytes)";
    fn wrap(inner: CrestFsEntry) -> PipeDataEntry {
        PipeDataEntry {
            pipe_id: 0,
            bytes: u32::try_from(inner.size.unwrap_or(0)).unwrap_or(u32::MAX),
            size: None,
            crest_fs: Some(inner),
        }
    }
    fn unwrap(self) -> Option<CrestFsEntry> {
        self.crest_fs
            .filter(|f| f.size.unwrap_or(0) == u64::from(self.bytes))
    }
}

/// `crest-udp-queues.img`: an `sk_packet_entry` per datagram (`length`
/// bytes follow), the sender in field 1000.
impl Carrier for SkPacketEntry {
    type Inner = CrestUdpPacket;
    const MAGIC: u32 = magic::SK_QUEUES;
    const WHAT: &'static str = "datagram sender (sk_packet_entry field 1000)";
    fn wrap(inner: CrestUdpPacket) -> SkPacketEntry {
        SkPacketEntry {
            id_for: inner.id_for,
            length: inner.length,
            crest_from: Some(inner.from),
            ..SkPacketEntry::default()
        }
    }
    fn unwrap(self) -> Option<CrestUdpPacket> {
        Some(CrestUdpPacket {
            id_for: self.id_for,
            from: self.crest_from?,
            length: self.length,
        })
    }
}

/// Writes `dir/name`: every message of `inner` in its carrier.
pub fn write<C: Carrier>(dir: &Path, name: &str, inner: Vec<C::Inner>) -> Result<(), ImageError> {
    let mut w = ImageWriter::create(dir, name, C::MAGIC)?;
    for i in inner {
        w.write_entry(&C::wrap(i))?;
    }
    w.finish()
}

/// Reads a file of [`Carrier`] entries, or the same file as an older crest
/// wrote it: `legacy_magic`, then the carried messages bare.
pub struct CarriedReader<C: Carrier> {
    r: ImageReader,
    legacy: bool,
    carrier: PhantomData<C>,
}

impl<C: Carrier> CarriedReader<C> {
    /// Opens `dir/name`, with [`Carrier::MAGIC`] or `legacy_magic`.
    pub fn open(dir: &Path, name: &str, legacy_magic: u32) -> Result<CarriedReader<C>, ImageError> {
        let r = ImageReader::open_any(dir, name, &[C::MAGIC, legacy_magic])?;
        Ok(CarriedReader {
            legacy: r.magic() == legacy_magic,
            r,
            carrier: PhantomData,
        })
    }

    /// Whether the file is an older crest's.
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }

    /// The next carried message, `None` at a clean end of file.
    pub fn next_entry(&mut self) -> Result<Option<C::Inner>, ImageError> {
        if self.legacy {
            return self.r.next_entry();
        }
        let offset = self.r.offset();
        let Some(c) = self.r.next_entry::<C>()? else {
            return Ok(None);
        };
        c.unwrap().map(Some).ok_or_else(|| ImageError::NotCarried {
            path: self.r.path().to_path_buf(),
            offset,
            what: C::WHAT,
        })
    }

    /// Raw bytes following an entry, bounded like an entry.
    pub fn read_payload(&mut self, len: u64) -> Result<Vec<u8>, ImageError> {
        self.r.read_payload(len)
    }

    /// Every remaining carried message.
    pub fn read_all(mut self) -> Result<Vec<C::Inner>, ImageError> {
        let mut out = Vec::new();
        while let Some(i) = self.next_entry()? {
            out.push(i);
        }
        Ok(out)
    }
}

/// Reads every carried message of `dir/name` (see [`CarriedReader`]).
pub fn read<C: Carrier>(
    dir: &Path,
    name: &str,
    legacy_magic: u32,
) -> Result<Vec<C::Inner>, ImageError> {
    CarriedReader::<C>::open(dir, name, legacy_magic)?.read_all()
}

// ---- mount namespaces -------------------------------------------------

/// crest's mount kind of a mount that is external (`crest_mount_entry.kind`).
const MOUNT_EXTERNAL: u32 = 4;

/// CRIU's `fstype` code of a filesystem type name (`UNSUPPORTED` for those
/// CRIU has no code for; `fsname` names them).
fn fstype_code(name: &str) -> u32 {
    let code = match name {
        "proc" => Fstype::Proc,
        "sysfs" => Fstype::Sysfs,
        "devtmpfs" => Fstype::Devtmpfs,
        "binfmt_misc" => Fstype::BinfmtMisc,
        "tmpfs" => Fstype::Tmpfs,
        "devpts" => Fstype::Devpts,
        "pstore" => Fstype::Pstore,
        "securityfs" => Fstype::Securityfs,
        "fusectl" => Fstype::Fusectl,
        "debugfs" => Fstype::Debugfs,
        "cgroup" => Fstype::Cgroup,
        "mqueue" => Fstype::Mqueue,
        "fuse" => Fstype::Fuse,
        "overlay" => Fstype::Overlayfs,
        "autofs" => Fstype::Autofs,
        "tracefs" => Fstype::Tracefs,
        "cgroup2" => Fstype::Cgroup2,
        _ => Fstype::Unsupported,
    };
    code as u32
}

/// The `MS_*` flags of per-mount options ("ro,nosuid,relatime").
fn mount_flags(opts: &str) -> u32 {
    opts.split(',')
        .map(|o| match o {
            "ro" => 1,
            "nosuid" => 2,
            "nodev" => 4,
            "noexec" => 8,
            "noatime" => 1 << 10,
            "nodiratime" => 1 << 11,
            "relatime" => 1 << 21,
            "strictatime" => 1 << 24,
            _ => 0,
        })
        .fold(0, |a, b| a | b)
}

/// CRIU's `mnt_entry` for one of crest's mounts, carrying it.
fn mnt_entry(m: &CrestMountEntry, head: Option<CrestMntNsHead>) -> MntEntry {
    MntEntry {
        fstype: fstype_code(&m.fstype),
        mnt_id: m.mnt_id,
        root_dev: 0,
        parent_mnt_id: m.parent_id,
        flags: mount_flags(&m.mnt_opts),
        root: m.root.clone(),
        mountpoint: m.mountpoint.clone(),
        source: m.source.clone(),
        options: m.super_opts.clone(),
        shared_id: m.shared,
        master_id: m.master,
        ext_mount: (m.kind == MOUNT_EXTERNAL).then_some(true),
        fsname: Some(m.fstype.clone()),
        ext_key: m.external_key.clone(),
        crest_mount: Some(m.clone()),
        crest_mnt_head: head,
        ..MntEntry::default()
    }
}

/// Writes `mountpoints-<id>.img`: CRIU's `mnt_entry` per mount carrying
/// crest's, the namespace's header on the first (on an entry of its own
/// when there is no mount).
pub fn write_mounts(
    dir: &Path,
    id: u32,
    head: CrestMntNsHead,
    mounts: &[CrestMountEntry],
) -> Result<(), ImageError> {
    let mut w = ImageWriter::create(dir, &names::mountpoints(id), magic::MNTS)?;
    let mut head = Some(head);
    for m in mounts {
        w.write_entry(&mnt_entry(m, head.take()))?;
    }
    if let Some(head) = head {
        w.write_entry(&MntEntry {
            crest_mnt_head: Some(head),
            ..MntEntry::default()
        })?;
    }
    w.finish()
}

/// Reads the mounts of a mount namespace: `mountpoints-<id>.img`, or an
/// older crest's `crest-mnt-<id>.img`.
pub struct MountsReader {
    r: ImageReader,
    name: String,
    legacy: bool,
    head: CrestMntNsHead,
    first: Option<CrestMountEntry>,
}

impl MountsReader {
    /// Whether namespace `id` has its mounts in `dir`.
    pub fn exists(dir: &Path, id: u32) -> bool {
        dir.join(names::mountpoints(id)).exists() || dir.join(names::crest_mnt(id)).exists()
    }

    /// Opens the mounts of namespace `id` and reads the header.
    pub fn open(dir: &Path, id: u32) -> Result<MountsReader, ImageError> {
        let current = names::mountpoints(id);
        if !dir.join(&current).exists() && dir.join(names::crest_mnt(id)).exists() {
            let name = names::crest_mnt(id);
            let mut r = ImageReader::open(dir, &name, magic::CREST_MNT)?;
            let head = r.next_entry()?.ok_or_else(|| ImageError::Missing {
                path: r.path().to_path_buf(),
            })?;
            return Ok(MountsReader {
                r,
                name,
                legacy: true,
                head,
                first: None,
            });
        }
        let mut r = ImageReader::open(dir, &current, magic::MNTS)?;
        let first: MntEntry = r.next_entry()?.ok_or_else(|| ImageError::Missing {
            path: r.path().to_path_buf(),
        })?;
        let head = first.crest_mnt_head.ok_or_else(|| ImageError::NotCarried {
            path: r.path().to_path_buf(),
            offset: 8,
            what: "mount namespace header (mnt_entry field 1001)",
        })?;
        Ok(MountsReader {
            r,
            name: current,
            legacy: false,
            head,
            first: first.crest_mount,
        })
    }

    /// The file read.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's header.
    pub fn head(&self) -> CrestMntNsHead {
        self.head
    }

    /// The next mount, `None` at a clean end of file.
    pub fn next_mount(&mut self) -> Result<Option<CrestMountEntry>, ImageError> {
        if let Some(m) = self.first.take() {
            return Ok(Some(m));
        }
        if self.legacy {
            return self.r.next_entry();
        }
        let offset = self.r.offset();
        let Some(e) = self.r.next_entry::<MntEntry>()? else {
            return Ok(None);
        };
        match (e.crest_mount, e.crest_mnt_head) {
            (Some(m), None) => Ok(Some(m)),
            _ => Err(ImageError::NotCarried {
                path: self.r.path().to_path_buf(),
                offset,
                what: "mount (mnt_entry field 1000, and no second header)",
            }),
        }
    }
}

// ---- user namespaces --------------------------------------------------

/// Most `userns-<id>.img` files crest reads from one directory.
pub const MAX_USERNS_FILES: usize = 4096;

/// The ids of the `userns-<id>.img` files of `dir`, in increasing order
/// (crest gives a parent a smaller id than its children).
pub fn userns_ids(dir: &Path) -> Result<Vec<u32>, ImageError> {
    let open_err = |source| ImageError::Open {
        path: dir.to_path_buf(),
        op: "read directory",
        source,
    };
    let mut ids = Vec::new();
    for e in std::fs::read_dir(dir).map_err(open_err)? {
        let e = e.map_err(open_err)?;
        let name = e.file_name();
        let Some(id) = name.to_str().and_then(names::userns_id) else {
            continue;
        };
        if ids.len() >= MAX_USERNS_FILES {
            return Err(ImageError::TooMany {
                path: dir.to_path_buf(),
                what: "userns-<id>.img files",
                limit: MAX_USERNS_FILES,
            });
        }
        ids.push(id);
    }
    ids.sort_unstable();
    Ok(ids)
}
