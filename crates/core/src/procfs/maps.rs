//! `/proc/PID/maps`: one line per VMA.

use serde::Serialize;

use super::{dec, hex_u32, hex_u64, proc_path, read_text, Fields, ProcError};

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapsEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// Everything after the inode, leading padding removed: a file path
    /// (possibly with spaces, possibly ending in " (deleted)"), a pseudo
    /// name like "[heap]", or empty for anonymous memory. The kernel
    /// escapes a newline in a file name as `\012` and nothing else; that is
    /// left as is.
    pub path: String,
}

/// Names of the VMAs the kernel itself sets up and that are not restored
/// from memory contents.
const SPECIAL: [&str; 5] = [
    "[vdso]",
    "[vvar]",
    "[vvar_vclock]",
    "[vsyscall]",
    "[uprobes]",
];

impl MapsEntry {
    /// A kernel-provided mapping: [vdso], [vvar], [vvar_vclock],
    /// [vsyscall] or [uprobes].
    pub fn is_special(&self) -> bool {
        SPECIAL.contains(&self.path.as_str())
    }

    /// Backed by an inode (a file, or shared anonymous memory, which maps
    /// "/dev/zero (deleted)" or "/SYSV... (deleted)").
    pub fn is_file(&self) -> bool {
        self.inode != 0
    }

    /// The backing file was unlinked.
    pub fn deleted(&self) -> bool {
        self.path.ends_with(" (deleted)")
    }

    /// Length in bytes.
    pub fn size(&self) -> u64 {
        self.end - self.start
    }
}

/// Parses `/proc/PID/maps` text.
pub fn parse_maps(path: &str, text: &str) -> Result<Vec<MapsEntry>, ProcError> {
    text.lines()
        .enumerate()
        .map(|(i, l)| parse_maps_line(path, i + 1, l))
        .collect()
}

/// `/proc/PID/maps` — the VMAs of a process.
pub fn read_maps(pid: i32) -> Result<Vec<MapsEntry>, ProcError> {
    let path = proc_path(pid, "maps");
    parse_maps(&path, &read_text(&path)?)
}

/// Parses one maps line (also the header line of each smaps entry).
pub(crate) fn parse_maps_line(path: &str, line: usize, text: &str) -> Result<MapsEntry, ProcError> {
    let mut f = Fields::new(path, line, text);
    let (start, end) = f.parse("address range", |s| {
        let (a, b) = s.split_once('-')?;
        let (a, b) = (hex_u64(a)?, hex_u64(b)?);
        (a <= b).then_some((a, b))
    })?;
    let perms = f.parse("permissions", parse_perms)?;
    let offset = f.parse("offset", hex_u64)?;
    let (dev_major, dev_minor) = f.parse("device", |s| {
        let (a, b) = s.split_once(':')?;
        Some((hex_u32(a)?, hex_u32(b)?))
    })?;
    let inode = f.parse("inode", dec::<u64>)?;
    let [read, write, exec, shared] = perms;
    Ok(MapsEntry {
        start,
        end,
        read,
        write,
        exec,
        shared,
        offset,
        dev_major,
        dev_minor,
        inode,
        path: f.rest().to_string(),
    })
}

/// "rw-p" into [read, write, exec, shared].
fn parse_perms(s: &str) -> Option<[bool; 4]> {
    let flag = |c: u8, yes: u8, no: u8| match c {
        c if c == yes => Some(true),
        c if c == no => Some(false),
        _ => None,
    };
    match s.as_bytes() {
        &[r, w, x, s] => Some([
            flag(r, b'r', b'-')?,
            flag(w, b'w', b'-')?,
            flag(x, b'x', b'-')?,
            flag(s, b's', b'p')?,
        ]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = include_str!("fixtures/maps.txt");
    const MAPS_PY: &str = include_str!("fixtures/maps_python.txt");

    #[test]
    fn parses_cat_maps() {
        let maps = parse_maps("maps", MAPS).unwrap();
        assert_eq!(maps.len(), 38);
        assert_eq!(
            maps[0],
            MapsEntry {
                start: 0x55b1b2abd000,
                end: 0x55b1b2abf000,
                read: true,
                write: false,
                exec: false,
                shared: false,
                offset: 0,
                dev_major: 0xfe,
                dev_minor: 0,
                inode: 247030,
                path: "/usr/bin/cat".into(),
            }
        );
        assert!(maps[1].exec && maps[1].is_file());
        assert_eq!(maps[1].offset, 0x2000);
        assert_eq!(maps[5].path, "[heap]");
        assert!(!maps[5].is_special() && !maps[5].is_file());
        assert_eq!(maps[6].path, "");
        let gconv = maps
            .iter()
            .find(|m| m.path.ends_with("gconv-modules.cache"))
            .unwrap();
        assert!(gconv.shared && gconv.read && !gconv.write);
        let special: Vec<_> = maps
            .iter()
            .filter(|m| m.is_special())
            .map(|m| &m.path)
            .collect();
        assert_eq!(special, ["[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]"]);
        let last = maps.last().unwrap();
        assert_eq!(
            (last.start, last.end),
            (0xffffffffff600000, 0xffffffffff601000)
        );
        assert!(last.exec && !last.read);
        assert_eq!(maps[maps.len() - 2].path, "[stack]");
        assert_eq!(maps[maps.len() - 2].size(), 0x21000);
    }

    #[test]
    fn parses_spaces_and_deleted() {
        let maps = parse_maps("maps", MAPS_PY).unwrap();
        let spaced = maps.iter().find(|m| m.path.contains("with space")).unwrap();
        assert_eq!(spaced.path, "/tmp/my lib dir/lib with space.so");
        assert!(spaced.shared && spaced.write && !spaced.deleted());
        let gone = maps
            .iter()
            .find(|m| m.path.starts_with("/tmp/gone"))
            .unwrap();
        assert_eq!(gone.path, "/tmp/gone.so (deleted)");
        assert!(gone.deleted() && gone.is_file());
        assert_eq!(gone.inode, 10010853);
        let shm = maps
            .iter()
            .find(|m| m.path.starts_with("/dev/zero"))
            .unwrap();
        assert!(shm.deleted() && shm.shared && shm.is_file());
        assert_eq!((shm.dev_major, shm.dev_minor), (0, 1));
    }

    #[test]
    fn edge_lines() {
        let e = parse_maps_line("m", 1, "1000-2000 ---p 00000000 00:00 0 ").unwrap();
        assert_eq!(e.path, "");
        assert!(!e.read && !e.write && !e.exec && !e.shared);
        let e = parse_maps_line("m", 1, "1000-2000 r--p 00000000 103:0a 12    a  b ").unwrap();
        assert_eq!(e.path, "a  b ");
        assert_eq!((e.dev_major, e.dev_minor), (0x103, 0xa));
        let e = parse_maps_line("m", 1, "0-1000 r--p 0 00:00 0 [uprobes]").unwrap();
        assert!(e.is_special());
    }

    fn what(text: &str) -> (usize, String) {
        match parse_maps("/proc/42/maps", text) {
            Err(ProcError::Parse { line, what, .. }) => (line, what),
            other => panic!("expected parse error, got {other:?}"),
        }
    }

    #[test]
    fn malformed() {
        let good = "1000-2000 r--p 00000000 00:00 0\n";
        let text = format!("{good}{good}zz-10 r--p 00000000 00:00 0\n");
        let err = parse_maps("/proc/42/maps", &text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/proc/42/maps line 3: bad address range \"zz-10\""
        );
        assert_eq!(
            what("2000-1000 r--p 0 00:00 0"),
            (1, "bad address range \"2000-1000\"".into())
        );
        assert_eq!(what("1000-2000 rw-"), (1, "bad permissions \"rw-\"".into()));
        assert_eq!(
            what("1000-2000 rwxq 0 00:00 0"),
            (1, "bad permissions \"rwxq\"".into())
        );
        assert_eq!(
            what("1000-2000 r--p 0g 00:00 0"),
            (1, "bad offset \"0g\"".into())
        );
        assert_eq!(
            what("1000-2000 r--p 0 0000 0"),
            (1, "bad device \"0000\"".into())
        );
        assert_eq!(what("1000-2000 r--p 0 00:00"), (1, "missing inode".into()));
        assert_eq!(
            what("1000-2000 r--p 0 00:00 -1"),
            (1, "bad inode \"-1\"".into())
        );
        assert_eq!(
            what("1000-+2000 r--p 0 00:00 0"),
            (1, "bad address range \"1000-+2000\"".into())
        );
        assert_eq!(
            what(&format!("{good}\n{good}")),
            (2, "missing address range".into())
        );
    }
}
