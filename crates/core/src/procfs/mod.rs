//! /proc parsers and readers.
//!
//! Every file gets a pure parser, `parse_*(path, text)`, that takes the text
//! and a path used only to label errors, so it can be tested on fixtures
//! copied from a real /proc; and a thin reader, `read_*(pid)`, that reads the
//! file and calls the parser.
//!
//! Text files are read as bytes and decoded lossily: a path that is not UTF-8
//! (in maps, or a link target) comes back with U+FFFD in it.

mod auxv;
mod fdinfo;
mod idmap;
mod maps;
mod mountinfo;
mod pagemap;
mod smaps;
mod stat;
mod status;

use std::io;

pub use auxv::{parse_auxv, read_auxv};
pub use fdinfo::{list_fds, parse_fdinfo, read_fdinfo, FdInfo};
pub use idmap::{
    parse_id_map, parse_setgroups, read_gid_map, read_setgroups, read_uid_map, IdExtent,
};
pub use maps::{parse_maps, read_maps, MapsEntry};
pub use mountinfo::{parse_mountinfo, MountInfo};
pub use pagemap::{read_pagemap, runs, Pagemap, PagemapBits, PAGE_SIZE};
pub use smaps::{parse_smaps, read_smaps, SmapsEntry};
pub use stat::{parse_stat, read_stat, read_task_stat, Stat};
pub use status::{parse_status, read_status, read_task_status, Status};

/// What went wrong reading or parsing a /proc file.
///
/// `line` is 1-based; 0 means the problem is not tied to one line (a
/// required field is missing). For binary files (auxv) it is the 1-based
/// record number.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} line {line}: {what}")]
    Parse {
        path: String,
        line: usize,
        what: String,
    },
}

impl ProcError {
    /// True if the error is an `Io` one of kind `NotFound` (the process or
    /// the file is gone).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ProcError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Builds a `Parse` error.
pub(crate) fn perr(path: &str, line: usize, what: impl Into<String>) -> ProcError {
    ProcError::Parse {
        path: path.to_string(),
        line,
        what: what.into(),
    }
}

/// Builds an `Io` error.
pub(crate) fn ioerr(path: &str, source: io::Error) -> ProcError {
    ProcError::Io {
        path: path.to_string(),
        source,
    }
}

/// `/proc/{pid}/{rest}`.
pub(crate) fn proc_path(pid: i32, rest: &str) -> String {
    format!("/proc/{pid}/{rest}")
}

/// Reads a whole /proc file as (lossily decoded) text.
pub(crate) fn read_text(path: &str) -> Result<String, ProcError> {
    let bytes = std::fs::read(path).map_err(|e| ioerr(path, e))?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// A cursor over the whitespace-separated fields of one line.
pub(crate) struct Fields<'a> {
    path: &'a str,
    line: usize,
    rest: &'a str,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(path: &'a str, line: usize, text: &'a str) -> Self {
        Fields {
            path,
            line,
            rest: text,
        }
    }

    /// The next field; `what` names it in the "missing" error.
    pub(crate) fn next(&mut self, what: &str) -> Result<&'a str, ProcError> {
        let s = self.rest.trim_start();
        if s.is_empty() {
            return Err(perr(self.path, self.line, format!("missing {what}")));
        }
        let end = s.find(char::is_whitespace).unwrap_or(s.len());
        let (tok, rest) = s.split_at(end);
        self.rest = rest;
        Ok(tok)
    }

    /// The next field, parsed with `parse`; errors name `what`.
    pub(crate) fn parse<T>(
        &mut self,
        what: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, ProcError> {
        let tok = self.next(what)?;
        parse(tok).ok_or_else(|| perr(self.path, self.line, format!("bad {what} {tok:?}")))
    }

    /// Everything not consumed yet, with leading whitespace removed.
    pub(crate) fn rest(&self) -> &'a str {
        self.rest.trim_start()
    }
}

pub(crate) fn dec<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.parse().ok()
}

pub(crate) fn hex_u64(s: &str) -> Option<u64> {
    digits_only(s, 16).and_then(|s| u64::from_str_radix(s, 16).ok())
}

pub(crate) fn hex_u32(s: &str) -> Option<u32> {
    digits_only(s, 16).and_then(|s| u32::from_str_radix(s, 16).ok())
}

pub(crate) fn oct_u32(s: &str) -> Option<u32> {
    digits_only(s, 8).and_then(|s| u32::from_str_radix(s, 8).ok())
}

/// `from_str_radix` accepts a leading `+`; the kernel never prints one.
fn digits_only(s: &str, radix: u32) -> Option<&str> {
    (!s.is_empty() && s.chars().all(|c| c.is_digit(radix))).then_some(s)
}

/// Parses a list of whitespace-separated decimal numbers.
pub(crate) fn dec_list<T: std::str::FromStr>(
    path: &str,
    line: usize,
    what: &str,
    s: &str,
) -> Result<Vec<T>, ProcError> {
    s.split_whitespace()
        .map(|tok| dec(tok).ok_or_else(|| perr(path, line, format!("bad {what} {tok:?}"))))
        .collect()
}

/// `readlink` — the target of a symlink (lossily decoded).
/// A path by which crest reaches the root of `pid`'s mount namespace,
/// where the paths `/proc` shows of the task's files start:
/// `/proc/PID/root`, climbed out of a chroot by as many `..` as the root's
/// own path (as `/proc` shows it) has levels.
pub fn ns_root(pid: i32) -> String {
    let base = format!("/proc/{pid}/root");
    match std::fs::read_link(&base) {
        Ok(root) => {
            let depth = root
                .components()
                .filter(|c| matches!(c, std::path::Component::Normal(_)))
                .count();
            base + &"/..".repeat(depth)
        }
        Err(_) => base,
    }
}

/// Whether `pid` is chrooted: its root is below the top of its mount
/// namespace (crest walks its root's `..`, which the task's root does not
/// stop, to another directory).
pub fn chrooted(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: String| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    let here = id(format!("/proc/{pid}/root/")).ok();
    let above = id(format!("/proc/{pid}/root/..")).ok();
    here.is_some() && here != above
}

pub fn read_link(path: &str) -> Result<String, ProcError> {
    let target = std::fs::read_link(path).map_err(|e| ioerr(path, e))?;
    Ok(target.to_string_lossy().into_owned())
}

/// Parses a children file: space-separated pids.
pub fn parse_children(path: &str, text: &str) -> Result<Vec<i32>, ProcError> {
    dec_list(path, 1, "pid", text)
}

/// `/proc/PID/task/TID/children` — the children of one thread.
///
/// The file exists only with `CONFIG_PROC_CHILDREN`; without it this is an
/// `Io` error of kind `NotFound`.
pub fn read_children(pid: i32, tid: i32) -> Result<Vec<i32>, ProcError> {
    let path = proc_path(pid, &format!("task/{tid}/children"));
    parse_children(&path, &read_text(&path)?)
}

/// Reads a directory of numeric names (`/proc/PID/task`, `/proc/PID/fd`),
/// sorted. Entries that are not numbers are skipped.
pub(crate) fn list_numeric_dir(path: &str) -> Result<Vec<i32>, ProcError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| ioerr(path, e))? {
        let entry = entry.map_err(|e| ioerr(path, e))?;
        if let Some(n) = entry.file_name().to_str().and_then(dec::<i32>) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// `/proc/PID/task` — the thread ids of a process, sorted, but the
/// kernel's own threads in it (an io_uring's workers and SQ thread,
/// `iou-*`: they never run the task's code, and the kernel makes them
/// again when it needs them).
pub fn list_tids(pid: i32) -> Result<Vec<i32>, ProcError> {
    let mut tids = list_numeric_dir(&proc_path(pid, "task"))?;
    tids.retain(|&tid| tid == pid || !is_io_worker(pid, tid));
    Ok(tids)
}

/// `PF_IO_WORKER` of a task's `flags` (`stat` field 9).
const PF_IO_WORKER: u32 = 0x10;

/// Whether thread `tid` of `pid` is one of the kernel's io_uring threads
/// (false for a thread that is gone).
pub fn is_io_worker(pid: i32, tid: i32) -> bool {
    let path = format!("/proc/{pid}/task/{tid}/stat");
    read_text(&path)
        .ok()
        .and_then(|text| parse_stat(&path, &text).ok())
        .is_some_and(|st| st.flags & PF_IO_WORKER != 0)
}

/// `/proc/PID/limits` — (soft, hard) of every resource, in resource order
/// (`unlimited` is `RLIM_INFINITY`). Readable where `prlimit` on another
/// process would need CAP_SYS_RESOURCE.
pub fn parse_limits(path: &str, text: &str) -> Result<Vec<(u64, u64)>, ProcError> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let (Some(soft_at), Some(hard_at)) = (header.find("Soft Limit"), header.find("Hard Limit"))
    else {
        return Err(ProcError::Parse {
            path: path.to_string(),
            line: 1,
            what: "no Soft Limit / Hard Limit header".into(),
        });
    };
    let value = |i: usize, s: &str| -> Result<u64, ProcError> {
        match s.trim() {
            "unlimited" => Ok(u64::MAX),
            v => v.parse().map_err(|_| ProcError::Parse {
                path: path.to_string(),
                line: i + 2,
                what: format!("bad limit {v:?}"),
            }),
        }
    };
    lines
        .enumerate()
        .map(|(i, l)| {
            let soft = l.get(soft_at..hard_at).unwrap_or("");
            let hard = l
                .get(hard_at..)
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("");
            Ok((value(i, soft)?, value(i, hard)?))
        })
        .collect()
}

/// Reads `/proc/PID/limits`.
pub fn read_limits(pid: i32) -> Result<Vec<(u64, u64)>, ProcError> {
    let path = proc_path(pid, "limits");
    parse_limits(&path, &read_text(&path)?)
}

/// `/proc/PID/comm` — the command name, without the trailing newline.
pub fn read_comm(pid: i32) -> Result<String, ProcError> {
    let path = proc_path(pid, "comm");
    let mut text = read_text(&path)?;
    if text.ends_with('\n') {
        text.pop();
    }
    Ok(text)
}

/// Parses a personality file: one hex number.
pub fn parse_personality(path: &str, text: &str) -> Result<u32, ProcError> {
    let mut f = Fields::new(path, 1, text);
    let v = f.parse("personality", hex_u32)?;
    if !f.rest().is_empty() {
        return Err(perr(path, 1, format!("trailing text {:?}", f.rest())));
    }
    Ok(v)
}

/// `/proc/PID/personality` — the execution domain (needs ptrace access).
pub fn read_personality(pid: i32) -> Result<u32, ProcError> {
    let path = proc_path(pid, "personality");
    parse_personality(&path, &read_text(&path)?)
}

#[cfg(test)]
mod tests;
