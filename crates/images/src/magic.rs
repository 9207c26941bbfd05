//! File magics. The CRIU values are CRIU's own, so CRIU's tools recognise our
//! images. Every file crest writes has a CRIU magic; the `0x435253xx`
//! ("CRS") magics of crest's older images are kept for reading them.

/// First word of every ordinary image.
pub const IMG_COMMON: u32 = 0x5456_4319;
/// First word of service images (`stats-*.img`).
pub const IMG_SERVICE: u32 = 0x5510_5940;
/// `inventory.img`: this magic alone, with no common magic before it.
pub const INVENTORY: u32 = 0x5831_3116;
/// Raw files (`pages-<id>.img`) have no header; 0 stands for "no magic".
pub const RAW: u32 = 0;

/// `pstree.img`
pub const PSTREE: u32 = 0x5027_3030;
/// `core-<tid>.img`
pub const CORE: u32 = 0x5505_3847;
/// `ids-<pid>.img`
pub const IDS: u32 = 0x5443_2030;
/// `mm-<pid>.img`
pub const MM: u32 = 0x5749_2820;
/// `pagemap-<pid>.img`
pub const PAGEMAP: u32 = 0x5608_4025;
/// `fdinfo-<files_id>.img`
pub const FDINFO: u32 = 0x5621_3732;
/// `files.img`
pub const FILES: u32 = 0x5630_3138;
/// `reg-files.img` (pre-`files.img` layout)
pub const REG_FILES: u32 = 0x5036_3636;
/// `pipes.img` (pre-`files.img` layout)
pub const PIPES: u32 = 0x5651_3555;
/// `pipes-data.img`
pub const PIPES_DATA: u32 = 0x5645_3709;
/// `fifo-data.img`: data in flight of FIFOs, as in `pipes-data.img`
pub const FIFO_DATA: u32 = 0x5933_3054;
/// `remap-fpath.img`: which file entries a ghost file serves
pub const REMAP_FPATH: u32 = 0x5913_3954;
/// `ghost-file-<id>.img`: a file deleted while open, with its contents
pub const GHOST_FILE: u32 = 0x5258_3605;
/// `memfd.img`: memfd inodes
pub const MEMFD_INODE: u32 = 0x4845_3499;
/// `creds-<pid>.img` (old layout; creds now live in `thread_core.creds`)
pub const CREDS: u32 = 0x5402_3547;
/// `userns-<id>.img`
pub const USERNS: u32 = 0x5547_4906;
/// `utsns-<id>.img`
pub const UTSNS: u32 = 0x5447_3203;
/// `ipcns-var-<id>.img`
pub const IPC_VAR: u32 = 0x5311_5007;
/// `ipcns-shm-<id>.img`: SysV shared memory segments with contents.
pub const IPCNS_SHM: u32 = 0x4628_3044;
/// `ipcns-msg-<id>.img`: SysV message queues with their messages.
pub const IPCNS_MSG: u32 = 0x5545_3737;
/// `ipcns-sem-<id>.img`: SysV semaphore sets with their values.
pub const IPCNS_SEM: u32 = 0x5957_3019;
/// `netdev-<id>.img`
pub const NETDEV: u32 = 0x5737_3951;
/// `ns-files.img`
pub const NS_FILES: u32 = 0x6139_4011;
/// `mountpoints-<id>.img`
pub const MNTS: u32 = 0x5556_3928;
/// `netns-<id>.img`
pub const NETNS: u32 = 0x5593_3752;
/// `timens-<id>.img`
pub const TIMENS: u32 = 0x4311_4433;
/// `pidns-<id>.img`
pub const PIDNS: u32 = 0x6115_7326;
/// `fs-<pid>.img`
pub const FS: u32 = 0x5140_3912;
/// `sigacts-<pid>.img` (old layout; now `core.tc.sigactions`)
pub const SIGACT: u32 = 0x5534_4201;
/// `cgroup.img`
pub const CGROUP: u32 = 0x5938_3330;
/// `tty.img`
pub const TTY_FILES: u32 = 0x5943_3025;
/// `tty-info.img`
pub const TTY_INFO: u32 = 0x5945_3036;
/// `tty-data.img`: bytes queued in pty pairs
pub const TTY_DATA: u32 = 0x5941_3026;
/// `sk-queues.img`: data queued on sockets
pub const SK_QUEUES: u32 = 0x5626_4026;
/// `tcp-stream-<ino>.img`
pub const TCP_STREAM: u32 = 0x5146_5506;
/// `filelocks.img`
pub const FILE_LOCKS: u32 = 0x5432_3616;
/// `seccomp.img`
pub const SECCOMP: u32 = 0x6441_3049;
/// `stats-dump` / `stats-restore` (a service image)
pub const STATS: u32 = 0x5709_3306;

// crest's own magics of the images it wrote before every file became one
// CRIU's `crit` decodes (see `proto/crest.proto` and [`crate::carry`]):
// read, never written.

/// Legacy `crest-thread-<tid>.img` (now `core_entry.crest_thread`).
pub const CREST_THREAD: u32 = 0x4352_5301;
/// Legacy `crest-userns.img` (now `userns_entry.crest_userns`).
pub const CREST_USERNS: u32 = 0x4352_5302;
/// Legacy magic of `crest-ns.img` (now [`NS_FILES`]).
pub const CREST_NS: u32 = 0x4352_5303;
/// Legacy `crest-mnt-<id>.img` (now `mountpoints-<id>.img`, [`MNTS`]).
pub const CREST_MNT: u32 = 0x4352_5304;
/// Legacy magic of `crest-cgroups.img` (now [`CGROUP`]).
pub const CREST_CGROUPS: u32 = 0x4352_5307;
/// Legacy `crest-pmq-<id>.img` (now `ipc_var_entry.crest_pmqs`).
pub const CREST_PMQ: u32 = 0x4352_5306;
/// Legacy magic of `crest-tmpfs-<ns>-<mnt>.img` (now [`PIPES_DATA`]).
pub const CREST_TMPFS: u32 = 0x4352_5305;
/// Legacy magic of `crest-udp-queues.img` (now [`SK_QUEUES`]).
pub const CREST_UDP_QUEUES: u32 = 0x4352_5310;
/// Legacy `crest-netdev-<id>.img` (now `net_device_entry.crest_netdev`).
pub const CREST_NETDEV: u32 = 0x4352_5320;
/// Legacy `crest-net-sysctl-<id>.img` (now `netns_entry.crest_sysctls`).
pub const CREST_NET_SYSCTL: u32 = 0x4352_5321;

/// How a file with this per-file magic begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No header at all (`pages-<id>.img`).
    Raw,
    /// The per-file magic alone (`inventory.img`).
    Bare,
    /// [`IMG_SERVICE`] then the per-file magic.
    Service,
    /// [`IMG_COMMON`] then the per-file magic.
    Common,
}

/// The framing CRIU uses for a file with this per-file magic.
pub fn framing(magic: u32) -> Framing {
    match magic {
        RAW => Framing::Raw,
        INVENTORY => Framing::Bare,
        STATS => Framing::Service,
        _ => Framing::Common,
    }
}

/// The header bytes CRIU writes before the first entry of such a file.
pub fn header(magic: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    match framing(magic) {
        Framing::Raw => {}
        Framing::Bare => out.extend_from_slice(&magic.to_le_bytes()),
        Framing::Service => {
            out.extend_from_slice(&IMG_SERVICE.to_le_bytes());
            out.extend_from_slice(&magic.to_le_bytes());
        }
        Framing::Common => {
            out.extend_from_slice(&IMG_COMMON.to_le_bytes());
            out.extend_from_slice(&magic.to_le_bytes());
        }
    }
    out
}
