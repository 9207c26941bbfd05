//! Container shapes (issue 6, "Checked by"): trees started with util-linux's
//! `unshare` (`-r`, no newuidmap needed), dumped and restored by crest.
//!
//! - `container_user_pid_net`: user+pid+uts+ipc+net+cgroup, no mount namespace;
//! - `container_with_mnt`: user+pid+mnt+uts+ipc+net, proc mounted
//!   (`--mount-proc`) and a tmpfs on /mnt holding a file;
//! - `container_in_container`: the first shape inside the first shape;
//! - `container_in_container_mnt`: both levels with their own mount
//!   namespace, proc and tmpfs (the inner one a copy of the outer's);
//! - `container_pivot_root`: user+pid+mnt+uts+ipc+net+cgroup whose shell
//!   pivot_root's into a root of its own (`rootfs/` in the case directory,
//!   with /usr, /dev/null, the workloads and the state directory bound from
//!   outside, proc and a tmpfs mounted), dumped with `--external
//!   mnt[/usr]:usr` (and null, wl, state) and restored with `--root` and
//!   `--external mnt[usr]:/usr` (...), CRIU's way;
//! - `container_no_setsid`: the first shape started as a job of the
//!   harness's session (no `setsid` anywhere: its init inherited a session
//!   from outside), running `fds_fork`.
//! - `container_net`: the first shape whose net namespace has more than lo:
//!   lo with an extra IPv4 and IPv6 address, a device `n0` (a `dummy`, or
//!   where the kernel has none a `veth` pair `n0`/`n1`) with an MTU, a MAC
//!   address and IPv4/IPv6 addresses, routes through it (a default route,
//!   a static IPv4 route via a gateway, an IPv6 one) and changed sysctls
//!   (`ip_forward`, IPv6 forwarding, somaxconn, the local port range);
//! - `container_init_fresh_pid`, `container_mnt_init_fresh_pid`,
//!   `container_in_container_init_fresh_pid`: the first, the mount and the
//!   container-in-container-with-mounts shapes with their (outer) init
//!   dumped as the root and restored with a fresh outer pid
//!   ([`crate::fresh_init`]);
//! - `container_veth_external`: the first shape with a veth `eth0` whose
//!   peer the harness made in its own namespace: the dump must refuse it
//!   naming the device as external; `--external veth[eth0]:cyPID` at dump
//!   and restore must bring it back, with its peer `cyPID` in crest's
//!   namespace.
//!
//! The others run `tree_sessions` (made a session leader with `setsid`) as pid 1
//! of the innermost pid namespace, after `sh` set the hostname and brought
//! lo up. The root the harness dumps is the outer `unshare`; the workload is
//! found down the chain of only children (its `NSpid` ends in 1 at every
//! level below crest's). Before the dump and after the restore the harness
//! compares the process tree (with every thread's `NSpid`), `crest show
//! --ns --tree ROOT` (== `crest show --ns IMAGES`), the namespaces of every
//! task and the view from inside (`nsview`: hostname, lo up with 127.0.0.1,
//! sysvmk's SysV segment, semaphores and messages with their contents), and for `container_with_mnt` the tmpfs file read through
//! `/proc/PID/root`. A dump crest refuses with the message the case expects
//! is reported as SKIP with crest's stderr (the tree must run on and pass its
//! own check); any other refusal fails.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;

use crate::case::{self, CaseDir, READY_TIMEOUT};
use crate::procs::{self, wait_exit, wait_until, Procs, Waited};
use crate::suite::Report;
use crate::{nested, ns, Config, Outcome, StdioKind};

/// One container shape.
pub(crate) struct Shape {
    name: &'static str,
    /// Nesting depth of the pid namespaces below crest's.
    depth: usize,
    /// The hostname the workload's uts namespace must have.
    hostname: &'static str,
    /// Whether the workload has its own mount namespace.
    own_mnt: bool,
    /// A file on the container's tmpfs and its contents.
    tmpfs_file: Option<(&'static str, &'static str)>,
    /// A dump refused with a message holding this is a SKIP.
    refusal: Option<&'static str>,
    /// The protocol workload that is pid 1 of the innermost pid namespace.
    workload: &'static str,
    /// The workload leads a session of its own (`setsid`); without, it is
    /// in the session of the outer `unshare`, which is itself started in
    /// the harness's session (a job of a shell): a session from outside.
    setsid: bool,
    /// The net namespace has the devices, addresses and routes of
    /// [`NET_SETUP`] (else only lo, up).
    net: bool,
    /// The harness adds a veth `eth0` whose peer is in its own namespace.
    external_veth: bool,
}

/// The network of `container_net`, set up by its shell.
const NET_SETUP: &str = "ip link set lo up && ip addr add 127.0.0.2/8 dev lo && \
     ip addr add ::2/128 dev lo && \
     { ip link add n0 type dummy 2>/dev/null || ip link add n0 type veth peer name n1; } && \
     ip link set n0 mtu 1400 address 02:00:00:00:00:01 up && \
     { ! ip link show n1 >/dev/null 2>&1 || ip link set n1 up; } && \
     ip addr add 10.9.0.1/24 dev n0 && ip addr add 10.9.0.7/24 dev n0 && \
     ip -6 addr add fd00::1/64 dev n0 nodad && \
     ip route add 10.10.0.0/16 via 10.9.0.2 && ip route add default dev n0 && \
     ip -6 route add fd01::/64 via fd00::2 dev n0 && \
     ip route add 10.20.0.0/16 via 10.9.0.2 table 100 && \
     ip rule add from 10.9.0.7 table 100 priority 100 && \
     ip -6 rule add from fd00::1 table 100 priority 101 && \
     ip neigh add 10.9.0.9 lladdr 02:00:00:00:00:09 dev n0 nud permanent && \
     ip -6 neigh add fd00::9 lladdr 02:00:00:00:00:0a dev n0 nud permanent && \
     ip link add br0 type bridge forward_delay 500 hello_time 300 max_age 2500 \
     ageing_time 12344 stp_state 1 priority 4096 group_fwd_mask 8 && \
     echo 1 > /proc/sys/net/ipv4/ip_forward && \
     echo 1 > /proc/sys/net/ipv6/conf/all/forwarding && \
     echo 1000 > /proc/sys/net/core/somaxconn && \
     echo '20000 30000' > /proc/sys/net/ipv4/ip_local_port_range";

/// What `ip` shows inside `container_net` of policy routing, neighbours
/// and bridge options: (the `ip` arguments, what a line must hold).
const NET_IP: [(&str, &str); 7] = [
    (
        "-d link show br0",
        "bridge forward_delay 500 hello_time 300 max_age 2500 ageing_time 12344 stp_state 1 \
         priority 4096 ",
    ),
    ("-d link show br0", "group_fwd_mask 0x8 "),
    ("-4 rule", "100:\tfrom 10.9.0.7 lookup 100"),
    ("-6 rule", "101:\tfrom fd00::1 lookup 100"),
    ("route show table 100", "10.20.0.0/16 via 10.9.0.2 dev n0"),
    (
        "-4 neigh show nud permanent",
        "10.9.0.9 dev n0 lladdr 02:00:00:00:00:09 PERMANENT",
    ),
    (
        "-6 neigh show nud permanent",
        "fd00::9 dev n0 lladdr 02:00:00:00:00:0a PERMANENT",
    ),
];

/// Lines `nsview` must print inside `container_net`.
const NET_LINES: [&str; 13] = [
    "addr lo 127.0.0.2",
    "inet lo 127.0.0.2/8",
    "inet lo ::2/128",
    "hwaddr n0 02:00:00:00:00:01",
    "inet n0 10.9.0.1/24",
    "inet n0 10.9.0.7/24",
    "inet n0 fd00::1/64",
    "route4 10.10.0.0/16 via 10.9.0.2 dev n0 metric 0 flags 3",
    "route4 0.0.0.0/0 via 0.0.0.0 dev n0 metric 0 flags 1",
    "sysctl net.ipv4.ip_forward 1",
    "sysctl net.ipv6.conf.all.forwarding 1",
    "sysctl net.core.somaxconn 1000",
    "sysctl net.ipv4.ip_local_port_range 20000 30000",
];

/// What most shapes share: one level, no mount namespace or network of
/// their own, the sessions workload in a session of its own.
const BASE: Shape = Shape {
    name: "",
    depth: 1,
    hostname: "",
    own_mnt: false,
    tmpfs_file: None,
    refusal: None,
    workload: "tree_sessions",
    setsid: true,
    net: false,
    external_veth: false,
};

const SHAPES: [Shape; 10] = [
    Shape {
        name: "container_user_pid_net",
        hostname: "c1",
        ..BASE
    },
    Shape {
        name: "container_with_mnt",
        hostname: "c2",
        own_mnt: true,
        tmpfs_file: Some(("/mnt/f", "data\n")),
        ..BASE
    },
    Shape {
        name: "container_in_container",
        depth: 2,
        hostname: "c3",
        ..BASE
    },
    Shape {
        name: "container_in_container_mnt",
        depth: 2,
        hostname: "c5",
        own_mnt: true,
        tmpfs_file: Some(("/mnt/f", "data\n")),
        ..BASE
    },
    Shape {
        name: "container_no_setsid",
        hostname: "c4",
        workload: "fds_fork",
        setsid: false,
        ..BASE
    },
    Shape {
        name: "container_net",
        hostname: "c6",
        net: true,
        ..BASE
    },
    Shape {
        name: "container_pivot_root",
        hostname: "c8",
        own_mnt: true,
        tmpfs_file: Some(("/tmp/crest-pivot-f", "pivoted\n")),
        ..BASE
    },
    Shape {
        name: "container_veth_external",
        hostname: "c7",
        external_veth: true,
        ..BASE
    },
    // the outer init execs `unshare -U -r -p -f`: it lives in the inner
    // user namespace while its pid namespace is the outer one's, and the
    // inner pid namespace is owned by the inner user namespace
    Shape {
        name: "container_userns_init",
        depth: 2,
        hostname: "c8",
        ..BASE
    },
    // as CRIU's suite makes its uns flavor's tests (`nsinit -Z`): a user
    // namespace whose root is uid 100000 outside owns new pid, mount, net,
    // ipc and uts namespaces; no time namespace
    Shape {
        name: "container_zdtm_uns",
        hostname: "c9",
        own_mnt: true,
        setsid: false,
        ..BASE
    },
];

/// Shapes whose init (the child of the outer `unshare`) is also dumped
/// as the root of the tree, as runtimes dump a container, and restored
/// with a fresh outer pid ([`crate::fresh_init`]): (case, shape, the
/// innermost container's init rather than the outer one's).
const INIT_ROOT: [(&str, &str, bool); 5] = [
    ("container_init_fresh_pid", "container_user_pid_net", false),
    ("container_mnt_init_fresh_pid", "container_with_mnt", false),
    (
        "container_in_container_init_fresh_pid",
        "container_in_container_mnt",
        false,
    ),
    (
        "container_in_container_inner_init_fresh_pid",
        "container_in_container_mnt",
        true,
    ),
    (
        "container_zdtm_uns_init_fresh_pid",
        "container_zdtm_uns",
        false,
    ),
];

/// Runs every shape whose name passes `selected`.
pub fn run(cfg: &Config, report: &mut Report, selected: &dyn Fn(&str) -> bool) {
    let cases = SHAPES
        .iter()
        .map(|s| (s.name, s, None))
        .chain(INIT_ROOT.iter().filter_map(|(case, of, inner)| {
            Some((*case, SHAPES.iter().find(|s| s.name == *of)?, Some(*inner)))
        }));
    for (name, shape, init_root) in cases {
        if !selected(name) {
            continue;
        }
        let outcome = if cfg.root {
            one_case(cfg, shape, name, init_root)
        } else {
            Outcome::Skip("needs root".into())
        };
        report.record(name, outcome);
    }
}

/// `init_root`: the case dumps a container's init (Some(innermost)).
fn one_case(cfg: &Config, shape: &Shape, name: &str, init_root: Option<bool>) -> Outcome {
    let dir = match CaseDir::create(cfg, name) {
        Ok(d) => d,
        Err(e) => return Outcome::fail(format!("{e:#}")),
    };
    let mut procs = Procs::default();
    let result = if let Some(inner) = init_root {
        crate::fresh_init::steps(cfg, shape, &dir, &mut procs, inner)
    } else {
        steps(cfg, shape, &dir, &mut procs)
    };
    let killed = procs.kill_all();
    // killed pid namespaces end one level at a time
    let mut leftovers = Vec::new();
    for _ in 0..20 {
        let found = procs::sweep_children();
        if found.is_empty() && procs::harness_children().is_empty() {
            break;
        }
        leftovers.extend(found);
        sleep(Duration::from_millis(20));
    }
    let outcome = case::conclude(result, &dir, &killed, &leftovers);
    if outcome.is_pass() {
        dir.remove();
    }
    outcome
}

fn in_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

/// The `unshare` command line of a shape, around `exec setsid WORKLOAD
/// STATEDIR`.
fn command(cfg: &Config, shape: &Shape, dir: &CaseDir, init_root: bool) -> Vec<String> {
    let wl = format!(
        "{} && exec {}{} {}",
        cfg.workload("sysvmk").display(),
        if shape.setsid { "setsid " } else { "" },
        cfg.workload(shape.workload).display(),
        dir.state.display()
    );
    let base = [
        "unshare",
        "-U",
        "-r",
        "-p",
        "-u",
        "-i",
        "-n",
        "-C",
        "-f",
        "--kill-child",
    ];
    // an init dumped and restored by itself keeps unshare's death signal,
    // which would kill it when crest restore -d ends
    let base: Vec<&str> = base
        .into_iter()
        .filter(|a| !(init_root && *a == "--kill-child"))
        .collect();
    if shape.name == "container_zdtm_uns" {
        return vec![
            cfg.workload("nsinit").display().to_string(),
            "-Z".into(),
            shape.hostname.into(),
            "0".into(),
            "0".into(),
            "sh".into(),
            "-c".into(),
            wl,
        ];
    }
    let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    let script = match shape.name {
        "container_with_mnt" => {
            args.extend(["-m".into(), "--mount-proc".into()]);
            // a tmpfs with files, a symlink and a subdirectory bound
            // read-only elsewhere on it, and sysfs of the net namespace
            format!(
                "mount -t tmpfs -o size=4m,mode=750 none /mnt && echo data > /mnt/f && \
                 mkdir -p /mnt/d/e /mnt/ro && echo deep > /mnt/d/e/g && ln -s d/e/g /mnt/l && \
                 chmod 700 /mnt/d && mount --bind /mnt/d /mnt/ro && \
                 mount -o remount,bind,ro /mnt/ro && mount -t sysfs sysfs /sys && \
                 hostname {} && ip link set lo up && {wl}",
                shape.hostname
            )
        }
        "container_in_container" => {
            let inner = format!("hostname {} && ip link set lo up && {wl}", shape.hostname);
            format!(
                "hostname {}-outer && ip link set lo up && exec {} sh -c '{inner}'",
                shape.hostname,
                base.join(" ")
            )
        }
        "container_in_container_mnt" => {
            // both levels with a mount namespace, proc and a tmpfs of
            // their own; the inner one sees the outer's tmpfs too
            args.extend(["-m".into(), "--mount-proc".into()]);
            let inner = format!(
                "mkdir -p /mnt/in && mount -t tmpfs none /mnt/in && echo inner > /mnt/in/g && \
                 hostname {} && ip link set lo up && {wl}",
                shape.hostname
            );
            format!(
                "mount -t tmpfs none /mnt && echo data > /mnt/f && hostname {}-outer && ip link \
                 set lo up && exec {} -m --mount-proc sh -c '{inner}'",
                shape.hostname,
                base.join(" ")
            )
        }
        "container_pivot_root" => {
            args.extend(["-m".into()]);
            let r = dir.root.join("rootfs");
            let r = r.display();
            let wl =
                "/wl/sysvmk && exec setsid /wl/tree_sessions /state </dev/null >/dev/null 2>&1";
            format!(
                "mount --bind {r} {r} && mount --bind /usr {r}/usr && mount -o remount,bind,ro {r}/usr && \
                 mount --bind /dev/null {r}/dev/null && mount --bind {wls} {r}/wl && \
                 mount --bind {state} {r}/state && cd {r} && pivot_root . .old && \
                 mount -t proc proc /proc && umount -l /.old && mount -t tmpfs none /tmp && \
                 echo pivoted > /tmp/crest-pivot-f && hostname {} && ip link set lo up && {wl}",
                shape.hostname,
                wls = cfg.workloads.display(),
                state = dir.state.display(),
            )
        }
        "container_net" => format!("hostname {} && {NET_SETUP} && {wl}", shape.hostname),
        "container_userns_init" => format!(
            "hostname {} && ip link set lo up && exec unshare -U -r -p -f --kill-child sh -c '{wl}'",
            shape.hostname
        ),
        _ => format!("hostname {} && ip link set lo up && {wl}", shape.hostname),
    };
    args.extend(["sh".into(), "-c".into(), script]);
    args
}

pub(crate) fn start(
    cfg: &Config,
    shape: &Shape,
    dir: &CaseDir,
    procs: &mut Procs,
    init_root: bool,
) -> Result<Pid> {
    let mut cmd = Command::new(cfg.workload("launch"));
    if !shape.setsid {
        cmd.arg("--no-setsid");
    }
    let pivot = shape.name == "container_pivot_root";
    if pivot {
        make_rootfs(&dir.root.join("rootfs"))?;
    }
    if shape.name == "container_zdtm_uns" {
        // (its root is not root outside: the state directory is open to
        // all, as the suns flavor's)
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir.state, std::fs::Permissions::from_mode(0o777))
            .context("chmod the state directory")?;
    }
    cmd.args(command(cfg, shape, dir, init_root))
        // a tree that pivot_root's keeps nothing of the old root: cwd "/"
        // moves along, stdio is /dev/null of the bound /dev
        .current_dir(if pivot {
            Path::new("/")
        } else {
            dir.root.as_path()
        })
        .stdin(Stdio::null());
    case::set_stdio(&mut cmd, dir, stdio_of(shape))?;
    let child = cmd.spawn().with_context(|| format!("spawn {:?}", cmd))?;
    let pid = Pid::from_raw(child.id() as i32);
    procs.track(pid);
    Ok(pid)
}

pub(crate) fn stdio_of(shape: &Shape) -> StdioKind {
    if shape.name == "container_pivot_root" {
        StdioKind::DevNull
    } else {
        StdioKind::LogFile
    }
}

/// A root directory to pivot into: mount points for what is bound from
/// outside, the usual top-level links of a merged-/usr Debian.
fn make_rootfs(r: &Path) -> Result<()> {
    for d in [
        "usr", "dev", "wl", "state", "proc", "tmp", ".old", "mnt", "etc",
    ] {
        fs::create_dir_all(r.join(d)).with_context(|| format!("mkdir {}", r.display()))?;
    }
    fs::write(r.join("dev/null"), "").context("make the /dev/null mount point")?;
    for l in ["bin", "sbin", "lib", "lib64"] {
        let target = format!("usr/{l}");
        if Path::new("/").join(&target).exists() && !r.join(l).exists() {
            std::os::unix::fs::symlink(&target, r.join(l))
                .with_context(|| format!("symlink {l}"))?;
        }
    }
    Ok(())
}

/// Waits for the ready file; returns the chain of only children below
/// `root` down to the workload (pid 1 of the innermost pid namespace),
/// every one tracked for cleanup.
pub(crate) fn wait_ready(
    dir: &CaseDir,
    shape: &Shape,
    root: Pid,
    procs: &mut Procs,
) -> Result<Vec<Pid>> {
    let ready = dir.state.join("ready");
    let start = Instant::now();
    while !ready.exists() {
        if let Waited::Exited(exit) = wait_exit(root, Duration::ZERO)? {
            procs.untrack(root);
            let log = fs::read_to_string(dir.root.join("out.log")).unwrap_or_default();
            bail!(
                "unshare (pid {root}) exited before the workload was ready ({exit}); out.log: {:?}",
                log.trim()
            );
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!("workload not ready after {READY_TIMEOUT:?}");
        }
        sleep(procs::POLL);
    }
    if procs::read_pid_file(&ready)?.as_raw() != 1 {
        bail!("the ready file does not name pid 1");
    }
    let mut chain = Vec::new();
    let mut cur = root;
    for level in 1..=shape.depth {
        cur = only_child(cur)?;
        procs.track(cur);
        let ids = ns::nspid(cur).with_context(|| format!("NSpid of pid {cur}"))?;
        let want_len = level + 1;
        if ids.len() != want_len || ids.last() != Some(&1) || ids[0] != cur.as_raw() {
            bail!("pid {cur} has NSpid {ids:?}, expected {want_len} ids ending in 1");
        }
        chain.push(cur);
    }
    Ok(chain)
}

/// The only child of `pid`.
pub(crate) fn only_child(pid: Pid) -> Result<Pid> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let children: Vec<i32> = fs::read_to_string(&path)
        .with_context(|| format!("read {path}"))?
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect();
    let [only] = children[..] else {
        bail!("pid {pid} has the children {children:?}, expected one");
    };
    Ok(Pid::from_raw(only))
}

/// What the view must show of the shape's setup.
fn expected(shape: &Shape, v: &ns::View, main: Pid) -> Vec<String> {
    let mut out = Vec::new();
    let inside: Vec<&str> = v
        .iter()
        .filter(|(k, _)| k.starts_with("inside: line"))
        .map(|(_, l)| l.as_str())
        .collect();
    let want = format!("hostname {}", shape.hostname);
    if !inside.contains(&want.as_str()) {
        out.push(format!("no {want:?} inside (nsview: {inside:?})"));
    }
    let ifs: Vec<&&str> = inside.iter().filter(|l| l.starts_with("if ")).collect();
    match ifs[..] {
        [lo] if lo.starts_with("if lo ") && lo.contains(" up loopback running ") => {}
        [lo, ..]
            if shape.external_veth
                && lo.starts_with("if lo ")
                && ifs
                    .iter()
                    .any(|l| l.starts_with("if eth0 ") && l.contains(" up running ")) => {}
        [lo, ..]
            if shape.net
                && lo.starts_with("if lo ")
                && lo.contains(" up loopback running ")
                && ifs
                    .iter()
                    .any(|l| l.starts_with("if n0 ") && l.ends_with(" up running mtu 1400")) => {}
        _ => out.push(format!(
            "expected {}; interfaces: {ifs:?}",
            if shape.net {
                "lo, up and running, then n0, up and running with MTU 1400"
            } else if shape.external_veth {
                "lo and eth0, up and running"
            } else {
                "only lo, up and running"
            }
        )),
    }
    if shape.net {
        for (args, want) in NET_IP {
            match v.get(&format!("ip {args} {want:?}")) {
                Some(got) if got.starts_with("has ") => {}
                got => out.push(format!("ip {args} inside: {got:?}")),
            }
        }
        for want in NET_LINES {
            if !inside.contains(&want) {
                out.push(format!("no {want:?} inside (nsview: {inside:?})"));
            }
        }
        if !inside
            .iter()
            .any(|l| l.starts_with("route6 fd01::/64 via fd00::2 dev n0 "))
        {
            out.push(format!(
                "no IPv6 route to fd01::/64 inside (nsview: {inside:?})"
            ));
        }
    }
    if !inside.contains(&"addr lo 127.0.0.1") {
        out.push(format!("lo has no 127.0.0.1 inside (nsview: {inside:?})"));
    }
    // sysvmk's objects, with their contents
    if !inside.contains(&"sysvipc shm 1 sem 1 msg 1") {
        out.push(format!(
            "expected sysvmk's three SysV objects inside (nsview: {inside:?})"
        ));
    }
    // (root inside is crest's root, but for nsinit -Z's uid 100000)
    let zdtm = shape.name == "container_zdtm_uns";
    let pmq = if zdtm {
        "/crestq mode 640 uid 100000 maxmsg 5 msgsize 64 curmsgs 2 "
    } else {
        "/crestq mode 640 uid 0 maxmsg 5 msgsize 64 curmsgs 2 "
    };
    let want_sysv = [
        ("shm ", " key 24301 size 65537 mode 640 "),
        ("sem ", " key 24302 nsems 3 mode 600 values 7 8 9"),
        ("msg ", " key 24303 mode 666 qnum 3 "),
        ("pmq ", pmq),
    ];
    for (kind, part) in want_sysv {
        if !inside
            .iter()
            .any(|l| l.starts_with(kind) && l.contains(part))
        {
            out.push(format!(
                "no SysV object like {part:?} inside (nsview: {inside:?})"
            ));
        }
    }
    let mut own = vec!["user", "pid", "uts", "ipc", "net"];
    if !zdtm {
        own.push("cgroup");
    }
    if shape.own_mnt {
        own.push("mnt");
    }
    for kind in own {
        if v.get(&format!("pid {main} ns {kind}")).map(String::as_str) == Some("host") {
            out.push(format!(
                "the workload (pid {main}) is in the harness's {kind} namespace"
            ));
        }
    }
    if !shape.own_mnt && v.get(&format!("pid {main} ns mnt")).map(String::as_str) != Some("host") {
        out.push(format!(
            "the workload (pid {main}) has a mount namespace of its own"
        ));
    }
    if let Some((file, want)) = shape.tmpfs_file {
        let path = format!("/proc/{main}/root{file}");
        match fs::read_to_string(&path) {
            Ok(got) if got == want => {}
            Ok(got) => out.push(format!("{path} holds {got:?}, expected {want:?}")),
            Err(e) => out.push(format!("read {path}: {e}")),
        }
        if Path::new(&format!("/proc/self/root{file}")).exists() {
            out.push(format!("{file} is visible outside the container"));
        }
    }
    out
}

pub(crate) fn snapshot(
    cfg: &Config,
    shape: &Shape,
    root: Pid,
    main: Pid,
    what: &str,
) -> Result<ns::View> {
    let tree = procs::tree_snapshot(root).with_context(|| format!("process tree {what}"))?;
    let mut v = ns::view(cfg, &tree, main).with_context(|| format!("namespaces {what}"))?;
    if shape.own_mnt {
        // what the container mounted: type, per-mount options, and what a
        // file under it holds (the comparison before/after covers them)
        let text = fs::read_to_string(format!("/proc/{main}/mountinfo"))
            .with_context(|| format!("mountinfo of {main}"))?;
        for l in text.lines() {
            let f: Vec<&str> = l.split(' ').collect();
            let Some(sep) = f.iter().position(|x| *x == "-") else {
                continue;
            };
            let (mp, opts) = (f[4], f[5]);
            if mp == "/proc" || mp == "/sys" || mp == "/tmp" || mp.starts_with("/mnt") {
                let fstype = f.get(sep + 1).copied().unwrap_or("?");
                v.insert(format!("mount {mp} {fstype}"), opts.to_string());
            }
        }
        for file in ["/mnt/ro/e/g", "/mnt/l", "/mnt/d/e/g"] {
            if let Ok(t) = fs::read_to_string(format!("/proc/{main}/root{file}")) {
                v.insert(format!("file {file}"), t);
            }
        }
    }
    if shape.net {
        // policy routing, neighbours and a bridge, as `ip` shows them
        // inside (a bridge's line has timers: only what it must hold)
        for (args, want) in NET_IP {
            let out = Command::new("nsenter")
                .args(["-t", &main.to_string(), "-n", "ip"])
                .args(args.split(' '))
                .output()
                .with_context(|| format!("nsenter ip {args}"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let got = if text.lines().any(|l| l.contains(want)) {
                format!("has {want:?}")
            } else {
                format!("lacks {want:?}: {text:?}")
            };
            v.insert(format!("ip {args} {want:?}"), got);
        }
    }
    let problems = expected(shape, &v, main);
    if !problems.is_empty() {
        bail!(
            "the container is not what its shell set up {what}:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(v)
}

fn run_tool(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Gives the container a veth `eth0` (up, 10.77.0.2/24) whose peer
/// `cxMAIN` is in the harness's namespace; checks that crest refuses to
/// dump it without `--external` and leaves the tree alone, then asks for
/// `--external veth[eth0]:cyMAIN` at dump and `veth[eth0]:cyMAIN@cbMAIN`
/// at restore: the outside end goes in the bridge `cbMAIN` the harness
/// makes (and removes at the end of the case).
fn external_veth(
    cfg: &Config,
    dir: &CaseDir,
    root: Pid,
    main: Pid,
    procs: &mut Procs,
) -> Result<()> {
    let (outer, main_s) = (format!("cx{main}"), main.to_string());
    run_tool(&[
        "ip", "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &main_s,
    ])?;
    run_tool(&["ip", "link", "set", &outer, "up"])?;
    run_tool(&[
        "nsenter", "-t", &main_s, "-n", "ip", "link", "set", "eth0", "up",
    ])?;
    run_tool(&[
        "nsenter",
        "-t",
        &main_s,
        "-n",
        "ip",
        "addr",
        "add",
        "10.77.0.2/24",
        "dev",
        "eth0",
    ])?;
    let Some(ran) = case::dump_attempt(cfg, dir, root, false, procs)? else {
        bail!("crest dumped a veth whose peer is outside the tree without --external");
    };
    if !(ran.stderr.contains("eth0") && ran.stderr.contains("external")) {
        bail!(ran.failure("crest dump (expected a refusal naming eth0 as external)"));
    }
    let stuck = procs::tree_problems(root);
    if !stuck.is_empty() {
        bail!(
            "the refused dump left the tree disturbed:\n  {}",
            stuck.join("\n  ")
        );
    }
    let arg = format!("--external veth[eth0]:cy{main}\n");
    fs::write(dir.state.join("dump-args"), &arg).context("write dump-args")?;
    run_tool(&["ip", "link", "add", &format!("cb{main}"), "type", "bridge"])?;
    let arg = format!("--external veth[eth0]:cy{main}@cb{main}\n");
    fs::write(dir.state.join("restore-args"), &arg).context("write restore-args")?;
    Ok(())
}

fn steps(cfg: &Config, shape: &Shape, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    if !in_path("unshare") || !in_path("ip") {
        return Ok(Outcome::Skip(
            "util-linux unshare or iproute2 ip not found".into(),
        ));
    }
    let root = start(cfg, shape, dir, procs, false)?;
    let chain = wait_ready(dir, shape, root, procs)?;
    let main = *chain.last().context("empty chain")?;
    if !wait_until(Duration::from_secs(5), || procs::tree_settled(root)) {
        bail!("the tree of pid {root} did not settle within 5 s");
    }
    if shape.external_veth && cfg.checkpoint {
        external_veth(cfg, dir, root, main, procs)?;
    }
    let tree_before = procs::tree_snapshot(root).context("process tree before the dump")?;
    let outside_before = crate::outside::snapshot(&tree_before);
    let _ = fs::write(dir.root.join("tree.before"), format!("{tree_before:#?}\n"));
    let view_before = snapshot(cfg, shape, root, main, "before the dump")?;
    ns::save(dir, "view.before", &view_before);
    let finish = |procs: &mut Procs| -> Result<Outcome> {
        let o = case::finish_tree(dir, main, root, stdio_of(shape), procs)?;
        for p in &chain {
            procs.untrack(*p);
        }
        Ok(o)
    };
    if !cfg.checkpoint {
        return finish(procs);
    }
    case::check_crest(cfg)?;
    if shape.name == "container_pivot_root" {
        // the mounts bound from outside, by key, CRIU's way
        let binds = [
            ("/usr", "usr", "/usr".to_string()),
            ("/dev/null", "null", "/dev/null".to_string()),
            ("/wl", "wl", cfg.workloads.display().to_string()),
            ("/state", "state", dir.state.display().to_string()),
        ];
        let dump: Vec<String> = binds
            .iter()
            .map(|(mp, key, _)| format!("--external mnt[{mp}]:{key}"))
            .collect();
        let mut restore: Vec<String> = binds
            .iter()
            .map(|(_, key, path)| format!("--external mnt[{key}]:{path}"))
            .collect();
        restore.push(format!("--root {}", dir.root.join("rootfs").display()));
        fs::write(dir.state.join("dump-args"), dump.join("\n"))?;
        fs::write(dir.state.join("restore-args"), restore.join("\n"))?;
    }
    let root_s = root.to_string();
    // a show crest refuses is judged with the dump: a dump it refuses too is
    // a skip, a dump it makes fails the case
    let graph_before = nested::show_ns(cfg, dir, &["--tree", &root_s], "show-tree-before", procs);
    if let Ok(g) = &graph_before {
        let _ = fs::write(dir.root.join("graph.before"), g);
    }
    if let Some(ran) = case::dump_attempt(cfg, dir, root, false, procs)? {
        let line = ran
            .stderr
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("(no stderr)")
            .to_string();
        let Some(needle) = shape.refusal.filter(|n| ran.stderr.contains(n)) else {
            bail!(ran.failure("crest dump"));
        };
        // a refused dump must leave the container alone and running
        let stuck = procs::tree_problems(root);
        if !stuck.is_empty() {
            bail!(
                "crest refused the dump ({needle}) but left the tree disturbed:\n  {}",
                stuck.join("\n  ")
            );
        }
        snapshot(cfg, shape, root, main, "after the refused dump")?;
        return match finish(procs)? {
            Outcome::Pass => Ok(Outcome::Skip(format!("crest refuses: {line}"))),
            o => Ok(o),
        };
    }
    let graph_before = graph_before.context("before the dump")?;
    let mut problems = Vec::new();
    let images = dir.images.to_string_lossy().to_string();
    match nested::show_ns(cfg, dir, &[&images], "show-images", procs) {
        Ok(g) => {
            let _ = fs::write(dir.root.join("graph.images"), &g);
            nested::graph_check(
                &mut problems,
                "of the images (crest show --ns DIR)",
                &graph_before,
                &g,
            );
        }
        Err(e) => problems.push(format!("{e:#}")),
    }
    for p in &chain {
        procs.track(*p);
    }
    if let Err(e) = case::restore_detached(cfg, dir, root, procs) {
        problems.insert(0, format!("{e:#}"));
        bail!("{}", problems.join("\n"));
    }
    let what = "after restore";
    match nested::show_ns(cfg, dir, &["--tree", &root_s], "show-tree-after", procs) {
        Ok(g) => {
            let _ = fs::write(dir.root.join("graph.after"), &g);
            nested::graph_check(&mut problems, what, &graph_before, &g);
        }
        Err(e) => problems.push(format!("{e:#}")),
    }
    let outside = format!("/sys/class/net/cy{main}");
    if shape.external_veth && !Path::new(&outside).exists() {
        problems.push(format!(
            "no {outside}: the outside end of eth0 was not made"
        ));
    }
    if shape.external_veth {
        let master = fs::read_link(format!("{outside}/master")).ok();
        let bridge = format!("cb{main}");
        if master.as_deref().and_then(|m| m.file_name()) != Some(bridge.as_ref()) {
            problems.push(format!(
                "the outside end cy{main} is not in bridge {bridge} (master {master:?})"
            ));
        }
        let _ = run_tool(&["ip", "link", "del", &bridge]);
    }
    match procs::tree_snapshot(root) {
        Ok(after) => {
            let _ = fs::write(dir.root.join("tree.after"), format!("{after:#?}\n"));
            let d = procs::tree_diff(&tree_before, &after, what);
            if !d.is_empty() {
                problems.push(format!(
                    "process tree differs {what}:\n  {}",
                    d.join("\n  ")
                ));
            }
        }
        Err(e) => problems.push(format!("process tree {what}: {e:#}")),
    }
    wait_until(Duration::from_secs(5), || procs::tree_settled(root));
    problems.extend(case::check_outside(dir, root, &outside_before, what));
    match snapshot(cfg, shape, root, main, what) {
        Ok(v) => {
            ns::save(dir, "view.after", &v);
            let d = ns::view_diff(&view_before, &v, what);
            if !d.is_empty() {
                problems.push(format!(
                    "the namespaces differ {what} (view.before, view.after):\n  {}",
                    d.join("\n  ")
                ));
            }
        }
        Err(e) => problems.push(format!("{e:#}")),
    }
    let verdict = finish(procs);
    case::with_problems(verdict, problems)
}
