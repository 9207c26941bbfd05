//! The fs info of a task: cwd, root and umask (`fs-<pid>.img`).

use crate::error::{DumpCtx, DumpError};
use crate::files::FileTable;
use crate::procfs;
use crest_images::pb::FsEntry;

/// Refuses a chrooted task (a root below the top of its mount tree, as
/// `chroot` makes it; a container's `pivot_root` makes the top): the paths
/// of its files, as crest reads them, are not the task's. Its root's ".."
/// (walked by crest, which the task's root does not stop) is another
/// directory then.
pub fn check_root(pid: i32) -> Result<(), DumpError> {
    use std::os::unix::fs::MetadataExt;
    let id = |p: String| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    let here = id(format!("/proc/{pid}/root/")).ok();
    let above = id(format!("/proc/{pid}/root/..")).ok();
    if here.is_some() && here != above {
        let root = procfs::read_link(&format!("/proc/{pid}/root")).at(pid, "read root")?;
        return Err(DumpError::Unsupported {
            pid,
            what: format!("a chrooted task (its root is {root})"),
        });
    }
    Ok(())
}

pub fn dump(pid: i32, umask: u32, files: &mut FileTable) -> Result<FsEntry, DumpError> {
    let cwd = procfs::read_link(&format!("/proc/{pid}/cwd")).at(pid, "read cwd")?;
    let root = procfs::read_link(&format!("/proc/{pid}/root")).at(pid, "read root")?;
    if root.ends_with(" (deleted)") {
        return Err(DumpError::Unsupported {
            pid,
            what: format!("a deleted root ({root})"),
        });
    }
    let flags = (libc::O_RDONLY | libc::O_DIRECTORY) as u32;
    // a cwd removed since: made again (empty) at restore, and removed
    let cwd_id = match cwd.strip_suffix(" (deleted)") {
        Some(path) => files.reg_deleted(
            pid,
            format!("/proc/{pid}/cwd"),
            path,
            flags,
            &format!("the deleted cwd {path}"),
        )?,
        None => files.reg_path(pid, &cwd, flags)?,
    };
    Ok(FsEntry {
        cwd_id,
        root_id: files.reg_path(pid, &root, flags)?,
        umask: Some(umask),
    })
}
