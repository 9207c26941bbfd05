//! `/proc/PID/auxv`: the ELF auxiliary vector, (type, value) pairs of
//! native-endian words ending with AT_NULL.

use super::{ioerr, perr, proc_path, ProcError};

/// Parses auxv bytes as little-endian u64 pairs, up to and including the
/// terminating (AT_NULL, 0) pair. The length must be a multiple of 16 and an
/// AT_NULL must be present. Error paths are labelled "auxv".
pub fn parse_auxv(bytes: &[u8]) -> Result<Vec<(u64, u64)>, ProcError> {
    parse_auxv_at("auxv", bytes)
}

fn parse_auxv_at(path: &str, bytes: &[u8]) -> Result<Vec<(u64, u64)>, ProcError> {
    if !bytes.chunks_exact(16).remainder().is_empty() {
        let what = format!("length {} is not a multiple of 16", bytes.len());
        return Err(perr(path, bytes.len() / 16 + 1, what));
    }
    let mut out = Vec::with_capacity(bytes.len() / 16);
    for rec in bytes.chunks_exact(16) {
        let (k, v) = rec.split_at(8);
        let word = |b: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        let pair = (word(k), word(v));
        out.push(pair);
        if pair.0 == 0 {
            return Ok(out);
        }
    }
    Err(perr(path, out.len(), "no AT_NULL"))
}

/// `/proc/PID/auxv` — the auxiliary vector the process was started with
/// (needs ptrace access).
pub fn read_auxv(pid: i32) -> Result<Vec<(u64, u64)>, ProcError> {
    let path = proc_path(pid, "auxv");
    let bytes = std::fs::read(&path).map_err(|e| ioerr(&path, e))?;
    parse_auxv_at(&path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUXV: &[u8] = include_bytes!("fixtures/auxv.bin");

    #[test]
    fn parses_fixture() {
        let a = parse_auxv(AUXV).unwrap();
        assert_eq!(a.len(), 23);
        assert_eq!(a[0], (libc::AT_SYSINFO_EHDR, 139629231063040));
        assert!(a.contains(&(libc::AT_PAGESZ, 4096)));
        assert!(a.contains(&(libc::AT_PHENT, 56)));
        assert!(a.contains(&(libc::AT_EXECFN, 140725700898767)));
        assert_eq!(a.last(), Some(&(0, 0)));
    }

    #[test]
    fn stops_at_at_null() {
        let mut b = AUXV.to_vec();
        b.extend_from_slice(&[0xff; 32]);
        assert_eq!(parse_auxv(&b).unwrap(), parse_auxv(AUXV).unwrap());
    }

    #[test]
    fn malformed() {
        let e = parse_auxv(&AUXV[..AUXV.len() - 3]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "auxv line 23: length 365 is not a multiple of 16"
        );
        let e = parse_auxv(&AUXV[..AUXV.len() - 16]).unwrap_err();
        assert_eq!(e.to_string(), "auxv line 22: no AT_NULL");
        assert!(parse_auxv(&[]).is_err());
    }
}
