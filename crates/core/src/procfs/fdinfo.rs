//! `/proc/PID/fdinfo/FD` and `/proc/PID/fd`.

use std::io;

use serde::Serialize;

use super::{dec, list_numeric_dir, oct_u32, perr, proc_path, read_link, read_text, ProcError};

/// `/proc/PID/fdinfo/FD`: the common fields and, in order, every other
/// line as (key, value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FdInfo {
    pub pos: u64,
    /// The open flags (`O_*`), printed in octal.
    pub flags: u32,
    pub mnt_id: u64,
    pub ino: u64,
    /// Every other line. The key is the text before the first ':', except
    /// for "inotify ..." and "fanotify ..." lines, where it is the first word;
    /// the value is the rest of the line, trimmed and kept whole (an epoll
    /// "tfd:" line keeps its "events:"/"data:" parts in the value).
    pub extra: Vec<(String, String)>,
}

impl FdInfo {
    /// The value of the first extra line with key `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The values of every extra line with key `key` (epoll "tfd",
    /// "inotify", "lock").
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.extra
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `/proc/PID/fdinfo/FD` text. `pos` and `flags` are required;
/// `mnt_id` (Linux 3.15) and `ino` (Linux 5.14) default to 0.
pub fn parse_fdinfo(path: &str, text: &str) -> Result<FdInfo, ProcError> {
    let mut info = FdInfo::default();
    let (mut have_pos, mut have_flags) = (false, false);
    for (i, l) in text.lines().enumerate() {
        let line = i + 1;
        if l.starts_with([' ', '\t']) {
            // an item of the section above (an io_uring's entries, its
            // buffers, its polls): read by its kind
            continue;
        }
        let (key, value) =
            split_line(l).ok_or_else(|| perr(path, line, format!("no key in {l:?}")))?;
        let bad = || perr(path, line, format!("bad {key} {value:?}"));
        match key {
            "pos" => {
                info.pos = dec(value).ok_or_else(bad)?;
                have_pos = true;
            }
            "flags" => {
                info.flags = oct_u32(value).ok_or_else(bad)?;
                have_flags = true;
            }
            "mnt_id" => info.mnt_id = dec(value).ok_or_else(bad)?,
            "ino" => info.ino = dec(value).ok_or_else(bad)?,
            _ => info.extra.push((key.to_string(), value.to_string())),
        }
    }
    if !have_pos {
        return Err(perr(path, 0, "missing pos"));
    }
    if !have_flags {
        return Err(perr(path, 0, "missing flags"));
    }
    Ok(info)
}

/// Splits "key: value" (or "inotify wd:1 ..."), trimming the value.
fn split_line(l: &str) -> Option<(&str, &str)> {
    for word in ["inotify", "fanotify"] {
        if let Some(rest) = l.strip_prefix(word) {
            if rest.starts_with(char::is_whitespace) {
                return Some((word, rest.trim()));
            }
        }
    }
    let (key, value) = l.split_once(':')?;
    let key = key.trim();
    (!key.is_empty()).then_some((key, value.trim()))
}

/// `/proc/PID/fdinfo/FD` — position, flags, mount and kind-specific state.
pub fn read_fdinfo(pid: i32, fd: i32) -> Result<FdInfo, ProcError> {
    let path = proc_path(pid, &format!("fdinfo/{fd}"));
    parse_fdinfo(&path, &read_text(&path)?)
}

/// `/proc/PID/fd` — each open fd and its link target ("/path",
/// "pipe:[123]", "anon_inode:[eventpoll]", ...), sorted by fd. An fd closed
/// between listing and `readlink` is left out.
pub fn list_fds(pid: i32) -> Result<Vec<(i32, String)>, ProcError> {
    let dir = proc_path(pid, "fd");
    let mut out = Vec::new();
    for fd in list_numeric_dir(&dir)? {
        match read_link(&format!("{dir}/{fd}")) {
            Ok(target) => out.push((fd, target)),
            Err(ProcError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &str = include_str!("fixtures/fdinfo_reg.txt");
    const PIPE: &str = include_str!("fixtures/fdinfo_pipe.txt");
    const EPOLL: &str = include_str!("fixtures/fdinfo_epoll.txt");
    const EVENTFD: &str = include_str!("fixtures/fdinfo_eventfd.txt");
    const INOTIFY: &str = include_str!("fixtures/fdinfo_inotify.txt");
    const SIGNALFD: &str = include_str!("fixtures/fdinfo_signalfd.txt");
    const SOCKET: &str = include_str!("fixtures/fdinfo_socket.txt");
    const TIMERFD: &str = include_str!("fixtures/fdinfo_timerfd.txt");

    #[test]
    fn regular_file_and_pipe() {
        let r = parse_fdinfo("fdinfo", REG).unwrap();
        assert_eq!(
            r,
            FdInfo {
                pos: 3,
                flags: 0o2100000,
                mnt_id: 27,
                ino: 611,
                extra: vec![]
            }
        );
        assert_ne!(r.flags & libc::O_CLOEXEC as u32, 0);
        let p = parse_fdinfo("fdinfo", PIPE).unwrap();
        assert_eq!((p.pos, p.flags, p.mnt_id, p.ino), (0, 0o2004001, 16, 5438));
        assert_eq!(p.flags & libc::O_ACCMODE as u32, libc::O_WRONLY as u32);
        assert_ne!(p.flags & libc::O_NONBLOCK as u32, 0);
        let s = parse_fdinfo("fdinfo", SOCKET).unwrap();
        assert_eq!((s.flags, s.mnt_id, s.ino), (0o2000002, 10, 5442));
    }

    #[test]
    fn epoll_keeps_tfd_lines_whole() {
        let e = parse_fdinfo("fdinfo", EPOLL).unwrap();
        assert_eq!(e.extra.len(), 2);
        let tfds: Vec<&str> = e.all("tfd").collect();
        assert_eq!(
            tfds[0],
            "4 events:       19 data:                4  pos:0 ino:153e sdev:f"
        );
        assert!(tfds[1].starts_with("5 events:       1c"));
    }

    #[test]
    fn anon_inode_kinds() {
        let ev = parse_fdinfo("fdinfo", EVENTFD).unwrap();
        assert_eq!(ev.get("eventfd-count"), Some("5"));
        assert_eq!(ev.get("eventfd-semaphore"), Some("0"));
        assert_eq!(ev.flags, 0o4002);
        let ino = parse_fdinfo("fdinfo", INOTIFY).unwrap();
        assert_eq!(ino.extra.len(), 1);
        assert_eq!(ino.extra[0].0, "inotify");
        assert!(ino.extra[0]
            .1
            .starts_with("wd:1 ino:3c4a7 sdev:fe00000 mask:100 "));
        let sig = parse_fdinfo("fdinfo", SIGNALFD).unwrap();
        assert_eq!(sig.get("sigmask"), Some("0000000000000a00"));
        let t = parse_fdinfo("fdinfo", TIMERFD).unwrap();
        let keys: Vec<&str> = t.extra.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "clockid",
                "ticks",
                "settime flags",
                "it_value",
                "it_interval"
            ]
        );
        assert_eq!(t.get("it_value"), Some("(0, 0)"));
    }

    fn err(text: &str) -> String {
        parse_fdinfo("/proc/3/fdinfo/4", text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn malformed() {
        assert_eq!(err("pos:\t0\n"), "/proc/3/fdinfo/4 line 0: missing flags");
        assert_eq!(err("flags:\t02\n"), "/proc/3/fdinfo/4 line 0: missing pos");
        assert_eq!(
            err("pos:\t0\nflags:\t09\n"),
            "/proc/3/fdinfo/4 line 2: bad flags \"09\""
        );
        assert_eq!(err("pos:\tx\n"), "/proc/3/fdinfo/4 line 1: bad pos \"x\"");
        assert_eq!(
            err("pos:\t0\nflags:\t02\ngarbage\n"),
            "/proc/3/fdinfo/4 line 3: no key in \"garbage\""
        );
        assert_eq!(
            err("pos:\t0\nflags:\t02\n: 1\n"),
            "/proc/3/fdinfo/4 line 3: no key in \": 1\""
        );
    }
}
