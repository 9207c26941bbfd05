//! Image file names, and which kind of image a name (or magic) denotes.

use crate::magic;

/// `inventory.img`
pub const INVENTORY: &str = "inventory.img";
/// `pstree.img`
pub const PSTREE: &str = "pstree.img";
/// `files.img`
pub const FILES: &str = "files.img";
/// `reg-files.img` (CRIU's layout before `files.img`)
pub const REG_FILES: &str = "reg-files.img";
/// `pipes.img` (CRIU's layout before `files.img`)
pub const PIPES: &str = "pipes.img";
/// Pipe data in flight: entries followed by raw bytes.
pub const PIPES_DATA: &str = "pipes-data.img";
/// FIFO data in flight: entries followed by raw bytes.
pub const FIFO_DATA: &str = "fifo-data.img";
/// `remap-fpath.img`
pub const REMAP_FPATH: &str = "remap-fpath.img";
/// `memfd.img`: memfd inodes
pub const MEMFD_INODE: &str = "memfd.img";
/// Data queued on sockets: `sk_packet_entry`s each followed by raw bytes.
pub const SK_QUEUES: &str = "sk-queues.img";
/// `crest-udp-queues.img` (crest's, in CRIU's `SK_QUEUES` framing)
pub const CREST_UDP_QUEUES: &str = "crest-udp-queues.img";
/// `tty-info.img`
pub const TTY_INFO: &str = "tty-info.img";
/// `tty-data.img`: bytes queued in pty pairs of the tree
pub const TTY_DATA: &str = "tty-data.img";
/// `filelocks.img`: the file locks the tree holds (`--file-locks`)
pub const FILE_LOCKS: &str = "filelocks.img";
/// `seccomp.img`: the tree's seccomp filters
pub const SECCOMP: &str = "seccomp.img";
/// `ns-files.img`
pub const NS_FILES: &str = "ns-files.img";
/// `stats-dump`: what the last dump took (service magic, CRIU's name).
pub const STATS_DUMP: &str = "stats-dump";
/// `stats-restore`: what the last restore took.
pub const STATS_RESTORE: &str = "stats-restore";
/// Legacy `crest-userns.img` (read only)
pub const CREST_USERNS: &str = "crest-userns.img";
/// `cgroup.img`: CRIU's, one `cgroup_entry` with the tree's cgroup
/// settings (`controllers`).
pub const CGROUP: &str = "cgroup.img";
/// `crest-cgroups.img` (crest's, `cgroup_entry`s with CRIU's `CGROUP` magic)
pub const CREST_CGROUPS: &str = "crest-cgroups.img";
/// `crest-ns.img` (crest's, `ns_file_entry`s with CRIU's `NS_FILES` magic)
pub const CREST_NS: &str = "crest-ns.img";

/// `core-<tid>.img`
pub fn core(tid: u32) -> String {
    format!("core-{tid}.img")
}
/// `ids-<pid>.img`
pub fn ids(pid: u32) -> String {
    format!("ids-{pid}.img")
}
/// `mm-<pid>.img`
pub fn mm(pid: u32) -> String {
    format!("mm-{pid}.img")
}
/// `pagemap-<pid>.img`
pub fn pagemap(pid: u32) -> String {
    format!("pagemap-{pid}.img")
}
/// `pages-<pages_id>.img` (raw, no header)
pub fn pages(pages_id: u32) -> String {
    format!("pages-{pages_id}.img")
}
/// `fdinfo-<files_id>.img`
pub fn fdinfo(files_id: u32) -> String {
    format!("fdinfo-{files_id}.img")
}
/// `fs-<pid>.img`
pub fn fs(pid: u32) -> String {
    format!("fs-{pid}.img")
}
/// `sigacts-<pid>.img` (CRIU's old per-task signal actions)
pub fn sigacts(pid: u32) -> String {
    format!("sigacts-{pid}.img")
}
/// `userns-<id>.img`
pub fn userns(id: u32) -> String {
    format!("userns-{id}.img")
}
/// `utsns-<id>.img`
pub fn utsns(id: u32) -> String {
    format!("utsns-{id}.img")
}
/// `ipcns-var-<id>.img`
pub fn ipcns_var(id: u32) -> String {
    format!("ipcns-var-{id}.img")
}
/// `ipcns-shm-<id>.img`
pub fn ipcns_shm(id: u32) -> String {
    format!("ipcns-shm-{id}.img")
}
/// `ipcns-sem-<id>.img`
pub fn ipcns_sem(id: u32) -> String {
    format!("ipcns-sem-{id}.img")
}
/// `ipcns-msg-<id>.img`
pub fn ipcns_msg(id: u32) -> String {
    format!("ipcns-msg-{id}.img")
}
/// Legacy `crest-pmq-<ipc ns id>.img` (read only)
pub fn crest_pmq(id: u32) -> String {
    format!("crest-pmq-{id}.img")
}
/// `mountpoints-<id>.img`: the mounts of a mount namespace
pub fn mountpoints(id: u32) -> String {
    format!("mountpoints-{id}.img")
}
/// `netns-<id>.img`
pub fn netns(id: u32) -> String {
    format!("netns-{id}.img")
}
/// `netdev-<id>.img`
pub fn netdev(id: u32) -> String {
    format!("netdev-{id}.img")
}
/// `ifaddr-<id>.img` (raw: `ip addr save` output)
pub fn ifaddr(id: u32) -> String {
    format!("ifaddr-{id}.img")
}
/// `route-<id>.img` (raw: `ip route save` output)
pub fn route(id: u32) -> String {
    format!("route-{id}.img")
}
/// `route6-<id>.img` (raw: `ip -6 route save` output)
pub fn route6(id: u32) -> String {
    format!("route6-{id}.img")
}
/// `rule-<id>.img` (raw: `ip rule save` output, IPv4)
pub fn rule(id: u32) -> String {
    format!("rule-{id}.img")
}
/// Legacy `crest-rule6-<id>.img` (read only; laid out like `rule-<id>.img`)
pub fn crest_rule6(id: u32) -> String {
    format!("crest-rule6-{id}.img")
}
/// Legacy `crest-neigh-<id>.img` (read only: permanent neighbour entries,
/// laid out like `ip rule save` output with its own magic)
pub fn crest_neigh(id: u32) -> String {
    format!("crest-neigh-{id}.img")
}
/// Legacy `crest-netdev-<id>.img` (read only)
pub fn crest_netdev(id: u32) -> String {
    format!("crest-netdev-{id}.img")
}
/// Legacy `crest-net-sysctl-<id>.img` (read only)
pub fn crest_net_sysctl(id: u32) -> String {
    format!("crest-net-sysctl-{id}.img")
}
/// Legacy `crest-mnt-<id>.img` (read only; now [`mountpoints`])
pub fn crest_mnt(id: u32) -> String {
    format!("crest-mnt-{id}.img")
}
/// `crest-tmpfs-<ns id>-<mnt id>.img` (crest's, in CRIU's `PIPES_DATA`
/// framing)
pub fn crest_tmpfs(ns: u32, mnt: u32) -> String {
    format!("crest-tmpfs-{ns}-{mnt}.img")
}
/// `ghost-file-<id>.img` (the id in hex, as CRIU names it)
pub fn ghost_file(id: u32) -> String {
    format!("ghost-file-{id:x}.img")
}
/// `pagemap-shmem-<shmid>.img`: the pages of a shared memory object
pub fn pagemap_shmem(shmid: u32) -> String {
    format!("pagemap-shmem-{shmid}.img")
}
/// `tcp-stream-<ino>.img` (the inode in hex, as CRIU names it)
pub fn tcp_stream(ino: u32) -> String {
    format!("tcp-stream-{ino:x}.img")
}
/// Legacy `crest-thread-<tid>.img` (read only)
pub fn crest_thread(tid: u32) -> String {
    format!("crest-thread-{tid}.img")
}

/// An image this crate can read: its magic and the type of its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum ImageKind {
    /// `inventory.img`: one `InventoryEntry`.
    Inventory,
    /// `pstree.img`: `PstreeEntry` per process.
    Pstree,
    /// `core-<tid>.img`: one `CoreEntry`.
    Core,
    /// `ids-<pid>.img`: one `TaskKobjIdsEntry`.
    Ids,
    /// `mm-<pid>.img`: one `MmEntry`.
    Mm,
    /// `pagemap-<pid>.img`: one `PagemapHead`, then `PagemapEntry`s.
    Pagemap,
    /// `pages-<id>.img`: raw page contents, no framing.
    RawPages,
    /// `fdinfo-<files_id>.img`: `FdinfoEntry` per descriptor.
    Fdinfo,
    /// `files.img`: `FileEntry` per open file.
    Files,
    /// `reg-files.img`: `RegFileEntry`s.
    RegFiles,
    /// `pipes.img`: `PipeEntry`s.
    Pipes,
    /// `ns-files.img`: `NsFileEntry`s.
    NsFiles,
    /// `fs-<pid>.img`: one `FsEntry`.
    Fs,
    /// `sigacts-<pid>.img`: `SaEntry` per signal.
    Sigacts,
    /// `userns-<id>.img`: one `UsernsEntry`.
    Userns,
    /// `utsns-<id>.img`: one `UtsnsEntry`.
    Utsns,
    /// `mountpoints-<id>.img`: `MntEntry` per mount.
    Mnts,
    /// `crest-cgroups.img`: `CgroupEntry` per task.
    Cgroup,
    /// Legacy `crest-thread-<tid>.img`: one `CrestThreadExtra`.
    CrestThread,
    /// Legacy `crest-userns.img`: `CrestUsernsEntry` per user namespace.
    CrestUserns,
    /// Legacy `crest-ns.img` (crest's own magic): `CrestNsEntry` per other
    /// namespace. Today's `crest-ns.img` is [`ImageKind::NsFiles`].
    CrestNs,
}

impl ImageKind {
    /// Every kind, for lookups.
    pub const ALL: [ImageKind; 21] = [
        ImageKind::Inventory,
        ImageKind::Pstree,
        ImageKind::Core,
        ImageKind::Ids,
        ImageKind::Mm,
        ImageKind::Pagemap,
        ImageKind::RawPages,
        ImageKind::Fdinfo,
        ImageKind::Files,
        ImageKind::RegFiles,
        ImageKind::Pipes,
        ImageKind::NsFiles,
        ImageKind::Fs,
        ImageKind::Sigacts,
        ImageKind::Userns,
        ImageKind::Utsns,
        ImageKind::Mnts,
        ImageKind::Cgroup,
        ImageKind::CrestThread,
        ImageKind::CrestUserns,
        ImageKind::CrestNs,
    ];

    /// The per-file magic of this kind ([`magic::RAW`] for raw pages).
    pub fn magic(self) -> u32 {
        match self {
            ImageKind::Inventory => magic::INVENTORY,
            ImageKind::Pstree => magic::PSTREE,
            ImageKind::Core => magic::CORE,
            ImageKind::Ids => magic::IDS,
            ImageKind::Mm => magic::MM,
            ImageKind::Pagemap => magic::PAGEMAP,
            ImageKind::RawPages => magic::RAW,
            ImageKind::Fdinfo => magic::FDINFO,
            ImageKind::Files => magic::FILES,
            ImageKind::RegFiles => magic::REG_FILES,
            ImageKind::Pipes => magic::PIPES,
            ImageKind::NsFiles => magic::NS_FILES,
            ImageKind::Fs => magic::FS,
            ImageKind::Sigacts => magic::SIGACT,
            ImageKind::Userns => magic::USERNS,
            ImageKind::Utsns => magic::UTSNS,
            ImageKind::Mnts => magic::MNTS,
            ImageKind::Cgroup => magic::CGROUP,
            ImageKind::CrestThread => magic::CREST_THREAD,
            ImageKind::CrestUserns => magic::CREST_USERNS,
            ImageKind::CrestNs => magic::CREST_NS,
        }
    }

    /// The kind whose per-file magic is `magic` (never [`ImageKind::RawPages`]).
    pub fn from_magic(magic: u32) -> Option<ImageKind> {
        if magic == magic::RAW {
            return None;
        }
        ImageKind::ALL.into_iter().find(|k| k.magic() == magic)
    }
}

/// `<prefix><decimal>.img` → the number.
fn numbered(name: &str, prefix: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(".img")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The id of a `userns-<id>.img` file name.
pub fn userns_id(file_name: &str) -> Option<u32> {
    numbered(file_name, "userns-")
}

/// The kind of image a file name denotes, for every image this crate knows
/// by name (others are told by their magic).
pub fn kind_of(file_name: &str) -> Option<ImageKind> {
    let fixed = [
        (INVENTORY, ImageKind::Inventory),
        (PSTREE, ImageKind::Pstree),
        (FILES, ImageKind::Files),
        (REG_FILES, ImageKind::RegFiles),
        (PIPES, ImageKind::Pipes),
        (NS_FILES, ImageKind::NsFiles),
        (CREST_USERNS, ImageKind::CrestUserns),
        (CGROUP, ImageKind::Cgroup),
        // crest-ns.img and crest-cgroups.img are told by their magic: a
        // legacy crest one or CRIU's.
    ];
    if let Some((_, kind)) = fixed.iter().find(|(n, _)| *n == file_name) {
        return Some(*kind);
    }
    let numbered_kinds = [
        ("core-", ImageKind::Core),
        ("ids-", ImageKind::Ids),
        ("mm-", ImageKind::Mm),
        ("pagemap-", ImageKind::Pagemap),
        ("pages-", ImageKind::RawPages),
        ("fdinfo-", ImageKind::Fdinfo),
        ("fs-", ImageKind::Fs),
        ("sigacts-", ImageKind::Sigacts),
        ("userns-", ImageKind::Userns),
        ("utsns-", ImageKind::Utsns),
        ("mountpoints-", ImageKind::Mnts),
        ("crest-thread-", ImageKind::CrestThread),
    ];
    numbered_kinds
        .iter()
        .find(|(prefix, _)| numbered(file_name, prefix).is_some())
        .map(|(_, kind)| *kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_back_to_their_kind() {
        assert_eq!(kind_of(&core(42)), Some(ImageKind::Core));
        assert_eq!(kind_of(&ids(1)), Some(ImageKind::Ids));
        assert_eq!(kind_of(&mm(1)), Some(ImageKind::Mm));
        assert_eq!(kind_of(&pagemap(7)), Some(ImageKind::Pagemap));
        assert_eq!(kind_of(&pages(3)), Some(ImageKind::RawPages));
        assert_eq!(kind_of(&fdinfo(2)), Some(ImageKind::Fdinfo));
        assert_eq!(kind_of(&fs(9)), Some(ImageKind::Fs));
        assert_eq!(kind_of(&sigacts(9)), Some(ImageKind::Sigacts));
        assert_eq!(kind_of(&userns(5)), Some(ImageKind::Userns));
        assert_eq!(kind_of(&utsns(5)), Some(ImageKind::Utsns));
        assert_eq!(kind_of(&crest_thread(8)), Some(ImageKind::CrestThread));
        assert_eq!(kind_of(INVENTORY), Some(ImageKind::Inventory));
        assert_eq!(kind_of(PSTREE), Some(ImageKind::Pstree));
        assert_eq!(kind_of(FILES), Some(ImageKind::Files));
        assert_eq!(kind_of(CREST_USERNS), Some(ImageKind::CrestUserns));
        assert_eq!(core(42), "core-42.img");
        assert_eq!(fs(3), "fs-3.img");
    }

    #[test]
    fn odd_names_are_unknown() {
        for name in [
            "core-.img",
            "core-+1.img",
            "core-1",
            "core-1.img.bak",
            "x.img",
            "",
        ] {
            assert_eq!(kind_of(name), None, "{name}");
        }
        assert_eq!(kind_of("core-99999999999.img"), None);
    }

    #[test]
    fn magics_are_distinct() {
        for a in ImageKind::ALL {
            assert_eq!(
                ImageKind::from_magic(a.magic()).filter(|_| a != ImageKind::RawPages),
                (a != ImageKind::RawPages).then_some(a)
            );
        }
    }
}
