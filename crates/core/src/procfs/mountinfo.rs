//! `/proc/PID/mountinfo`: one mount per line, with its propagation tags
//! and octal-escaped paths.

/// A mount as a mountinfo line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub id: u32,
    pub parent: u32,
    pub dev: (u32, u32),
    pub root: String,
    pub mountpoint: String,
    pub mnt_opts: String,
    pub shared: Option<u32>,
    pub master: Option<u32>,
    pub unbindable: bool,
    pub fstype: String,
    pub source: String,
    pub super_opts: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/PID/mountinfo`; None for a line it cannot read.
pub fn parse_mountinfo(text: &str) -> Option<Vec<MountInfo>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        if sep < 6 || f.len() < sep + 4 {
            return None;
        }
        let (maj, min) = f[2].split_once(':')?;
        let mut m = MountInfo {
            id: f[0].parse().ok()?,
            parent: f[1].parse().ok()?,
            dev: (maj.parse().ok()?, min.parse().ok()?),
            root: unescape(f[3]),
            mountpoint: unescape(f[4]),
            mnt_opts: f[5].to_string(),
            shared: None,
            master: None,
            unbindable: false,
            fstype: f[sep + 1].to_string(),
            source: unescape(f[sep + 2]),
            super_opts: f[sep + 3].to_string(),
        };
        for tag in &f[6..sep] {
            if let Some(n) = tag.strip_prefix("shared:") {
                m.shared = n.parse().ok();
            } else if let Some(n) = tag.strip_prefix("master:") {
                m.master = n.parse().ok();
            } else if *tag == "unbindable" {
                m.unbindable = true;
            }
        }
        out.push(m);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes() {
        assert_eq!(unescape("a\\040b\\134"), "a b\\");
        assert_eq!(unescape("end\\04"), "end\\04");
    }
}
