//! Real programs with sockets and terminals (issue 7): Debian's
//! `python3 -m http.server` on 127.0.0.1 answers after a restore; a python3
//! server that keeps a token and a request count in memory behind a unix
//! socket answers with the same token and the next count; a job on a
//! terminal it does not own is refused without `--shell-job` and restored
//! onto crest's own terminal with it, or named with `--external
//! tty[RDEV:DEV]` and given back with `--inherit-fd` (`external_tty`); an
//! established TCP connection is
//! refused without `--tcp-established`, and the refused dump leaves it
//! working; so are file locks without `--file-locks`.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;

use crate::case::{self, CaseDir, DirCase, Program, Settle, Workload};
use crate::crest::{self, CREST_TIMEOUT};
use crate::procs::{self, alive, wait_until, Procs};
use crate::suite::Report;
use crate::{Config, Outcome, StdioKind};

const PYTHON: &str = "/usr/bin/python3";

const CASES: [(&str, DirCase); 6] = [
    ("http_server", http_server),
    ("unix_server", unix_server),
    ("shell_job", shell_job),
    ("external_tty", external_tty),
    ("tcp_needs_option", tcp_needs_option),
    ("locks_need_option", locks_need_option),
];

/// Runs every case whose name passes `selected`.
pub fn run(cfg: &Config, report: &mut Report, selected: &dyn Fn(&str) -> bool) {
    case::run_root_cases(cfg, report, selected, &CASES);
}

/// Starts `launch ARGS...` (a new session, stdio on /dev/null or on the
/// given terminal) in the case directory.
pub(crate) fn launch(cfg: &Config, dir: &CaseDir, args: &[&str], procs: &mut Procs) -> Result<Pid> {
    let mut cmd = Command::new(cfg.workload("launch"));
    cmd.args(args)
        .current_dir(&dir.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().context("spawn launch")?;
    let pid = Pid::from_raw(child.id() as i32);
    procs.track(pid);
    Ok(pid)
}

/// A free TCP port on 127.0.0.1.
pub(crate) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `GET /index.html` from 127.0.0.1:`port`: the response body.
fn http_get(port: u16) -> Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connect to 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .context("read the HTTP response")?;
    let Some((head, body)) = resp.split_once("\r\n\r\n") else {
        bail!("an HTTP response without a body: {resp:?}");
    };
    if !head.starts_with("HTTP/1.0 200") {
        bail!("HTTP status {:?}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// Dumps the tree of `pid` (it dies), restores it detached; `extra` are
/// more arguments for both.
fn dump_restore(cfg: &Config, dir: &CaseDir, pid: Pid, procs: &mut Procs) -> Result<()> {
    wait_until(Duration::from_secs(5), || procs::tree_settled(pid));
    case::dump(cfg, dir, pid, false, procs)?;
    case::restore_detached(cfg, dir, pid, procs)
}

fn http_server(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    if !Path::new(PYTHON).exists() {
        return Ok(Outcome::Skip(format!("{PYTHON} not found")));
    }
    let www = dir.root.join("www");
    fs::create_dir_all(&www)?;
    let token = format!("crest http token {}\n", std::process::id());
    fs::write(www.join("index.html"), &token)?;
    let port = free_port()?.to_string();
    let www_s = www.to_string_lossy();
    let pid = launch(
        cfg,
        dir,
        &[
            PYTHON,
            "-m",
            "http.server",
            &port,
            "--bind",
            "127.0.0.1",
            "--directory",
            &www_s,
        ],
        procs,
    )?;
    let port: u16 = port.parse()?;
    if !wait_until(Duration::from_secs(10), || http_get(port).is_ok()) {
        bail!("python3 -m http.server did not answer on port {port} within 10 s");
    }
    if http_get(port)? != token {
        bail!("http.server served another body before the dump");
    }
    if !cfg.checkpoint {
        return Ok(Outcome::Pass);
    }
    dump_restore(cfg, dir, pid, procs)?;
    let body = http_get(port).context("GET after restore")?;
    if body != token {
        bail!("after restore http.server served {body:?}, expected {token:?}");
    }
    if !alive(pid) {
        bail!("http.server (pid {pid}) is gone after answering");
    }
    Ok(Outcome::Pass)
}

/// One request to the unix server: its answer line.
fn unix_ask(path: &Path) -> Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("connect to {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"hello\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim_end().to_string())
}

fn unix_server(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    if !Path::new(PYTHON).exists() {
        return Ok(Outcome::Skip(format!("{PYTHON} not found")));
    }
    let sock = dir.root.join("server.sock");
    let token_file = dir.root.join("token");
    let script = cfg.workload("unix_server.py");
    let pid = launch(
        cfg,
        dir,
        &[
            PYTHON,
            &script.to_string_lossy(),
            &sock.to_string_lossy(),
            &token_file.to_string_lossy(),
        ],
        procs,
    )?;
    if !wait_until(Duration::from_secs(10), || {
        token_file.exists() && sock.exists()
    }) {
        bail!("the unix server did not start within 10 s");
    }
    let token = fs::read_to_string(&token_file)?;
    let first = unix_ask(&sock)?;
    if first != format!("{token} 1") {
        bail!("the unix server answered {first:?} before the dump, token {token:?}");
    }
    if !cfg.checkpoint {
        return Ok(Outcome::Pass);
    }
    dump_restore(cfg, dir, pid, procs)?;
    let second = unix_ask(&sock).context("ask after restore")?;
    if second != format!("{token} 2") {
        bail!("after restore the unix server answered {second:?}, expected \"{token} 2\"");
    }
    Ok(Outcome::Pass)
}

/// A new pty pair: (master, slave path).
fn pty() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd, String)> {
    let p = nix::pty::openpty(None, None).context("openpty")?;
    let path = fs::read_link(format!("/proc/self/fd/{}", p.slave.as_raw_fd()))?
        .to_string_lossy()
        .into_owned();
    Ok((p.master, p.slave, path))
}

fn shell_job(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    // The job's terminal: the harness keeps the master.
    let (_m1, s1, tty1) = pty()?;
    let w = Workload {
        name: "tty_job",
        program: Program::C("tty_job"),
        args: vec![tty1.clone()],
        settle: Settle::Blocked,
    };
    let mut cmd = Command::new(cfg.workload("launch"));
    cmd.arg(cfg.workload("tty_job"))
        .arg(&dir.state)
        .arg(&tty1)
        .current_dir(&dir.root)
        .stdin(Stdio::from(s1.try_clone()?))
        .stdout(Stdio::from(s1.try_clone()?))
        .stderr(Stdio::from(s1));
    let pid = Pid::from_raw(cmd.spawn().context("spawn tty_job")?.id() as i32);
    procs.track(pid);
    case::wait_ready(dir, pid, procs)?;
    let _ = w;
    if !cfg.checkpoint {
        return case::finish(dir, pid, StdioKind::DevNull, procs);
    }
    // Without -j: refused, naming the option, the job left alone.
    refused(
        cfg,
        dir,
        pid,
        "--shell-job",
        "crest dump without --shell-job took a job on a terminal it does not own",
        procs,
    )?;
    // With -j: dumped, and restored onto crest's own terminal (another pty).
    fs::write(dir.state.join("dump-args"), "--shell-job\n")?;
    case::dump(cfg, dir, pid, false, procs)?;
    let (_m2, s2, tty2) = pty()?;
    let images = dir.images.to_string_lossy().into_owned();
    let mut restore = crest::command(
        &cfg.crest,
        &[
            "restore",
            "-D",
            &images,
            "-d",
            "-j",
            "-o",
            "restore.log",
            "-v4",
        ],
    );
    restore
        .current_dir(&dir.root)
        .stdin(Stdio::from(s2.try_clone()?))
        .stdout(Stdio::from(s2.try_clone()?))
        .stderr(Stdio::from(s2));
    procs.track(pid);
    let status = restore.status().context("run crest restore -j")?;
    if !status.success() {
        bail!(
            "crest restore -d -j failed ({status}); see {}",
            dir.images.join("restore.log").display()
        );
    }
    stdio_on(pid, &tty2, "crest's terminal")?;
    let _ = CREST_TIMEOUT;
    case::finish(dir, pid, StdioKind::DevNull, procs)
}

/// A job on a terminal outside the tree, named at dump with CRIU's
/// `--external tty[RDEV:DEV]` and given back at restore with
/// `--inherit-fd fd[3]:tty[RDEV:DEV]` (another pty, with the dumped
/// settings: a changed VINTR must come along).
fn external_tty(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    use std::os::unix::fs::MetadataExt;
    let (_m1, s1, tty1) = pty()?;
    let mut t = nix::sys::termios::tcgetattr(&s1).context("tcgetattr")?;
    t.control_chars[nix::sys::termios::SpecialCharacterIndices::VINTR as usize] = 7;
    nix::sys::termios::tcsetattr(&s1, nix::sys::termios::SetArg::TCSANOW, &t)
        .context("tcsetattr")?;
    let meta = fs::metadata(&tty1)?;
    let key = format!("tty[{:x}:{:x}]", meta.rdev(), meta.dev());
    let mut cmd = Command::new(cfg.workload("launch"));
    cmd.arg(cfg.workload("tty_job"))
        .arg(&dir.state)
        .arg(&tty1)
        .current_dir(&dir.root)
        .stdin(Stdio::from(s1.try_clone()?))
        .stdout(Stdio::from(s1.try_clone()?))
        .stderr(Stdio::from(s1));
    let pid = Pid::from_raw(cmd.spawn().context("spawn tty_job")?.id() as i32);
    procs.track(pid);
    case::wait_ready(dir, pid, procs)?;
    if !cfg.checkpoint {
        return case::finish(dir, pid, StdioKind::DevNull, procs);
    }
    fs::write(dir.state.join("dump-args"), format!("--external {key}\n"))?;
    case::dump(cfg, dir, pid, false, procs)?;
    let (_m2, s2, tty2) = pty()?;
    let images = dir.images.to_string_lossy().into_owned();
    // (without the terminal: refused, naming the key)
    let ran = crest::run(
        crest::command(
            &cfg.crest,
            &["restore", "-D", &images, "-d", "-o", "refused.log"],
        ),
        &dir.root,
        "restore-refused",
        CREST_TIMEOUT,
        procs,
    )?;
    if ran.success() || !ran.stderr.contains(&key) {
        bail!(ran.failure(&format!(
            "crest restore without the terminal (expected a refusal naming {key})"
        )));
    }
    let inherit = format!("fd[3]:{key}");
    // (the shell opens the new terminal on fd 3 for crest)
    let mut restore = crest::command_with(
        &cfg.crest,
        &format!("3<>{tty2}"),
        &[
            "restore",
            "-D",
            &images,
            "-d",
            "--inherit-fd",
            &inherit,
            "-o",
            "restore.log",
            "-v4",
        ],
    );
    restore.current_dir(&dir.root).stdin(Stdio::null());
    procs.track(pid);
    let status = restore.status().context("run crest restore --inherit-fd")?;
    drop(s2);
    if !status.success() {
        bail!(
            "crest restore --inherit-fd {inherit} failed ({status}); see {}",
            dir.images.join("restore.log").display()
        );
    }
    stdio_on(pid, &tty2, "the given terminal")?;
    let now = nix::sys::termios::tcgetattr(&_m2).context("tcgetattr of the new terminal")?;
    let vintr = now.control_chars[nix::sys::termios::SpecialCharacterIndices::VINTR as usize];
    if vintr != 7 {
        bail!("the given terminal's VINTR is {vintr}, not the dumped 7");
    }
    case::finish(dir, pid, StdioKind::DevNull, procs)
}

/// Fails unless fds 0-2 of `pid` are terminal `tty` (`what` names it).
fn stdio_on(pid: Pid, tty: &str, what: &str) -> Result<()> {
    for fd in 0..3 {
        let link = fs::read_link(format!("/proc/{pid}/fd/{fd}"))?;
        if link.to_string_lossy() != tty {
            bail!(
                "restored fd {fd} is {}, expected {what} {tty}",
                link.display()
            );
        }
    }
    Ok(())
}

fn tcp_needs_option(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let w = Workload {
        name: "sockets",
        program: Program::C("sockets"),
        args: vec!["tcp".into()],
        settle: Settle::Blocked,
    };
    // The workload checks its connection still carries data both ways.
    needs_option(
        cfg,
        dir,
        &w,
        "--tcp-established",
        "crest dump took an established TCP connection without --tcp-established",
        procs,
    )
}

fn locks_need_option(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let w = Workload {
        name: "file_locks",
        program: Program::C("file_locks"),
        args: Vec::new(),
        settle: Settle::Blocked,
    };
    // The workload checks from outside that every lock is still held.
    needs_option(
        cfg,
        dir,
        &w,
        "--file-locks",
        "crest dump took a tree holding file locks without --file-locks",
        procs,
    )
}

/// Dumps the tree of `pid` once it settles and expects crest to refuse it,
/// naming `option`, and to leave the tree as it was; `took` is the failure
/// if the dump goes through.
fn refused(
    cfg: &Config,
    dir: &CaseDir,
    pid: Pid,
    option: &str,
    took: &str,
    procs: &mut Procs,
) -> Result<()> {
    wait_until(Duration::from_secs(5), || procs::tree_settled(pid));
    let Some(ran) = case::dump_attempt(cfg, dir, pid, false, procs)? else {
        bail!("{took}");
    };
    if !ran.stderr.contains(option) {
        bail!(
            "the refused dump does not name {option}: {:?}",
            ran.stderr.trim()
        );
    }
    let stuck = procs::tree_problems(pid);
    if !stuck.is_empty() {
        bail!("after the refused dump: {}", stuck.join("; "));
    }
    Ok(())
}

/// Runs `w`, which holds what crest dumps only with `option`: a dump
/// without it (its `dump-args` removed) must be [`refused`]; then the
/// workload checks its state.
fn needs_option(
    cfg: &Config,
    dir: &CaseDir,
    w: &Workload,
    option: &str,
    took: &str,
    procs: &mut Procs,
) -> Result<Outcome> {
    let pid = case::start(cfg, w, dir, StdioKind::DevNull, procs)?;
    case::wait_ready(dir, pid, procs)?;
    if !cfg.checkpoint {
        return case::finish(dir, pid, StdioKind::DevNull, procs);
    }
    fs::remove_file(dir.state.join("dump-args")).context("remove dump-args")?;
    refused(cfg, dir, pid, option, took, procs)?;
    case::finish(dir, pid, StdioKind::DevNull, procs)
}
