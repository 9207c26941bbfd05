//! Container runtimes with crest as their criu (issue 12, item 8): Debian's
//! runc 1.1.5 driven with `runc --criu CREST` and podman 4.3.1 (runc as its
//! runtime) finding crest as `criu` on PATH, each checkpointing and
//! restoring a busybox container that counts.
//!
//! Every container is made from `busybox-static` (`/bin/busybox` copied
//! to `rootfs/bin` with a symlink per applet of `busybox --list`); its
//! init runs `/init.sh`, which starts a long-lived `tail -f /dev/null` and
//! then prints 1, 2, 3, ... every 0.2 s (waiting with the builtin `read -t`
//! on a FIFO: no short-lived processes). The harness reads the counter from
//! the container's stdout — a pipe, as a runtime's caller holds it (a host
//! file would not be in the container's mount namespace) — or, for a
//! terminal container, from the pty master a console socket receives.
//!
//! - `runc_plain`: `runc run -d`, `runc checkpoint` (the container must be
//!   gone from `runc state`/`runc list`), `crit` decodes every image (but
//!   the raw pages) and `stats-dump` is in the work directory; `runc restore
//!   -d` with new stdio pipes (runc hands them to crest as `inherit_fd`
//!   from `descriptors.json`): the first number after the restore is the
//!   last one before plus one, `runc state` says `running` with the pid
//!   whose `NSpid` ends in 1, and from outside the init's cgroups, which
//!   namespaces are its own, its `NSpid` depth, its uid/gid maps and the
//!   container's processes (pid inside, parent, name, ids) are what they
//!   were;
//! - `runc_leave_running`: `runc checkpoint --leave-running`: the counter
//!   runs on without a gap, the container stays `running` with the same
//!   processes; then it is killed and deleted and restored from the images
//!   (the counter goes on from the value it had during the dump);
//! - `runc_pre_dump`: `runc checkpoint --pre-dump` (the container runs
//!   on), then `runc checkpoint --parent-path ../pre` and the restore, as
//!   `runc_plain`;
//! - `runc_lazy_restore`: the checkpoint as `runc_plain`, then `crest
//!   lazy-pages` for its images and work directory and `runc restore
//!   --lazy-pages` (the RPC's lazy_pages): the daemon fills the running
//!   container and exits saying every page is in; then as `runc_plain`;
//! - `runc_terminal`: `process.terminal` with `--console-socket` at run
//!   and at restore: the pty master arrives over the socket (SCM_RIGHTS,
//!   received by a small python3 helper that copies the master to the
//!   harness); after the restore a new socket gets a new master and the
//!   counter goes on there; the init has a controlling tty again;
//! - `runc_userns`: the container in its own user namespace (0 → 100000,
//!   65536 ids; rootfs owned by 100000): the maps are compared too;
//! - `runc_nested_userns`: the same, with the counter in a user namespace
//!   of its own inside the container's (`unshare -U -r`, which needs more
//!   capabilities than runc's default); CRIU refuses it ("Can't dump nested
//!   user namespace"). The namespace graphs (`crest show --ns --tree`
//!   before, `crest show --ns IMAGES`, `crest show --ns --tree` after) are
//!   compared with the pids in their task lists read as the pids inside the
//!   container;
//! - `podman_pre_checkpoint`: as `podman_export_import`, but `podman
//!   container checkpoint --pre-checkpoint` first, then the checkpoint
//!   `--with-previous`, restored in place;
//! - `podman_export_import`: an image imported offline (`podman import` of
//!   the rootfs as a tarball), `podman run -d --runtime runc`,
//!   `podman container checkpoint --export F --print-stats` (the stats are
//!   JSON with CRIU's fields), `podman rm`, `podman container restore
//!   --import F --print-stats`; the counter goes on in `podman logs`. podman
//!   runs with a private root, runroot and tmpdir under the case directory,
//!   cgroupfs and a file events backend, and `criu` on its PATH is a
//!   symlink to crest.
//!
//! Each case skips naming what is missing (runc, podman, a static
//! `/bin/busybox`, python3 for the console socket), and cleans up its
//! containers (`runc delete -f`, `podman rm -f`, the private podman store
//! unmounted) whether it passes or not.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{mkfifo, pipe2, Pid};
use serde_json::{json, Value};

use crate::case::{self, CaseDir, DirCase};
use crate::crest::{self, Ran};
use crate::procs::{self, exists, wait_exit, wait_until, Procs, Waited};
use crate::suite::Report;
use crate::{crit, nested, Config, Outcome};

const CASES: [(&str, DirCase); 9] = [
    ("runc_plain", runc_plain),
    ("runc_leave_running", runc_leave_running),
    ("runc_pre_dump", runc_pre_dump),
    ("runc_lazy_restore", runc_lazy_restore),
    ("runc_terminal", runc_terminal),
    ("runc_userns", runc_userns),
    ("runc_nested_userns", runc_nested_userns),
    ("podman_export_import", podman_export_import),
    ("podman_pre_checkpoint", podman_pre_checkpoint),
];

/// Where busybox-static puts its binary.
const BUSYBOX: &str = "/bin/busybox";
/// How long one runtime command may take.
const RUNTIME_TIMEOUT: Duration = Duration::from_secs(30);
/// The counter: one number every 0.2 s. The pause is `read -t` on a FIFO
/// nobody writes (a shell builtin: no short-lived `sleep` processes, so the
/// container's processes stay the same).
const COUNTER: &str =
    "exec 3<>/loop.fifo\ni=0\nwhile true; do i=$((i+1)); echo $i; read -t 0.2 x <&3; done\n";
/// The host ids the user-namespaced containers map 0..65536 to.
const USERNS_BASE: u32 = 100000;
/// What `unshare -r` needs in the container (runc's default set lets a
/// container create a user namespace but not write its maps).
const NESTED_CAPS: [&str; 18] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_ADMIN",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
];
/// Namespace types compared between the container's init and the harness.
const NS_TYPES: [&str; 8] = ["cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"];

pub fn run(cfg: &Config, report: &mut Report, selected: &dyn Fn(&str) -> bool) {
    case::run_root_cases(cfg, report, selected, &CASES);
}

// ---------------------------------------------------------------- cases

fn runc_plain(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    runc_case(cfg, dir, Shape::default(), procs)
}

fn runc_leave_running(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let shape = Shape {
        leave_running: true,
        ..Shape::default()
    };
    runc_case(cfg, dir, shape, procs)
}

fn runc_pre_dump(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let shape = Shape {
        pre_dump: true,
        ..Shape::default()
    };
    runc_case(cfg, dir, shape, procs)
}

fn runc_lazy_restore(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let shape = Shape {
        lazy: true,
        ..Shape::default()
    };
    runc_case(cfg, dir, shape, procs)
}

fn runc_terminal(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let shape = Shape {
        terminal: true,
        ..Shape::default()
    };
    runc_case(cfg, dir, shape, procs)
}

fn runc_userns(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let shape = Shape {
        userns: true,
        ..Shape::default()
    };
    runc_case(cfg, dir, shape, procs)
}

fn runc_nested_userns(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let shape = Shape {
        userns: true,
        nested: true,
        ..Shape::default()
    };
    runc_case(cfg, dir, shape, procs)
}

/// What a runc case's container is and how it is checkpointed.
#[derive(Debug, Clone, Copy, Default)]
struct Shape {
    /// `process.terminal` with a console socket.
    terminal: bool,
    /// Its own user namespace (0 → 100000, 65536 ids).
    userns: bool,
    /// The counter in a user namespace inside the container's.
    nested: bool,
    /// `runc checkpoint --leave-running`.
    leave_running: bool,
    /// `runc checkpoint --pre-dump` first, then the checkpoint with
    /// `--parent-path`.
    pre_dump: bool,
    /// `runc restore --lazy-pages` with a `crest lazy-pages` daemon.
    lazy: bool,
}

// ---------------------------------------------------------------- prerequisites

/// Whether `name` is on PATH.
fn on_path(name: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|d| d.join(name).is_file())
}

/// Why the cases cannot run here (a missing package), or None.
fn missing(tools: &[(&str, &str)]) -> Option<String> {
    for (tool, package) in tools {
        if !on_path(tool) {
            return Some(format!(
                "{tool} is not installed (Debian package {package})"
            ));
        }
    }
    let Ok(bytes) = fs::read(BUSYBOX) else {
        return Some(format!("no {BUSYBOX} (Debian package busybox-static)"));
    };
    // a dynamically linked busybox names its loader and cannot run alone
    // in a rootfs
    if bytes.windows(11).any(|w| w == b"/ld-linux-x") {
        return Some(format!(
            "{BUSYBOX} is dynamically linked (install busybox-static, not busybox)"
        ));
    }
    None
}

// ---------------------------------------------------------------- the rootfs and bundle

/// Makes `rootfs` from busybox-static, with `/loop.sh` (the counter) and
/// `/init.sh` (a `tail -f /dev/null` in the background, then the counter:
/// in the init itself, or in `unshare -U -r sh /loop.sh` for `nested`).
fn make_rootfs(rootfs: &Path, nested: bool, dir: &CaseDir, procs: &mut Procs) -> Result<()> {
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        fs::create_dir_all(rootfs.join(d)).with_context(|| format!("create rootfs/{d}"))?;
    }
    let bb = rootfs.join("bin/busybox");
    fs::copy(BUSYBOX, &bb).with_context(|| format!("copy {BUSYBOX}"))?;
    fs::set_permissions(&bb, fs::Permissions::from_mode(0o755))?;
    let ran = crest::run(
        cmd(BUSYBOX, &["--list"]),
        &dir.root,
        "busybox-list",
        RUNTIME_TIMEOUT,
        procs,
    )?;
    if !ran.success() {
        bail!(ran.failure("busybox --list"));
    }
    for applet in ran.stdout.split_whitespace().filter(|a| *a != "busybox") {
        symlink("busybox", rootfs.join("bin").join(applet))
            .with_context(|| format!("symlink applet {applet}"))?;
    }
    fs::write(rootfs.join("loop.sh"), COUNTER)?;
    mkfifo(&rootfs.join("loop.fifo"), Mode::from_bits_truncate(0o600)).context("mkfifo")?;
    let init = if nested {
        "tail -f /dev/null &\nunshare -U -r sh /loop.sh\necho unshare ended $?\n".to_string()
    } else {
        format!("tail -f /dev/null &\n{COUNTER}")
    };
    fs::write(rootfs.join("init.sh"), init)?;
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    Ok(())
}

/// A runc bundle in `<casedir>/bundle`: the rootfs, and `runc spec`'s
/// config.json with the shape's changes.
fn make_bundle(dir: &CaseDir, shape: Shape, procs: &mut Procs) -> Result<(PathBuf, Vec<String>)> {
    let bundle = dir.root.join("bundle");
    let rootfs = bundle.join("rootfs");
    make_rootfs(&rootfs, shape.nested, dir, procs)?;
    let b = bundle.to_string_lossy().to_string();
    runc_ok(dir, "spec", &["spec", "--bundle", &b], procs)?;
    let path = bundle.join("config.json");
    let mut c: Value = serde_json::from_str(&fs::read_to_string(&path)?)
        .context("parse runc spec's config.json")?;
    c["process"]["terminal"] = json!(shape.terminal);
    c["process"]["args"] = json!(["sh", "/init.sh"]);
    c["hostname"] = json!("crest-runc");
    if shape.userns {
        let ns = c["linux"]["namespaces"]
            .as_array_mut()
            .context("config.json has no linux.namespaces")?;
        ns.push(json!({"type": "user"}));
        let map = json!([{"containerID": 0, "hostID": USERNS_BASE, "size": 65536}]);
        c["linux"]["uidMappings"] = map.clone();
        c["linux"]["gidMappings"] = map;
    }
    if shape.nested {
        for set in [
            "bounding",
            "effective",
            "permitted",
            "inheritable",
            "ambient",
        ] {
            c["process"]["capabilities"][set] = json!(NESTED_CAPS);
        }
        c["process"]["noNewPrivileges"] = json!(false);
    }
    fs::write(&path, serde_json::to_string_pretty(&c)?)?;
    let masked = c["linux"]["maskedPaths"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if shape.userns {
        let owner = format!("{USERNS_BASE}:{USERNS_BASE}");
        let r = rootfs.to_string_lossy().to_string();
        let ran = crest::run(
            cmd("chown", &["-R", "-h", &owner, &r]),
            &dir.root,
            "chown",
            RUNTIME_TIMEOUT,
            procs,
        )?;
        if !ran.success() {
            bail!(ran.failure("chown the rootfs"));
        }
    }
    Ok((bundle, masked))
}

// ---------------------------------------------------------------- commands

fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// `runc ARGS`, output in `<casedir>/<tag>.std{out,err}`.
fn runc(dir: &CaseDir, tag: &str, args: &[&str], procs: &mut Procs) -> Result<Ran> {
    crest::run(cmd("runc", args), &dir.root, tag, RUNTIME_TIMEOUT, procs)
}

/// Like [`runc`]; an error unless it exits 0.
fn runc_ok(dir: &CaseDir, tag: &str, args: &[&str], procs: &mut Procs) -> Result<Ran> {
    let ran = runc(dir, tag, args, procs)?;
    if !ran.success() {
        bail!(ran.failure(&format!("runc {}", args.join(" "))));
    }
    Ok(ran)
}

/// `runc state ID` as JSON; None when runc says the container does not
/// exist.
fn runc_state(dir: &CaseDir, id: &str, tag: &str, procs: &mut Procs) -> Result<Option<Value>> {
    let ran = runc(dir, tag, &["state", id], procs)?;
    if !ran.success() {
        if ran.stderr.contains("does not exist") {
            return Ok(None);
        }
        bail!(ran.failure(&format!("runc state {id}")));
    }
    let v: Value = serde_json::from_str(&ran.stdout)
        .with_context(|| format!("runc state {id} printed {:?}", ran.stdout))?;
    Ok(Some(v))
}

/// The container's init from `runc state`: it must be `running`.
fn running_init(dir: &CaseDir, id: &str, tag: &str, procs: &mut Procs) -> Result<Pid> {
    let Some(state) = runc_state(dir, id, tag, procs)? else {
        bail!("runc state {id} ({tag}): the container does not exist");
    };
    let status = state["status"].as_str().unwrap_or("?");
    let pid = state["pid"].as_i64().unwrap_or(0);
    if status != "running" || pid <= 0 {
        bail!("runc state {id} ({tag}): status {status:?}, pid {pid}, expected running");
    }
    let pid = Pid::from_raw(pid as i32);
    if !exists(pid) {
        bail!("runc state {id} ({tag}) names pid {pid}, which does not exist");
    }
    Ok(pid)
}

/// Removes the container whatever its state: its processes killed and
/// reaped (the harness is their subreaper), `runc delete -f`, and runc's
/// `criu-root` (an rbind of the rootfs made for a restore) unmounted if it
/// is still there.
fn runc_cleanup(dir: &CaseDir, id: &str, procs: &mut Procs) {
    if let Ok(Some(state)) = runc_state(dir, id, "cleanup-state", procs) {
        if let Some(pid) = state["pid"].as_i64().filter(|p| *p > 0) {
            let pid = Pid::from_raw(pid as i32);
            let _ = runc(dir, "cleanup-kill", &["kill", "-a", id, "KILL"], procs);
            let _ = kill(pid, Signal::SIGKILL);
            procs::reap_or_wait_gone(pid);
        }
    }
    let _ = runc(dir, "cleanup-delete", &["delete", "-f", id], procs);
    let criu_root = format!("/run/runc/{id}/criu-root");
    if is_mountpoint(&criu_root) {
        let _ = crest::run(
            cmd("umount", &["-l", &criu_root]),
            &dir.root,
            "cleanup-umount",
            RUNTIME_TIMEOUT,
            procs,
        );
    }
}

/// Whether `path` is a mount point in the harness's mount namespace.
fn is_mountpoint(path: &str) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(4) == Some(path)))
        .unwrap_or(false)
}

/// A pipe with O_CLOEXEC on both ends: (read, write).
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC).context("pipe2")
}

/// Runs `cmd` with stdin, stdout and stderr on new pipes (the container's
/// stdio when runc passes its own through); returns its run and readers of
/// its stdout and stderr. The harness keeps stdin's write end open.
fn run_piped(
    mut cmd: Command,
    dir: &CaseDir,
    tag: &str,
    procs: &mut Procs,
) -> Result<(Ran, Counter, Counter, OwnedFd)> {
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    cmd.current_dir(&dir.root)
        .stdin(Stdio::from(in_r))
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    let start = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("spawn {:?}", cmd.get_program()))?;
    // the child holds its ends now; the harness must not
    drop(cmd);
    let pid = Pid::from_raw(child.id() as i32);
    procs.track(pid);
    let out = Counter::spawn(File::from(out_r));
    let err = Counter::spawn(File::from(err_r));
    let exit = match wait_exit(pid, RUNTIME_TIMEOUT)? {
        Waited::Exited(e) => e,
        Waited::TimedOut => bail!("{tag}: timed out after {RUNTIME_TIMEOUT:?}"),
        Waited::NotChild => bail!("{tag}: lost track of pid {pid}"),
    };
    procs.untrack(pid);
    let stderr_path = dir.root.join(format!("{tag}.stderr"));
    // runc's own messages go to the container's stderr; give them a moment
    sleep(Duration::from_millis(50));
    let stderr = err.text();
    let _ = fs::write(&stderr_path, &stderr);
    let ran = Ran {
        exit,
        stdout: String::new(),
        stderr,
        elapsed: start.elapsed(),
        stderr_path,
    };
    Ok((ran, out, err, in_w))
}

// ---------------------------------------------------------------- the counter

/// What a reader thread got from a pipe or a pty master: the raw bytes and
/// every number with the time it arrived.
#[derive(Default)]
struct Got {
    raw: Vec<u8>,
    nums: Vec<(Instant, u64)>,
    eof: bool,
}

/// A thread reading a container's output.
struct Counter {
    got: Arc<Mutex<Got>>,
}

impl Counter {
    fn spawn(mut f: File) -> Counter {
        let got = Arc::new(Mutex::new(Got::default()));
        let g = Arc::clone(&got);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut digits = String::new();
            loop {
                let n = match f.read(&mut buf) {
                    Ok(0) | Err(_) => 0,
                    Ok(n) => n,
                };
                let now = Instant::now();
                let Ok(mut g) = g.lock() else { return };
                if n == 0 {
                    g.eof = true;
                    return;
                }
                g.raw.extend_from_slice(&buf[..n]);
                for &b in &buf[..n] {
                    if b.is_ascii_digit() {
                        digits.push(b as char);
                    } else if !digits.is_empty() {
                        if let Ok(v) = digits.parse() {
                            g.nums.push((now, v));
                        }
                        digits.clear();
                    }
                }
            }
        });
        Counter { got }
    }

    fn with<T>(&self, f: impl FnOnce(&Got) -> T) -> T {
        match self.got.lock() {
            Ok(g) => f(&g),
            Err(p) => f(&p.into_inner()),
        }
    }

    fn nums(&self) -> Vec<u64> {
        self.with(|g| g.nums.iter().map(|(_, n)| *n).collect())
    }

    /// The numbers that arrived before `t`.
    fn nums_before(&self, t: Instant) -> Vec<u64> {
        self.with(|g| {
            g.nums
                .iter()
                .filter(|(at, _)| *at < t)
                .map(|(_, n)| *n)
                .collect()
        })
    }

    fn text(&self) -> String {
        self.with(|g| String::from_utf8_lossy(&g.raw).into_owned())
    }

    fn eof(&self) -> bool {
        self.with(|g| g.eof)
    }

    /// Waits until at least `n` numbers arrived.
    fn wait_count(&self, n: usize, timeout: Duration, what: &str) -> Result<()> {
        if !wait_until(timeout, || self.nums().len() >= n) {
            bail!(
                "{what}: {} numbers after {timeout:?}, expected {n}; got {:?}",
                self.nums().len(),
                tail_text(&self.text())
            );
        }
        Ok(())
    }

    /// Waits until every writer is gone.
    fn wait_eof(&self, timeout: Duration, what: &str) -> Result<()> {
        if !wait_until(timeout, || self.eof()) {
            bail!("{what}: still open {timeout:?} after the container should be gone");
        }
        Ok(())
    }
}

fn tail_text(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    chars[chars.len().saturating_sub(200)..].iter().collect()
}

/// `nums` must be `from`, `from + 1`, ...: no gap, no repeat, no restart.
fn check_consecutive(nums: &[u64], from: u64, what: &str) -> Result<()> {
    for (k, n) in nums.iter().enumerate() {
        if *n != from + k as u64 {
            bail!(
                "{what}: expected {from}, {}, ... in order, got {nums:?}",
                from + 1
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- the view from outside

/// The state of a container compared before the checkpoint and after the
/// restore, read from /proc.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outside {
    /// `/proc/INIT/cgroup`.
    cgroup: String,
    /// The namespace types in which the init is not in the harness's.
    own_ns: Vec<String>,
    /// Levels of the init's `NSpid`.
    nspid_depth: usize,
    uid_map: String,
    gid_map: String,
    /// Every process of the container by its pid inside: its parent's
    /// pid inside, its name, its Uid and Gid lines.
    procs: BTreeMap<i32, String>,
    /// The init's mounts, in order: mount point, filesystem type, root,
    /// the mount's and the superblock's options (`/proc/INIT/mountinfo`). runc's masked paths
    /// (`linux.maskedPaths`, bound to the container's /dev/null at run —
    /// a node on its /dev tmpfs without a user namespace — and to the
    /// host's /dev/null at restore, as runc's `ext_mnt` says) only by
    /// their mount point.
    mounts: Vec<String>,
    /// What the kernel shows of the init itself (`crate::outside`: status,
    /// limits, maps, fds, socket options, ...), keyed by its pid inside;
    /// its children come and go (the counter's `sleep`s).
    init: crate::outside::View,
}

fn status_field(pid: Pid, field: &str) -> String {
    procs::proc_status_field(pid, field).unwrap_or_default()
}

/// The pid inside the container (the last of `NSpid`).
fn inner_pid(pid: Pid) -> Option<i32> {
    status_field(pid, "NSpid")
        .split_whitespace()
        .last()
        .and_then(|p| p.parse().ok())
}

/// The init and its descendants (host pids), walking `task/*/children`.
fn descendants(init: Pid) -> Vec<Pid> {
    let mut out = vec![init];
    let mut k = 0;
    while k < out.len() {
        let p = out[k];
        k += 1;
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.filter_map(Result::ok) {
            let path = t.path().join("children");
            let text = fs::read_to_string(path).unwrap_or_default();
            out.extend(
                text.split_whitespace()
                    .filter_map(|c| c.parse().ok())
                    .map(Pid::from_raw),
            );
        }
    }
    out
}

fn outside(init: Pid, masked: &[String]) -> Result<Outside> {
    let read = |what: &str| {
        fs::read_to_string(format!("/proc/{init}/{what}"))
            .with_context(|| format!("read /proc/{init}/{what}"))
    };
    let mut own_ns = Vec::new();
    for t in NS_TYPES {
        let theirs = fs::read_link(format!("/proc/{init}/ns/{t}"))
            .with_context(|| format!("readlink /proc/{init}/ns/{t}"))?;
        let ours = fs::read_link(format!("/proc/self/ns/{t}")).ok();
        if Some(&theirs) != ours.as_ref() {
            own_ns.push(t.to_string());
        }
    }
    let mut ps = BTreeMap::new();
    for p in descendants(init) {
        let Some(inner) = inner_pid(p) else { continue };
        let ppid = procs::proc_ppid(p).map(Pid::from_raw);
        let pinner = if p == init {
            0
        } else {
            ppid.and_then(inner_pid).unwrap_or(-1)
        };
        let line = format!(
            "ppid {pinner} {} uid [{}] gid [{}]",
            procs::proc_comm(p).unwrap_or_default(),
            status_field(p, "Uid"),
            status_field(p, "Gid")
        );
        ps.insert(inner, line);
    }
    let mounts = read("mountinfo")?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let sep = f.iter().position(|x| *x == "-")?;
            let point = f.get(4)?;
            if masked.iter().any(|m| m == point) {
                return Some(format!("{point} (masked)"));
            }
            // mount point, type, root (the rootfs's own is where the
            // runtime keeps it: podman's restore makes a new layer),
            // mount options, superblock options
            let root = if *point == "/" { "(rootfs)" } else { f.get(3)? };
            Some(format!(
                "{point} {} root {} {} {}",
                f.get(sep + 1)?,
                root,
                f.get(5)?,
                f.get(sep + 3)?
            ))
        })
        .collect();
    let mut tree = procs::Tree::new();
    if let Some(t) = procs::tree_snapshot(init)?.remove(&init.as_raw()) {
        tree.insert(init.as_raw(), t);
    }
    let me = init.as_raw();
    let init_view = crate::outside::rekeyed(&crate::outside::snapshot(&tree), &|id| {
        (id == me).then(|| "init".to_string())
    });
    Ok(Outside {
        init: init_view,
        mounts,
        cgroup: read("cgroup")?,
        own_ns,
        nspid_depth: status_field(init, "NSpid").split_whitespace().count(),
        uid_map: read("uid_map")?,
        gid_map: read("gid_map")?,
        procs: ps,
    })
}

/// What differs between two [`Outside`]s, one line each.
fn outside_diff(before: &Outside, after: &Outside, what: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmp = |name: &str, b: String, a: String| {
        if b != a {
            out.push(format!("{name} {what}: {a:?}, before: {b:?}"));
        }
    };
    cmp("cgroups", before.cgroup.clone(), after.cgroup.clone());
    cmp(
        "own namespaces",
        before.own_ns.join(" "),
        after.own_ns.join(" "),
    );
    cmp(
        "NSpid depth",
        before.nspid_depth.to_string(),
        after.nspid_depth.to_string(),
    );
    cmp("uid_map", before.uid_map.clone(), after.uid_map.clone());
    cmp("gid_map", before.gid_map.clone(), after.gid_map.clone());
    if before.mounts != after.mounts {
        let gone: Vec<&String> = before
            .mounts
            .iter()
            .filter(|m| !after.mounts.contains(m))
            .collect();
        let new: Vec<&String> = after
            .mounts
            .iter()
            .filter(|m| !before.mounts.contains(m))
            .collect();
        out.push(format!(
            "the init's mounts differ {what} ({} before, {} now): missing {gone:?}, new {new:?}",
            before.mounts.len(),
            after.mounts.len()
        ));
    }
    let mut cmp = |name: &str, b: String, a: String| {
        if b != a {
            out.push(format!("{name} {what}: {a:?}, before: {b:?}"));
        }
    };
    cmp(
        "processes (pid inside: parent, name, ids)",
        format!("{:?}", before.procs),
        format!("{:?}", after.procs),
    );
    let d = crate::outside::diff(&before.init, &after.init);
    if !d.is_empty() {
        out.push(format!(
            "what the kernel shows of the init from outside differs {what}:\n  {}",
            d.join("\n  ")
        ));
    }
    out
}

/// The controlling tty (`tty_nr` of /proc/PID/stat).
fn tty_nr(pid: Pid) -> Option<i64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // state ppid pgrp session tty_nr
    rest.split_whitespace().nth(4)?.parse().ok()
}

/// `crest show --ns ...` with the pids of its task lists replaced by the
/// pids inside the container (`inner`), each list sorted.
fn graph_inner(graph: &str, inner: &HashMap<i32, i32>) -> String {
    let mut out = String::new();
    for line in graph.lines() {
        let mut rest = line;
        while let Some(i) = rest.find("tasks [") {
            let start = i + "tasks [".len();
            out.push_str(&rest[..start]);
            let Some(e) = rest[start..].find(']') else {
                break;
            };
            let mut ids: Vec<String> = rest[start..start + e]
                .split(", ")
                .filter(|s| !s.is_empty())
                .map(
                    |s| match s.trim().parse::<i32>().ok().and_then(|p| inner.get(&p)) {
                        Some(i) => format!("{i}"),
                        None => format!("?{s}"),
                    },
                )
                .collect();
            ids.sort();
            out.push_str(&ids.join(", "));
            rest = &rest[start + e..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    out
}

/// Host pid → pid inside, for every process of the container.
fn inner_pids(init: Pid) -> HashMap<i32, i32> {
    descendants(init)
        .into_iter()
        .filter_map(|p| Some((p.as_raw(), inner_pid(p)?)))
        .collect()
}

// ---------------------------------------------------------------- the runc flow

/// How the harness reads the container's output.
enum Stdio3 {
    /// Pipes: stdout's and stderr's readers, and stdin's write end (kept
    /// open while the container runs).
    Pipes {
        out: Counter,
        err: Counter,
        _stdin: OwnedFd,
    },
    /// A terminal: the reader of the master that came over the console
    /// socket (copied by the helper, whose pid is kept for cleanup).
    Console(Counter),
}

impl Stdio3 {
    fn counter(&self) -> &Counter {
        match self {
            Stdio3::Pipes { out, .. } => out,
            Stdio3::Console(c) => c,
        }
    }

    fn stderr_text(&self) -> String {
        match self {
            Stdio3::Pipes { err, .. } => err.text(),
            Stdio3::Console(_) => String::new(),
        }
    }
}

/// The console socket's receiver: accepts one connection, takes the fd it
/// carries (SCM_RIGHTS) and copies what the master gives to stdout until
/// the terminal is gone (EIO).
const CONSOLE_PY: &str = r#"
import array, os, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
s.listen(1)
open(path + '.ready', 'w').close()
c, _ = s.accept()
fds = array.array('i')
msg, anc, flags, addr = c.recvmsg(4096, socket.CMSG_LEN(16))
for level, typ, data in anc:
    if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
        fds.frombytes(data[:len(data) - (len(data) % 4)])
if not fds:
    sys.exit('no fd came over the console socket')
c.close()
s.close()
m = fds[0]
out = sys.stdout.buffer
while True:
    try:
        d = os.read(m, 4096)
    except OSError:
        break
    if not d:
        break
    out.write(d)
    out.flush()
"#;

/// Starts the console-socket helper on `<casedir>/<name>`; returns the
/// socket path and the reader of what it copies.
fn console_socket(dir: &CaseDir, name: &str, procs: &mut Procs) -> Result<(String, Counter)> {
    let sock = dir.root.join(name);
    let ready = dir.root.join(format!("{name}.ready"));
    let (out_r, out_w) = pipe()?;
    let err = File::create(dir.root.join(format!("{name}.stderr")))?;
    let mut c = Command::new("python3");
    c.arg("-c")
        .arg(CONSOLE_PY)
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(err);
    let child = c.spawn().context("spawn python3 (console socket)")?;
    drop(c);
    procs.track(Pid::from_raw(child.id() as i32));
    if !wait_until(Duration::from_secs(10), || ready.exists()) {
        bail!(
            "the console socket helper did not listen on {}",
            sock.display()
        );
    }
    Ok((
        sock.to_string_lossy().into_owned(),
        Counter::spawn(File::from(out_r)),
    ))
}

/// `runc [--criu CREST] ARGS` with the container's stdio: pipes, or a
/// console socket named `console` for a terminal container.
fn runc_start(
    dir: &CaseDir,
    tag: &str,
    args: &[&str],
    console: Option<&str>,
    procs: &mut Procs,
) -> Result<Stdio3> {
    let Some(console) = console else {
        let (ran, out, err, stdin) = run_piped(cmd("runc", args), dir, tag, procs)?;
        if !ran.success() {
            bail!(ran.failure(&format!("runc {}", args.join(" "))));
        }
        return Ok(Stdio3::Pipes {
            out,
            err,
            _stdin: stdin,
        });
    };
    let (sock, master) = console_socket(dir, console, procs)?;
    let mut all: Vec<&str> = args.to_vec();
    // after the subcommand: runc's flags are per subcommand
    let at = all
        .iter()
        .position(|a| *a == "run" || *a == "restore")
        .context("runc_start needs run or restore")?;
    all.insert(at + 1, "--console-socket");
    all.insert(at + 2, &sock);
    runc_ok(dir, tag, &all, procs)?;
    Ok(Stdio3::Console(master))
}

/// `runc checkpoint --pre-dump` of container `id` into `<case>/pre`: the
/// container runs on, its pages saved there (crest's FEATURE_CHECK says
/// it tracks memory, which runc asks first).
fn pre_dump(dir: &CaseDir, (crest_bin, id): (&str, &str), procs: &mut Procs) -> Result<()> {
    let pre = dir.root.join("pre");
    let work = dir.root.join("work-pre");
    let (p, w) = (pre.to_string_lossy(), work.to_string_lossy());
    let args = [
        "--criu",
        crest_bin,
        "checkpoint",
        "--pre-dump",
        "--image-path",
        &p,
        "--work-path",
        &w,
        id,
    ];
    let ran = runc(dir, "pre-dump", &args, procs)?;
    if !ran.success() {
        bail!(
            "{}\n{}",
            ran.failure("runc checkpoint --pre-dump"),
            crest::tail(&work.join("dump.log"), 15).unwrap_or_default()
        );
    }
    let pages = fs::read_dir(&pre)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        })
        .unwrap_or(false);
    if !pages {
        bail!(
            "runc checkpoint --pre-dump wrote no pages in {}",
            pre.display()
        );
    }
    // (the container runs on a moment)
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// The runc cases: run, checkpoint (with or without --leave-running),
/// restore, compare.
fn runc_case(cfg: &Config, dir: &CaseDir, shape: Shape, procs: &mut Procs) -> Result<Outcome> {
    let mut tools = vec![("runc", "runc")];
    if shape.terminal {
        tools.push(("python3", "python3"));
    }
    if let Some(why) = missing(&tools) {
        return Ok(Outcome::Skip(why));
    }
    case::check_crest(cfg)?;
    let name = dir
        .root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id = format!("crest-e2e-{}-{name}", std::process::id());
    runc_cleanup(dir, &id, procs);
    let result = runc_steps(cfg, dir, shape, &id, procs);
    runc_cleanup(dir, &id, procs);
    result.map_err(|e| {
        let work = dir.root.join("work");
        let logs: Vec<String> = ["dump.log", "restore.log"]
            .iter()
            .filter_map(|l| crest::tail(&work.join(l), 12))
            .collect();
        anyhow::anyhow!("{e:#}\n{}", logs.join("\n"))
    })
}

fn runc_steps(
    cfg: &Config,
    dir: &CaseDir,
    shape: Shape,
    id: &str,
    procs: &mut Procs,
) -> Result<Outcome> {
    let (bundle, masked) = make_bundle(dir, shape, procs)?;
    let b = bundle.to_string_lossy().to_string();
    let crest_bin = cfg.crest.to_string_lossy().to_string();
    let images = dir.images.to_string_lossy().to_string();
    let work_dir = dir.root.join("work");
    let work = work_dir.to_string_lossy().to_string();

    let console = shape.terminal.then_some("console1.sock");
    let io = runc_start(
        dir,
        "run",
        &["run", "-d", "--bundle", &b, id],
        console,
        procs,
    )?;
    let init = running_init(dir, id, "state-run", procs)?;
    procs.track(init);
    if let Err(e) = io
        .counter()
        .wait_count(4, Duration::from_secs(10), "before")
    {
        bail!("{e:#}; stderr {:?}", io.stderr_text());
    }
    let before = outside(init, &masked)?;
    if inner_pid(init) != Some(1) {
        bail!(
            "the init {init} is not pid 1 inside: NSpid {}",
            status_field(init, "NSpid")
        );
    }
    if before.procs.len() < 2 + usize::from(shape.nested) {
        bail!("the container's processes are {:?}", before.procs);
    }
    let pids_before = inner_pids(init);
    let graph_before = if shape.nested {
        let g = nested::show_ns(
            cfg,
            dir,
            &["--tree", &init.to_string()],
            "graph-before",
            procs,
        )?;
        Some(graph_inner(&g, &pids_before))
    } else {
        None
    };
    let mut problems = Vec::new();
    if shape.terminal && tty_nr(init).unwrap_or(0) == 0 {
        problems.push(format!(
            "the init {init} has no controlling tty before the checkpoint"
        ));
    }

    // checkpoint
    let mut ck = vec![
        "--criu",
        &crest_bin,
        "checkpoint",
        "--image-path",
        &images,
        "--work-path",
        &work,
    ];
    if shape.leave_running {
        ck.push("--leave-running");
    }
    if shape.pre_dump {
        pre_dump(dir, (&crest_bin, id), procs)?;
        ck.extend(["--parent-path", "../pre"]);
    }
    ck.push(id);
    let ck_start = Instant::now();
    let ran = runc(dir, "checkpoint", &ck, procs)?;
    let ck_end = Instant::now();
    if !ran.success() {
        bail!(
            "{}\n{}",
            ran.failure("runc checkpoint"),
            crest::tail(&work_dir.join("dump.log"), 15).unwrap_or_default()
        );
    }
    for f in ["inventory.img", "pstree.img", "descriptors.json"] {
        if !dir.images.join(f).exists() {
            bail!("runc checkpoint succeeded but wrote no {f}");
        }
    }
    if shape.pre_dump {
        let stats: Result<crest_images::pb::StatsEntry, _> = crest_images::read_one(
            &work_dir,
            crest_images::names::STATS_DUMP,
            crest_images::magic::STATS,
        );
        let skipped = stats
            .ok()
            .and_then(|s| s.dump)
            .map_or(0, |d| d.pages_skipped_parent);
        if skipped == 0 {
            problems.push("the checkpoint after the pre-dump took no page from it".into());
        }
    }
    if !work_dir.join("stats-dump").is_file() {
        problems.push("no stats-dump in the work directory after the checkpoint".into());
    }
    check_images(dir, &work_dir, &mut problems, procs)?;

    let last_before = if shape.leave_running {
        let window = (ck_start, ck_end);
        left_running(
            dir,
            id,
            (init, &before, &masked),
            &io,
            window,
            &mut problems,
            procs,
        )?
    } else {
        dumped(init, &io, procs)?
    };
    if runc_state(dir, id, "state-gone", procs)?.is_some() {
        bail!("runc state still knows {id} after the checkpoint");
    }
    let list = runc_ok(dir, "list", &["list", "-q"], procs)?;
    if list.stdout.lines().any(|l| l.trim() == id) {
        bail!("runc list still shows {id} after the checkpoint");
    }
    let graph_images = if shape.nested {
        let g = nested::show_ns(cfg, dir, &[&images], "graph-images", procs)?;
        // the images keep the host pids the tasks had at the dump
        Some(graph_inner(&g, &pids_before))
    } else {
        None
    };
    drop(io);

    // restore
    let console = shape.terminal.then_some("console2.sock");
    let mut rs = vec![
        "--criu",
        &crest_bin,
        "restore",
        "-d",
        "--bundle",
        &b,
        "--image-path",
        &images,
        "--work-path",
        &work,
    ];
    let daemon = if shape.lazy {
        rs.push("--lazy-pages");
        let w = (Path::new(images.as_str()), Some(Path::new(work.as_str())));
        Some(crate::lazy::start_daemon_for(cfg, dir, w, &[], procs)?)
    } else {
        None
    };
    rs.push(id);
    let io = match runc_start(dir, "restore", &rs, console, procs) {
        Ok(io) => io,
        Err(e) => bail!(
            "{e:#}\n{}",
            crest::tail(&work_dir.join("restore.log"), 15).unwrap_or_default()
        ),
    };
    if let Some(d) = daemon {
        crate::lazy::wait_done_for(dir, &work_dir, d, procs)?;
    }
    let init2 = running_init(dir, id, "state-restored", procs)?;
    procs.track(init2);
    if inner_pid(init2) != Some(1) {
        problems.push(format!(
            "the restored init {init2} is not pid 1 inside: NSpid {}",
            status_field(init2, "NSpid")
        ));
    }
    io.counter()
        .wait_count(4, Duration::from_secs(10), "after the restore")?;
    let nums = io.counter().nums();
    let first = nums.first().copied().unwrap_or(0);
    let (low, high) = last_before;
    if first == 0 || first < low + 1 || first > high.saturating_add(1) {
        bail!(
            "the counter after the restore starts at {first}, expected {}{} (after: {nums:?})",
            low + 1,
            if high != low {
                format!("..={}", high.saturating_add(1))
            } else {
                String::new()
            }
        );
    }
    check_consecutive(&nums, first, "the counter after the restore")?;
    problems.extend(outside_diff(
        &before,
        &outside(init2, &masked)?,
        "after the restore",
    ));
    if shape.terminal && tty_nr(init2).unwrap_or(0) == 0 {
        problems.push(format!("the restored init {init2} has no controlling tty"));
    }
    if let (Some(gb), Some(gi)) = (&graph_before, &graph_images) {
        let g = nested::show_ns(
            cfg,
            dir,
            &["--tree", &init2.to_string()],
            "graph-after",
            procs,
        )?;
        let ga = graph_inner(&g, &inner_pids(init2));
        nested::graph_check(&mut problems, "in the images", gb, gi);
        nested::graph_check(&mut problems, "after the restore", gb, &ga);
    }
    if !work_dir.join("restore.log").is_file() {
        problems.push("no restore.log in the work directory".into());
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(Outcome::Pass)
}

/// After `runc checkpoint --leave-running`: the container counts on with
/// the same init and processes, no gap; then it is killed and deleted.
/// Returns the range the counter's value at the dump lies in.
fn left_running(
    dir: &CaseDir,
    id: &str,
    (init, before, masked): (Pid, &Outside, &[String]),
    io: &Stdio3,
    (ck_start, ck_end): (Instant, Instant),
    problems: &mut Vec<String>,
    procs: &mut Procs,
) -> Result<(u64, u64)> {
    // the container counts on, same init, same processes, no gap
    let n = io.counter().nums().len();
    io.counter()
        .wait_count(n + 3, Duration::from_secs(5), "after --leave-running")?;
    let now = running_init(dir, id, "state-left-running", procs)?;
    if now != init {
        bail!("runc state names pid {now} after --leave-running, {init} before");
    }
    check_consecutive(
        &io.counter().nums(),
        1,
        "the counter across --leave-running",
    )?;
    problems.extend(outside_diff(
        before,
        &outside(init, masked)?,
        "after --leave-running",
    ));
    if !procs::tree_problems(init).is_empty() {
        problems.extend(procs::tree_problems(init));
    }
    // the value the dump saw lies between the last number before the
    // checkpoint and the first after it
    let low = io
        .counter()
        .nums_before(ck_start)
        .last()
        .copied()
        .unwrap_or(0);
    let high = io
        .counter()
        .with(|g| g.nums.iter().find(|(t, _)| *t >= ck_end).map(|(_, n)| *n))
        .unwrap_or(u64::MAX);
    // now kill and delete it
    runc_ok(dir, "kill", &["kill", id, "KILL"], procs)?;
    match wait_exit(init, Duration::from_secs(10))? {
        Waited::Exited(_) => procs.untrack(init),
        w => bail!("the container's init {init} after runc kill: {w:?}"),
    }
    runc_ok(dir, "delete", &["delete", id], procs)?;
    io.counter()
        .wait_eof(Duration::from_secs(5), "the old stdout")?;
    Ok((low, high))
}

/// After `runc checkpoint`: the init is gone, its stdout ended after an
/// unbroken count; returns the last number twice.
fn dumped(init: Pid, io: &Stdio3, procs: &mut Procs) -> Result<(u64, u64)> {
    match wait_exit(init, Duration::from_secs(10))? {
        Waited::Exited(_) => procs.untrack(init),
        Waited::TimedOut => bail!("the container's init {init} runs on after runc checkpoint"),
        Waited::NotChild => {
            if !wait_until(Duration::from_secs(5), || !exists(init)) {
                bail!("the container's init {init} exists after runc checkpoint");
            }
        }
    }
    io.counter()
        .wait_eof(Duration::from_secs(5), "the old stdout")?;
    let nums = io.counter().nums();
    check_consecutive(&nums, 1, "the counter before the checkpoint")?;
    let last = nums.last().copied().unwrap_or(0);
    Ok((last, last))
}

/// crit decodes every image but the raw pages (and descriptors.json,
/// runc's), and the work directory's `stats-dump`.
fn check_images(
    dir: &CaseDir,
    work: &Path,
    problems: &mut Vec<String>,
    procs: &mut Procs,
) -> Result<()> {
    let Some(crit_bin) = crit::find_crit() else {
        return Ok(());
    };
    if let Err(e) = crit::require(dir, procs) {
        problems.push(format!("{e:#}"));
    }
    let stats = work.join("stats-dump");
    if stats.is_file() {
        if let Err(e) = crit::decode(&crit_bin, dir, "decode", &stats) {
            problems.push(format!("{e:#}"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- podman

/// podman with a store of its own under the case directory, runc as its
/// runtime, and crest as `criu` first on its PATH.
struct Podman {
    /// `/tmp/crest-podman-<harness pid>` (podman wants a runroot of at
    /// most 50 characters): root, runroot, tmpdir, `bin/criu`.
    base: PathBuf,
    /// The PATH podman runs with.
    path: String,
}

/// The container's name (its store is private, so it cannot clash).
const PODMAN_NAME: &str = "crest-e2e-counter";
/// The image `podman import` makes of the busybox rootfs.
const PODMAN_IMAGE: &str = "localhost/crest-e2e-busybox:latest";

impl Podman {
    fn new(cfg: &Config) -> Result<Podman> {
        let base = PathBuf::from(format!("/tmp/crest-podman-{}", std::process::id()));
        if base.exists() {
            bail!(
                "{} exists (a podman store of an earlier run)",
                base.display()
            );
        }
        for d in ["root", "runroot", "tmp", "bin"] {
            fs::create_dir_all(base.join(d))?;
        }
        symlink(&cfg.crest, base.join("bin/criu")).context("symlink criu -> crest")?;
        let old = std::env::var("PATH").unwrap_or_default();
        let path = format!("{}:{old}", base.join("bin").display());
        Ok(Podman { base, path })
    }

    /// `podman GLOBAL ARGS`, output in `<casedir>/<tag>.std{out,err}`.
    fn run(&self, dir: &CaseDir, tag: &str, args: &[&str], procs: &mut Procs) -> Result<Ran> {
        let mut c = Command::new("podman");
        for (flag, sub) in [
            ("--root", "root"),
            ("--runroot", "runroot"),
            ("--tmpdir", "tmp"),
        ] {
            c.arg(flag).arg(self.base.join(sub));
        }
        c.args([
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--storage-driver",
            "vfs",
            "--runtime",
            "runc",
        ])
        .args(args)
        .env("PATH", &self.path);
        crest::run(c, &dir.root, tag, RUNTIME_TIMEOUT, procs)
    }

    /// Like [`Podman::run`]; an error unless it exits 0.
    fn ok(&self, dir: &CaseDir, tag: &str, args: &[&str], procs: &mut Procs) -> Result<Ran> {
        let ran = self.run(dir, tag, args, procs)?;
        if !ran.success() {
            bail!(
                "{}\n{}",
                ran.failure(&format!("podman {}", args.join(" "))),
                tail_text(&ran.stderr)
            );
        }
        Ok(ran)
    }

    /// `podman inspect --format FORMAT NAME`.
    fn inspect(&self, dir: &CaseDir, format: &str, procs: &mut Procs) -> Result<String> {
        let ran = self.ok(
            dir,
            "inspect",
            &["inspect", "--format", format, PODMAN_NAME],
            procs,
        )?;
        Ok(ran.stdout.trim().to_string())
    }

    /// The container's init, which podman must say is running.
    fn init(&self, dir: &CaseDir, procs: &mut Procs) -> Result<Pid> {
        let said = self.inspect(dir, "{{.State.Status}} {{.State.Pid}}", procs)?;
        let pid = match said.split_whitespace().collect::<Vec<_>>()[..] {
            ["running", pid] => pid.parse::<i32>().unwrap_or(0),
            _ => 0,
        };
        if pid <= 0 || !exists(Pid::from_raw(pid)) {
            bail!("podman inspect says {said:?}, expected a running container and its pid");
        }
        Ok(Pid::from_raw(pid))
    }

    /// The numbers in `podman logs`.
    fn logs(&self, dir: &CaseDir, tag: &str, procs: &mut Procs) -> Result<Vec<u64>> {
        let ran = self.ok(dir, tag, &["logs", PODMAN_NAME], procs)?;
        Ok(ran
            .stdout
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect())
    }

    /// The container and the image removed, whatever podman left mounted
    /// under its directories unmounted, crest's logs copied to the case
    /// directory, the store removed.
    fn cleanup(&self, dir: &CaseDir, procs: &mut Procs) {
        let _ = self.run(
            dir,
            "cleanup-rm",
            &["rm", "-f", "-t", "0", PODMAN_NAME],
            procs,
        );
        let _ = self.run(dir, "cleanup-rmi", &["rmi", "-a", "-f"], procs);
        let base = self.base.to_string_lossy().to_string();
        // (podman's conmon outlives `podman rm` by a moment: it is podman's
        // to end, not a task the restore left)
        wait_until(Duration::from_secs(10), || !conmon_of(&base));
        let mounted: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
            .filter(|m| m.starts_with(&base))
            .collect();
        for m in mounted.iter().rev() {
            let _ = crest::run(
                cmd("umount", &["-l", m]),
                &dir.root,
                "cleanup-umount",
                RUNTIME_TIMEOUT,
                procs,
            );
        }
        if let Ok(ctrs) = fs::read_dir(self.base.join("root/vfs-containers")) {
            for c in ctrs.filter_map(Result::ok) {
                for l in ["dump.log", "restore.log"] {
                    let _ = fs::copy(
                        c.path().join("userdata").join(l),
                        dir.root.join(format!("podman-{l}")),
                    );
                }
            }
        }
        let still = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .contains(&base);
        if !still {
            let _ = fs::remove_dir_all(&self.base);
        }
    }

    /// The tail of the container's dump.log and restore.log (podman's
    /// runc work directory is the container's userdata).
    fn logs_of_crest(&self) -> String {
        let Ok(ctrs) = fs::read_dir(self.base.join("root/vfs-containers")) else {
            return String::new();
        };
        ctrs.filter_map(Result::ok)
            .flat_map(|c| {
                ["dump.log", "restore.log"]
                    .map(|l| crest::tail(&c.path().join("userdata").join(l), 12))
            })
            .flatten()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The printed stats: JSON with one container whose `criu_statistics`
/// holds `fields` (go-criu leaves out zeros: only those that cannot be 0).
fn check_stats(text: &str, what: &str, fields: &[&str]) -> Result<()> {
    let v: Value = serde_json::from_str(text)
        .with_context(|| format!("{what} --print-stats printed no JSON: {text:?}"))?;
    let stats = &v["container_statistics"][0]["criu_statistics"];
    if !stats.is_object() {
        bail!("{what} --print-stats has no container_statistics[0].criu_statistics: {v}");
    }
    for f in fields {
        if stats[f].as_u64().is_none_or(|n| n == 0) {
            bail!("{what} --print-stats: criu_statistics.{f} missing or 0: {stats}");
        }
    }
    Ok(())
}

fn podman_export_import(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    podman_case(cfg, dir, false, procs)
}

fn podman_pre_checkpoint(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    podman_case(cfg, dir, true, procs)
}

/// The podman cases: run, checkpoint (exported, or after a pre-checkpoint
/// and restored in place), restore, compare.
fn podman_case(cfg: &Config, dir: &CaseDir, pre: bool, procs: &mut Procs) -> Result<Outcome> {
    if let Some(why) = missing(&[("podman", "podman"), ("runc", "runc"), ("conmon", "conmon")]) {
        return Ok(Outcome::Skip(why));
    }
    case::check_crest(cfg)?;
    let pm = Podman::new(cfg)?;
    let result = podman_steps(dir, &pm, pre, procs);
    let crest_logs = pm.logs_of_crest();
    pm.cleanup(dir, procs);
    result.map_err(|e| anyhow::anyhow!("{e:#}\n{crest_logs}"))
}

fn podman_steps(dir: &CaseDir, pm: &Podman, pre: bool, procs: &mut Procs) -> Result<Outcome> {
    let rootfs = dir.root.join("rootfs");
    make_rootfs(&rootfs, false, dir, procs)?;
    let tarball = dir.root.join("rootfs.tar").to_string_lossy().to_string();
    let r = rootfs.to_string_lossy().to_string();
    let ran = crest::run(
        cmd("tar", &["-C", &r, "-cf", &tarball, "."]),
        &dir.root,
        "tar",
        RUNTIME_TIMEOUT,
        procs,
    )?;
    if !ran.success() {
        bail!(ran.failure("tar the rootfs"));
    }
    pm.ok(dir, "import", &["import", &tarball, PODMAN_IMAGE], procs)?;
    // (with podman's default seccomp profile: its filter comes back)
    pm.ok(
        dir,
        "run",
        &[
            "run",
            "-d",
            "--name",
            PODMAN_NAME,
            "--network",
            "none",
            "--log-driver",
            "k8s-file",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
            PODMAN_IMAGE,
            "sh",
            "/init.sh",
        ],
        procs,
    )?;
    let init = pm.init(dir, procs)?;
    procs.track(init);
    if !wait_until(Duration::from_secs(10), || {
        pm.logs(dir, "logs-wait", procs)
            .map(|n| n.len())
            .unwrap_or(0)
            >= 4
    }) {
        bail!("podman logs show fewer than 4 numbers after 10 s");
    }
    let oci: Value = serde_json::from_str(
        &fs::read_to_string(pm.inspect(dir, "{{.OCIConfigPath}}", procs)?)
            .context("read the container's OCI config")?,
    )?;
    let masked: Vec<String> = oci["linux"]["maskedPaths"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let before = outside(init, &masked)?;

    let export = dir
        .root
        .join("checkpoint.tar.gz")
        .to_string_lossy()
        .to_string();
    let mut ck = vec!["container", "checkpoint"];
    if pre {
        // (podman's iterative checkpoint: runc's --pre-dump, then the
        // checkpoint with the pre-dump as its parent, restored in place)
        pm.ok(
            dir,
            "pre-checkpoint",
            &["container", "checkpoint", "--pre-checkpoint", PODMAN_NAME],
            procs,
        )?;
        std::thread::sleep(Duration::from_millis(300));
        ck.extend(["--with-previous", "--keep"]);
    } else {
        ck.extend(["--export", &export]);
    }
    ck.extend(["--print-stats", PODMAN_NAME]);
    let ran = pm.ok(dir, "checkpoint", &ck, procs)?;
    check_stats(
        &ran.stdout,
        "podman container checkpoint",
        &[
            "freezing_time",
            "frozen_time",
            "memdump_time",
            "pages_scanned",
            "pages_written",
        ],
    )?;
    if !wait_until(Duration::from_secs(10), || !exists(init)) {
        bail!("the container's init {init} exists after podman container checkpoint");
    }
    procs.untrack(init);
    let status = pm.inspect(dir, "{{.State.Status}}", procs)?;
    if status == "running" {
        bail!("podman says the container is {status} after the checkpoint");
    }
    let old = pm.logs(dir, "logs-before", procs)?;
    check_consecutive(&old, 1, "the counter before the checkpoint (podman logs)")?;
    let last = old.last().copied().unwrap_or(0);
    let ran = if pre {
        pm.ok(
            dir,
            "restore",
            &["container", "restore", "--print-stats", PODMAN_NAME],
            procs,
        )?
    } else {
        pm.ok(dir, "rm", &["rm", "-f", "-t", "0", PODMAN_NAME], procs)?;
        pm.ok(
            dir,
            "restore",
            &["container", "restore", "--import", &export, "--print-stats"],
            procs,
        )?
    };
    check_stats(&ran.stdout, "podman container restore", &["restore_time"])?;
    let init2 = pm.init(dir, procs)?;
    procs.track(init2);
    let restored = pm.inspect(dir, "{{.State.Restored}}", procs)?;
    let mut problems = Vec::new();
    if restored != "true" {
        problems.push(format!("podman inspect: State.Restored is {restored}"));
    }
    let mut now = Vec::new();
    let enough = wait_until(Duration::from_secs(10), || {
        now = pm.logs(dir, "logs-after", procs).unwrap_or_default();
        now.len() >= old.len() + 4 || (now.len() >= 4 && !now.starts_with(&old))
    });
    if !enough {
        bail!(
            "podman logs after the restore: {now:?} (before: {} numbers)",
            old.len()
        );
    }
    // the log may or may not carry the old lines; what follows them must
    // go on from the last number before
    let new = now.strip_prefix(&old[..]).unwrap_or(&now[..]);
    check_consecutive(new, last + 1, "the counter after the restore (podman logs)")?;
    problems.extend(outside_diff(
        &before,
        &outside(init2, &masked)?,
        "after the restore",
    ));
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(Outcome::Pass)
}

/// Whether a conmon of the podman whose state lives under `base` runs.
fn conmon_of(base: &str) -> bool {
    let Ok(dir) = fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(Result::ok).any(|e| {
        let p = e.path();
        fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == "conmon")
            && fs::read(p.join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(base))
    })
}
