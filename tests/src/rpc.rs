//! CRIU's RPC at the protocol level (issue 12, item 8): a client of the
//! test's own, speaking `criu_req`/`criu_resp` (crest_images::pb::rpc)
//! over a SOCK_SEQPACKET socketpair, with `crest swrk 7` holding the
//! server end at fd 7 (put there by `sh -c 'exec "$0" swrk 7 7<&0'`), as
//! runc, crun's libcriu and go-criu start CRIU.
//!
//! Cases (`rpc_*[host]`):
//! - `rpc_version`: VERSION (≥ 3.17, named crest) with keep_open, a second
//!   request on the same socket, then FEATURE_CHECK (mem_track and
//!   lazy_pages as the kernel allows, pidfd_store false),
//!   and closing the socket ends crest with 0.
//! - `rpc_check`: CHECK succeeds.
//! - `rpc_pre_dump`: PRE_DUMP twice and DUMP on one socket, each with its
//!   parent images; the restored `mem_iter` passes its check of every page.
//! - `rpc_dump_restore`: `small_tree` dumped with `images_dir_fd` (a
//!   directory fd of the test), `log_file`, `notify_scripts` (pre-dump,
//!   post-dump answered in order), restored with every restore notification
//!   in CRIU's order and the root's pid where CRIU gives it; the tree is the
//!   same and passes its own check.
//! - `rpc_work_dir`: `work_dir_fd` elsewhere: the log and stats-dump go
//!   there (a `leave_running` dump).
//! - `rpc_notify_refused_dump`: pre-dump and post-dump answered with
//!   `notify_success=false`: the dump fails, the tree runs on unharmed.
//! - `rpc_notify_refused_restore`: post-restore refused: no task is left;
//!   a second restore succeeds.
//! - `rpc_rst_sibling`: the restored root's parent (at post-restore, while
//!   crest still runs) is the test process.
//! - `rpc_bad_input`: garbage, NOTIFY out of turn, unsupported request
//!   types, an empty datagram, a closed socket, a 2 MiB datagram.
//! - `rpc_unsupported_options`: lazy_pages, lsm_profile on DUMP are
//!   refused naming the option; the tree runs on.
//! - `rpc_config_file`: `config_file` options override the RPC's; a missing
//!   one is ignored.

use std::fs::{self, File};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use crest_images::pb::rpc::{CriuFeatures, CriuOpts, CriuReq, CriuReqType, CriuResp};
use nix::sys::socket::{
    recv, send, setsockopt, socketpair, sockopt, AddressFamily, MsgFlags, SockFlag, SockType,
};
use nix::sys::time::{TimeVal, TimeValLike};
use nix::unistd::Pid;
use prost::Message;

use crate::case::{self, CaseDir, DirCase};
use crate::criu_cli::{check_restored, reap_dumped, start_tree};
use crate::procs::{self, alive, exists, wait_exit, wait_until, Exit, Procs, Waited};
use crate::suite::Report;
use crate::{Config, Outcome};

const CASES: [(&str, DirCase); 11] = [
    ("rpc_pre_dump", rpc_pre_dump),
    ("rpc_version", rpc_version),
    ("rpc_check", rpc_check),
    ("rpc_dump_restore", rpc_dump_restore),
    ("rpc_work_dir", rpc_work_dir),
    ("rpc_notify_refused_dump", rpc_notify_refused_dump),
    ("rpc_notify_refused_restore", rpc_notify_refused_restore),
    ("rpc_rst_sibling", rpc_rst_sibling),
    ("rpc_bad_input", rpc_bad_input),
    ("rpc_unsupported_options", rpc_unsupported_options),
    ("rpc_config_file", rpc_config_file),
];

pub fn run(cfg: &Config, report: &mut Report, selected: &dyn Fn(&str) -> bool) {
    case::run_root_cases(cfg, report, selected, &CASES);
}

/// How long crest may take to answer one request or to exit.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// One `crest swrk 7` and the client's end of its socket.
struct Swrk {
    sock: OwnedFd,
    pid: Pid,
    tag: String,
}

/// A notification crest sent: the script name and the pid it named.
type Note = (String, Option<i32>);

impl Swrk {
    /// Starts `crest swrk 7` in `dir`, its output in `<tag>.stdout/.stderr`.
    fn start(cfg: &Config, dir: &CaseDir, tag: &str, procs: &mut Procs) -> Result<Swrk> {
        case::check_crest(cfg)?;
        let (client, server) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .context("socketpair(AF_UNIX, SOCK_SEQPACKET)")?;
        setsockopt(
            &client,
            sockopt::ReceiveTimeout,
            &TimeVal::seconds(ANSWER_TIMEOUT.as_secs() as i64),
        )
        .context("SO_RCVTIMEO")?;
        let out = File::create(dir.root.join(format!("{tag}.stdout")))?;
        let err = File::create(dir.root.join(format!("{tag}.stderr")))?;
        // the server end arrives as stdin and moves to fd 7, as runtimes
        // hand CRIU its socket at a number of their choosing
        let child = Command::new("sh")
            .arg("-c")
            .arg("exec \"$0\" swrk 7 7<&0 0</dev/null")
            .arg(&cfg.crest)
            .current_dir(&dir.root)
            .stdin(Stdio::from(server))
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("spawn crest swrk 7")?;
        let pid = Pid::from_raw(child.id() as i32);
        procs.track(pid);
        Ok(Swrk {
            sock: client,
            pid,
            tag: tag.to_string(),
        })
    }

    fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        let n = send(self.sock.as_raw_fd(), bytes, MsgFlags::empty())
            .with_context(|| format!("send a datagram of {} bytes to crest", bytes.len()))?;
        if n != bytes.len() {
            bail!("sent {n} of {} bytes", bytes.len());
        }
        Ok(())
    }

    fn send(&self, req: &CriuReq) -> Result<()> {
        self.send_raw(&req.encode_to_vec())
    }

    /// The next answer; None when crest closed its end.
    fn recv(&self) -> Result<Option<CriuResp>> {
        let mut buf = vec![0u8; 1 << 16];
        let n = recv(self.sock.as_raw_fd(), &mut buf, MsgFlags::empty())
            .with_context(|| format!("receive an answer from crest ({})", self.tag))?;
        if n == 0 {
            return Ok(None);
        }
        let resp = CriuResp::decode(&buf[..n])
            .with_context(|| format!("crest's answer of {n} bytes is not a criu_resp"))?;
        Ok(Some(resp))
    }

    /// Sends `req` and answers every notification with what `answer` says
    /// (called with the script and its pid); returns the final answer and
    /// the notifications in order.
    fn call(
        &self,
        req: &CriuReq,
        mut answer: impl FnMut(&str, Option<i32>) -> bool,
    ) -> Result<(CriuResp, Vec<Note>)> {
        self.send(req)?;
        let mut notes = Vec::new();
        loop {
            let Some(resp) = self.recv()? else {
                bail!(
                    "crest ({}) closed the socket without answering (after notifications \
                     {notes:?})",
                    self.tag
                );
            };
            if resp.r#type != CriuReqType::Notify as i32 {
                return Ok((resp, notes));
            }
            let n = resp.notify.clone().unwrap_or_default();
            let script = n.script.clone().unwrap_or_default();
            let ok = answer(&script, n.pid);
            notes.push((script, n.pid));
            self.send(&CriuReq {
                r#type: CriuReqType::Notify as i32,
                notify_success: Some(ok),
                ..Default::default()
            })?;
        }
    }

    /// Waits for crest to exit.
    fn wait(&self, procs: &mut Procs) -> Result<Exit> {
        wait_crest(self.pid, &self.tag, procs)
    }

    /// Closes the client's end and waits for crest, which must exit 0.
    fn close_expect_zero(self, procs: &mut Procs) -> Result<()> {
        let Swrk { sock, pid, tag } = self;
        drop(sock);
        let exit = wait_crest(pid, &tag, procs)?;
        if exit != Exit::Code(0) {
            bail!("crest swrk ({tag}) ended with {exit} after the caller closed its socket");
        }
        Ok(())
    }
}

fn wait_crest(pid: Pid, tag: &str, procs: &mut Procs) -> Result<Exit> {
    match wait_exit(pid, ANSWER_TIMEOUT)? {
        Waited::Exited(e) => {
            procs.untrack(pid);
            Ok(e)
        }
        Waited::TimedOut => {
            bail!("crest swrk ({tag}) still runs {ANSWER_TIMEOUT:?} after its last answer")
        }
        Waited::NotChild => bail!("crest swrk ({tag}) is not our child"),
    }
}

fn req(t: CriuReqType, opts: Option<CriuOpts>) -> CriuReq {
    CriuReq {
        r#type: t as i32,
        opts,
        ..Default::default()
    }
}

fn type_name(t: i32) -> String {
    CriuReqType::try_from(t)
        .map(|t| t.as_str_name().to_string())
        .unwrap_or_else(|_| format!("type {t}"))
}

/// The answer must be of type `t` and succeed.
fn expect_ok(resp: &CriuResp, t: CriuReqType, what: &str) -> Result<()> {
    if resp.r#type != t as i32 || !resp.success {
        bail!(
            "{what}: answer type {} success {} (expected {} success): {}",
            type_name(resp.r#type),
            resp.success,
            t.as_str_name(),
            resp.cr_errmsg.as_deref().unwrap_or("(no cr_errmsg)")
        );
    }
    Ok(())
}

/// The answer must be of type `t`, fail, and say something containing one
/// of `words`; returns its message.
fn expect_refusal(resp: &CriuResp, t: CriuReqType, words: &[&str], what: &str) -> Result<String> {
    let msg = resp.cr_errmsg.clone().unwrap_or_default();
    if resp.r#type != t as i32 || resp.success {
        bail!(
            "{what}: answer type {} success {} (expected {} with success=false): {msg:?}",
            type_name(resp.r#type),
            resp.success,
            t.as_str_name(),
        );
    }
    if !words.is_empty() && !words.iter().any(|w| msg.contains(w)) {
        bail!("{what}: cr_errmsg {msg:?} names none of {words:?}");
    }
    Ok(msg)
}

/// Options for a DUMP or RESTORE with the images at the client's fd.
fn opts(images: &File, log: &str) -> CriuOpts {
    CriuOpts {
        images_dir_fd: images.as_raw_fd(),
        log_file: Some(log.to_string()),
        log_level: Some(4),
        ..Default::default()
    }
}

fn open_dir(p: &Path) -> Result<File> {
    File::open(p).with_context(|| format!("open {}", p.display()))
}

fn rpc_version(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let s = Swrk::start(cfg, dir, "swrk", procs)?;
    let mut r = req(CriuReqType::Version, None);
    r.keep_open = Some(true);
    for round in 1..=2 {
        let (resp, _) = s.call(&r, |_, _| true)?;
        expect_ok(&resp, CriuReqType::Version, &format!("VERSION #{round}"))?;
        let v = resp.version.context("VERSION answered without a version")?;
        let number = v.major_number * 10000 + v.minor_number * 100 + v.sublevel.unwrap_or(0);
        if number < 31700 {
            bail!(
                "VERSION says {}.{} (number {number}), runtimes want ≥ 3.17",
                v.major_number,
                v.minor_number
            );
        }
        let name = v.name.unwrap_or_default();
        if !name.contains("crest") {
            bail!("VERSION's name is {name:?}, not crest's");
        }
    }
    // FEATURE_CHECK on the same socket
    let mut f = req(CriuReqType::FeatureCheck, None);
    f.keep_open = Some(true);
    f.features = Some(CriuFeatures {
        mem_track: Some(true),
        lazy_pages: Some(true),
        pidfd_store: Some(true),
    });
    let (resp, _) = s.call(&f, |_, _| true)?;
    expect_ok(&resp, CriuReqType::FeatureCheck, "FEATURE_CHECK")?;
    let got = resp
        .features
        .context("FEATURE_CHECK answered without features")?;
    // (memory tracking as the kernel allows it: asynchronous userfaultfd
    // write protection and PAGEMAP_SCAN)
    let track =
        crest_sys::misc::uffd_wp_async_supported() && crest_sys::misc::pagemap_scan_supported();
    // (lazy pages where a userfaultfd has the fork, remap, remove and
    // unmap events)
    let lazy = crest_sys::uffd::lazy_supported();
    if got.mem_track != Some(track)
        || got.lazy_pages != Some(lazy)
        || got.pidfd_store != Some(false)
    {
        bail!(
            "FEATURE_CHECK answered {got:?}, expected mem_track {track}, lazy_pages {lazy}, \
             pidfd_store false"
        );
    }
    s.close_expect_zero(procs)?;
    Ok(Outcome::Pass)
}

fn rpc_check(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let s = Swrk::start(cfg, dir, "swrk", procs)?;
    let (resp, _) = s.call(&req(CriuReqType::Check, None), |_, _| true)?;
    expect_ok(&resp, CriuReqType::Check, "CHECK")?;
    let exit = s.wait(procs)?;
    if exit != Exit::Code(0) {
        bail!("crest swrk ended with {exit} after CHECK");
    }
    Ok(Outcome::Pass)
}

/// DUMPs the tree of `pid` (killed) over RPC with notifications; checks
/// the order, the answer, crest's exit and stats-dump.
fn dump_over_rpc(cfg: &Config, dir: &CaseDir, pid: Pid, procs: &mut Procs) -> Result<()> {
    let images = open_dir(&dir.images)?;
    let s = Swrk::start(cfg, dir, "dump", procs)?;
    let mut o = opts(&images, "dump.log");
    o.pid = Some(pid.as_raw());
    o.notify_scripts = Some(true);
    let (resp, notes) = s.call(&req(CriuReqType::Dump, Some(o)), |_, _| true)?;
    expect_ok(&resp, CriuReqType::Dump, "DUMP")?;
    if resp.dump.as_ref().and_then(|d| d.restored) != Some(false) {
        bail!(
            "DUMP answered dump {:?}, expected restored=false",
            resp.dump
        );
    }
    let scripts: Vec<&str> = notes.iter().map(|(s, _)| s.as_str()).collect();
    if scripts != ["pre-dump", "post-dump"] {
        bail!("DUMP notifications {notes:?}, expected pre-dump then post-dump");
    }
    let exit = s.wait(procs)?;
    if exit != Exit::Code(0) {
        bail!("crest swrk ended with {exit} after a successful DUMP");
    }
    for f in ["dump.log", "stats-dump", "inventory.img", "pstree.img"] {
        if !dir.images.join(f).exists() {
            bail!("no {f} in {} after the DUMP", dir.images.display());
        }
    }
    Ok(())
}

/// The restore notifications CRIU sends, in order.
const RESTORE_NOTES: [&str; 6] = [
    "pre-restore",
    "setup-namespaces",
    "post-setup-namespaces",
    "post-restore",
    "pre-resume",
    "post-resume",
];

/// RESTOREs over RPC with notifications; checks the order, the pids they
/// name and the answer.
fn restore_over_rpc(
    cfg: &Config,
    dir: &CaseDir,
    pid: Pid,
    tag: &str,
    sibling: bool,
    procs: &mut Procs,
) -> Result<Vec<Note>> {
    let images = open_dir(&dir.images)?;
    procs.track(pid);
    let s = Swrk::start(cfg, dir, tag, procs)?;
    let mut o = opts(&images, &format!("{tag}.log"));
    o.notify_scripts = Some(true);
    if sibling {
        o.rst_sibling = Some(true);
    }
    let me = std::process::id() as i32;
    let crest = s.pid.as_raw();
    let mut parent_problem = None;
    let (resp, notes) = s.call(&req(CriuReqType::Restore, Some(o)), |script, _| {
        if script == "post-restore" && sibling {
            let ppid = procs::proc_status_field(pid, "PPid");
            if ppid.as_deref() != Some(&me.to_string()) {
                parent_problem = Some(format!(
                    "with rst_sibling the restored root {pid} has PPid {ppid:?} at post-restore, \
                     expected the test process {me} (crest is {crest})"
                ));
            }
        }
        true
    })?;
    expect_ok(&resp, CriuReqType::Restore, "RESTORE")?;
    let said = resp.restore.as_ref().map(|r| r.pid);
    if said != Some(pid.as_raw()) {
        bail!("RESTORE answered pid {said:?}, expected {pid}");
    }
    let scripts: Vec<&str> = notes.iter().map(|(s, _)| s.as_str()).collect();
    if scripts != RESTORE_NOTES {
        bail!("RESTORE notifications {notes:?}, expected {RESTORE_NOTES:?}");
    }
    for (script, p) in &notes {
        let want = matches!(script.as_str(), "setup-namespaces" | "post-restore");
        if want && *p != Some(pid.as_raw()) {
            bail!("notification {script} names pid {p:?}, expected the root {pid}");
        }
    }
    let exit = s.wait(procs)?;
    if exit != Exit::Code(0) {
        bail!("crest swrk ended with {exit} after a successful RESTORE");
    }
    if let Some(p) = parent_problem {
        bail!(p);
    }
    Ok(notes)
}

fn rpc_dump_restore(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, before) = start_tree(cfg, dir, procs)?;
    dump_over_rpc(cfg, dir, pid, procs)?;
    reap_dumped(pid, &before, procs)?;
    restore_over_rpc(cfg, dir, pid, "restore", false, procs)?;
    if !dir.images.join("restore.log").exists() || !dir.images.join("stats-restore").exists() {
        bail!("no restore.log or stats-restore in the images directory after the RESTORE");
    }
    check_restored(dir, pid, &before, procs)
}

/// PRE_DUMP twice, then DUMP, on one socket (CRIU's pre-dump loop), each
/// round with its own images directory and the one before as `parent_img`;
/// the restored `mem_iter` checks every page, and the dump took pages from
/// its parents.
fn rpc_pre_dump(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let w = crate::suite::workload("mem_iter").context("no mem_iter workload")?;
    let pid = case::start(cfg, &w, dir, crate::StdioKind::DevNull, procs)?;
    case::wait_ready(dir, pid, procs)?;
    let s = Swrk::start(cfg, dir, "swrk", procs)?;
    for k in 1..=2 {
        let d = dir.root.join(format!("pre-{k}"));
        fs::create_dir_all(&d)?;
        let f = open_dir(&d)?;
        let mut o = opts(&f, "pre-dump.log");
        o.pid = Some(pid.as_raw());
        o.track_mem = Some(true);
        if k > 1 {
            o.parent_img = Some("../pre-1".into());
        }
        let (resp, _) = s.call(&req(CriuReqType::PreDump, Some(o)), |_, _| true)?;
        expect_ok(&resp, CriuReqType::PreDump, &format!("PRE_DUMP #{k}"))?;
        if !alive(pid) {
            bail!("pid {pid} is not running after PRE_DUMP #{k}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let images = open_dir(&dir.images)?;
    let mut o = opts(&images, "dump.log");
    o.pid = Some(pid.as_raw());
    o.parent_img = Some("../pre-2".into());
    o.track_mem = Some(true);
    let (resp, _) = s.call(&req(CriuReqType::Dump, Some(o)), |_, _| true)?;
    expect_ok(&resp, CriuReqType::Dump, "DUMP after the PRE_DUMPs")?;
    let exit = s.wait(procs)?;
    if exit != Exit::Code(0) {
        bail!("crest swrk ended with {exit} after the DUMP");
    }
    match wait_exit(pid, Duration::from_secs(10))? {
        Waited::Exited(_) => procs.untrack(pid),
        other => bail!("the dumped pid {pid}: {other:?} 10 s after the DUMP"),
    }
    crate::iterative::check_final(dir)?;
    case::restore_detached(cfg, dir, pid, procs)?;
    case::finish_tree(dir, pid, pid, crate::StdioKind::DevNull, procs)
}

fn rpc_work_dir(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, _) = start_tree(cfg, dir, procs)?;
    let work = dir.root.join("work");
    fs::create_dir_all(&work)?;
    let images = open_dir(&dir.images)?;
    let workfd = open_dir(&work)?;
    let s = Swrk::start(cfg, dir, "dump", procs)?;
    let mut o = opts(&images, "dump.log");
    o.pid = Some(pid.as_raw());
    o.work_dir_fd = Some(workfd.as_raw_fd());
    o.leave_running = Some(true);
    let (resp, notes) = s.call(&req(CriuReqType::Dump, Some(o)), |_, _| true)?;
    expect_ok(&resp, CriuReqType::Dump, "DUMP with work_dir_fd")?;
    if !notes.is_empty() {
        bail!("notifications {notes:?} without notify_scripts");
    }
    let exit = s.wait(procs)?;
    if exit != Exit::Code(0) {
        bail!("crest swrk ended with {exit} after a successful DUMP");
    }
    for f in ["dump.log", "stats-dump"] {
        if !work.join(f).exists() {
            bail!("no {f} in the work directory {}", work.display());
        }
        if dir.images.join(f).exists() {
            bail!("{f} is in the images directory, not only in the work directory");
        }
    }
    if !dir.images.join("pstree.img").exists() {
        bail!("no pstree.img in the images directory");
    }
    case::check_left_running(pid)?;
    case::finish(dir, pid, crate::StdioKind::DevNull, procs)
}

/// A dump whose notification `refuse` is answered false must fail and
/// leave the tree running.
fn refused_dump(
    cfg: &Config,
    dir: &CaseDir,
    pid: Pid,
    refuse: &str,
    procs: &mut Procs,
) -> Result<()> {
    let images = open_dir(&dir.images)?;
    let s = Swrk::start(cfg, dir, &format!("dump-{refuse}"), procs)?;
    let mut o = opts(&images, &format!("dump-{refuse}.log"));
    o.pid = Some(pid.as_raw());
    o.notify_scripts = Some(true);
    let (resp, notes) = s.call(&req(CriuReqType::Dump, Some(o)), |script, _| {
        script != refuse
    })?;
    let last = notes.last().map(|(s, _)| s.as_str());
    if last != Some(refuse) {
        bail!("notifications {notes:?}: crest went on after {refuse} was refused");
    }
    let msg = expect_refusal(
        &resp,
        CriuReqType::Dump,
        &[],
        &format!("DUMP with {refuse} refused"),
    )?;
    if msg.is_empty() {
        bail!("DUMP with {refuse} refused: no cr_errmsg");
    }
    let exit = s.wait(procs)?;
    if exit == Exit::Code(0) {
        bail!("crest swrk exited 0 after a failed DUMP");
    }
    let problems = procs::tree_problems(pid);
    if !problems.is_empty() {
        bail!(
            "after the DUMP refused at {refuse}: {}",
            problems.join("; ")
        );
    }
    Ok(())
}

fn rpc_notify_refused_dump(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, before) = start_tree(cfg, dir, procs)?;
    refused_dump(cfg, dir, pid, "pre-dump", procs)?;
    refused_dump(cfg, dir, pid, "post-dump", procs)?;
    let after = procs::tree_snapshot(pid)?;
    let diff = procs::tree_diff(&before, &after, "after the refused dumps");
    if !diff.is_empty() {
        bail!("the tree changed: {}", diff.join("; "));
    }
    case::finish(dir, pid, crate::StdioKind::DevNull, procs)
}

fn rpc_notify_refused_restore(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, before) = start_tree(cfg, dir, procs)?;
    dump_over_rpc(cfg, dir, pid, procs)?;
    reap_dumped(pid, &before, procs)?;
    for refuse in ["setup-namespaces", "post-restore", "pre-resume"] {
        let images = open_dir(&dir.images)?;
        procs.track(pid);
        let s = Swrk::start(cfg, dir, &format!("restore-{refuse}"), procs)?;
        let mut o = opts(&images, &format!("restore-{refuse}.log"));
        o.notify_scripts = Some(true);
        let (resp, notes) = s.call(&req(CriuReqType::Restore, Some(o)), |script, _| {
            script != refuse
        })?;
        if notes.last().map(|(s, _)| s.as_str()) != Some(refuse) {
            bail!("notifications {notes:?}: crest went on after {refuse} was refused");
        }
        expect_refusal(
            &resp,
            CriuReqType::Restore,
            &[],
            &format!("RESTORE with {refuse} refused"),
        )?;
        let exit = s.wait(procs)?;
        if exit == Exit::Code(0) {
            bail!("crest swrk exited 0 after a failed RESTORE");
        }
        procs::reap_zombie_children();
        for p in before.keys().map(|p| Pid::from_raw(*p)) {
            if !wait_until(Duration::from_secs(5), || !exists(p)) {
                bail!(
                    "pid {p} ({}, state {:?}) exists after the RESTORE refused at {refuse}",
                    procs::proc_comm(p).unwrap_or_default(),
                    procs::proc_state(p)
                );
            }
        }
    }
    restore_over_rpc(cfg, dir, pid, "restore", false, procs)?;
    check_restored(dir, pid, &before, procs)
}

fn rpc_rst_sibling(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, before) = start_tree(cfg, dir, procs)?;
    dump_over_rpc(cfg, dir, pid, procs)?;
    reap_dumped(pid, &before, procs)?;
    restore_over_rpc(cfg, dir, pid, "restore", true, procs)?;
    let ppid = procs::proc_ppid(pid);
    if ppid != Some(std::process::id() as i32) {
        bail!("the restored root {pid} has parent {ppid:?}, not the test process");
    }
    check_restored(dir, pid, &before, procs)
}

/// Starts a crest, sends `bytes`, expects an EMPTY refusal and a non-zero
/// exit.
fn garbage_refused(
    cfg: &Config,
    dir: &CaseDir,
    tag: &str,
    bytes: &[u8],
    procs: &mut Procs,
) -> Result<String> {
    let s = Swrk::start(cfg, dir, tag, procs)?;
    s.send_raw(bytes)?;
    let resp = s
        .recv()?
        .with_context(|| format!("{tag}: crest closed without an answer"))?;
    let msg = expect_refusal(&resp, CriuReqType::Empty, &[], tag)?;
    let exit = s.wait(procs)?;
    if exit == Exit::Code(0) {
        bail!("{tag}: crest swrk exited 0");
    }
    if let Exit::Signal(sig) = exit {
        bail!("{tag}: crest swrk was killed by {sig:?}");
    }
    Ok(msg)
}

fn rpc_bad_input(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let mut notes = Vec::new();
    garbage_refused(cfg, dir, "garbage", &[0xff; 64], procs)?;
    let notify = CriuReq {
        r#type: CriuReqType::Notify as i32,
        notify_success: Some(true),
        ..Default::default()
    };
    garbage_refused(cfg, dir, "notify", &notify.encode_to_vec(), procs)?;

    let images = open_dir(&dir.images)?;
    for t in [
        CriuReqType::PageServer,
        CriuReqType::WaitPid,
        CriuReqType::CpuinfoDump,
    ] {
        let tag = t.as_str_name().to_lowercase();
        let s = Swrk::start(cfg, dir, &tag, procs)?;
        let mut r = req(t, Some(opts(&images, &format!("{tag}.log"))));
        r.pid = Some(1);
        let (resp, _) = s.call(&r, |_, _| true)?;
        expect_refusal(&resp, t, &["not supported"], t.as_str_name())?;
        let exit = s.wait(procs)?;
        if exit == Exit::Code(0) {
            bail!("{tag}: crest swrk exited 0 after refusing");
        }
    }

    // an empty datagram ends the conversation without an answer
    let s = Swrk::start(cfg, dir, "empty", procs)?;
    s.send_raw(&[])?;
    let exit = s.wait(procs)?;
    if exit != Exit::Code(0) {
        bail!("crest swrk ended with {exit} after an empty datagram, expected 0");
    }
    if let Some(resp) = s.recv()? {
        bail!("crest answered an empty datagram with {resp:?}");
    }
    // so does closing the socket
    Swrk::start(cfg, dir, "close", procs)?.close_expect_zero(procs)?;

    // an oversize datagram: refused (crest reads at most 1 MiB)
    let s = Swrk::start(cfg, dir, "oversize", procs)?;
    let _ = setsockopt(&s.sock, sockopt::SndBufForce, &(8 << 20));
    let mut sent = None;
    for size in [2 << 20, 3 << 19, (1 << 20) + 1] {
        if s.send_raw(&vec![0x08; size]).is_ok() {
            sent = Some(size);
            break;
        }
    }
    let Some(size) = sent else {
        bail!("the kernel took no datagram above 1 MiB on the socket (SO_SNDBUFFORCE)");
    };
    if size != 2 << 20 {
        notes.push(format!(
            "oversize datagram: {size} bytes (2 MiB did not fit)"
        ));
    }
    let resp = s
        .recv()?
        .context("oversize: crest closed without an answer")?;
    expect_refusal(&resp, CriuReqType::Empty, &[], "oversize datagram")?;
    let exit = s.wait(procs)?;
    if exit == Exit::Code(0) || matches!(exit, Exit::Signal(_)) {
        bail!("crest swrk ended with {exit} after an oversize datagram");
    }
    Ok(if notes.is_empty() {
        Outcome::Pass
    } else {
        Outcome::PassWith(notes.join("; "))
    })
}

fn rpc_unsupported_options(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, before) = start_tree(cfg, dir, procs)?;
    let images = open_dir(&dir.images)?;
    type Set = fn(&mut CriuOpts);
    let cases: [(&str, Set, &[&str]); 2] = [
        (
            "lazy_pages",
            |o| o.lazy_pages = Some(true),
            &["lazy-pages", "lazy_pages"],
        ),
        (
            "lsm_profile",
            |o| o.lsm_profile = Some("apparmor:crest-test".into()),
            &["lsm-profile", "lsm_profile"],
        ),
    ];
    for (tag, set, words) in cases {
        let s = Swrk::start(cfg, dir, tag, procs)?;
        let mut o = opts(&images, &format!("{tag}.log"));
        o.pid = Some(pid.as_raw());
        o.notify_scripts = Some(true);
        set(&mut o);
        let (resp, _) = s.call(&req(CriuReqType::Dump, Some(o)), |_, _| true)?;
        expect_refusal(&resp, CriuReqType::Dump, words, &format!("DUMP with {tag}"))?;
        let exit = s.wait(procs)?;
        if exit == Exit::Code(0) {
            bail!("{tag}: crest swrk exited 0 after refusing");
        }
        let problems = procs::tree_problems(pid);
        if !problems.is_empty() {
            bail!("after the DUMP with {tag}: {}", problems.join("; "));
        }
    }
    let after = procs::tree_snapshot(pid)?;
    let diff = procs::tree_diff(&before, &after, "after the refused dumps");
    if !diff.is_empty() {
        bail!("the tree changed: {}", diff.join("; "));
    }
    case::finish(dir, pid, crate::StdioKind::DevNull, procs)
}

fn rpc_config_file(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, _) = start_tree(cfg, dir, procs)?;
    let images = open_dir(&dir.images)?;
    // the file's leave-running and log-file beat the RPC's
    let conf = dir.root.join("rpc.conf");
    fs::write(
        &conf,
        "# from the RPC's config_file\nleave-running\nlog-file cfg-dump.log\n",
    )?;
    let s = Swrk::start(cfg, dir, "dump-config", procs)?;
    let mut o = opts(&images, "dump.log");
    o.pid = Some(pid.as_raw());
    o.leave_running = Some(false);
    o.config_file = Some(conf.to_string_lossy().to_string());
    let (resp, _) = s.call(&req(CriuReqType::Dump, Some(o)), |_, _| true)?;
    expect_ok(&resp, CriuReqType::Dump, "DUMP with config_file")?;
    let exit = s.wait(procs)?;
    if exit != Exit::Code(0) {
        bail!("crest swrk ended with {exit} after a successful DUMP");
    }
    if !alive(pid) {
        bail!(
            "the tree was killed: the config file's leave-running did not override \
             leave_running=false"
        );
    }
    case::check_left_running(pid)?;
    if !dir.images.join("cfg-dump.log").exists() {
        bail!("no cfg-dump.log: the config file's log-file did not override the RPC's log_file");
    }
    // a missing config_file is ignored
    let s = Swrk::start(cfg, dir, "dump-missing-config", procs)?;
    let mut o = opts(&images, "dump-missing.log");
    o.pid = Some(pid.as_raw());
    o.leave_running = Some(true);
    o.config_file = Some(dir.root.join("no-such.conf").to_string_lossy().to_string());
    let (resp, _) = s.call(&req(CriuReqType::Dump, Some(o)), |_, _| true)?;
    expect_ok(&resp, CriuReqType::Dump, "DUMP with a missing config_file")?;
    let exit = s.wait(procs)?;
    if exit != Exit::Code(0) {
        bail!("crest swrk ended with {exit} after a successful DUMP");
    }
    case::check_left_running(pid)?;
    case::finish(dir, pid, crate::StdioKind::DevNull, procs)
}
