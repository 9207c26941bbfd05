//! Reading a namespace from inside at dump: a short-lived crest child that
//! entered it (and its owning user namespace), the uts names and the time
//! namespace's clock offsets.

use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError};
use crate::ns::error::NsError;
use crate::ns::user::{fd_ino, ino_of};
use crate::remote::Remote;
use crest_inject::{nr, Tracee};
use crest_sys::proc::{spawn_stopped, SessionSetup};
use std::os::fd::{AsRawFd, OwnedFd};

/// A short-lived crest child that has entered the namespace `fd` (it
/// inherits the fd), after its owning user namespace `owner` when that is
/// not crest's; killed when dropped.
pub(super) fn reader(
    pid: i32,
    fd: &OwnedFd,
    flag: i32,
    owner: Option<&OwnedFd>,
) -> Result<Tracee, DumpError> {
    let child = spawn_stopped(&[], SessionSetup::Inherit).at(pid, "spawn a namespace reader")?;
    let mut t = Tracee::from_stopped_child(child).at(pid, "attach the namespace reader")?;
    t.use_vdso_syscall().at(pid, "namespace reader syscall")?;
    let mine = ino_of("/proc/self/ns/user").at(pid, "stat crest's user namespace")?;
    if let Some(owner) = owner.filter(|o| fd_ino(o).ok() != Some(mine)) {
        t.setns(
            owner.as_raw_fd() as u64,
            libc::CLONE_NEWUSER as u64,
            "setns of the namespace reader into the owning user namespace",
        )
        .map_err(|e| e.for_task(pid))?;
    }
    t.setns(
        fd.as_raw_fd() as u64,
        flag as u64,
        "setns of the namespace reader",
    )
    .map_err(|e| e.for_task(pid))?;
    Ok(t)
}

/// The clock offsets of a time namespace, from `/proc/PID/timens_offsets`.
pub(super) fn read_time_offsets(pid: i32) -> Result<[(i64, i64); 2], DumpError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/timens_offsets"))
        .at(pid, "read timens_offsets")?;
    parse_time_offsets(&text).ok_or_else(|| {
        NsError::Unsupported {
            what: format!("timens_offsets that crest cannot read: {text:?}"),
        }
        .in_dump(pid)
    })
}

pub(super) fn parse_time_offsets(text: &str) -> Option<[(i64, i64); 2]> {
    let mut out = [(0, 0); 2];
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (sec, nsec) = (f.get(1)?.parse().ok()?, f.get(2)?.parse().ok()?);
        match *f.first()? {
            "monotonic" | "1" => out[0] = (sec, nsec),
            "boottime" | "7" => out[1] = (sec, nsec),
            _ => return None,
        }
    }
    Some(out)
}

/// Host and domain name of a uts namespace, read by a short-lived crest
/// child that enters it (after its owning user namespace `owner`, so an
/// unprivileged crest may).
pub(super) fn read_uts(
    pid: i32,
    fd: &OwnedFd,
    owner: &OwnedFd,
) -> Result<(String, String), DumpError> {
    let mut t = reader(pid, fd, libc::CLONE_NEWUTS, Some(owner))?;
    let buf = t.scratch(6 * 65).at(pid, "scratch")?;
    t.syscall(nr::UNAME, &[buf]).at(pid, "uname")?;
    let mut raw = vec![0u8; 6 * 65];
    t.read_mem(buf, &mut raw).at(pid, "read utsname")?;
    let field = |i: usize| {
        let f = &raw[i * 65..(i + 1) * 65];
        let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
        String::from_utf8_lossy(&f[..end]).into_owned()
    };
    Ok((field(1), field(5)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_offsets() {
        assert_eq!(
            parse_time_offsets("monotonic 5 6\nboottime -1 200\n"),
            Some([(5, 6), (-1, 200)])
        );
        assert_eq!(parse_time_offsets("monotonic x 6\n"), None);
    }
}
