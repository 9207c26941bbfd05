//! `/proc/PID/status`: "Key:\tvalue" lines.

use serde::Serialize;

use super::{dec, dec_list, hex_u64, oct_u32, perr, proc_path, read_text, ProcError};

/// The fields of `/proc/PID/status` that checkpointing uses. Fields absent
/// from the text keep their defaults; Name, Pid, Uid and Gid are required.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The command name as the kernel prints it (a newline in it shows as
    /// `\n`, a backslash as `\\`).
    pub name: String,
    /// Absent before Linux 4.7.
    pub umask: Option<u32>,
    pub state: char,
    pub tgid: i32,
    pub ngid: i32,
    pub pid: i32,
    pub ppid: i32,
    pub tracer_pid: i32,
    /// Real, effective, saved, filesystem.
    pub uid: [u32; 4],
    /// Real, effective, saved, filesystem.
    pub gid: [u32; 4],
    pub fd_size: u32,
    pub groups: Vec<u32>,
    /// Outermost pid namespace first.
    pub ns_tgid: Vec<i32>,
    pub ns_pid: Vec<i32>,
    pub ns_pgid: Vec<i32>,
    pub ns_sid: Vec<i32>,
    pub threads: u32,
    /// Queued signals / limit.
    pub sig_q: (u64, u64),
    pub sig_pnd: u64,
    pub shd_pnd: u64,
    pub sig_blk: u64,
    pub sig_ign: u64,
    pub sig_cgt: u64,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// 0 disabled, 1 strict, 2 filter.
    pub seccomp: u32,
}

/// Parses `/proc/PID/status` text. Unknown keys are ignored; a line with
/// no ':' or a bad value is an error.
pub fn parse_status(path: &str, text: &str) -> Result<Status, ProcError> {
    let mut st = Status::default();
    let mut seen = [false; 4]; // Name, Pid, Uid, Gid
    for (i, l) in text.lines().enumerate() {
        let line = i + 1;
        let (key, raw) = l
            .split_once(':')
            .ok_or_else(|| perr(path, line, format!("no ':' in {l:?}")))?;
        let v = raw.trim();
        let bad = || perr(path, line, format!("bad {key} {v:?}"));
        let num = |v: &str| dec::<i32>(v).ok_or_else(bad);
        let hex = |v: &str| hex_u64(v).ok_or_else(bad);
        match key {
            "Name" => {
                // The value is after one tab and may start or end with spaces.
                st.name = raw.strip_prefix('\t').unwrap_or(raw).to_string();
                seen[0] = true;
            }
            "Umask" => st.umask = Some(oct_u32(v).ok_or_else(bad)?),
            "State" => st.state = v.chars().next().ok_or_else(bad)?,
            "Tgid" => st.tgid = num(v)?,
            "Ngid" => st.ngid = num(v)?,
            "Pid" => {
                st.pid = num(v)?;
                seen[1] = true;
            }
            "PPid" => st.ppid = num(v)?,
            "TracerPid" => st.tracer_pid = num(v)?,
            "Uid" => {
                st.uid = four_ids(v).ok_or_else(bad)?;
                seen[2] = true;
            }
            "Gid" => {
                st.gid = four_ids(v).ok_or_else(bad)?;
                seen[3] = true;
            }
            "FDSize" => st.fd_size = dec(v).ok_or_else(bad)?,
            "Groups" => st.groups = dec_list(path, line, key, v)?,
            "NStgid" => st.ns_tgid = dec_list(path, line, key, v)?,
            "NSpid" => st.ns_pid = dec_list(path, line, key, v)?,
            "NSpgid" => st.ns_pgid = dec_list(path, line, key, v)?,
            "NSsid" => st.ns_sid = dec_list(path, line, key, v)?,
            "Threads" => st.threads = dec(v).ok_or_else(bad)?,
            "SigQ" => {
                let (a, b) = v.split_once('/').ok_or_else(bad)?;
                st.sig_q = (dec(a).ok_or_else(bad)?, dec(b).ok_or_else(bad)?);
            }
            "SigPnd" => st.sig_pnd = hex(v)?,
            "ShdPnd" => st.shd_pnd = hex(v)?,
            "SigBlk" => st.sig_blk = hex(v)?,
            "SigIgn" => st.sig_ign = hex(v)?,
            "SigCgt" => st.sig_cgt = hex(v)?,
            "CapInh" => st.cap_inh = hex(v)?,
            "CapPrm" => st.cap_prm = hex(v)?,
            "CapEff" => st.cap_eff = hex(v)?,
            "CapBnd" => st.cap_bnd = hex(v)?,
            "CapAmb" => st.cap_amb = hex(v)?,
            "NoNewPrivs" => st.no_new_privs = dec::<u32>(v).ok_or_else(bad)? != 0,
            "Seccomp" => st.seccomp = dec(v).ok_or_else(bad)?,
            _ => {}
        }
    }
    for (name, seen) in ["Name", "Pid", "Uid", "Gid"].iter().zip(seen) {
        if !seen {
            return Err(perr(path, 0, format!("missing {name}")));
        }
    }
    Ok(st)
}

/// `/proc/PID/status` — ids, credentials, signal masks, capabilities.
pub fn read_status(pid: i32) -> Result<Status, ProcError> {
    let path = proc_path(pid, "status");
    parse_status(&path, &read_text(&path)?)
}

/// `/proc/PID/task/TID/status` — the same for one thread.
pub fn read_task_status(pid: i32, tid: i32) -> Result<Status, ProcError> {
    let path = proc_path(pid, &format!("task/{tid}/status"));
    parse_status(&path, &read_text(&path)?)
}

fn four_ids(v: &str) -> Option<[u32; 4]> {
    let mut it = v.split_whitespace().map(dec::<u32>);
    let ids = [it.next()??, it.next()??, it.next()??, it.next()??];
    it.next().is_none().then_some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = include_str!("fixtures/status.txt");
    const PIDNS: &str = include_str!("fixtures/status_pidns.txt");
    const GROUPS: &str = include_str!("fixtures/status_groups.txt");
    const PAREN: &str = include_str!("fixtures/status_paren_comm.txt");

    #[test]
    fn parses_cat_status() {
        let st = parse_status("status", STATUS).unwrap();
        assert_eq!(st.name, "cat");
        assert_eq!(st.umask, Some(0o022));
        assert_eq!(st.state, 'R');
        assert_eq!(
            (st.tgid, st.ngid, st.pid, st.ppid, st.tracer_pid),
            (3450, 0, 3450, 3445, 0)
        );
        assert_eq!(st.uid, [0; 4]);
        assert_eq!(st.gid, [0; 4]);
        assert_eq!(st.fd_size, 256);
        assert!(st.groups.is_empty());
        assert_eq!(st.ns_tgid, [3450]);
        assert_eq!(st.ns_pid, [3450]);
        assert_eq!(st.ns_pgid, [3445]);
        assert_eq!(st.ns_sid, [3107]);
        assert_eq!(st.threads, 1);
        assert_eq!(st.sig_q, (0, 96551));
        assert_eq!(
            (st.sig_pnd, st.shd_pnd, st.sig_blk, st.sig_ign, st.sig_cgt),
            (0, 0, 0, 0, 0)
        );
        assert_eq!(st.cap_inh, 0);
        assert_eq!(st.cap_prm, 0x1fffeffffff);
        assert_eq!(st.cap_eff, 0x1fffeffffff);
        assert_eq!(st.cap_bnd, 0x1fffeffffff);
        assert_eq!(st.cap_amb, 0);
        assert!(!st.no_new_privs);
        assert_eq!(st.seccomp, 0);
    }

    #[test]
    fn parses_nested_pidns_and_groups() {
        let st = parse_status("status", PIDNS).unwrap();
        assert_eq!(st.ns_tgid, [4300, 2]);
        assert_eq!(st.ns_pid, [4300, 2]);
        assert_eq!(st.ns_pgid, [4295, 0]);
        assert_eq!(st.ns_sid, [3107, 0]);
        assert_eq!(st.cap_eff, 0x1ffffffffff);
        let st = parse_status("status", GROUPS).unwrap();
        assert_eq!(st.groups, [4, 27, 100]);
        assert_eq!(st.name, "python3");
    }

    #[test]
    fn name_with_parens_and_spaces() {
        let st = parse_status("status", PAREN).unwrap();
        assert_eq!(st.name, "a) b (c");
        let st = parse_status(
            "s",
            "Name:\t x: y \nPid:\t1\nUid:\t1 2 3 4\nGid:\t5\t6\t7\t8\n",
        );
        let st = st.unwrap();
        assert_eq!(st.name, " x: y ");
        assert_eq!(st.uid, [1, 2, 3, 4]);
        assert_eq!(st.gid, [5, 6, 7, 8]);
        assert_eq!(st.umask, None);
        assert_eq!(st.state, '\0');
    }

    fn err(text: &str) -> String {
        parse_status("/proc/7/status", text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn malformed() {
        let head = "Name:\tx\nPid:\t1\nUid:\t0 0 0 0\nGid:\t0 0 0 0\n";
        assert_eq!(
            err("Name:\tx\nUid:\t0 0 0 0\nGid:\t0 0 0 0\n"),
            "/proc/7/status line 0: missing Pid"
        );
        assert_eq!(
            err(&format!("{head}garbage\n")),
            "/proc/7/status line 5: no ':' in \"garbage\""
        );
        assert_eq!(
            err(&format!("{head}SigBlk:\t00zz\n")),
            "/proc/7/status line 5: bad SigBlk \"00zz\""
        );
        assert_eq!(
            err(&format!("{head}Umask:\t0089\n")),
            "/proc/7/status line 5: bad Umask \"0089\""
        );
        assert_eq!(
            err("Name:\tx\nPid:\t1\nUid:\t0 0 0\n"),
            "/proc/7/status line 3: bad Uid \"0 0 0\""
        );
        assert_eq!(
            err("Name:\tx\nPid:\t1\nUid:\t0 0 0 0 0\n"),
            "/proc/7/status line 3: bad Uid \"0 0 0 0 0\""
        );
        assert_eq!(
            err(&format!("{head}NSpid:\t1 x\n")),
            "/proc/7/status line 5: bad NSpid \"x\""
        );
        assert_eq!(
            err(&format!("{head}SigQ:\t1\n")),
            "/proc/7/status line 5: bad SigQ \"1\""
        );
        assert_eq!(
            err(&format!("{head}State:\t\n")),
            "/proc/7/status line 5: bad State \"\""
        );
        assert_eq!(
            err("Name:\tx\nPid:\t-\n"),
            "/proc/7/status line 2: bad Pid \"-\""
        );
    }
}
