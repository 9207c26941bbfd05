//! POSIX timers (`timer_create`): listed in `/proc/PID/timers` (id, signal
//! and value, how they notify, clock), their time left and interval read
//! with `timer_gettime` injected into the task, and made again with the
//! same ids (`PR_TIMER_CREATE_RESTORE_IDS`) by the task itself once its
//! threads exist (a timer may signal one thread). Refused: a timer with
//! overruns counted (the kernel has no way to set the count back), and a
//! thread CPU-time clock of a task with several threads (which thread's
//! clock it is does not show).

use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::remote::Remote;
use crate::task::error::TaskError;
use crest_images::pb::PosixTimerEntry;
use crest_inject::{nr, Tracee};

/// `prctl` option and arguments of the kernel's restore mode for timer ids.
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const RESTORE_IDS_OFF: u64 = 0;
const RESTORE_IDS_ON: u64 = 1;

const SIGEV_SIGNAL: u32 = 0;
const SIGEV_NONE: u32 = 1;
const SIGEV_THREAD: u32 = 2;
const SIGEV_THREAD_ID: u32 = 4;
const CLOCK_THREAD_CPUTIME_ID: u32 = 3;

/// One timer as `/proc/PID/timers` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: u32,
    pub signo: u32,
    pub sival: u64,
    pub notify: u32,
    /// The pid or tid it notifies, in the reader's pid namespace.
    pub target: i32,
    pub clock: i32,
}

/// Parses `/proc/PID/timers`.
pub fn parse(text: &str) -> Option<Vec<Listed>> {
    let mut out = Vec::new();
    let mut cur: Option<Listed> = None;
    for line in text.lines() {
        let (k, v) = line.split_once(':')?;
        let v = v.trim();
        match k {
            "ID" => {
                out.extend(cur.take());
                cur = Some(Listed {
                    id: v.parse().ok()?,
                    signo: 0,
                    sival: 0,
                    notify: SIGEV_SIGNAL,
                    target: 0,
                    clock: 0,
                });
            }
            "signal" => {
                let c = cur.as_mut()?;
                let (sig, val) = v.split_once('/')?;
                c.signo = sig.parse().ok()?;
                c.sival = u64::from_str_radix(val.trim_start_matches("0x"), 16).ok()?;
            }
            "notify" => {
                let c = cur.as_mut()?;
                let (how, who) = v.split_once('/')?;
                let base = match how {
                    "signal" => SIGEV_SIGNAL,
                    "none" => SIGEV_NONE,
                    "thread" => SIGEV_THREAD,
                    _ => return None,
                };
                let (kind, id) = who.split_once('.')?;
                c.notify = if kind == "tid" {
                    base | SIGEV_THREAD_ID
                } else {
                    base
                };
                c.target = id.parse().ok()?;
            }
            "ClockID" => cur.as_mut()?.clock = v.parse().ok()?,
            _ => {}
        }
    }
    out.extend(cur);
    Some(out)
}

/// The thread's id in its own pid namespace (the last of its `NSpid`).
fn inner_tid(pid: i32, tid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// The POSIX timers of the task `t` (its leader), with their state.
pub fn dump(t: &mut Tracee, threads: usize) -> Result<Vec<PosixTimerEntry>, DumpError> {
    let pid = t.pid();
    let path = format!("/proc/{pid}/timers");
    let text = std::fs::read_to_string(&path).at(pid, "read /proc/PID/timers")?;
    let listed = parse(&text).ok_or_else(|| {
        TaskError::Unsupported {
            what: format!("{path} in a form crest does not know: {text:?}"),
        }
        .in_dump(pid)
    })?;
    let mut out = Vec::with_capacity(listed.len());
    let buf = t.scratch(32).at(pid, "scratch memory")?;
    for l in listed {
        let refuse = |why: String| {
            TaskError::Unsupported {
                what: format!("POSIX timer {} ({why})", l.id),
            }
            .in_dump(pid)
        };
        if l.clock < 0 || (l.clock as u32 == CLOCK_THREAD_CPUTIME_ID && threads > 1) {
            return Err(refuse(format!(
                "on clock {}, a CPU-time clock crest cannot name again",
                l.clock
            )));
        }
        t.syscall(nr::TIMER_GETTIME, &[u64::from(l.id), buf])
            .at(pid, "timer_gettime")?;
        let mut raw = [0u8; 32];
        t.read_mem(buf, &mut raw).at(pid, "read itimerspec")?;
        let w = crate::task::signals::words::<4>(&raw);
        let overrun = t
            .syscall(nr::TIMER_GETOVERRUN, &[u64::from(l.id)])
            .at(pid, "timer_getoverrun")?;
        if overrun != 0 {
            return Err(refuse(format!(
                "{overrun} overruns counted, which the kernel cannot be given back"
            )));
        }
        let notify_thread_id = if l.notify & SIGEV_THREAD_ID != 0 {
            Some(
                inner_tid(pid, l.target)
                    .ok_or_else(|| refuse(format!("signals thread {}, not found", l.target)))?,
            )
        } else {
            None
        };
        out.push(PosixTimerEntry {
            it_id: l.id,
            clock_id: l.clock as u32,
            si_signo: l.signo,
            it_sigev_notify: l.notify,
            sival_ptr: l.sival,
            overrun: 0,
            isec: w[0],
            insec: w[1],
            vsec: w[2],
            vnsec: w[3],
            notify_thread_id,
        });
    }
    Ok(out)
}

/// Makes the timers again in the task `t` (its leader, every thread made),
/// with their ids, notification, clock, interval and time left.
pub fn restore(t: &mut Tracee, timers: &[PosixTimerEntry]) -> Result<(), RestoreError> {
    if timers.is_empty() {
        return Ok(());
    }
    let pid = t.pid();
    t.prctl(
        &[PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_ON, 0, 0, 0],
        "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
    )?;
    // the kernel lists a task's timers newest first: made in the reverse
    // order of the listing, they are listed as they were
    for e in timers.iter().rev() {
        // struct sigevent: value, signo, notify, thread id, padding to 64
        let mut ev = [0u8; 64];
        ev[0..8].copy_from_slice(&e.sival_ptr.to_le_bytes());
        ev[8..12].copy_from_slice(&e.si_signo.to_le_bytes());
        ev[12..16].copy_from_slice(&e.it_sigev_notify.to_le_bytes());
        ev[16..20].copy_from_slice(&e.notify_thread_id.unwrap_or(0).to_le_bytes());
        // one write: the scratch area is reused by each put
        let mut arg = ev.to_vec();
        arg.extend_from_slice(&e.it_id.to_le_bytes());
        let evp = t.put(&arg).rat(pid, "write sigevent")?;
        let idp = evp + ev.len() as u64;
        t.syscall(nr::TIMER_CREATE, &[u64::from(e.clock_id), evp, idp])
            .rat(pid, format!("timer_create of timer {}", e.it_id))?;
        if e.vsec != 0 || e.vnsec != 0 {
            let mut spec = Vec::with_capacity(32);
            for w in [e.isec, e.insec, e.vsec, e.vnsec] {
                spec.extend_from_slice(&w.to_le_bytes());
            }
            let sp = t.put(&spec).rat(pid, "write itimerspec")?;
            t.syscall(nr::TIMER_SETTIME, &[u64::from(e.it_id), 0, sp, 0])
                .rat(pid, format!("timer_settime of timer {}", e.it_id))?;
        }
    }
    t.prctl(
        &[PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_OFF, 0, 0, 0],
        "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timers() {
        let text = "ID: 0\nsignal: 10/0000000000000000\nnotify: signal/pid.1234\nClockID: 1\n\
                    ID: 7\nsignal: 12/00005555deadbeef\nnotify: signal/tid.1240\nClockID: 0\n\
                    ID: 9\nsignal: 0/0000000000000000\nnotify: none/pid.1234\nClockID: 2\n";
        let l = parse(text).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].notify, SIGEV_SIGNAL);
        assert_eq!((l[1].id, l[1].signo, l[1].sival), (7, 12, 0x5555_dead_beef));
        assert_eq!((l[1].notify, l[1].target), (SIGEV_THREAD_ID, 1240));
        assert_eq!((l[2].notify, l[2].clock), (SIGEV_NONE, 2));
        assert_eq!(parse("").unwrap(), vec![]);
        assert!(parse("ID: x\n").is_none());
        assert!(parse("signal: 1/0\n").is_none());
    }
}
