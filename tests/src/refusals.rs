//! Container state crest cannot dump yet must fail the dump with a
//! message naming it, and leave the tree running untouched: the workload
//! (`small_tree`, the child of `unshare`) still passes its own check.
//!
//! - `netfilter_refused`: a network namespace with firewall state (an
//!   nftables table and a legacy iptables rule);
//! - `tmpfs_covered_refused`: a tmpfs with a file that a bind mount on the
//!   same mountpoint covers (its files cannot be read by path);
//! - `ebpf_filter_refused`: a socket filter attached with `SO_ATTACH_BPF`;
//! - `traced_task_refused`: a child its parent traces (`traced`): the
//!   refusal says which task traces which.
//! - `aio_refused` (`aio pending`): an AIO context with a completion not
//!   reaped yet (the ring is made again empty), which must still be there
//!   after the refused dump;
//! - `hugetlb_private` (`kernel_objects hugetlb` and `hugetlb_shared`,
//!   host, ns and uns flavors): a private MAP_HUGETLB mapping with a
//!   pattern per 4 KiB page comes back with its data, still of 2 MiB
//!   pages; a shared one, with a child, stays shared; so does a
//!   SHM_HUGETLB segment attached (`shm_hugetlb`) and a MFD_HUGETLB memfd
//!   mapped (`hugetlb_memfd`); a file on a
//!   hugetlbfs mount (host flavor), mapped shared and private with a page
//!   of its own, comes back mapped from the file with that page; one
//!   mapped shared and deleted (`hugetlbfs_deleted`) comes back as a
//!   ghost file made again on the mount, filled through a mapping;
//! - `io_uring_map_refused` (`kernel_objects io_uring`): an io_uring's
//!   ring still mapped after its fd was closed (the dump failed on a stat
//!   before);
//! - `io_uring_inflight_refused` (`io_uring inflight`): an io_uring with a
//!   read of an empty pipe in flight; after the refused dump the read
//!   completes once the pipe has data;
//! - `packet_tx_used_refused` (`packet tx_used`): a packet socket's
//!   TPACKET_V2 TX ring a frame went out through (the kernel's next TX
//!   frame cannot be seen); after the refused dump the next frame lands in
//!   RX frame 1;
//! - `chroot_refused`: `small_tree` chrooted into a bind mount of `/`, the
//!   first task of a mount namespace of its own: the namespace's mounts,
//!   as its mountinfo shows them, are below its root (a chroot below an
//!   unchrooted task of its namespace is carried: workload `chroot`);
//! - `tcp_in_flight`: a TCP listener (`tcp_listener`) with a connection
//!   from the harness waiting, not accepted: the dump is refused naming it
//!   and `--skip-in-flight`, the tree running on; with `--skip-in-flight`
//!   it is dumped without that connection (the harness's end sees it
//!   reset or closed, not a hang), and after the restore a new connection
//!   reaches the listener on the same port and is answered.

use std::fs;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;

use crate::case::{self, CaseDir, DirCase, READY_TIMEOUT};
use crate::procs::{self, Procs};
use crate::suite::Report;
use crate::{Config, Outcome, StdioKind};

const CASES: [(&str, DirCase); 11] = [
    ("io_uring_map_refused", io_uring_map_refused),
    ("io_uring_inflight_refused", io_uring_inflight_refused),
    ("packet_tx_used_refused", packet_tx_used_refused),
    ("chroot_refused", chroot_refused),
    ("aio_refused", aio_refused),
    ("hugetlb_private", hugetlb_private),
    ("tcp_in_flight", tcp_in_flight),
    ("netfilter_refused", netfilter_refused),
    ("tmpfs_covered_refused", tmpfs_covered_refused),
    ("ebpf_filter_refused", ebpf_filter_refused),
    ("traced_task_refused", traced_task_refused),
];

pub fn run(cfg: &Config, report: &mut Report, selected: &dyn Fn(&str) -> bool) {
    case::run_root_cases(cfg, report, selected, &CASES);
}

fn found(bin: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(bin).is_file())
}

fn netfilter_refused(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    if !found("nft") || !found("iptables-legacy") || !found("unshare") {
        return Ok(Outcome::Skip(
            "nft, iptables-legacy or unshare not found (Debian packages nftables, iptables, \
             util-linux)"
                .into(),
        ));
    }
    refused(
        cfg,
        dir,
        procs,
        &["-n"],
        "nft add table inet crest_t && iptables-legacy -A INPUT -j ACCEPT",
        &["nftables crest_t", "iptables filter"],
    )
}

/// A socket filter attached with `SO_ATTACH_BPF`: the kernel keeps no copy
/// crest could read back, so the dump is refused naming it.
fn ebpf_filter_refused(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    refused_in(
        cfg,
        dir,
        procs,
        (&[], "true"),
        ("sock_attrs", "ebpf"),
        &["SO_ATTACH_BPF"],
    )
}

/// A task another task of the tree traces: crest cannot seize it.
fn traced_task_refused(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    refused_in(
        cfg,
        dir,
        procs,
        (&[], "true"),
        ("traced", ""),
        &["traced by pid", "a task of the tree"],
    )
}

fn chroot_refused(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let jail = dir.root.join("jail");
    // (the setup execs the chrooted workload itself)
    // (the chrooted task is the first of its mount namespace: the
    // namespace's mounts can only be read through it)
    let setup = format!(
        "mkdir -p {j} && exec unshare -m --propagation private sh -c \
         'mount --rbind / {j} && exec chroot {j} {w} {s}'",
        j = jail.display(),
        w = cfg.workload("small_tree").display(),
        s = dir.state.display()
    );
    refused_in(
        cfg,
        dir,
        procs,
        (&[], &setup),
        ("small_tree", ""),
        &["chroot or pivot_root"],
    )
}

fn io_uring_map_refused(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    refused_in(
        cfg,
        dir,
        procs,
        (&[], "true"),
        ("kernel_objects", "io_uring"),
        &["anonymous inode [io_uring]"],
    )
}

fn io_uring_inflight_refused(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    refused_in(
        cfg,
        dir,
        procs,
        (&[], "true"),
        ("io_uring", "inflight"),
        &["io_uring", "in flight"],
    )
}

fn packet_tx_used_refused(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    refused_in(
        cfg,
        dir,
        procs,
        (&[], "true"),
        ("packet", "tx_used"),
        &["TX ring was used"],
    )
}

fn aio_refused(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    refused_in(
        cfg,
        dir,
        procs,
        (&[], "true"),
        ("aio", "pending"),
        &["AIO context", "completed events not read yet"],
    )
}

const HUGE_POOL: &str = "/proc/sys/vm/nr_hugepages";

/// Runs `f` with `n` more huge pages in the pool (given back after):
/// None if the pool cannot grow.
fn with_huge_pages<T>(n: u64, f: impl FnOnce() -> T) -> Option<T> {
    let before = fs::read_to_string(HUGE_POOL).unwrap_or_default();
    let have: u64 = before.trim().parse().unwrap_or(0);
    fs::write(HUGE_POOL, format!("{}\n", have + n)).ok()?;
    let r = f();
    let _ = fs::write(HUGE_POOL, format!("{have}\n"));
    Some(r)
}

/// Mounts a hugetlbfs at `dir`'s `state/hp` for `f`.
fn with_hugetlbfs<T>(dir: &CaseDir, f: impl FnOnce() -> T) -> Option<T> {
    let hp = dir.state.join("hp");
    fs::create_dir_all(&hp).ok()?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "hugetlbfs", "none"])
        .arg(&hp)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        return None;
    }
    let r = f();
    let _ = std::process::Command::new("umount").arg(&hp).status();
    Some(r)
}

/// A private MAP_HUGETLB mapping dumped and restored (pages and page size
/// kept), in every flavor and with both stdio kinds: the pool holds two
/// huge pages more meanwhile (the dumped task frees its page before the
/// restore takes one).
fn hugetlb_private(cfg: &Config, dir: &CaseDir, _procs: &mut Procs) -> Result<Outcome> {
    let w = crate::case::Workload {
        name: "hugetlb_private",
        program: crate::case::Program::C("kernel_objects"),
        args: vec!["hugetlb".into()],
        settle: crate::case::Settle::Blocked,
    };
    let r = with_huge_pages(2, || {
        let flavors = [crate::Flavor::Host, crate::Flavor::Ns, crate::Flavor::Uns];
        for (flavor, kind) in flavors.iter().flat_map(|f| {
            [
                (*f, "hugetlb"),
                (*f, "hugetlb_shared"),
                (*f, "shm_hugetlb"),
                (*f, "hugetlb_memfd"),
            ]
        }) {
            let w = crate::case::Workload {
                args: vec![kind.into()],
                ..w.clone()
            };
            let name = format!("{}-{}-{kind}", dir.root.display(), flavor.name());
            let sub = CaseDir::create(cfg, name.rsplit('/').next().unwrap_or("hugetlb"))?;
            let mode = if cfg.checkpoint {
                case::Mode::DumpRestore
            } else {
                case::Mode::SelfCheck
            };
            match case::run_flavor(cfg, &w, &sub, flavor, StdioKind::DevNull, mode).0 {
                Outcome::Pass | Outcome::PassWith(_) => sub.remove(),
                Outcome::Skip(why) => return Ok(Outcome::Skip(why)),
                Outcome::Fail(why) => bail!("[{}, {kind}] {why}", flavor.name()),
            }
        }
        // a file on a hugetlbfs mount, mapped shared and private (its
        // page, and the private copy; the file keeps its page across),
        // and one mapped shared and deleted (a ghost file on the mount)
        for kind in ["hugetlbfs", "hugetlbfs_deleted"] {
            if let Some(why) = hugetlbfs_case(cfg, dir, &w, kind)? {
                return Ok(Outcome::Skip(why));
            }
        }
        Ok(Outcome::Pass)
    });
    r.unwrap_or_else(|| {
        Ok(Outcome::Skip(format!(
            "cannot reserve huge pages in {HUGE_POOL}"
        )))
    })
}

/// `kernel_objects KIND` with a hugetlbfs mount at STATEDIR/hp, in the host
/// flavor: Err on a failure, Ok(Some(why)) where it must be skipped.
fn hugetlbfs_case(
    cfg: &Config,
    dir: &CaseDir,
    w: &crate::case::Workload,
    kind: &str,
) -> Result<Option<String>> {
    let w = crate::case::Workload {
        args: vec![kind.into()],
        ..w.clone()
    };
    let name = format!("{}-{kind}", dir.root.display());
    let sub = CaseDir::create(cfg, name.rsplit('/').next().unwrap_or("hugetlbfs"))?;
    let outcome = with_hugetlbfs(&sub, || {
        with_huge_pages(2, || {
            let mode = if cfg.checkpoint {
                case::Mode::DumpRestore
            } else {
                case::Mode::SelfCheck
            };
            case::run_flavor(cfg, &w, &sub, crate::Flavor::Host, StdioKind::DevNull, mode).0
        })
    });
    match outcome {
        Some(Some(Outcome::Pass | Outcome::PassWith(_))) => sub.remove(),
        Some(Some(Outcome::Fail(why))) => bail!("[host, {kind}] {why}"),
        Some(Some(Outcome::Skip(why))) => return Ok(Some(why)),
        Some(None) => return Ok(Some(format!("cannot reserve huge pages in {HUGE_POOL}"))),
        None => return Ok(Some("cannot mount hugetlbfs".into())),
    }
    Ok(None)
}

fn tcp_in_flight(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let w = case::Workload {
        name: "tcp_listener",
        program: case::Program::C("tcp_listener"),
        args: Vec::new(),
        settle: case::Settle::Blocked,
    };
    let pid = case::start(cfg, &w, dir, StdioKind::LogFile, procs)?;
    case::wait_ready(dir, pid, procs)?;
    let port: u16 = fs::read_to_string(dir.state.join("port"))?
        .trim()
        .parse()
        .context("the listener's port")?;
    let mut waiting = TcpStream::connect(("127.0.0.1", port)).context("connect (not accepted)")?;
    waiting.write_all(b"early")?;

    let ran = case::run_dump(cfg, dir, pid, false, procs)?;
    if ran.success() {
        bail!("crest dumped a TCP listener with a connection waiting, without --skip-in-flight");
    }
    if !(ran.stderr.contains("not accepted") && ran.stderr.contains("--skip-in-flight")) {
        bail!(ran.failure("crest dump (expected a refusal naming the waiting connection)"));
    }
    if !procs::alive(pid) {
        bail!("the refused dump harmed the tree: pid {pid} is gone");
    }
    fs::write(dir.state.join("dump-args"), "--skip-in-flight\n")?;
    case::dump(cfg, dir, pid, false, procs)?;
    waiting.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut b = [0u8; 8];
    match waiting.read(&mut b) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            bail!("the connection left behind at the dump hangs: neither reset nor closed")
        }
        Ok(0) | Err(_) => {}
        Ok(n) => bail!("the connection left behind at the dump gave {n} bytes"),
    }
    let (ran, _) = case::run_restore_detached(cfg, dir, procs)?;
    if !ran.success() {
        bail!(ran.failure("crest restore"));
    }
    procs.track(pid);
    let mut fresh = TcpStream::connect(("127.0.0.1", port)).context("connect after the restore")?;
    fresh.write_all(b"ping")?;
    let verdict = case::finish(dir, pid, StdioKind::LogFile, procs)?;
    fresh.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut got = [0u8; 4];
    fresh
        .read_exact(&mut got)
        .context("read the listener's answer")?;
    if &got != b"pong" {
        bail!("the listener answered {got:?}");
    }
    Ok(verdict)
}

fn tmpfs_covered_refused(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    refused(
        cfg,
        dir,
        procs,
        &["-m", "--propagation", "private"],
        "mount -t tmpfs none /mnt && echo x > /mnt/f && mount --bind /usr /mnt",
        &["tmpfs at /mnt", "covers"],
    )
}

/// Starts `unshare FLAGS -f sh -c 'SETUP && exec small_tree STATEDIR'`,
/// dumps it, and wants a refusal whose message holds every one of `want`.
fn refused(
    cfg: &Config,
    dir: &CaseDir,
    procs: &mut Procs,
    flags: &[&str],
    setup: &str,
    want: &[&str],
) -> Result<Outcome> {
    refused_in(cfg, dir, procs, (flags, setup), ("small_tree", ""), want)
}

/// [`refused`] with workload `program` and its arguments (after the state
/// directory).
fn refused_in(
    cfg: &Config,
    dir: &CaseDir,
    procs: &mut Procs,
    (flags, setup): (&[&str], &str),
    (program, args): (&str, &str),
    want: &[&str],
) -> Result<Outcome> {
    if !found("unshare") {
        return Ok(Outcome::Skip(
            "unshare not found (Debian package util-linux)".into(),
        ));
    }
    let script = format!(
        "{setup} && exec {} {} {args}",
        cfg.workload(program).display(),
        dir.state.display()
    );
    let mut cmd = Command::new(cfg.workload("launch"));
    cmd.arg("unshare")
        .args(flags)
        .args(["-f", "sh", "-c", &script])
        .current_dir(&dir.root)
        .stdin(Stdio::null());
    case::set_stdio(&mut cmd, dir, StdioKind::LogFile)?;
    let root = Pid::from_raw(cmd.spawn().context("spawn unshare")?.id() as i32);
    procs.track(root);
    let ready = dir.state.join("ready");
    let start = Instant::now();
    while !ready.exists() {
        if start.elapsed() > READY_TIMEOUT {
            let log = fs::read_to_string(dir.root.join("out.log")).unwrap_or_default();
            bail!(
                "workload not ready after {READY_TIMEOUT:?}; out.log: {:?}",
                log.trim()
            );
        }
        sleep(procs::POLL);
    }
    let main = procs::read_pid_file(&ready)?;
    procs.track(main);
    let Some(ran) = case::dump_attempt(cfg, dir, root, false, procs)? else {
        bail!("crest dumped a tree set up with {setup:?}");
    };
    let said = ran.stderr.trim();
    if !want.iter().all(|w| said.contains(w)) {
        bail!(ran.failure(&format!("crest dump (expected a refusal naming {want:?})")));
    }
    // (a task traced by another of the tree, as `traced` sets up, is how
    // the tree was)
    let tree = procs::tree_snapshot(root).unwrap_or_default();
    let stuck: Vec<String> = procs::tree_problems(root)
        .into_iter()
        .filter(|p| {
            !p.rsplit_once(" is traced by ")
                .and_then(|(_, t)| t.trim().parse::<i32>().ok())
                .is_some_and(|t| tree.contains_key(&t))
        })
        .collect();
    if !stuck.is_empty() {
        bail!(
            "the refused dump left the tree disturbed:\n  {}",
            stuck.join("\n  ")
        );
    }
    let o = case::finish_tree(dir, main, root, StdioKind::LogFile, procs)?;
    procs.untrack(main);
    Ok(o)
}
