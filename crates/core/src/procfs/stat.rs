//! `/proc/PID/stat`: one line, "pid (comm) state ..." with the fields of
//! proc(5).

use serde::Serialize;

use super::{dec, perr, proc_path, read_text, Fields, ProcError};

/// `/proc/PID/stat`, every field, named as in proc(5). Fields 45–52 (from
/// `start_data` on, Linux 3.3/3.5) are 0 when the kernel does not print
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stat {
    pub pid: i32,
    /// Between the first '(' and the last ')': may hold spaces and parens.
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub tty_nr: i32,
    pub tpgid: i32,
    pub flags: u32,
    pub minflt: u64,
    pub cminflt: u64,
    pub majflt: u64,
    pub cmajflt: u64,
    pub utime: u64,
    pub stime: u64,
    pub cutime: i64,
    pub cstime: i64,
    pub priority: i64,
    pub nice: i64,
    pub num_threads: i64,
    pub itrealvalue: i64,
    /// Clock ticks after boot.
    pub start_time: u64,
    pub vsize: u64,
    /// Pages.
    pub rss: i64,
    pub rsslim: u64,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub kstkesp: u64,
    pub kstkeip: u64,
    pub signal: u64,
    pub blocked: u64,
    pub sigignore: u64,
    pub sigcatch: u64,
    pub wchan: u64,
    pub nswap: u64,
    pub cnswap: u64,
    pub exit_signal: i32,
    pub processor: i32,
    pub rt_priority: u32,
    pub policy: u32,
    pub delayacct_blkio_ticks: u64,
    pub guest_time: u64,
    pub cguest_time: i64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub exit_code: i32,
}

/// Parses `/proc/PID/stat` text. The comm is split off at the last ')', so
/// a comm like "a) b (c" is read whole. Fields 3–44 are required. Long
/// because it names the line's 52 fields in their order, one per line.
pub fn parse_stat(path: &str, text: &str) -> Result<Stat, ProcError> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    if let Some(n) = text.find('\n') {
        return Err(perr(
            path,
            2,
            format!("unexpected text {:?}", &text[n + 1..]),
        ));
    }
    let bad = |what: &str| perr(path, 1, format!("bad {what} in {text:?}"));
    let (head, tail) = text.rsplit_once(')').ok_or_else(|| bad("comm"))?;
    let (pid, comm) = head.split_once('(').ok_or_else(|| bad("comm"))?;
    let pid = pid.trim_end();
    let pid = dec(pid).ok_or_else(|| perr(path, 1, format!("bad pid {pid:?}")))?;
    let mut f = Fields::new(path, 1, tail);
    let mut s = Stat {
        pid,
        comm: comm.to_string(),
        state: f.parse("state", one_char)?,
        ppid: f.parse("ppid", dec)?,
        pgrp: f.parse("pgrp", dec)?,
        session: f.parse("session", dec)?,
        tty_nr: f.parse("tty_nr", dec)?,
        tpgid: f.parse("tpgid", dec)?,
        flags: f.parse("flags", dec)?,
        minflt: f.parse("minflt", dec)?,
        cminflt: f.parse("cminflt", dec)?,
        majflt: f.parse("majflt", dec)?,
        cmajflt: f.parse("cmajflt", dec)?,
        utime: f.parse("utime", dec)?,
        stime: f.parse("stime", dec)?,
        cutime: f.parse("cutime", dec)?,
        cstime: f.parse("cstime", dec)?,
        priority: f.parse("priority", dec)?,
        nice: f.parse("nice", dec)?,
        num_threads: f.parse("num_threads", dec)?,
        itrealvalue: f.parse("itrealvalue", dec)?,
        start_time: f.parse("starttime", dec)?,
        vsize: f.parse("vsize", dec)?,
        rss: f.parse("rss", dec)?,
        rsslim: f.parse("rsslim", dec)?,
        start_code: f.parse("startcode", dec)?,
        end_code: f.parse("endcode", dec)?,
        start_stack: f.parse("startstack", dec)?,
        kstkesp: f.parse("kstkesp", dec)?,
        kstkeip: f.parse("kstkeip", dec)?,
        signal: f.parse("signal", dec)?,
        blocked: f.parse("blocked", dec)?,
        sigignore: f.parse("sigignore", dec)?,
        sigcatch: f.parse("sigcatch", dec)?,
        wchan: f.parse("wchan", dec)?,
        nswap: f.parse("nswap", dec)?,
        cnswap: f.parse("cnswap", dec)?,
        exit_signal: f.parse("exit_signal", dec)?,
        processor: f.parse("processor", dec)?,
        rt_priority: f.parse("rt_priority", dec)?,
        policy: f.parse("policy", dec)?,
        delayacct_blkio_ticks: f.parse("delayacct_blkio_ticks", dec)?,
        guest_time: f.parse("guest_time", dec)?,
        cguest_time: f.parse("cguest_time", dec)?,
        ..Stat::default()
    };
    const TAIL: [&str; 7] = [
        "start_data",
        "end_data",
        "start_brk",
        "arg_start",
        "arg_end",
        "env_start",
        "env_end",
    ];
    let mut tail = [0u64; 7];
    for (slot, what) in tail.iter_mut().zip(TAIL) {
        if f.rest().is_empty() {
            break;
        }
        *slot = f.parse(what, dec)?;
    }
    [
        s.start_data,
        s.end_data,
        s.start_brk,
        s.arg_start,
        s.arg_end,
        s.env_start,
        s.env_end,
    ] = tail;
    if !f.rest().is_empty() {
        s.exit_code = f.parse("exit_code", dec)?;
    }
    if !f.rest().is_empty() {
        return Err(perr(path, 1, format!("trailing text {:?}", f.rest())));
    }
    Ok(s)
}

/// `/proc/PID/stat` — the process's (thread group leader's) stat line.
pub fn read_stat(pid: i32) -> Result<Stat, ProcError> {
    let path = proc_path(pid, "stat");
    parse_stat(&path, &read_text(&path)?)
}

/// `/proc/PID/task/TID/stat` — one thread's stat line.
pub fn read_task_stat(pid: i32, tid: i32) -> Result<Stat, ProcError> {
    let path = proc_path(pid, &format!("task/{tid}/stat"));
    parse_stat(&path, &read_text(&path)?)
}

fn one_char(s: &str) -> Option<char> {
    let mut c = s.chars();
    let first = c.next()?;
    c.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = include_str!("fixtures/stat.txt");
    const PAREN: &str = include_str!("fixtures/stat_paren_comm.txt");

    #[test]
    fn parses_cat_stat() {
        let s = parse_stat("stat", STAT).unwrap();
        assert_eq!(s.pid, 3451);
        assert_eq!(s.comm, "cat");
        assert_eq!(s.state, 'R');
        assert_eq!(
            (s.ppid, s.pgrp, s.session, s.tty_nr, s.tpgid),
            (3445, 3445, 3107, 0, -1)
        );
        assert_eq!(s.flags, 4194304);
        assert_eq!(s.minflt, 123);
        assert_eq!((s.priority, s.nice, s.num_threads), (20, 0, 1));
        assert_eq!(s.start_time, 26493);
        assert_eq!(s.vsize, 3133440);
        assert_eq!(s.rss, 389);
        assert_eq!(s.rsslim, u64::MAX);
        assert_eq!(s.start_code, 94507475877888);
        assert_eq!(s.end_code, 94507475897769);
        assert_eq!(s.start_stack, 140732784459552);
        assert_eq!(s.exit_signal, 17);
        assert_eq!(s.processor, 1);
        assert_eq!(s.start_data, 94507475913776);
        assert_eq!(s.end_data, 94507475915392);
        assert_eq!(s.start_brk, 94508446449664);
        assert_eq!(s.arg_start, 140732784466616);
        assert_eq!(s.arg_end, 140732784466636);
        assert_eq!(s.env_start, 140732784466636);
        assert_eq!(s.env_end, 140732784467947);
        assert_eq!(s.exit_code, 0);
    }

    #[test]
    fn comm_with_parens() {
        let s = parse_stat("stat", PAREN).unwrap();
        assert_eq!(s.pid, 3535);
        assert_eq!(s.comm, "a) b (c");
        assert_eq!(s.ppid, 3533);
        assert_eq!(s.sigignore, 16781312);
        assert_eq!(s.sigcatch, 2);
        assert_eq!(s.env_end, 140725700898767);
        let s = parse_stat("stat", &STAT.replace("(cat)", "())")).unwrap();
        assert_eq!(s.comm, ")");
        assert_eq!(s.ppid, 3445);
    }

    #[test]
    fn old_kernel_without_tail() {
        let fields: Vec<&str> = STAT.trim_end().split(' ').collect();
        let short = fields[..44].join(" ");
        let s = parse_stat("stat", &short).unwrap();
        assert_eq!(s.cguest_time, 0);
        assert_eq!((s.start_data, s.exit_code), (0, 0));
        let mid = fields[..47].join(" ");
        let s = parse_stat("stat", &mid).unwrap();
        assert_eq!(
            (s.start_data, s.start_brk, s.arg_start),
            (94507475913776, 94508446449664, 0)
        );
    }

    fn err(text: &str) -> String {
        parse_stat("/proc/9/stat", text).unwrap_err().to_string()
    }

    #[test]
    fn malformed() {
        let fields: Vec<&str> = STAT.trim_end().split(' ').collect();
        assert_eq!(
            err(&fields[..10].join(" ")),
            "/proc/9/stat line 1: missing cminflt"
        );
        assert_eq!(
            err(&STAT.replace(" R ", " RR ")),
            "/proc/9/stat line 1: bad state \"RR\""
        );
        assert_eq!(
            err(&STAT.replace(" 26493 ", " 0x1 ")),
            "/proc/9/stat line 1: bad starttime \"0x1\""
        );
        assert_eq!(
            err(&STAT.replace("3451 ", "x ")),
            "/proc/9/stat line 1: bad pid \"x\""
        );
        assert_eq!(
            err("3451 cat R 1"),
            "/proc/9/stat line 1: bad comm in \"3451 cat R 1\""
        );
        assert_eq!(
            err(&format!("{} 1", STAT.trim_end())),
            "/proc/9/stat line 1: trailing text \"1\""
        );
        assert!(err(&format!("{STAT}{STAT}")).starts_with("/proc/9/stat line 2: unexpected text"));
        assert_eq!(err(""), "/proc/9/stat line 1: bad comm in \"\"");
    }
}
