//! Unmodified servers from Debian packages that hold data in memory (issue
//! 7): each is started with only fds 0-2 open, given data by a client,
//! dumped and restored by crest, and must answer new clients with the data
//! it held. A case whose server binary is missing is skipped, naming the
//! package.
//!
//! - `redis_server`: redis-server daemonized with an append-only file,
//!   listening on 127.0.0.1 and on a unix socket, its oom_score_adj set
//!   to 100; strings, a hash, a list and a counter read back over both
//!   after restore, and the adjustment is kept.
//! - `redis_client_open`: a client connection (in database 3) stays open
//!   across the dump (`--tcp-established`) and reads its data back on the
//!   same connection, then a new client does.
//! - `memcached_server`: memcached with four worker threads; keys and a
//!   counter read back after restore.
//! - `nginx_workers`: an nginx master with two workers (running as nobody)
//!   serves a file after restore, with the same pids, and a reload (SIGHUP)
//!   makes new workers that serve it too.
//! - `postgres_server`: a PostgreSQL cluster (postmaster and its background
//!   processes, as user postgres) with a table: new backends forked after
//!   restore read it over TCP and the unix socket, write to it, checkpoint,
//!   and the restored postmaster shuts down cleanly on SIGINT. Its catalog
//!   lives in shared memory pages that only exited backends touched.
//! - `tmux_sessions`: a tmux server with two sessions (issue 16): a shell
//!   in one, a counting loop and `cat` in two panes of the other, each on
//!   a pty pair the server holds. After restore the shell runs a new
//!   command below the old one's output, `cat` echoes a new line, the
//!   loop counts on, and a client that attaches (control mode) sees the
//!   loop's new lines.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;

use crate::case::{self, CaseDir, DirCase};
use crate::procs::{self, alive, wait_until, Procs};
use crate::servers::{free_port, launch};
use crate::suite::Report;
use crate::{Config, Outcome};

const REDIS: &str = "/usr/bin/redis-server";
const MEMCACHED: &str = "/usr/bin/memcached";
const NGINX: &str = "/usr/sbin/nginx";

const TMUX: &str = "/usr/bin/tmux";

const CASES: [(&str, DirCase); 6] = [
    ("redis_server", redis_server),
    ("redis_client_open", redis_client_open),
    ("memcached_server", memcached_server),
    ("nginx_workers", nginx_workers),
    ("postgres_server", postgres_server),
    ("tmux_sessions", tmux_sessions),
];

/// Runs every case whose name passes `selected`.
pub fn run(cfg: &Config, report: &mut Report, selected: &dyn Fn(&str) -> bool) {
    case::run_root_cases(cfg, report, selected, &CASES);
}

/// Skips unless `bin` (of Debian package `pkg`) is installed.
fn missing(bin: &str, pkg: &str) -> Option<Outcome> {
    (!Path::new(bin).exists()).then(|| {
        Outcome::Skip(format!(
            "{bin} not found (apt-get install {pkg}; .ci/run installs it)"
        ))
    })
}

/// A file the server wrote to once it ran again (redis appending to its
/// AOF): its position, size or mtime moved forward, not back.
fn appended(line: &str) -> bool {
    let kinds = [" fdinfo pos: ", " file size: ", " file mtime: "];
    if !kinds.iter().any(|k| line.contains(k)) {
        return false;
    }
    let nums: Vec<f64> = line
        .split('"')
        .skip(1)
        .step_by(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    matches!(nums[..], [before, after] if after > before)
}

/// Dumps the tree of `pid` (it dies) with the options in
/// `STATEDIR/dump-args`, restores it detached, and checks the tree has the
/// same pids, parents, groups and sessions as before.
fn dump_restore(cfg: &Config, dir: &CaseDir, pid: Pid, procs: &mut Procs) -> Result<()> {
    wait_until(Duration::from_secs(5), || procs::tree_settled(pid));
    let before = procs::tree_snapshot(pid).context("the server's tree before the dump")?;
    let outside_before = crate::outside::snapshot(&before);
    case::dump(cfg, dir, pid, false, procs)?;
    case::restore_detached(cfg, dir, pid, procs)?;
    wait_until(Duration::from_secs(5), || procs::tree_settled(pid));
    // (a server may map fresh anonymous memory of its own accord once it
    // runs again, as redis' allocator does: such a mapping new after the
    // restore is not a loss; a changed or missing one is)
    let outside: Vec<String> = case::check_outside(dir, pid, &outside_before, "after restore")
        .into_iter()
        .map(|report| {
            report
                .lines()
                .filter(|l| {
                    let new_anon = l.contains(" vma ")
                        && l.contains(": new after: ")
                        && l.contains(" rw-p 0  |");
                    !new_anon && !appended(l)
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|r| r.lines().count() > 1)
        .collect();
    if !outside.is_empty() {
        bail!("{}", outside.join("\n"));
    }
    let mut after = procs::tree_snapshot(pid).context("the server's tree after restore")?;
    // jemalloc starts a background thread per arena when one gets busy
    // (redis-server's `jemalloc_bg_thd`): one started since is the
    // server's doing, not the restore's
    for (p, t) in after.iter_mut() {
        let Some(b) = before.get(p) else { continue };
        let late: Vec<usize> = (0..t.tids.len())
            .filter(|&i| {
                !b.tids.contains(&t.tids[i])
                    && fs::read_to_string(format!("/proc/{p}/task/{}/comm", t.tids[i]))
                        .is_ok_and(|c| c.trim() == "jemalloc_bg_thd")
            })
            .collect();
        for i in late.into_iter().rev() {
            t.tids.remove(i);
            t.nspids.remove(i);
        }
    }
    let diff = procs::tree_diff(&before, &after, "after restore");
    if !diff.is_empty() {
        bail!(
            "the server's tree differs after restore:\n  {}",
            diff.join("\n  ")
        );
    }
    Ok(())
}

/// Where a server listens.
#[derive(Debug, Clone)]
enum Addr {
    Tcp(u16),
    Unix(PathBuf),
}

/// A connected client stream of either kind.
trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn connect(addr: &Addr) -> Result<Box<dyn Stream>> {
    let timeout = Some(Duration::from_secs(5));
    Ok(match addr {
        Addr::Tcp(port) => {
            let s = std::net::TcpStream::connect(("127.0.0.1", *port))
                .with_context(|| format!("connect to 127.0.0.1:{port}"))?;
            s.set_read_timeout(timeout)?;
            Box::new(s)
        }
        Addr::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path)
                .with_context(|| format!("connect to {}", path.display()))?;
            s.set_read_timeout(timeout)?;
            Box::new(s)
        }
    })
}

/// Sends redis commands (RESP arrays) and reads one reply for each,
/// rendered as text: simple strings and bulk strings as they are, errors
/// with their '-', integers as digits, nil as "(nil)", arrays joined by
/// ','.
fn redis_cmds(s: &mut dyn Stream, cmds: &[&[&str]]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for c in cmds {
        out.extend_from_slice(format!("*{}\r\n", c.len()).as_bytes());
        for a in *c {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
    }
    s.write_all(&out).context("send redis commands")?;
    let mut r = BufReader::new(s);
    cmds.iter()
        .map(|c| resp_reply(&mut r, 0).with_context(|| format!("redis reply to {c:?}")))
        .collect()
}

fn resp_reply(r: &mut impl BufRead, depth: u32) -> Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        bail!("the connection closed");
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(rest.to_string()),
        "-" => Ok(line.to_string()),
        "$" => {
            let n: i64 = rest.parse().context("bulk length")?;
            if n < 0 {
                return Ok("(nil)".into());
            }
            if n > 1 << 20 {
                bail!("a bulk string of {n} bytes");
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(n as usize);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        "*" if depth < 4 => {
            let n: i64 = rest.parse().context("array length")?;
            let items = (0..n.clamp(0, 1024))
                .map(|_| resp_reply(r, depth + 1))
                .collect::<Result<Vec<_>>>()?;
            Ok(items.join(","))
        }
        _ => bail!("an unexpected reply line {line:?}"),
    }
}

/// One connection, the commands, the replies.
fn redis(addr: &Addr, cmds: &[&[&str]]) -> Result<Vec<String>> {
    let mut s = connect(addr)?;
    redis_cmds(&mut *s, cmds)
}

/// Compares replies with what they should be.
fn expect(what: &str, got: &[String], want: &[&str]) -> Result<()> {
    if got != want {
        bail!("{what}: the server answered {got:?}, expected {want:?}");
    }
    Ok(())
}

/// Fills a redis server: 100 strings, a hash, a list and a counter at 5.
fn redis_fill(addr: &Addr, token: &str) -> Result<()> {
    let keys: Vec<(String, String)> = (0..100)
        .map(|i| (format!("key:{i}"), format!("{token}:{i}")))
        .collect();
    let mut cmds: Vec<Vec<&str>> = keys
        .iter()
        .map(|(k, v)| vec!["SET", k.as_str(), v.as_str()])
        .collect();
    cmds.push(vec!["HSET", "hash", "a", "1", "b", token]);
    cmds.push(vec!["RPUSH", "list", "x", "y", "z"]);
    cmds.push(vec!["SET", "counter", "5"]);
    let refs: Vec<&[&str]> = cmds.iter().map(Vec::as_slice).collect();
    let got = redis(addr, &refs)?;
    if let Some(bad) = got.iter().find(|r| r.starts_with('-')) {
        bail!("filling redis: {bad}");
    }
    Ok(())
}

/// Reads back what [`redis_fill`] stored; the counter goes to `count`.
fn redis_check(addr: &Addr, token: &str, count: u32, what: &str) -> Result<()> {
    let got = redis(
        addr,
        &[
            &["GET", "key:0"],
            &["GET", "key:57"],
            &["GET", "key:99"],
            &["HGET", "hash", "b"],
            &["LRANGE", "list", "0", "-1"],
            &["INCR", "counter"],
            &["DBSIZE"],
        ],
    )?;
    let (k0, k57, k99) = (
        format!("{token}:0"),
        format!("{token}:57"),
        format!("{token}:99"),
    );
    let count = count.to_string();
    expect(
        what,
        &got,
        &[
            k0.as_str(),
            k57.as_str(),
            k99.as_str(),
            token,
            "x,y,z",
            count.as_str(),
            "103",
        ],
    )
}

/// Starts redis-server on 127.0.0.1:`port`, its directory the case's, no
/// snapshots, with `extra` options.
fn launch_redis(
    cfg: &Config,
    dir: &CaseDir,
    port: u16,
    extra: &[&str],
    procs: &mut Procs,
) -> Result<Pid> {
    let (port_s, root_s) = (port.to_string(), dir.root.to_string_lossy());
    let mut args = vec![
        REDIS,
        "--port",
        &port_s,
        "--bind",
        "127.0.0.1",
        "--dir",
        &root_s,
        "--save",
        "",
        // (no jemalloc background thread that starts on its own after the
        // restore, with its stack and arena: the view from outside is
        // compared)
        "--jemalloc-bg-thread",
        "no",
    ];
    args.extend_from_slice(extra);
    launch(cfg, dir, &args, procs)
}

fn redis_server(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    if let Some(skip) = missing(REDIS, "redis-server") {
        return Ok(skip);
    }
    let port = free_port()?;
    let sock = dir.root.join("redis.sock");
    let pidfile = dir.root.join("redis.pid");
    let (sock_s, pid_s) = (
        sock.to_string_lossy().into_owned(),
        pidfile.to_string_lossy().into_owned(),
    );
    let log_s = dir.root.join("redis.log").to_string_lossy().into_owned();
    let starter = launch_redis(
        cfg,
        dir,
        port,
        &[
            "--unixsocket",
            &sock_s,
            "--unixsocketperm",
            "700",
            "--appendonly",
            "yes",
            "--daemonize",
            "yes",
            "--pidfile",
            &pid_s,
            "--logfile",
            &log_s,
            "--oom-score-adj",
            "absolute",
            "--oom-score-adj-values",
            "100 200 800",
        ],
        procs,
    )?;
    let tcp = Addr::Tcp(port);
    let unix = Addr::Unix(sock.clone());
    let up = wait_until(Duration::from_secs(10), || {
        pidfile.exists() && redis(&tcp, &[&["PING"]]).is_ok() && redis(&unix, &[&["PING"]]).is_ok()
    });
    if !up {
        bail!("redis-server did not answer on port {port} and {sock_s} within 10 s");
    }
    let pid = procs::read_pid_file(&pidfile).context("redis-server's pidfile")?;
    procs.track(pid);
    procs::reap_or_wait_gone(starter);
    procs.untrack(starter);
    let token = format!("crest-redis-{}", std::process::id());
    redis_fill(&tcp, &token)?;
    redis_check(&unix, &token, 6, "before the dump, over the unix socket")?;
    if !cfg.checkpoint {
        return Ok(Outcome::Pass);
    }
    dump_restore(cfg, dir, pid, procs)?;
    redis_check(&tcp, &token, 7, "after restore, over TCP")?;
    redis_check(&unix, &token, 8, "after restore, over the unix socket")?;
    let got = redis(&tcp, &[&["SET", "new", "v"], &["GET", "new"]])?;
    expect("a new key after restore", &got, &["OK", "v"])?;
    // with appendfsync everysec redis may hold a write back up to 2 s
    // while a background fsync runs
    let aof = dir.root.join("appendonlydir");
    let grew = wait_until(Duration::from_secs(5), || {
        fs::read_dir(&aof)
            .map(|d| {
                d.filter_map(|e| fs::read(e.ok()?.path()).ok())
                    .any(|b| String::from_utf8_lossy(&b).contains("new"))
            })
            .unwrap_or(false)
    });
    if !grew {
        bail!("the append-only file did not get the key set after restore");
    }
    if !alive(pid) {
        bail!("redis-server (pid {pid}) is gone after answering");
    }
    let adj = fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))?;
    if adj.trim() != "100" {
        bail!("restored redis-server has oom_score_adj {adj:?}, it set 100");
    }
    Ok(Outcome::Pass)
}

fn redis_client_open(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    if let Some(skip) = missing(REDIS, "redis-server") {
        return Ok(skip);
    }
    let port = free_port()?;
    let pid = launch_redis(cfg, dir, port, &["--appendonly", "no"], procs)?;
    let tcp = Addr::Tcp(port);
    if !wait_until(Duration::from_secs(10), || {
        redis(&tcp, &[&["PING"]]).is_ok()
    }) {
        bail!("redis-server did not answer on port {port} within 10 s");
    }
    let token = format!("crest-open-{}", std::process::id());
    let mut client = connect(&tcp)?;
    let got = redis_cmds(
        &mut *client,
        &[
            &["SELECT", "3"],
            &["CLIENT", "SETNAME", "keeper"],
            &["SET", "held", token.as_str()],
        ],
    )?;
    expect("the open client's setup", &got, &["OK", "OK", "OK"])?;
    if !cfg.checkpoint {
        return Ok(Outcome::Pass);
    }
    fs::write(dir.state.join("dump-args"), "--tcp-established\n")?;
    dump_restore(cfg, dir, pid, procs)?;
    let got = redis_cmds(
        &mut *client,
        &[&["GET", "held"], &["CLIENT", "GETNAME"], &["INCR", "n"]],
    )
    .context("the connection open across the dump")?;
    expect(
        "the connection open across the dump (database 3)",
        &got,
        &[token.as_str(), "keeper", "1"],
    )?;
    let got = redis(
        &tcp,
        &[&["GET", "held"], &["SELECT", "3"], &["GET", "held"]],
    )?;
    expect("a new client", &got, &["(nil)", "OK", token.as_str()])?;
    Ok(Outcome::Pass)
}

/// Sends memcached text commands and reads until `end` closes the answer.
fn memcached(port: u16, req: &str, end: &str) -> Result<String> {
    let mut s = connect(&Addr::Tcp(port))?;
    s.write_all(req.as_bytes())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).ends_with(end) {
        let n = s.read(&mut buf).context("read memcached's answer")?;
        if n == 0 {
            bail!(
                "memcached closed the connection after {:?}",
                String::from_utf8_lossy(&got)
            );
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() > 1 << 20 {
            bail!("memcached answered more than 1 MiB");
        }
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

fn memcached_server(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    if let Some(skip) = missing(MEMCACHED, "memcached") {
        return Ok(skip);
    }
    let port = free_port()?;
    let port_s = port.to_string();
    let pid = launch(
        cfg,
        dir,
        &[
            MEMCACHED,
            "-u",
            "nobody",
            "-l",
            "127.0.0.1",
            "-p",
            &port_s,
            "-U",
            "0",
            "-m",
            "16",
            "-t",
            "4",
        ],
        procs,
    )?;
    if !wait_until(Duration::from_secs(10), || {
        memcached(port, "version\r\n", "\r\n").is_ok()
    }) {
        bail!("memcached did not answer on port {port} within 10 s");
    }
    let token = format!("crest-mc-{}", std::process::id());
    let mut req = String::new();
    for i in 0..50 {
        let v = format!("{token}:{i}");
        req.push_str(&format!("set key{i} {i} 0 {}\r\n{v}\r\n", v.len()));
    }
    req.push_str("set counter 0 0 2\r\n41\r\n");
    let stored = memcached(port, &req, &"STORED\r\n".repeat(51))?;
    if stored != "STORED\r\n".repeat(51) {
        bail!("memcached did not store every key: {stored:?}");
    }
    if !cfg.checkpoint {
        return Ok(Outcome::Pass);
    }
    dump_restore(cfg, dir, pid, procs)?;
    let got = memcached(port, "get key0 key23 key49\r\n", "END\r\n")?;
    let want: String = [0, 23, 49]
        .iter()
        .map(|i| {
            let v = format!("{token}:{i}");
            format!("VALUE key{i} {i} {}\r\n{v}\r\n", v.len())
        })
        .collect::<String>()
        + "END\r\n";
    if got != want {
        bail!("after restore memcached answered {got:?}, expected {want:?}");
    }
    let n = memcached(port, "incr counter 1\r\n", "\r\n")?;
    if n != "42\r\n" {
        bail!("after restore incr answered {n:?}, expected 42");
    }
    Ok(Outcome::Pass)
}

/// `GET path` over HTTP/1.0: the body of a 200 answer.
fn http_body(port: u16, path: &str) -> Result<String> {
    let mut s = connect(&Addr::Tcp(port))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .context("read the HTTP response")?;
    let Some((head, body)) = resp.split_once("\r\n\r\n") else {
        bail!("an HTTP response without a body: {resp:?}");
    };
    let status = head.lines().next().unwrap_or("");
    if !(status.starts_with("HTTP/1.") && status.contains(" 200 ")) {
        bail!("HTTP status {status:?}");
    }
    Ok(body.to_string())
}

/// The pids of `pid`'s children.
fn children(pid: Pid) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn nginx_workers(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    if let Some(skip) = missing(NGINX, "nginx") {
        return Ok(skip);
    }
    let port = free_port()?;
    let www = dir.root.join("www");
    let tmp = dir.root.join("tmp");
    for d in [&www, &tmp] {
        fs::create_dir_all(d)?;
    }
    let token = format!("crest nginx token {}\n", std::process::id());
    fs::write(www.join("index.html"), &token)?;
    // The workers run as nobody: they must reach the files.
    use std::os::unix::fs::PermissionsExt;
    for d in [&cfg.base, &dir.root, &www] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
    }
    let pidfile = dir.root.join("nginx.pid");
    let conf = dir.root.join("nginx.conf");
    let t = tmp.display();
    fs::write(
        &conf,
        format!(
            "worker_processes 2;\ndaemon off;\npid {};\nerror_log stderr notice;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {t};\n  proxy_temp_path {t};\n  \
             fastcgi_temp_path {t};\n  uwsgi_temp_path {t};\n  scgi_temp_path {t};\n  \
             server {{ listen 127.0.0.1:{port}; root {}; }}\n}}\n",
            pidfile.display(),
            www.display()
        ),
    )?;
    let (conf_s, root_s) = (
        conf.to_string_lossy().into_owned(),
        dir.root.to_string_lossy().into_owned(),
    );
    let pid = launch(
        cfg,
        dir,
        &[NGINX, "-e", "stderr", "-c", &conf_s, "-p", &root_s],
        procs,
    )?;
    let ready = wait_until(Duration::from_secs(10), || {
        children(pid).len() == 2 && http_body(port, "/index.html").is_ok()
    });
    if !ready {
        bail!("nginx did not serve on port {port} with two workers within 10 s");
    }
    if !cfg.checkpoint {
        return Ok(Outcome::Pass);
    }
    let workers = children(pid);
    dump_restore(cfg, dir, pid, procs)?;
    for w in &workers {
        let uid = procs::proc_status_field(Pid::from_raw(*w), "Uid").unwrap_or_default();
        if uid.split_whitespace().next() != Some("65534") {
            bail!("restored worker {w} has Uid {uid:?}, expected nobody (65534)");
        }
    }
    for i in 0..6 {
        let body =
            http_body(port, "/index.html").with_context(|| format!("request {i} after restore"))?;
        if body != token {
            bail!("after restore nginx served {body:?}, expected {token:?}");
        }
    }
    // A reload: the restored master reads its configuration again and
    // replaces its workers.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)?;
    let replaced = wait_until(Duration::from_secs(10), || {
        let now = children(pid);
        now.len() == 2 && now.iter().all(|c| !workers.contains(c))
    });
    if !replaced {
        bail!(
            "the restored nginx master did not replace its workers {workers:?} on SIGHUP (now {:?})",
            children(pid)
        );
    }
    for c in children(pid) {
        procs.track(Pid::from_raw(c));
    }
    let body = http_body(port, "/index.html").context("a request after the reload")?;
    if body != token {
        bail!("after the reload nginx served {body:?}");
    }
    Ok(Outcome::Pass)
}

/// The newest `/usr/lib/postgresql/<major>/bin`.
fn postgres_bin() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|d| d.1)
}

/// Runs `argv` as user postgres (`setpriv`), failing with its output.
fn as_postgres(argv: &[&str]) -> Result<String> {
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
        .args(argv)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("run {argv:?} as postgres"))?;
    if !out.status.success() {
        bail!(
            "{argv:?} as postgres: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether a child of the postmaster serves a client (a backend, whose
/// title is "postgres: USER DB ...").
fn has_backend(pid: Pid) -> bool {
    children(pid).iter().any(|c| {
        fs::read(format!("/proc/{c}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).starts_with("postgres: postgres "))
            .unwrap_or(false)
    })
}

fn postgres_server(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let Some(bin) = postgres_bin() else {
        return Ok(Outcome::Skip(
            "/usr/lib/postgresql/*/bin/postgres not found (apt-get install postgresql; \
             .ci/run installs it)"
                .into(),
        ));
    };
    let pg = dir.root.join("pg");
    let data = pg.join("data");
    fs::create_dir_all(&pg)?;
    use std::os::unix::fs::PermissionsExt;
    for d in [&cfg.base, &dir.root] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
    }
    let chown = std::process::Command::new("chown")
        .args(["postgres:postgres"])
        .arg(&pg)
        .status()
        .context("chown the cluster directory")?;
    if !chown.success() {
        bail!("chown postgres {}: {chown}", pg.display());
    }
    let tool = |name: &str| bin.join(name).to_string_lossy().into_owned();
    let (data_s, pg_s) = (
        data.to_string_lossy().into_owned(),
        pg.to_string_lossy().into_owned(),
    );
    as_postgres(&[
        &tool("initdb"),
        "-D",
        &data_s,
        "-A",
        "trust",
        "-U",
        "postgres",
        "--no-sync",
    ])?;
    let port = free_port()?.to_string();
    let pid = launch(
        cfg,
        dir,
        &[
            "setpriv",
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            &tool("postgres"),
            "-D",
            &data_s,
            "-p",
            &port,
            "-k",
            &pg_s,
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "autovacuum=off",
            "-c",
            "logging_collector=off",
        ],
        procs,
    )?;
    let psql = tool("psql");
    let sql = |host: &str, q: &str| {
        as_postgres(&[
            &psql, "-X", "-q", "-A", "-t", "-h", host, "-p", &port, "-U", "postgres", "-d",
            "postgres", "-c", q,
        ])
    };
    if !wait_until(Duration::from_secs(20), || {
        sql("127.0.0.1", "SELECT 1").is_ok()
    }) {
        let log = crate::crest::tail(&dir.root.join("out.log"), 10).unwrap_or_default();
        bail!("postgres did not answer on port {port} within 20 s\n{log}");
    }
    let token = format!("crest-pg-{}", std::process::id());
    sql(
        &pg_s,
        &format!(
            "CREATE TABLE t (k int PRIMARY KEY, v text); \
             INSERT INTO t SELECT i, '{token}:' || i FROM generate_series(1, 5000) i;"
        ),
    )?;
    let query = "SELECT count(*), sum(k), max(v) FROM t";
    let want = format!("5000|12502500|{token}:999");
    let got = sql("127.0.0.1", query)?;
    if got != want {
        bail!("before the dump postgres answered {got:?}, expected {want:?}");
    }
    if !cfg.checkpoint {
        return Ok(Outcome::Pass);
    }
    if !wait_until(Duration::from_secs(10), || {
        !has_backend(Pid::from_raw(pid.as_raw()))
    }) {
        bail!("a postgres backend still runs 10 s after its client left");
    }
    dump_restore(cfg, dir, pid, procs)?;
    for host in ["127.0.0.1", pg_s.as_str()] {
        let got = sql(host, query).with_context(|| format!("query over {host} after restore"))?;
        if got != want {
            bail!("after restore postgres answered {got:?} over {host}, expected {want:?}");
        }
    }
    let got = sql(
        "127.0.0.1",
        "INSERT INTO t VALUES (5001, 'new'); CHECKPOINT; SELECT count(*) FROM t",
    )?;
    if got != "5001" {
        bail!("after restore an insert and a checkpoint gave {got:?}, expected 5001");
    }
    // A fast shutdown: the restored postmaster stops its children and exits.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
    match procs::wait_exit(pid, Duration::from_secs(20))? {
        procs::Waited::Exited(_) => procs.untrack(pid),
        _ => bail!("the restored postmaster did not exit within 20 s of SIGINT"),
    }
    Ok(Outcome::Pass)
}

/// `tmux -S SOCK ARGS`: its stdout.
fn tmux(sock: &Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(TMUX)
        .arg("-S")
        .arg(sock)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("run tmux {args:?}"))?;
    if !out.status.success() {
        bail!(
            "tmux {args:?}: {} ({})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last `tick N` a pane of the counting loop shows.
fn last_tick(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("tick ")?.trim().parse().ok())
        .next_back()
}

/// Waits until pane `target` shows `want` (5 s at most): its text.
fn pane_shows(sock: &Path, target: &str, want: &dyn Fn(&str) -> bool) -> Result<String> {
    let mut text = String::new();
    wait_until(Duration::from_secs(5), || {
        text = tmux(sock, &["capture-pane", "-p", "-t", target]).unwrap_or_default();
        want(&text)
    });
    Ok(text)
}

fn tmux_sessions(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    if let Some(skip) = missing(TMUX, "tmux") {
        return Ok(skip);
    }
    let sock = dir.root.join("tmux.sock");
    let sock_s = sock.to_string_lossy().into_owned();
    let count = "i=0; while :; do i=$((i+1)); echo tick $i; read -t 0.2 x; done";
    // (the client forks the server, which the harness adopts, and exits)
    let client = launch(
        cfg,
        dir,
        &[
            TMUX,
            "-S",
            &sock_s,
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "one",
            "-x",
            "80",
            "-y",
            "24",
            "/bin/sh",
        ],
        procs,
    )?;
    procs::wait_exit(client, Duration::from_secs(10))?;
    procs.untrack(client);
    tmux(
        &sock,
        &[
            "new-session",
            "-d",
            "-s",
            "two",
            "-x",
            "80",
            "-y",
            "24",
            "bash",
            "-c",
            count,
        ],
    )?;
    tmux(&sock, &["split-window", "-t", "two", "cat"])?;
    let server: i32 = tmux(&sock, &["display", "-p", "#{pid}"])?
        .trim()
        .parse()
        .context("the tmux server's pid")?;
    let server = Pid::from_raw(server);
    procs.track(server);
    let res = (|| -> Result<Outcome> {
        tmux(
            &sock,
            &["send-keys", "-t", "one", "echo hello-before", "Enter"],
        )?;
        let before = pane_shows(&sock, "one", &|t| t.contains("\nhello-before"))?;
        if !before.contains("\nhello-before") {
            bail!("the shell in session one did not run a command: {before:?}");
        }
        tmux(&sock, &["send-keys", "-t", "two.1", "cat-before", "Enter"])?;
        pane_shows(&sock, "two.1", &|t| t.matches("cat-before").count() == 2)?;
        let t0 = last_tick(&pane_shows(&sock, "two.0", &|t| last_tick(t).is_some())?)
            .context("the counting loop shows no tick")?;
        if !cfg.checkpoint {
            return Ok(Outcome::Pass);
        }
        dump_restore(cfg, dir, server, procs)?;

        tmux(
            &sock,
            &["send-keys", "-t", "one", "echo hello-after", "Enter"],
        )?;
        let after = pane_shows(&sock, "one", &|t| t.contains("\nhello-after"))?;
        let (b, a) = (after.find("\nhello-before"), after.find("\nhello-after"));
        if !matches!((b, a), (Some(b), Some(a)) if b < a) {
            bail!("after restore session one's shell shows {after:?}");
        }
        tmux(&sock, &["send-keys", "-t", "two.1", "cat-after", "Enter"])?;
        let cat = pane_shows(&sock, "two.1", &|t| t.matches("cat-after").count() == 2)?;
        if cat.matches("cat-after").count() != 2 || cat.matches("cat-before").count() != 2 {
            bail!("after restore cat's pane shows {cat:?}");
        }
        let ticks = pane_shows(&sock, "two.0", &|t| {
            last_tick(t).is_some_and(|n| n > t0 + 3)
        })?;
        if last_tick(&ticks).is_none_or(|n| n <= t0 + 3) {
            bail!("after restore the loop did not count on from tick {t0}: {ticks:?}");
        }
        // a client attaches and sees the loop's new lines
        let mut attach = std::process::Command::new(TMUX)
            .args(["-S", &sock_s, "-C", "attach", "-t", "two"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("spawn tmux -C attach")?;
        std::thread::sleep(Duration::from_millis(1200));
        if let Some(mut i) = attach.stdin.take() {
            let _ = i.write_all(b"detach-client\n");
        }
        let mut out = String::new();
        if let Some(mut o) = attach.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        let _ = attach.wait();
        if !out.contains("%output") || !out.contains("tick ") {
            bail!("a client attached after restore saw no new output of the loop: {out:?}");
        }
        Ok(Outcome::Pass)
    })();
    let _ = tmux(&sock, &["kill-server"]);
    if wait_until(Duration::from_secs(5), || !alive(server)) {
        procs.untrack(server);
    }
    res
}
