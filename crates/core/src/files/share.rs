//! Open file descriptions shared by several fds, in one task or across
//! tasks. At dump, fds whose files have the same device and inode are
//! compared with `kcmp(KCMP_FILE)`, and one that matches an fd seen before
//! reuses its entry. At restore the first task that needs a description
//! makes it; another fd of the same task is a `dup` of it, and another
//! task gets the very same description from crest over a unix socket
//! (`remote::Remote::give_fd`), so offsets, status flags and the object behind stay shared.

use crate::error::{DumpCtx, DumpError};
use crest_images::pb::FdTypes;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

/// Device and inode of the file behind an fd.
pub type Key = (u64, u64);

/// Descriptions seen at dump: by file, the (pid, fd) that showed each
/// and the entry it got, kept in the order `kcmp` gives the kernel's file
/// objects, so each fd costs a binary search of kcmp calls (every task of a
/// tree holds the same `/dev/null` or terminal: a linear scan made the dump
/// quadratic in the number of tasks).
#[derive(Default)]
pub struct Seen {
    by_key: HashMap<Key, Vec<(i32, i32, FdTypes, u32)>>,
}

/// The device and inode of fd `fd` of `pid`.
pub fn key(pid: i32, fd: i32) -> Result<Key, DumpError> {
    let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).at(pid, "stat an fd")?;
    Ok((meta.dev(), meta.ino()))
}

impl Seen {
    /// The entry of an fd seen before that is the same description as fd
    /// `fd` of `pid`.
    pub fn find(&self, pid: i32, fd: i32, key: Key) -> Result<Option<(FdTypes, u32)>, DumpError> {
        let Some(list) = self.by_key.get(&key) else {
            return Ok(None);
        };
        Ok(search(list, pid, fd)?.ok().map(|i| (list[i].2, list[i].3)))
    }

    pub fn add(
        &mut self,
        pid: i32,
        fd: i32,
        key: Key,
        (ty, id): (FdTypes, u32),
    ) -> Result<(), DumpError> {
        // (searched again rather than kept from `find`: making the entry
        // may have added others of the same file, fds passed in flight)
        let list = self.by_key.entry(key).or_default();
        let at = match search(list, pid, fd)? {
            Ok(i) | Err(i) => i,
        };
        list.insert(at, (pid, fd, ty, id));
        Ok(())
    }
}

/// Where fd `fd` of `pid` is in `list` (in kcmp's order): `Ok(i)` the same
/// description as `list[i]`, `Err(i)` where it goes. A kernel that gives
/// no order (kcmp answers 3) is searched one by one.
fn search(
    list: &[(i32, i32, FdTypes, u32)],
    pid: i32,
    fd: i32,
) -> Result<Result<usize, usize>, DumpError> {
    let cmp = |p: i32, f: i32| crest_sys::misc::kcmp_file(pid, p, fd, f).at(pid, "kcmp of two fds");
    let (mut lo, mut hi) = (0, list.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match cmp(list[mid].0, list[mid].1)? {
            0 => return Ok(Ok(mid)),
            1 => hi = mid,
            2 => lo = mid + 1,
            _ => {
                for (i, e) in list.iter().enumerate() {
                    if cmp(e.0, e.1)? == 0 {
                        return Ok(Ok(i));
                    }
                }
                return Ok(Err(list.len()));
            }
        }
    }
    Ok(Err(lo))
}

/// Where a restored description lives: fd `fd` of task `pid`.
pub type Holders = HashMap<u32, (i32, u32)>;
