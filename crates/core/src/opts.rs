//! One options model for every action (dump, pre-dump, restore, check):
//! CRIU's options, under CRIU's names, filled alike by the command line,
//! the RPC's `criu_opts` and CRIU's configuration files. What crest cannot
//! honour yet is refused by [`Options::refusals`], naming the option; what
//! CRIU itself documents as a no-op or as a relaxation crest never needs is
//! taken and noted here.

pub use crate::error::Refused;
use std::path::PathBuf;

/// The action an options set is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Dump,
    PreDump,
    Restore,
    Check,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Dump => "dump",
            Action::PreDump => "pre-dump",
            Action::Restore => "restore",
            Action::Check => "check",
        }
    }
}

/// CRIU's `--manage-cgroups` modes (`criu_cg_mode` in the RPC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgMode {
    Ignore,
    None,
    Props,
    Soft,
    Full,
    Strict,
    /// Not given: CRIU treats it as `soft`.
    Default,
}

impl CgMode {
    /// The mode named on the command line (`--manage-cgroups=MODE`).
    pub fn parse(s: &str) -> Option<CgMode> {
        Some(match s {
            "ignore" => CgMode::Ignore,
            "none" => CgMode::None,
            "props" => CgMode::Props,
            "soft" => CgMode::Soft,
            "full" => CgMode::Full,
            "strict" => CgMode::Strict,
            _ => return None,
        })
    }

    /// The RPC's `criu_cg_mode` number.
    pub fn from_rpc(n: i32) -> Option<CgMode> {
        Some(match n {
            0 => CgMode::Ignore,
            1 => CgMode::None,
            2 => CgMode::Props,
            3 => CgMode::Soft,
            4 => CgMode::Full,
            5 => CgMode::Strict,
            6 => CgMode::Default,
            _ => return None,
        })
    }
}

/// CRIU's `--network-lock` methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkLock {
    Iptables,
    Nftables,
    Skip,
}

/// CRIU's `--join-ns NS:FILE[,EXTRA]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinNs {
    pub ns: String,
    pub file: String,
    pub extra: Option<String>,
}

/// Every option of dump, pre-dump, restore and check. Field names follow
/// crest's code where it had them (`dir` is `--images-dir`, `pid` is
/// `--tree`, `detached` is `--restore-detached`); the rest are CRIU's.
#[derive(Debug, Clone)]
pub struct Options {
    /// `-D`/`--images-dir` (the RPC's `images_dir_fd`, opened).
    pub dir: PathBuf,
    /// `-W`/`--work-dir`: where logs, stats and relative pidfiles go
    /// (the images directory when not given).
    pub work_dir: Option<PathBuf>,
    /// `-o`/`--log-file`, relative to the work directory.
    pub log_file: Option<PathBuf>,
    /// `-v`: 0 (errors) to 4 (debug); CRIU's default is 2.
    pub verbosity: u32,
    /// `--log-to-stderr`.
    pub log_to_stderr: bool,
    /// `-t`/`--tree`.
    pub pid: i32,
    /// `--pidfile`, relative to the work directory.
    pub pidfile: Option<PathBuf>,
    /// `-R`/`--leave-running`.
    pub leave_running: bool,
    /// `-s`/`--leave-stopped`.
    pub leave_stopped: bool,
    /// `-j`/`--shell-job`.
    pub shell_job: bool,
    /// `--ghost-limit`: largest file deleted while open whose contents are
    /// saved.
    pub ghost_limit: u64,
    /// `--tcp-established`.
    pub tcp_established: bool,
    /// `--tcp-close`.
    pub tcp_close: bool,
    /// `--skip-in-flight`: connections waiting on a TCP listener, not
    /// accepted yet, are left behind instead of failing the dump.
    pub tcp_skip_in_flight: bool,
    /// `-x`/`--ext-unix-sk`: a datagram unix socket connected to a named
    /// socket outside the tree is connected to the name again at restore
    /// (a stream connection outside is refused still).
    pub ext_unix_sk: bool,
    /// `--ext-unix-sk=INO[,INO]` (the RPC's `unix_sk_ino`): these unix
    /// sockets of the tree, connected to a socket outside it, are dumped
    /// whatever their type; the restore takes a socket to stand for each
    /// from its caller (`--inherit-fd fd[N]:socket:[INO]`), as CRIU does.
    pub ext_unix_sk_ids: Vec<u32>,
    /// `-l`/`--file-locks`.
    pub file_locks: bool,
    /// `--link-remap`: crest saves files deleted while open as ghost files
    /// whether or not it is given.
    pub link_remap: bool,
    /// `--evasive-devices`: a relaxation; crest reopens devices by path.
    pub evasive_devices: bool,
    /// `--force-irmap` (crest has no inode reverse map: a no-op).
    pub force_irmap: bool,
    /// `--irmap-scan-path` (the same).
    pub irmap_scan_paths: Vec<String>,
    /// `--ghost-fiemap` / `--no-ghost-fiemap`: how ghost contents are
    /// stored, not what (crest stores them whole).
    pub ghost_fiemap: Option<bool>,
    /// `--network-lock`, when given.
    pub network_lock: Option<NetworkLock>,
    /// `--manage-cgroups[=MODE]`.
    pub manage_cgroups: CgMode,
    /// `--cgroup-root [CTRL:]PATH`: (controller, path).
    pub cgroup_roots: Vec<(Option<String>, String)>,
    /// `--cgroup-props`, `--cgroup-props-file`, `--cgroup-dump-controller`,
    /// `cgroup_yard`.
    pub cgroup_props: Option<String>,
    pub cgroup_props_file: Option<String>,
    pub cgroup_dump_controllers: Vec<String>,
    pub cgroup_yard: Option<String>,
    /// `--freeze-cgroup PATH`.
    pub freeze_cgroup: Option<PathBuf>,
    /// `--external`, also what `--ext-mount-map` and `--veth-pair` say
    /// (turned into `mnt[..]:..` and `veth[..]:..`).
    pub external: Vec<String>,
    /// `--ext-mount-map auto`.
    pub auto_ext_mnt: bool,
    pub ext_sharing: bool,
    pub ext_masters: bool,
    /// `--inherit-fd fd[N]:KEY`: (fd, key).
    pub inherit_fd: Vec<(i32, String)>,
    /// `-J`/`--join-ns`.
    pub join_ns: Vec<JoinNs>,
    /// `--empty-ns net`: CLONE_NEWNET.
    pub empty_ns: u32,
    /// `-r`/`--root`.
    pub root: Option<PathBuf>,
    /// `-d`/`--restore-detached`.
    pub detached: bool,
    /// `-S`/`--restore-sibling` (the RPC's `rst_sibling`).
    pub restore_sibling: bool,
    /// `--timeout N` (seconds).
    pub timeout: u32,
    /// `--pre-dump-mode splice|read`.
    pub pre_dump_mode: Option<String>,
    /// `--track-mem`, `--prev-images-dir`, `--auto-dedup`.
    pub track_mem: bool,
    pub prev_images_dir: Option<PathBuf>,
    pub auto_dedup: bool,
    /// `--lazy-pages`, `--page-server`, `--address`, `--port`,
    /// `--ps-socket`.
    pub lazy_pages: bool,
    pub page_server: bool,
    pub address: Option<String>,
    pub port: Option<u16>,
    pub ps_socket: Option<i32>,
    /// `--status-fd N`: a zero byte is written when the action is done.
    pub status_fd: Option<i32>,
    /// `--action-script FILE` (repeatable).
    pub action_scripts: Vec<String>,
    /// `--display-stats`.
    pub display_stats: bool,
    /// The RPC's `orphan_pts_master`.
    pub orphan_pts_master: bool,
    /// `--lsm-profile TYPE:NAME`, `--lsm-mount-context`.
    pub lsm_profile: Option<String>,
    pub lsm_mount_context: Option<String>,
    /// `--skip-mnt`, `--enable-fs`.
    pub skip_mnt: Vec<String>,
    pub enable_fs: Vec<String>,
    /// `--weak-sysctls`, `--skip-file-rwx-check`, `--allow-uprobes`: only
    /// relax checks.
    pub weak_sysctls: bool,
    pub skip_file_rwx_check: bool,
    pub allow_uprobes: bool,
    /// `--mntns-compat-mode` picks CRIU's older mount engine: crest has one.
    pub mntns_compat_mode: bool,
    /// `--unprivileged`: act for the caller, holding no more than it holds
    /// (see `privilege`); crest does so anyway when not run by root.
    pub unprivileged: bool,
    /// `--cpu-cap`: which CPU checks a restore makes (crest makes none).
    pub cpu_cap: Option<String>,
    /// `--file-validation`: how files are checked at restore.
    pub file_validation: Option<String>,
    /// `--exec-cmd` (the command after the options).
    pub exec_cmd: Vec<String>,
    /// TLS for the page server.
    pub tls: bool,
    /// `--deprecated`, `--log-pid`, `--relative-timestamps`, `-L`: no
    /// effect on what is dumped or restored.
    pub log_pid: bool,
    /// Check: `--feature NAME` (repeatable), `--extra`, `--experimental`,
    /// `--all`.
    pub features: Vec<String>,
    pub check_extra: bool,
    pub check_experimental: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            dir: PathBuf::from("."),
            work_dir: None,
            log_file: None,
            verbosity: 2,
            log_to_stderr: false,
            pid: 0,
            pidfile: None,
            leave_running: false,
            leave_stopped: false,
            shell_job: false,
            ghost_limit: DEFAULT_GHOST_LIMIT,
            tcp_established: false,
            tcp_close: false,
            tcp_skip_in_flight: false,
            ext_unix_sk: false,
            ext_unix_sk_ids: Vec::new(),
            file_locks: false,
            link_remap: false,
            evasive_devices: false,
            force_irmap: false,
            irmap_scan_paths: Vec::new(),
            ghost_fiemap: None,
            network_lock: None,
            manage_cgroups: CgMode::Default,
            cgroup_roots: Vec::new(),
            cgroup_props: None,
            cgroup_props_file: None,
            cgroup_dump_controllers: Vec::new(),
            cgroup_yard: None,
            freeze_cgroup: None,
            external: Vec::new(),
            auto_ext_mnt: false,
            ext_sharing: false,
            ext_masters: false,
            inherit_fd: Vec::new(),
            join_ns: Vec::new(),
            empty_ns: 0,
            root: None,
            detached: false,
            restore_sibling: false,
            timeout: 10,
            pre_dump_mode: None,
            track_mem: false,
            prev_images_dir: None,
            auto_dedup: false,
            lazy_pages: false,
            page_server: false,
            address: None,
            port: None,
            ps_socket: None,
            status_fd: None,
            action_scripts: Vec::new(),
            display_stats: false,
            orphan_pts_master: false,
            lsm_profile: None,
            lsm_mount_context: None,
            skip_mnt: Vec::new(),
            enable_fs: Vec::new(),
            weak_sysctls: false,
            skip_file_rwx_check: false,
            allow_uprobes: false,
            mntns_compat_mode: false,
            unprivileged: false,
            cpu_cap: None,
            file_validation: None,
            exec_cmd: Vec::new(),
            tls: false,
            log_pid: false,
            features: Vec::new(),
            check_extra: false,
            check_experimental: false,
        }
    }
}

fn refuse(out: &mut Vec<Refused>, on: bool, option: &str, why: &str) {
    if on {
        out.push(Refused {
            option: option.to_string(),
            why: why.to_string(),
        });
    }
}

impl Options {
    /// The directory logs, stats and relative pidfiles go to.
    pub fn work_dir(&self) -> &std::path::Path {
        self.work_dir.as_deref().unwrap_or(&self.dir)
    }

    /// A path the options give relative to the work directory, made
    /// absolute.
    pub fn in_work_dir(&self, p: &std::path::Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.work_dir().join(p)
        }
    }

    /// Every option set that crest cannot honour for `action` yet, each
    /// named. Empty when the action can go ahead. Long because it is one
    /// list, an entry per refused option, read top to bottom.
    pub fn refusals(&self, action: Action) -> Vec<Refused> {
        let mut r = Vec::new();
        let not_yet = "not supported by crest yet";
        let migration = "not supported by crest yet (pages over TLS)";
        // (at dump: the parent images' pages saved again are punched out;
        // without parent images there is nothing to do, as for CRIU)
        refuse(
            &mut r,
            self.auto_dedup && action == Action::Restore,
            "--auto-dedup",
            "at restore (restored pages punched out of the images) not supported by crest yet",
        );
        // (a restore takes them from a `lazy-pages` daemon; a dump that
        // serves them from the frozen tree is not built)
        refuse(
            &mut r,
            self.lazy_pages && action != Action::Restore,
            "--lazy-pages",
            "at dump (pages served to a lazy restore from the frozen tree) not supported by crest \
             yet: dump, then restore with --lazy-pages and `crest lazy-pages`",
        );
        // (the page server's own action is `page-server`; a dump sends to it)
        refuse(
            &mut r,
            (self.page_server || self.ps_socket.is_some()) && action == Action::Restore,
            "--page-server",
            "at restore (pages fetched from a page server) not supported by crest yet",
        );
        refuse(&mut r, self.tls, "--tls", migration);
        refuse(
            &mut r,
            matches!(
                self.network_lock,
                Some(NetworkLock::Iptables | NetworkLock::Nftables)
            ),
            "--network-lock",
            "crest does not lock the network (use --network-lock skip)",
        );
        // (--cgroup-yard: the caller mounted the hierarchies there, and
        // crest finds them as it finds every mount of its namespace)
        // (--ext-mount-map auto, --skip-mnt and --enable-fs work at dump
        // and mean nothing at restore, as in CRIU; --enable-external-
        // sharing/masters let CRIU dump mounts whose peers or master are
        // outside, which crest dumps anyway: an external mount bound from
        // a shared one becomes its slave again)
        refuse(
            &mut r,
            self.join_ns.iter().any(|j| {
                !matches!(
                    j.ns.as_str(),
                    "net" | "uts" | "ipc" | "mnt" | "cgroup" | "time" | "user"
                ) || (j.extra.is_some() && j.ns != "user")
            }),
            "--join-ns",
            "crest joins net, uts, ipc, mnt, cgroup, time and user namespaces (extra options for \
             user only), as CRIU does; a pid namespace is not joined (CRIU refuses it too: use \
             --external pid[INODE]:KEY at dump)",
        );
        refuse(
            &mut r,
            self.join_ns.iter().filter(|j| j.ns == "user").count() > 1,
            "--join-ns",
            "one user namespace can be joined",
        );
        refuse(
            &mut r,
            self.empty_ns & !(libc::CLONE_NEWNET as u32) != 0,
            "--empty-ns",
            "only the net namespace can be left empty",
        );
        refuse(
            &mut r,
            self.lsm_profile.is_some() || self.lsm_mount_context.is_some(),
            "--lsm-profile",
            "crest does not dump or set LSM profiles yet",
        );
        refuse(&mut r, !self.exec_cmd.is_empty(), "--exec-cmd", not_yet);
        refuse(
            &mut r,
            self.pre_dump_mode.is_some() && action != Action::PreDump && action != Action::Dump,
            "--pre-dump-mode",
            "only for pre-dump",
        );
        refuse(
            &mut r,
            self.leave_stopped && action == Action::Restore && !self.detached,
            "--leave-stopped",
            "a restore that waits for a stopped tree never ends (add --restore-detached)",
        );
        refuse(
            &mut r,
            self.restore_sibling && action == Action::Restore && !self.detached,
            "--restore-sibling",
            "only makes sense with --restore-detached",
        );
        for e in &self.external {
            if mnt_externals(std::slice::from_ref(e)).len() == 1 {
                continue;
            }
            if matches!(&veth_externals(std::slice::from_ref(e))[..], [(inside, _)] if !inside.is_empty())
            {
                continue;
            }
            // net[INO]:KEY and pid[INO]:KEY, namespaces from outside
            // (runtimes')
            let ext_ns = ["net[", "pid["].iter().any(|kind| {
                e.strip_prefix(kind)
                    .and_then(|r| r.split_once("]:"))
                    .is_some_and(|(i, k)| i.parse::<u64>().is_ok() && !k.is_empty())
            });
            if ext_ns || tty_key(e) {
                continue;
            }
            r.push(Refused {
                option: format!("--external {e}"),
                why: "crest takes external terminals as tty[RDEV:DEV] (hex, as CRIU), external veth devices as veth[IFNAME]:OUTNAME, external mounts as mnt[MOUNTPOINT]:KEY (dump) / mnt[KEY]:PATH (restore) and external net and pid namespaces as net[INODE]:KEY and pid[INODE]:KEY".into(),
            });
        }
        for (fd, key) in &self.inherit_fd {
            let pipe = ["pipe:[", "socket:["].iter().any(|kind| {
                key.strip_prefix(kind)
                    .and_then(|r| r.strip_suffix(']'))
                    .is_some_and(|i| i.parse::<u32>().is_ok())
            });
            // a plain name: the key of an external namespace
            let name = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
            if !(pipe || name || tty_key(key)) || *fd < 0 {
                r.push(Refused {
                    option: format!("--inherit-fd fd[{fd}]:{key}"),
                    why: "crest takes --inherit-fd for pipes (fd[N]:pipe:[INODE]), unix sockets (fd[N]:socket:[INODE]), terminals (fd[N]:tty[RDEV:DEV]) and external namespaces (fd[N]:KEY)".into(),
                });
            }
        }
        if action == Action::Dump && self.pid <= 0 {
            r.push(Refused {
                option: "--tree".into(),
                why: "a dump needs the pid of the tree's root".into(),
            });
        }
        r
    }
}

/// A size in bytes with an optional K, M or G suffix (powers of 1024), as
/// CRIU's `--ghost-limit` takes it.
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// Whether `key` is CRIU's name of an external terminal: `tty[RDEV:DEV]`,
/// both numbers in hex.
pub fn tty_key(key: &str) -> bool {
    key.strip_prefix("tty[")
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.split_once(':'))
        .is_some_and(|(a, b)| {
            u64::from_str_radix(a, 16).is_ok() && u64::from_str_radix(b, 16).is_ok()
        })
}

/// CRIU's default `--ghost-limit`: 1 MiB.
pub const DEFAULT_GHOST_LIMIT: u64 = 1 << 20;

/// CRIU's `--external mnt[A]:B` entries as (A, B): at dump a mountpoint
/// and its key, at restore a key and the path to bind there.
pub fn mnt_externals(list: &[String]) -> Vec<(String, String)> {
    list.iter()
        .filter_map(|e| {
            let rest = e.strip_prefix("mnt[")?;
            let (a, b) = rest.split_once("]:")?;
            (!a.is_empty() && !b.is_empty()).then(|| (a.to_string(), b.to_string()))
        })
        .collect()
}

/// The parsed `--external` veth entries: (inside name, outside name).
pub fn veth_externals(external: &[String]) -> Vec<(String, Option<String>)> {
    veth_entries(external)
        .into_iter()
        .map(|(inside, outside, _)| (inside, outside))
        .collect()
}

/// The bridges the outside ends go in (CRIU's `veth[IF]:OUT@BRIDGE` at
/// restore): (outside name, bridge).
pub fn veth_bridges(external: &[String]) -> Vec<(String, String)> {
    veth_entries(external)
        .into_iter()
        .filter_map(|(_, outside, bridge)| Some((outside?, bridge?)))
        .collect()
}

/// (inside name, outside name, bridge) of each `veth[IF]:OUT[@BRIDGE]`.
pub(crate) fn veth_entries(external: &[String]) -> Vec<(String, Option<String>, Option<String>)> {
    external
        .iter()
        .filter_map(|e| {
            let rest = e.strip_prefix("veth[")?;
            let (inside, after) = rest.split_once(']')?;
            let outside = after.strip_prefix(':').filter(|o| !o.is_empty());
            let (outside, bridge) = match outside.map(|o| o.split_once('@')) {
                Some(Some((o, b))) => (Some(o), Some(b).filter(|b| !b.is_empty())),
                Some(None) => (outside, None),
                None => (None, None),
            };
            Some((
                inside.to_string(),
                outside.map(str::to_string),
                bridge.map(str::to_string),
            ))
        })
        .collect()
}

/// The key of `--external KIND[INO]:KEY` naming the namespace with inode
/// `ino`.
pub fn external_ns(externals: &[String], kind: &str, ino: u64) -> Option<String> {
    externals.iter().find_map(|e| {
        let (i, key) = e.strip_prefix(kind)?.strip_prefix('[')?.split_once("]:")?;
        (i.parse::<u64>().ok()? == ino && !key.is_empty()).then(|| key.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tty_keys_are_criu_hex_pairs() {
        assert!(tty_key("tty[8800:1a]"));
        assert!(!tty_key("tty[8800]"));
        assert!(!tty_key("tty[xyz:1]"));
        assert!(!tty_key("pipe:[12]"));
    }

    #[test]
    fn defaults_are_criu_defaults_and_go() {
        let o = Options {
            pid: 1,
            ..Options::default()
        };
        assert_eq!(o.verbosity, 2);
        assert_eq!(o.ghost_limit, 1 << 20);
        assert_eq!(o.timeout, 10);
        assert!(o.refusals(Action::Dump).is_empty());
        assert!(o.refusals(Action::Restore).is_empty());
    }

    #[test]
    fn unsupported_options_are_named() {
        let o = Options {
            pid: 1,
            lazy_pages: true,
            network_lock: Some(NetworkLock::Iptables),
            inherit_fd: vec![(3, "tmp/file".into())],
            ..Options::default()
        };
        let names: Vec<String> = o
            .refusals(Action::Dump)
            .into_iter()
            .map(|r| r.option)
            .collect();
        assert_eq!(
            names,
            [
                "--lazy-pages",
                "--network-lock",
                "--inherit-fd fd[3]:tmp/file"
            ]
        );
        let skip = Options {
            pid: 1,
            network_lock: Some(NetworkLock::Skip),
            ..Options::default()
        };
        assert!(skip.refusals(Action::Dump).is_empty());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4K"), Some(4096));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("17"), Some(17));
        assert_eq!(parse_size("x"), None);
    }
}
