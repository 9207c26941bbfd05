//! What the kernel shows of a tree from outside, before the dump and after
//! the restore (issue 13): every task's `/proc` files that describe state
//! crest must carry (signal masks, credentials, scheduling, limits, timers,
//! mappings with their `VmFlags`, every fd's fdinfo) and the options of
//! every socket, read through `pidfd_getfd`. A difference fails the case
//! unless [`LEGITIMATE`] names it.
//!
//! A view is a flat map from a key (`pid 12 tid 13 status SigBlk`) to a
//! value, already normalised where the kernel shows something that changes
//! by itself (an inode number of a new pipe, an eventfd's address).

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::Path;

use crate::procs::Tree;

/// A flat view of a tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct View(pub BTreeMap<String, String>);

/// Differences the kernel shows for reasons that are not a loss, by the
/// last word(s) of the key. Each is commented.
const LEGITIMATE: &[(&str, &str)] = &[
    // The CPU a thread last ran on, and counters that move by themselves,
    // are not read at all; nothing listed here yet.
];

/// `status` lines compared for every thread.
const STATUS_KEYS: &[&str] = &[
    "Umask",
    "Uid",
    "Gid",
    "Groups",
    "SigPnd",
    "ShdPnd",
    "SigBlk",
    "SigIgn",
    "SigCgt",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Seccomp_filters",
    "Speculation_Store_Bypass",
    "SpeculationIndirectBranch",
    "Cpus_allowed_list",
    "Mems_allowed_list",
    "THP_enabled",
    "VmLck",
    "VmPin",
];

/// Per-process files compared whole.
const WHOLE_FILES: &[&str] = &[
    "limits",
    "loginuid",
    "personality",
    "oom_score_adj",
    "timers",
    "timerslack_ns",
    "cgroup",
];

/// The view of every live task of `tree`.
pub fn snapshot(tree: &Tree) -> View {
    let mut v = View::default();
    for (&pid, task) in tree {
        if task.zombie {
            continue;
        }
        process(&mut v, pid);
        for &tid in &task.tids {
            thread(&mut v, pid, tid);
        }
    }
    v
}

fn put(v: &mut View, key: String, value: impl Into<String>) {
    v.0.insert(key, value.into());
}

fn process(v: &mut View, pid: i32) {
    let base = format!("/proc/{pid}");
    for f in WHOLE_FILES {
        let val = fs::read_to_string(format!("{base}/{f}"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_else(|e| format!("unreadable: {}", e.kind()));
        put(v, format!("pid {pid} {f}"), val);
    }
    for l in ["cwd", "root", "exe"] {
        put(v, format!("pid {pid} {l}"), link(&format!("{base}/{l}")));
    }
    if let Some(stat) = stat_fields(&format!("{base}/stat")) {
        // exit_signal (38)
        put(v, format!("pid {pid} stat exit_signal"), field(&stat, 38));
    }
    maps(v, pid);
    fds(v, pid);
}

fn thread(v: &mut View, pid: i32, tid: i32) {
    let base = format!("/proc/{pid}/task/{tid}");
    let key = |what: &str| format!("pid {pid} tid {tid} {what}");
    if let Ok(status) = fs::read_to_string(format!("{base}/status")) {
        for line in status.lines() {
            let Some((k, val)) = line.split_once(':') else {
                continue;
            };
            if STATUS_KEYS.contains(&k) {
                put(
                    v,
                    key(&format!("status {k}")),
                    val.split_whitespace().collect::<Vec<_>>().join(" "),
                );
            }
        }
    }
    if let Ok(comm) = fs::read_to_string(format!("{base}/comm")) {
        put(v, key("comm"), comm.trim_end());
    }
    if let Some(stat) = stat_fields(&format!("{base}/stat")) {
        // nice (19), rt_priority (40), policy (41)
        put(v, key("stat nice"), field(&stat, 19));
        put(v, key("stat rt_priority"), field(&stat, 40));
        put(v, key("stat policy"), field(&stat, 41));
    }
}

/// The fields of a stat file after the comm, numbered as in proc(5) (the
/// state is field 3).
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let stat = fs::read_to_string(path).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn field(stat: &[String], n: usize) -> String {
    stat.get(n - 3).cloned().unwrap_or_else(|| "?".into())
}

fn link(path: &str) -> String {
    fs::read_link(path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unreadable: {}", e.kind()))
}

/// Every mapping with its protection, offset, name, `VmFlags` and NUMA
/// policy (`numa_maps`), keyed by its start. Adjacent anonymous mappings with the same protection and
/// flags are shown as one: the kernel merges such neighbours when it can
/// and a restore may make one mapping of two that never merged (as CRIU's
/// suite compares maps). Device and inode are left out (anonymous shared
/// memory gets a new inode).
fn maps(v: &mut View, pid: i32) {
    let Ok(smaps) = fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        put(v, format!("pid {pid} smaps"), "unreadable");
        return;
    };
    let policies = numa_policies(pid);
    // (start, end, perms offset name, flags)
    let mut list: Vec<(String, String, String, String)> = Vec::new();
    let mut cur: Option<(String, String, String)> = None;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some((start, end, head)) = cur.take() {
                let mut flags = flags.split_whitespace().collect::<Vec<_>>().join(" ");
                if let Some(p) = policies.get(&start).filter(|p| *p != "default") {
                    flags = format!("{flags} | {p}");
                }
                list.push((start, end, head, flags));
            }
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms), Some(off), Some(_dev), Some(_ino)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if !range.contains('-') || perms.len() != 4 {
            continue;
        }
        let name = f.collect::<Vec<_>>().join(" ");
        // (a socket made again is a new inode, as in the fd links)
        let name = if name.starts_with("socket:[") {
            "socket:[]".to_string()
        } else {
            name
        };
        let (start, end) = range.split_once('-').unwrap_or((range, ""));
        let off = if name.is_empty() { "0" } else { off };
        cur = Some((start.into(), end.into(), format!("{perms} {off} {name}")));
    }
    let mut merged: Vec<(String, String, String, String)> = Vec::new();
    for m in list {
        if let Some(last) = merged.last_mut() {
            // (anonymous memory and the heap: the kernel may or may not
            // merge neighbours, e.g. a heap grown after a fork is two)
            let anon = |h: &str| h.ends_with(" 0 ") || h.ends_with(" 00000000 [heap]");
            let anon = anon(&m.2) && anon(&last.2);
            if anon && last.1 == m.0 && last.2 == m.2 && last.3 == m.3 {
                last.1 = m.1;
                continue;
            }
        }
        merged.push(m);
    }
    for (start, end, head, flags) in merged {
        put(
            v,
            format!("pid {pid} vma {start}"),
            format!("{end} {head} | {flags}"),
        );
    }
}

/// Each mapping's own NUMA policy by its start (two of the kernel's mode
/// names hold a space).
fn numa_policies(pid: i32) -> std::collections::HashMap<String, String> {
    let text = fs::read_to_string(format!("/proc/{pid}/numa_maps")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (start, rest) = line.split_once(' ')?;
            let words =
                if rest.starts_with("weighted interleave") || rest.starts_with("prefer (many)") {
                    2
                } else {
                    1
                };
            let policy = rest.split(' ').take(words).collect::<Vec<_>>().join(" ");
            Some((start.to_string(), policy))
        })
        .collect()
}

/// Every fd: what it is, its fdinfo, and a socket's options.
fn fds(v: &mut View, pid: i32) {
    let dir = format!("/proc/{pid}/fd");
    let Ok(entries) = fs::read_dir(&dir) else {
        put(v, format!("pid {pid} fds"), "unreadable");
        return;
    };
    let mut nums: Vec<i32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    nums.sort_unstable();
    let pidfd = crest_sys::misc::pidfd_open(pid).ok();
    for fd in nums {
        let target = link(&format!("{dir}/{fd}"));
        let key = |what: &str| format!("pid {pid} fd {fd} {what}");
        put(v, key("link"), normalise_link(pid, &target));
        if let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) {
            for (k, val) in fdinfo(&info) {
                put(v, key(&format!("fdinfo {k}")), val);
            }
        }
        if target.starts_with('/') {
            // the file itself: a restore must not touch its times or size
            if let Ok(m) = fs::metadata(format!("{dir}/{fd}")) {
                use std::os::unix::fs::MetadataExt;
                if m.is_file() {
                    put(
                        v,
                        key("file mtime"),
                        format!("{}.{:09}", m.mtime(), m.mtime_nsec()),
                    );
                    put(v, key("file size"), m.len().to_string());
                }
                put(v, key("file mode"), format!("{:o}", m.mode()));
            }
        }
        if let Some(p) = &pidfd {
            for (k, val) in fcntls(p, fd, &target) {
                put(v, key(&k), val);
            }
        }
        if target.starts_with("socket:") {
            if let Some(p) = &pidfd {
                for (k, val) in sockopts(p, fd) {
                    put(v, key(&format!("sockopt {k}")), val);
                }
            }
        }
    }
}

/// What only `fcntl` shows: the SIGIO owner and signal, a pipe's capacity.
fn fcntls(pidfd: &OwnedFd, fd: i32, target: &str) -> Vec<(String, String)> {
    let Ok(f) = rustix::process::pidfd_getfd(pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
    else {
        return vec![("fcntl".into(), "pidfd_getfd failed".into())];
    };
    let mut out = Vec::new();
    let show = |r: std::io::Result<String>| {
        r.unwrap_or_else(|e| format!("errno {}", e.raw_os_error().unwrap_or(0)))
    };
    out.push((
        "fcntl owner".into(),
        show(crest_sys::misc::get_owner(&f).map(|(t, p)| format!("{t} {p}"))),
    ));
    out.push((
        "fcntl F_GETSIG".into(),
        show(crest_sys::misc::get_sig(&f).map(|s| s.to_string())),
    ));
    if target.starts_with("pipe:") {
        out.push((
            "fcntl F_GETPIPE_SZ".into(),
            show(
                rustix::pipe::fcntl_getpipe_size(&f)
                    .map(|s| s.to_string())
                    .map_err(std::io::Error::from),
            ),
        ));
    }
    if target.starts_with("/dev/") && target.ends_with("/ptmx") {
        // a pty master: its pair's state (the settings and window are the
        // slave's)
        let int = |req| show(crest_sys::misc::ioctl_get_int(&f, req).map(|n| n.to_string()));
        out.push(("tty TIOCGPKT".into(), int(libc::TIOCGPKT)));
        out.push(("tty TIOCGPTLCK".into(), int(libc::TIOCGPTLCK)));
        out.push(("tty TIOCGEXCL".into(), int(libc::TIOCGEXCL)));
        out.push((
            "tty termios".into(),
            show(crest_sys::misc::tcgets(&f).map(|t| {
                format!(
                    "{:o} {:o} {:o} {:o} {} {:?}",
                    t.c_iflag,
                    t.c_oflag,
                    t.c_cflag,
                    t.c_lflag,
                    t.c_line,
                    &t.c_cc[..19]
                )
            })),
        ));
        out.push((
            "tty winsize".into(),
            show(
                crest_sys::misc::get_winsize(&f)
                    .map(|w| format!("{} {} {} {}", w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel)),
            ),
        ));
    }
    out
}

/// A new pipe or socket has a new inode number, and so has a namespace
/// made again: a namespace file is named by whose namespace it is (the
/// task's own, the harness's, or another).
fn normalise_link(pid: i32, target: &str) -> String {
    for kind in ["pipe:", "socket:"] {
        if target.starts_with(kind) {
            return format!("{kind}[*]");
        }
    }
    let ns = target
        .split_once(":[")
        .filter(|(k, rest)| rest.ends_with(']') && !k.contains('/'));
    if let Some((kind, _)) = ns {
        let of = |p: &str, k: &str| link(&format!("/proc/{p}/ns/{k}"));
        let whose = if of(&pid.to_string(), kind) == target {
            "own"
        } else if of(&pid.to_string(), &format!("{kind}_for_children")) == target {
            "own, for children"
        } else if of("self", kind) == target {
            "the harness's"
        } else {
            "another"
        };
        return format!("{kind}:[{whose}]");
    }
    target.to_string()
}

/// fdinfo as (key, value), lines with the same key joined. Values that
/// change by themselves are normalised: `mnt_id` and `ino` (a restore may
/// make a new mount namespace and new pipes), `eventfd-id` (an address),
/// the `ino`/`sdev` of an epoll target (a new pipe), a timerfd's
/// `it_value` (the time left, shown as armed or not); an io_uring's SQ
/// thread is a new kernel thread, with its own id and run times
/// (`SqThread`, `SqThreadCpu`, `SqTotalTime`, `SqWorkTime`: shown as
/// there or not).
fn fdinfo(text: &str) -> Vec<(String, String)> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let Some((k, val)) = line.split_once(':') else {
            continue;
        };
        let k = k.trim();
        let val = val.split_whitespace().collect::<Vec<_>>().join(" ");
        let val = match k {
            "mnt_id" | "ino" | "eventfd-id" | "SqTotalTime" | "SqWorkTime" => continue,
            "SqThread" | "SqThreadCpu" => {
                if val == "-1" {
                    "none".to_string()
                } else {
                    "a thread".to_string()
                }
            }
            // a fanotify mount mark: the mount's id is new with its
            // namespace
            "fanotify mnt_id" => val
                .split_once(' ')
                .map_or(String::new(), |(_, r)| r.to_string()),
            "it_value" => {
                if val.replace(' ', "") == "(0,0)" {
                    "disarmed".to_string()
                } else {
                    "armed".to_string()
                }
            }
            "tfd" => val
                .split(' ')
                .filter(|w| !w.starts_with("ino:") && !w.starts_with("sdev:"))
                .collect::<Vec<_>>()
                .join(" "),
            _ => val,
        };
        out.entry(k.to_string()).or_default().push(val);
    }
    out.into_iter()
        .map(|(k, mut v)| {
            if k == "tfd" {
                // an epoll's watches in the order of their files' addresses
                v.sort();
            }
            (k, v.join(" / "))
        })
        .collect()
}

/// `getsockopt` into a buffer; the bytes written, or the errno.
fn getsockopt(fd: &OwnedFd, level: i32, opt: i32) -> Result<Vec<u8>, i32> {
    crest_sys::net::getsockopt_bytes(fd, level, opt, 256).map_err(|e| e.raw_os_error().unwrap_or(0))
}

/// An int option as a number, a struct as hex, a string as text.
fn show_opt(fd: &OwnedFd, level: i32, opt: i32, kind: Kind) -> String {
    match getsockopt(fd, level, opt) {
        Err(e) => format!("errno {e}"),
        Ok(buf) => match kind {
            Kind::Int if buf.len() >= 4 => {
                i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]).to_string()
            }
            Kind::Text => String::from_utf8_lossy(&buf)
                .trim_end_matches('\0')
                .to_string(),
            _ => buf.iter().map(|b| format!("{b:02x}")).collect(),
        },
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Int,
    Bytes,
    Text,
}

// Options newer than the libc crate's tables.
const SO_BUF_LOCK: i32 = 72;
const SO_GET_FILTER: i32 = libc::SO_ATTACH_FILTER;
const IPV6_FREEBIND: i32 = 78;

const SOCKET_OPTS: &[(&str, i32, Kind)] = &[
    ("SO_TYPE", libc::SO_TYPE, Kind::Int),
    ("SO_PROTOCOL", libc::SO_PROTOCOL, Kind::Int),
    ("SO_REUSEADDR", libc::SO_REUSEADDR, Kind::Int),
    ("SO_REUSEPORT", libc::SO_REUSEPORT, Kind::Int),
    ("SO_KEEPALIVE", libc::SO_KEEPALIVE, Kind::Int),
    ("SO_OOBINLINE", libc::SO_OOBINLINE, Kind::Int),
    ("SO_BROADCAST", libc::SO_BROADCAST, Kind::Int),
    ("SO_DONTROUTE", libc::SO_DONTROUTE, Kind::Int),
    ("SO_NO_CHECK", libc::SO_NO_CHECK, Kind::Int),
    ("SO_PRIORITY", libc::SO_PRIORITY, Kind::Int),
    ("SO_MARK", libc::SO_MARK, Kind::Int),
    ("SO_RCVLOWAT", libc::SO_RCVLOWAT, Kind::Int),
    ("SO_LINGER", libc::SO_LINGER, Kind::Bytes),
    ("SO_RCVTIMEO", libc::SO_RCVTIMEO, Kind::Bytes),
    ("SO_SNDTIMEO", libc::SO_SNDTIMEO, Kind::Bytes),
    ("SO_PASSCRED", libc::SO_PASSCRED, Kind::Int),
    ("SO_PASSSEC", libc::SO_PASSSEC, Kind::Int),
    ("SO_TIMESTAMP", libc::SO_TIMESTAMP, Kind::Int),
    ("SO_TIMESTAMPNS", libc::SO_TIMESTAMPNS, Kind::Int),
    ("SO_BINDTODEVICE", libc::SO_BINDTODEVICE, Kind::Text),
    ("SO_BUF_LOCK", SO_BUF_LOCK, Kind::Int),
    ("SO_ACCEPTCONN", libc::SO_ACCEPTCONN, Kind::Int),
    ("SO_PEEK_OFF", libc::SO_PEEK_OFF, Kind::Int),
    ("SO_GET_FILTER", SO_GET_FILTER, Kind::Int),
    ("SO_LOCK_FILTER", libc::SO_LOCK_FILTER, Kind::Int),
    ("SO_SNDBUF", libc::SO_SNDBUF, Kind::Int),
    ("SO_RCVBUF", libc::SO_RCVBUF, Kind::Int),
];

const TCP_OPTS: &[(&str, i32, Kind)] = &[
    ("TCP_NODELAY", libc::TCP_NODELAY, Kind::Int),
    ("TCP_CORK", libc::TCP_CORK, Kind::Int),
    ("TCP_KEEPIDLE", libc::TCP_KEEPIDLE, Kind::Int),
    ("TCP_KEEPINTVL", libc::TCP_KEEPINTVL, Kind::Int),
    ("TCP_KEEPCNT", libc::TCP_KEEPCNT, Kind::Int),
    ("TCP_USER_TIMEOUT", libc::TCP_USER_TIMEOUT, Kind::Int),
    ("TCP_SYNCNT", libc::TCP_SYNCNT, Kind::Int),
    ("TCP_LINGER2", libc::TCP_LINGER2, Kind::Int),
    ("TCP_DEFER_ACCEPT", libc::TCP_DEFER_ACCEPT, Kind::Int),
    ("TCP_WINDOW_CLAMP", libc::TCP_WINDOW_CLAMP, Kind::Int),
    ("TCP_NOTSENT_LOWAT", libc::TCP_NOTSENT_LOWAT, Kind::Int),
    (
        "TCP_THIN_LINEAR_TIMEOUTS",
        libc::TCP_THIN_LINEAR_TIMEOUTS,
        Kind::Int,
    ),
    ("TCP_FASTOPEN", libc::TCP_FASTOPEN, Kind::Int),
    ("TCP_CONGESTION", libc::TCP_CONGESTION, Kind::Text),
];

const IP_OPTS: &[(&str, i32, Kind)] = &[
    ("IP_TOS", libc::IP_TOS, Kind::Int),
    ("IP_TTL", libc::IP_TTL, Kind::Int),
    ("IP_FREEBIND", libc::IP_FREEBIND, Kind::Int),
    ("IP_TRANSPARENT", libc::IP_TRANSPARENT, Kind::Int),
    ("IP_RECVERR", libc::IP_RECVERR, Kind::Int),
    ("IP_PKTINFO", libc::IP_PKTINFO, Kind::Int),
    ("IP_RECVTOS", libc::IP_RECVTOS, Kind::Int),
    ("IP_MTU_DISCOVER", libc::IP_MTU_DISCOVER, Kind::Int),
    ("IP_MULTICAST_TTL", libc::IP_MULTICAST_TTL, Kind::Int),
    ("IP_MULTICAST_LOOP", libc::IP_MULTICAST_LOOP, Kind::Int),
    (
        "IP_BIND_ADDRESS_NO_PORT",
        libc::IP_BIND_ADDRESS_NO_PORT,
        Kind::Int,
    ),
];

const IPV6_OPTS: &[(&str, i32, Kind)] = &[
    ("IPV6_V6ONLY", libc::IPV6_V6ONLY, Kind::Int),
    ("IPV6_UNICAST_HOPS", libc::IPV6_UNICAST_HOPS, Kind::Int),
    ("IPV6_TCLASS", libc::IPV6_TCLASS, Kind::Int),
    ("IPV6_RECVPKTINFO", libc::IPV6_RECVPKTINFO, Kind::Int),
    ("IPV6_FREEBIND", IPV6_FREEBIND, Kind::Int),
    ("IPV6_MTU_DISCOVER", libc::IPV6_MTU_DISCOVER, Kind::Int),
];

/// A socket's options, by level. Buffer sizes a TCP socket tunes itself
/// (no `SO_BUF_LOCK`) are left out.
fn sockopts(pidfd: &OwnedFd, fd: i32) -> Vec<(String, String)> {
    let Ok(s) = rustix::process::pidfd_getfd(pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
    else {
        return vec![("pidfd_getfd".into(), "failed".into())];
    };
    let int = |level, opt| show_opt(&s, level, opt, Kind::Int);
    let domain = int(libc::SOL_SOCKET, libc::SO_DOMAIN);
    let proto = int(libc::SOL_SOCKET, libc::SO_PROTOCOL);
    let locked = int(libc::SOL_SOCKET, SO_BUF_LOCK);
    let tcp = proto == libc::IPPROTO_TCP.to_string();
    let mut out = Vec::new();
    for &(name, opt, kind) in SOCKET_OPTS {
        let auto = tcp && locked == "0";
        if auto && (opt == libc::SO_SNDBUF || opt == libc::SO_RCVBUF) {
            continue;
        }
        out.push((name.to_string(), show_opt(&s, libc::SOL_SOCKET, opt, kind)));
    }
    let mut level = |lvl: i32, opts: &[(&str, i32, Kind)]| {
        for &(name, opt, kind) in opts {
            // multicast options mean nothing on a TCP socket and the kernel
            // refuses to set them there (an accepted socket shows another
            // default than a new one)
            if tcp && name.contains("MULTICAST") {
                continue;
            }
            out.push((name.to_string(), show_opt(&s, lvl, opt, kind)));
        }
    };
    if tcp {
        level(libc::SOL_TCP, TCP_OPTS);
    }
    if domain == libc::AF_INET.to_string() {
        level(libc::SOL_IP, IP_OPTS);
    }
    if domain == libc::AF_INET6.to_string() {
        level(libc::SOL_IPV6, IPV6_OPTS);
    }
    out
}

/// The differences between two views, as lines; those [`LEGITIMATE`]
/// names are left out.
pub fn diff(before: &View, after: &View) -> Vec<String> {
    let legit = |k: &str| LEGITIMATE.iter().any(|(suffix, _)| k.ends_with(suffix));
    let mut out = Vec::new();
    for (k, b) in &before.0 {
        match after.0.get(k) {
            Some(a) if a == b => {}
            _ if legit(k) => {}
            Some(a) => out.push(format!("{k}: {b:?} before, {a:?} after")),
            None => out.push(format!("{k}: {b:?} before, gone after")),
        }
    }
    for (k, a) in &after.0 {
        if !before.0.contains_key(k) && !legit(k) {
            out.push(format!("{k}: new after: {a:?}"));
        }
    }
    out
}

/// `view` with every pid and tid in its keys replaced by `inner` of it
/// (for a tree restored with other outer pids: keyed by the ids inside).
/// Values that hold pids (fcntl owners) are compared as they are.
pub fn rekeyed(view: &View, inner: &dyn Fn(i32) -> Option<String>) -> View {
    let swap = |word: &str| -> Option<String> { inner(word.parse().ok()?) };
    let out = view
        .0
        .iter()
        .map(|(k, v)| {
            let words: Vec<&str> = k.split(' ').collect();
            let mut new: Vec<String> = words.iter().map(|w| w.to_string()).collect();
            for i in 1..words.len() {
                if matches!(words[i - 1], "pid" | "tid") {
                    if let Some(id) = swap(words[i]) {
                        new[i] = format!("[{id}]");
                    }
                }
            }
            (new.join(" "), v.clone())
        })
        .collect();
    View(out)
}

/// Writes a view as text, one key per line.
pub fn save(view: &View, path: &Path) {
    let text: String = view.0.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    let _ = fs::write(path, text);
}
