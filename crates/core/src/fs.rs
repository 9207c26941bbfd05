//! The fs info of a task: cwd, root and umask (`fs-<pid>.img`). A
//! chrooted task's root is the path of its root directory in its mount
//! namespace, as are the paths of its files: the restore opens its files
//! and maps before it chroots the task (`restore::task::restore_fs`).

use crate::error::{DumpCtx, DumpError};
use crate::files::FileTable;
use crate::procfs;
use crest_images::pb::FsEntry;

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
