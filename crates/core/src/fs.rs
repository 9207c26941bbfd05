//! The fs info of a task: cwd, root and umask (`fs-<pid>.img`).

use crate::error::{DumpCtx, DumpError};
use crate::files::FileTable;
use crate::procfs;
use crest_images::pb::FsEntry;

pub fn dump(pid: i32, umask: u32, files: &mut FileTable) -> Result<FsEntry, DumpError> {
    let cwd = procfs::read_link(&format!("/proc/{pid}/cwd")).at(pid, "read cwd")?;
    let root = procfs::read_link(&format!("/proc/{pid}/root")).at(pid, "read root")?;
    for (what, p) in [("cwd", &cwd), ("root", &root)] {
        if p.ends_with(" (deleted)") {
            return Err(DumpError::Unsupported {
                pid,
                what: format!("a deleted {what} ({p})"),
            });
        }
    }
    let flags = (libc::O_RDONLY | libc::O_DIRECTORY) as u32;
    Ok(FsEntry {
        cwd_id: files.reg_path(pid, &cwd, flags)?,
        root_id: files.reg_path(pid, &root, flags)?,
        umask: Some(umask),
    })
}
