//! `/proc/PID/smaps`: a maps line per VMA followed by "Key: value" lines.

use serde::Serialize;

use super::maps::parse_maps_line;
use super::{dec, perr, proc_path, read_text, ProcError};

/// The parts of one smaps entry that dump needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SmapsEntry {
    pub start: u64,
    pub end: u64,
    /// The two-letter flags of the `VmFlags:` line, in order (rd wr ex sh
    /// mr mw me ms gd pf lo io sr rr dc de ac nr ht sf ar wf dd gu mg um uw
    /// hg nh mm sd ...).
    pub vm_flags: Vec<String>,
    pub anon_huge_pages_kb: u64,
    pub rss_kb: u64,
    /// `KernelPageSize`: the size of the pages backing it (a hugetlb
    /// mapping's huge page size).
    pub kernel_page_kb: u64,
}

impl SmapsEntry {
    /// The VMA has the two-letter flag `flag` ("dd", "sd", "gd", ...).
    pub fn has(&self, flag: &str) -> bool {
        self.vm_flags.iter().any(|f| f == flag)
    }
}

/// Parses `/proc/PID/smaps` text. Keys other than `Rss`, `AnonHugePages`,
/// `KernelPageSize` and `VmFlags` are ignored, but every line must be a header or a
/// "Key: value" line.
pub fn parse_smaps(path: &str, text: &str) -> Result<Vec<SmapsEntry>, ProcError> {
    let mut out: Vec<SmapsEntry> = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let line = i + 1;
        // A field's key is one word before a ':'; a header has spaces before
        // the ':' of its device column.
        let field = l
            .split_once(':')
            .filter(|(k, _)| !k.is_empty() && !k.contains(char::is_whitespace));
        let Some((key, value)) = field else {
            let m = parse_maps_line(path, line, l)?;
            out.push(SmapsEntry {
                start: m.start,
                end: m.end,
                vm_flags: Vec::new(),
                anon_huge_pages_kb: 0,
                rss_kb: 0,
                kernel_page_kb: 4,
            });
            continue;
        };
        let entry = out
            .last_mut()
            .ok_or_else(|| perr(path, line, format!("{key} before any mapping")))?;
        match key {
            "Rss" => entry.rss_kb = kb(path, line, key, value)?,
            "AnonHugePages" => entry.anon_huge_pages_kb = kb(path, line, key, value)?,
            "KernelPageSize" => entry.kernel_page_kb = kb(path, line, key, value)?,
            "VmFlags" => entry.vm_flags = value.split_whitespace().map(String::from).collect(),
            _ => {}
        }
    }
    Ok(out)
}

/// `/proc/PID/smaps` — per-VMA flags and usage.
pub fn read_smaps(pid: i32) -> Result<Vec<SmapsEntry>, ProcError> {
    let path = proc_path(pid, "smaps");
    parse_smaps(&path, &read_text(&path)?)
}

/// "   123 kB" into 123.
fn kb(path: &str, line: usize, key: &str, value: &str) -> Result<u64, ProcError> {
    value
        .trim()
        .strip_suffix("kB")
        .and_then(|n| dec(n.trim_end()))
        .ok_or_else(|| perr(path, line, format!("bad {key} {:?}", value.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = include_str!("fixtures/smaps.txt");

    #[test]
    fn parses_fixture() {
        let s = parse_smaps("smaps", SMAPS).unwrap();
        assert_eq!(s.len(), 38);
        assert_eq!((s[0].start, s[0].end), (0x564cfc163000, 0x564cfc165000));
        assert_eq!(s[0].rss_kb, 8);
        assert_eq!(s[0].vm_flags, ["rd", "mr", "mw", "me"]);
        assert!(s[0].has("mr") && !s[0].has("wr"));
        let vsyscall = s.last().unwrap();
        assert_eq!(vsyscall.start, 0xffffffffff600000);
        assert!(vsyscall.has("ex"));
        assert!(s.iter().all(|e| !e.vm_flags.is_empty()));
        assert!(s.iter().any(|e| e.has("gd")), "the stack grows down");
        assert!(s.iter().any(|e| e.has("dd")), "vdso is not dumped");
    }

    #[test]
    fn malformed() {
        let err = parse_smaps("/proc/1/smaps", "Rss: 4 kB\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/proc/1/smaps line 1: Rss before any mapping"
        );
        let text = "1000-2000 r--p 0 00:00 0\nRss: four kB\n";
        let err = parse_smaps("/proc/1/smaps", text).unwrap_err();
        assert_eq!(err.to_string(), "/proc/1/smaps line 2: bad Rss \"four kB\"");
        let text = "1000-2000 r--p 0 00:00 0\nRss: 4 kB\ngarbage\n";
        let err = parse_smaps("/proc/1/smaps", text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/proc/1/smaps line 3: bad address range \"garbage\""
        );
        let text = "1000-2000 r--p 0 00:00 0\nAnonHugePages: 2048\n";
        assert!(parse_smaps("s", text).is_err());
    }
}
