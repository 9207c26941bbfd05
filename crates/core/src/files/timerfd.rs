//! timerfd: clock, expirations not read yet, time left and interval, from
//! fdinfo. Restore arms it relative to now with what was left, and puts
//! back unread expirations with `TFD_IOC_SET_TICKS`.

use super::error::need;
use super::fown::no_owner;
use crate::error::{DumpError, RestoreCtx, RestoreError};
use crate::procfs::FdInfo;
use crest_images::pb::{FdTypes, FileEntry, TimerfdEntry};
use crest_inject::{nr, Tracee};

/// `_IOW('T', 0, u64)`
const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;

/// "(sec, nsec)"
fn pair(v: &str) -> Option<(u64, u64)> {
    let inner = v.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (a, b) = inner.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// The timer as fdinfo shows it (everything but the ids and flags).
pub fn parse(info: &FdInfo) -> Option<TimerfdEntry> {
    let (vsec, vnsec) = pair(info.get("it_value")?)?;
    let (isec, insec) = pair(info.get("it_interval")?)?;
    let settime = info.get("settime flags")?.trim();
    Some(TimerfdEntry {
        id: 0,
        flags: 0,
        fown: no_owner(),
        clockid: info.get("clockid")?.trim().parse().ok()?,
        ticks: info.get("ticks")?.trim().parse().ok()?,
        settime_flags: u32::from_str_radix(settime, 8).ok()?,
        vsec,
        vnsec,
        isec,
        insec,
    })
}

pub fn dump(pid: i32, fd: i32, info: &FdInfo, flags: u32) -> Result<FileEntry, DumpError> {
    let mut tfd = need(pid, fd, "a timerfd", parse(info))?;
    tfd.flags = flags;
    Ok(FileEntry {
        r#type: FdTypes::Timerfd as i32,
        id: 0,
        tfd: Some(tfd),
        ..FileEntry::default()
    })
}

const TFD_TIMER_ABSTIME: u32 = 1;
const TFD_TIMER_CANCEL_ON_SET: u32 = 2;

/// `clock_gettime(clockid)` in the task (in its time namespace by now).
fn task_clock(t: &mut Tracee, clockid: u32) -> Result<(u64, u64), RestoreError> {
    let pid = t.pid();
    let addr = t.put(&[0u8; 16]).rat(pid, "scratch for a timespec")?;
    t.syscall(nr::CLOCK_GETTIME, &[u64::from(clockid), addr])
        .rat(pid, format!("clock_gettime({clockid})"))?;
    let mut ts = [0u8; 16];
    t.read_mem(addr, &mut ts).rat(pid, "read a timespec")?;
    let word = |i: usize| u64::from_le_bytes(ts[i..i + 8].try_into().unwrap_or([0; 8]));
    Ok((word(0), word(8)))
}

pub fn create(t: &mut Tracee, e: &TimerfdEntry) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let mut flags = libc::TFD_CLOEXEC as u64;
    if e.flags & libc::O_NONBLOCK as u32 != 0 {
        flags |= libc::TFD_NONBLOCK as u64;
    }
    let fd = t
        .syscall(nr::TIMERFD_CREATE, &[u64::from(e.clockid), flags])
        .rat(pid, format!("timerfd_create({})", e.clockid))?;
    if e.vsec != 0 || e.vnsec != 0 {
        // fdinfo gives the time left; a timer set to an absolute time
        // (TFD_TIMER_ABSTIME, maybe with TFD_TIMER_CANCEL_ON_SET) is set
        // to the task's clock now plus that, with its flags
        let flags = u64::from(e.settime_flags & (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET));
        let (mut vsec, mut vnsec) = (e.vsec, e.vnsec);
        if flags & u64::from(TFD_TIMER_ABSTIME) != 0 {
            let (s, ns) = task_clock(t, e.clockid)?;
            vnsec += ns;
            vsec += s + vnsec / 1_000_000_000;
            vnsec %= 1_000_000_000;
        }
        let mut spec = Vec::with_capacity(32);
        for w in [e.isec, e.insec, vsec, vnsec] {
            spec.extend_from_slice(&w.to_le_bytes());
        }
        let addr = t.put(&spec).rat(pid, "write itimerspec")?;
        t.syscall(nr::TIMERFD_SETTIME, &[fd, flags, addr, 0])
            .rat(pid, format!("timerfd_settime(flags {flags:#x})"))?;
    }
    if e.ticks > 0 {
        let addr = t.put(&e.ticks.to_le_bytes()).rat(pid, "write ticks")?;
        t.syscall(nr::IOCTL, &[fd, TFD_IOC_SET_TICKS, addr])
            .rat(pid, format!("TFD_IOC_SET_TICKS({})", e.ticks))?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::parse_fdinfo;

    #[test]
    fn armed_timer() {
        let text = "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t25\nclockid: 1\nticks: 3\nsettime flags: 01\nit_value: (99, 999735225)\nit_interval: (1, 500)\n";
        let t = parse(&parse_fdinfo("fdinfo", text).unwrap()).unwrap();
        assert_eq!((t.clockid, t.ticks, t.settime_flags), (1, 3, 1));
        assert_eq!((t.vsec, t.vnsec, t.isec, t.insec), (99, 999735225, 1, 500));
        let idle = include_str!("../procfs/fixtures/fdinfo_timerfd.txt");
        let t = parse(&parse_fdinfo("fdinfo", idle).unwrap()).unwrap();
        assert_eq!((t.vsec, t.vnsec, t.ticks), (0, 0, 0));
        assert_eq!(pair("(1 2)"), None);
        assert_eq!(pair("(1, x)"), None);
    }
}
