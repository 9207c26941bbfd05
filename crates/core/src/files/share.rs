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
/// and the entry it got.
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
        for &(p, f, ty, id) in list {
            let same = crest_sys::misc::kcmp_file(pid, p, fd, f).at(pid, "kcmp of two fds")?;
            if same == 0 {
                return Ok(Some((ty, id)));
            }
        }
        Ok(None)
    }

    pub fn add(&mut self, pid: i32, fd: i32, key: Key, (ty, id): (FdTypes, u32)) {
        self.by_key.entry(key).or_default().push((pid, fd, ty, id));
    }
}

/// Where a restored description lives: fd `fd` of task `pid`.
pub type Holders = HashMap<u32, (i32, u32)>;
