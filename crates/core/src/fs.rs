//! The fs info of a task: cwd, root and umask (`fs-<pid>.img`). A
//! chrooted task's root is the path of its root directory in its mount
//! namespace, as are the paths of its files: the restore opens its files
//! and maps before it chroots the task ([`restore`]).

use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::files::context::RestoreFiles;
use crate::files::error::FileError;
use crate::files::table::FileTable;
use crate::procfs;
use crate::remote::Remote;
use crest_images::pb::FsEntry;
use crest_inject::{nr, Tracee};

pub fn dump(pid: i32, umask: u32, files: &mut FileTable) -> Result<FsEntry, DumpError> {
    let cwd = procfs::read_link(&format!("/proc/{pid}/cwd")).at(pid, "read cwd")?;
    let root = procfs::read_link(&format!("/proc/{pid}/root")).at(pid, "read root")?;
    if root.ends_with(" (deleted)") {
        return Err(FileError::Unsupported {
            what: format!("a deleted root ({root})"),
        }
        .in_dump(pid));
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

/// Puts the task in its cwd (a deleted one made again, entered and removed
/// again) and its root, and sets its umask.
pub fn restore(t: &mut Tracee, fs: &FsEntry, files: &mut RestoreFiles) -> Result<(), RestoreError> {
    let pid = t.pid();
    let cwd = files.reg_path(fs.cwd_id).unwrap_or("/").to_string();
    let root = files.reg_path(fs.root_id).unwrap_or("/").to_string();
    let ghost = files.remaps.get(&fs.cwd_id).copied();
    let reg = files.entries.get(&fs.cwd_id).and_then(|e| e.reg.clone());
    if let (Some(g), Some(reg)) = (ghost, reg) {
        // a cwd deleted at dump: made again, entered, removed
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        let fd = crate::files::ghost::open(t, &reg, flags, g, files)?;
        let r = t
            .syscall(nr::FCHDIR, &[fd])
            .rat(pid, format!("fchdir to {cwd}"));
        t.close(fd)?;
        r?;
    } else {
        let mut p = cwd.as_bytes().to_vec();
        p.push(0);
        let addr = t.put(&p).rat(pid, "write cwd")?;
        t.syscall(nr::CHDIR, &[addr])
            .rat(pid, format!("chdir {cwd}"))?;
    }
    if root != "/" {
        let mut p = root.as_bytes().to_vec();
        p.push(0);
        let addr = t.put(&p).rat(pid, "write root")?;
        t.syscall(nr::CHROOT, &[addr])
            .rat(pid, format!("chroot {root}"))?;
    }
    t.syscall(nr::UMASK, &[u64::from(fs.umask.unwrap_or(0o022))])
        .rat(pid, "umask")?;
    Ok(())
}
