//! `/proc/PID/uid_map`, `gid_map` and `setgroups` of a user namespace.

use serde::Serialize;

use super::{dec, perr, proc_path, read_text, Fields, ProcError};

/// One line of a uid_map/gid_map: ids `first..first+count` inside the
/// namespace are `lower_first..lower_first+count` in the namespace of the
/// process reading the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IdExtent {
    pub first: u32,
    pub lower_first: u32,
    pub count: u32,
}

/// Parses uid_map/gid_map text: three whitespace-separated numbers a line.
/// Empty text (no mapping written yet) gives no extents.
pub fn parse_id_map(path: &str, text: &str) -> Result<Vec<IdExtent>, ProcError> {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let mut f = Fields::new(path, i + 1, l);
            let ext = IdExtent {
                first: f.parse("first id", dec)?,
                lower_first: f.parse("lower first id", dec)?,
                count: f.parse("count", dec)?,
            };
            if !f.rest().is_empty() {
                return Err(perr(path, i + 1, format!("trailing text {:?}", f.rest())));
            }
            Ok(ext)
        })
        .collect()
}

/// `/proc/PID/uid_map` — the uid mapping of the process's user namespace.
pub fn read_uid_map(pid: i32) -> Result<Vec<IdExtent>, ProcError> {
    let path = proc_path(pid, "uid_map");
    parse_id_map(&path, &read_text(&path)?)
}

/// `/proc/PID/gid_map` — the gid mapping of the process's user namespace.
pub fn read_gid_map(pid: i32) -> Result<Vec<IdExtent>, ProcError> {
    let path = proc_path(pid, "gid_map");
    parse_id_map(&path, &read_text(&path)?)
}

/// Parses a setgroups file: "allow" is true, "deny" false.
pub fn parse_setgroups(path: &str, text: &str) -> Result<bool, ProcError> {
    match text.trim_end_matches('\n') {
        "allow" => Ok(true),
        "deny" => Ok(false),
        other => Err(perr(path, 1, format!("bad setgroups {other:?}"))),
    }
}

/// `/proc/PID/setgroups` — whether setgroups(2) is allowed in the user
/// namespace.
pub fn read_setgroups(pid: i32) -> Result<bool, ProcError> {
    let path = proc_path(pid, "setgroups");
    parse_setgroups(&path, &read_text(&path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INIT: &str = include_str!("fixtures/uid_map_init.txt");
    const USERNS: &str = include_str!("fixtures/uid_map_userns.txt");
    const GID_USERNS: &str = include_str!("fixtures/gid_map_userns.txt");

    #[test]
    fn parses_fixtures() {
        let init = parse_id_map("uid_map", INIT).unwrap();
        assert_eq!(
            init,
            [IdExtent {
                first: 0,
                lower_first: 0,
                count: u32::MAX
            }]
        );
        let ns = parse_id_map("uid_map", USERNS).unwrap();
        assert_eq!(
            ns,
            [IdExtent {
                first: 0,
                lower_first: 0,
                count: 1
            }]
        );
        assert_eq!(parse_id_map("gid_map", GID_USERNS).unwrap(), ns);
        assert_eq!(parse_id_map("uid_map", "").unwrap(), []);
        let multi = "0 100000 1000\n1000 1000 1\n";
        let m = parse_id_map("uid_map", multi).unwrap();
        assert_eq!(
            m[1],
            IdExtent {
                first: 1000,
                lower_first: 1000,
                count: 1
            }
        );
    }

    #[test]
    fn setgroups() {
        assert!(parse_setgroups("s", "allow\n").unwrap());
        assert!(!parse_setgroups("s", "deny\n").unwrap());
        let e = parse_setgroups("/proc/1/setgroups", "maybe\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/proc/1/setgroups line 1: bad setgroups \"maybe\""
        );
    }

    #[test]
    fn malformed() {
        let e = |t: &str| parse_id_map("/proc/5/uid_map", t).unwrap_err().to_string();
        assert_eq!(e("0 0 1\n0 0\n"), "/proc/5/uid_map line 2: missing count");
        assert_eq!(
            e("0 0 1\n0 0 1\nx 0 1\n"),
            "/proc/5/uid_map line 3: bad first id \"x\""
        );
        assert_eq!(
            e("0 0 4294967296\n"),
            "/proc/5/uid_map line 1: bad count \"4294967296\""
        );
        assert_eq!(
            e("0 0 1 1\n"),
            "/proc/5/uid_map line 1: trailing text \"1\""
        );
    }

    #[test]
    fn reads_own_maps() {
        let uid = read_uid_map(std::process::id() as i32).unwrap();
        assert!(!uid.is_empty());
        read_setgroups(std::process::id() as i32).unwrap();
    }
}
