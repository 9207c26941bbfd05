//! Cgroup hierarchies not mounted where crest runs (a named v1 hierarchy
//! a container mounted only inside, or one nobody mounts any more): CRIU
//! mounts them in a "yard" of its own. crest mounts each in a small helper
//! (`crest __cgroup-yard CONTROLLERS`) that has a mount namespace of its
//! own, on a tmpfs over its `/tmp`, and reaches the hierarchy through
//! `/proc/HELPER/root/tmp/h`: nothing is mounted where crest or anyone
//! else sees it, and the mounts go with the helper, which ends when crest
//! says so or when crest ends (its stdin closes).
//!
//! With CRIU's `--cgroup-yard DIR` the caller has mounted the hierarchies
//! itself; crest finds them there as it finds any mount of its namespace.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

/// The hidden command that runs a helper.
pub const COMMAND: &str = "__cgroup-yard";

struct Helper {
    ctrls: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

static YARD: Mutex<Vec<Helper>> = Mutex::new(Vec::new());

/// Where the hierarchy of `ctrls` ("" for cgroup v2, "name=X" for a
/// named one) can be reached, mounting it in a helper if none is yet.
pub fn dir_of(ctrls: &str) -> std::io::Result<PathBuf> {
    let mut yard = YARD.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = yard.iter().find(|h| h.ctrls == ctrls) {
        return Ok(root_of(h.child.id()));
    }
    let mut child = Command::new("/proc/self/exe")
        .arg(COMMAND)
        .arg(ctrls)
        .env_remove(crest_sys::fault::ENV)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    if line.trim() != "ok" {
        let _ = child.kill();
        let _ = child.wait();
        return Err(std::io::Error::other(format!(
            "mounting cgroup hierarchy {ctrls:?} in a helper: {}",
            line.trim().trim_start_matches("error: ")
        )));
    }
    let pid = child.id();
    let stdin = child.stdin.take();
    yard.push(Helper {
        ctrls: ctrls.to_string(),
        child,
        stdin,
    });
    Ok(root_of(pid))
}

fn root_of(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root/tmp/h"))
}

/// Ends every helper (their mounts go with them).
pub fn clear() {
    let helpers = std::mem::take(&mut *YARD.lock().unwrap_or_else(|p| p.into_inner()));
    for mut h in helpers {
        drop(h.stdin.take());
        let _ = h.child.wait();
    }
}

/// Ends the helpers when dropped: one for each dump and restore.
pub struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        clear();
    }
}

/// The mount options of a v1 hierarchy of `ctrls`.
fn v1_options(ctrls: &str) -> String {
    let named = ctrls.split(',').all(|c| c.starts_with("name="));
    if named {
        format!("none,{ctrls}")
    } else {
        ctrls.to_string()
    }
}

/// A helper's whole life: mounts the hierarchy, says "ok" (or "error:
/// ..."), and waits for its stdin to end.
pub fn run(ctrls: &str) -> i32 {
    let mounted = (|| -> std::io::Result<()> {
        if ctrls.contains(['/', '\n', '\0']) {
            return Err(std::io::Error::other(format!("bad controllers {ctrls:?}")));
        }
        crest_sys::ns::unshare(libc::CLONE_NEWNS)?;
        crest_sys::ns::mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
        crest_sys::ns::mount(
            Some("crest-cgroup-yard"),
            "/tmp",
            Some("tmpfs"),
            0,
            Some("mode=0700"),
        )?;
        std::fs::create_dir("/tmp/h")?;
        if ctrls.is_empty() {
            crest_sys::ns::mount(Some("cgroup2"), "/tmp/h", Some("cgroup2"), 0, None)
        } else {
            let opts = v1_options(ctrls);
            crest_sys::ns::mount(Some("cgroup"), "/tmp/h", Some("cgroup"), 0, Some(&opts))
        }
    })();
    let mut out = std::io::stdout();
    let said = match &mounted {
        Ok(()) => writeln!(out, "ok"),
        Err(e) => writeln!(out, "error: {e}"),
    };
    if said.and_then(|()| out.flush()).is_err() || mounted.is_err() {
        return 1;
    }
    // until crest is done with it (or gone)
    let mut buf = [0u8; 64];
    while std::io::Read::read(&mut std::io::stdin(), &mut buf).is_ok_and(|n| n > 0) {}
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        assert_eq!(v1_options("name=zdtmtst"), "none,name=zdtmtst");
        assert_eq!(v1_options("cpu,cpuacct"), "cpu,cpuacct");
        assert_eq!(v1_options("cpu,name=x"), "cpu,name=x");
    }
}
