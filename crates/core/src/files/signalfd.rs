//! signalfd: the mask of signals it takes (`sigmask`, hex, bit N-1 for
//! signal N); restore makes it in the task with `signalfd4`.

use super::error::need;
use super::fown::no_owner;
use crate::error::{DumpError, RestoreCtx, RestoreError};
use crate::procfs::FdInfo;
use crest_images::pb::{FdTypes, FileEntry, SignalfdEntry};
use crest_inject::{nr, Tracee};

pub fn parse(info: &FdInfo) -> Option<u64> {
    u64::from_str_radix(info.get("sigmask")?.trim(), 16).ok()
}

pub fn dump(pid: i32, fd: i32, info: &FdInfo, flags: u32) -> Result<FileEntry, DumpError> {
    let sigmask = need(pid, fd, "a signalfd", parse(info))?;
    Ok(FileEntry {
        r#type: FdTypes::Signalfd as i32,
        id: 0,
        sgfd: Some(SignalfdEntry {
            id: 0,
            flags,
            fown: no_owner(),
            sigmask,
        }),
        ..FileEntry::default()
    })
}

pub fn create(t: &mut Tracee, e: &SignalfdEntry) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let mut flags = libc::SFD_CLOEXEC as u64;
    if e.flags & libc::O_NONBLOCK as u32 != 0 {
        flags |= libc::SFD_NONBLOCK as u64;
    }
    let mask = t.put(&e.sigmask.to_le_bytes()).rat(pid, "write sigmask")?;
    t.syscall(nr::SIGNALFD4, &[u64::MAX, mask, 8, flags])
        .rat(pid, format!("signalfd4 with mask {:#x}", e.sigmask))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::parse_fdinfo;

    #[test]
    fn mask_of_sigusr1_and_sigusr2() {
        let text = include_str!("../procfs/fixtures/fdinfo_signalfd.txt");
        let info = parse_fdinfo("fdinfo", text).unwrap();
        let m = parse(&info).unwrap();
        assert_eq!(m, (1 << (libc::SIGUSR1 - 1)) | (1 << (libc::SIGUSR2 - 1)));
    }
}
