//! Ptys made while mounts are replayed: a runtime binds a console's
//! slave (`/dev/console`), and the bind needs the pty to exist before the
//! tasks' files are opened. The terminal restore takes the pair from here.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Pty pairs made before any task needed them (a runtime binds a
/// console's slave at `/dev/console`, and the mount must be replayed before
/// the tasks' files are opened): (devpts device, index, master). The task
/// that needs the console takes its pair from here.
static PREMADE: std::sync::Mutex<Vec<(u64, u32, std::os::fd::OwnedFd)>> =
    std::sync::Mutex::new(Vec::new());

/// Makes pty `/dev/pts/N`-like `path` (in `pid`'s mount namespace) exist,
/// if its directory is a devpts mount: pairs are opened on that devpts'
/// `ptmx` until one has the index; that pair is kept for the task that
/// will own the terminal. Returns whether the path exists now.
pub fn premake(pid: i32, path: &str) -> bool {
    let full = format!("/proc/{pid}/root{path}");
    if Path::new(&full).exists() {
        return true;
    }
    let Some((dir, name)) = full.rsplit_once('/') else {
        return false;
    };
    let Ok(want) = name.parse::<u32>() else {
        return false;
    };
    const DEVPTS_SUPER_MAGIC: i64 = 0x1cd1;
    let is_devpts = rustix::fs::statfs(dir).is_ok_and(|s| s.f_type == DEVPTS_SUPER_MAGIC);
    let Ok(dev) = std::fs::metadata(dir).map(|m| m.dev()) else {
        return false;
    };
    if !is_devpts {
        return false;
    }
    let mut spare = Vec::new();
    for _ in 0..=want.min(255) {
        let Ok(m) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(format!("{dir}/ptmx"))
        else {
            return false;
        };
        let m = std::os::fd::OwnedFd::from(m);
        let Ok(index) = crest_sys::misc::pty_index(&m) else {
            return false;
        };
        if index == want {
            // (a locked slave cannot be opened: unlock it)
            if crest_sys::misc::pty_unlock(&m).is_err() {
                return false;
            }
            if let Ok(mut p) = PREMADE.lock() {
                p.push((dev, index, m));
            }
            return true;
        }
        spare.push(m);
    }
    false
}

/// A pair [`premake`] made for pty `index` of the devpts at `dir` (in
/// crest's view).
pub(crate) fn take_premade(dir: &str, index: u32) -> Option<std::os::fd::OwnedFd> {
    let dev = std::fs::metadata(dir).ok()?.dev();
    let mut p = PREMADE.lock().ok()?;
    let k = p.iter().position(|(d, i, _)| *d == dev && *i == index)?;
    Some(p.remove(k).2)
}
