//! `/proc/PID/pagemap`: one u64 per virtual page.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::{ioerr, proc_path, ProcError};

/// The page size pagemap is indexed by.
pub const PAGE_SIZE: u64 = 4096;

/// Words read per `pread` (512 KiB).
const CHUNK_WORDS: usize = 64 * 1024;

/// One pagemap word (see the kernel's Documentation/admin-guide/mm/pagemap.rst).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagemapBits(pub u64);

impl PagemapBits {
    /// Bit 63: the page is in RAM.
    pub fn present(self) -> bool {
        self.0 & (1 << 63) != 0
    }

    /// Bit 62: the page is in swap.
    pub fn swapped(self) -> bool {
        self.0 & (1 << 62) != 0
    }

    /// Bit 61: the page is file-backed or shared anonymous.
    pub fn file_or_shared_anon(self) -> bool {
        self.0 & (1 << 61) != 0
    }

    /// Bit 56: the page is mapped exclusively.
    pub fn exclusive(self) -> bool {
        self.0 & (1 << 56) != 0
    }

    /// Bit 58: a guard page (`MADV_GUARD_INSTALL`): it faults, holds no
    /// data, and shows as swapped too.
    pub fn guard(self) -> bool {
        self.0 & (1 << 58) != 0
    }

    /// Bit 57: the pte is uffd-wp write-protected.
    pub fn uffd_wp(self) -> bool {
        self.0 & (1 << 57) != 0
    }

    /// Bits 0–54: the page frame number if present (0 without
    /// CAP_SYS_ADMIN), or swap type and offset if swapped.
    pub fn pfn(self) -> u64 {
        self.0 & ((1 << 55) - 1)
    }
}

/// An open `/proc/PID/pagemap`, to read many ranges through one fd.
#[derive(Debug)]
pub struct Pagemap {
    path: String,
    file: File,
}

impl Pagemap {
    /// `open` `/proc/PID/pagemap` read-only.
    pub fn open(pid: i32) -> Result<Pagemap, ProcError> {
        let path = proc_path(pid, "pagemap");
        let file = File::open(&path).map_err(|e| ioerr(&path, e))?;
        Ok(Pagemap { path, file })
    }

    /// The open file (for `PAGEMAP_SCAN`).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// `pread` — the words for the pages of `start..end` (rounded out to
    /// pages); empty if `end <= start`.
    pub fn read(&self, start: u64, end: u64) -> Result<Vec<u64>, ProcError> {
        if end <= start {
            return Ok(Vec::new());
        }
        let first = start / PAGE_SIZE;
        let last = end.div_ceil(PAGE_SIZE);
        let npages = usize::try_from(last.saturating_sub(first)).map_err(|_| {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "range too large");
            ioerr(&self.path, e)
        })?;
        let mut words = Vec::with_capacity(npages.min(CHUNK_WORDS));
        let mut buf = vec![0u8; npages.min(CHUNK_WORDS) * 8];
        while words.len() < npages {
            let want = (npages - words.len()).min(CHUNK_WORDS) * 8;
            let offset = (first + words.len() as u64) * 8;
            self.read_exact_at(&mut buf[..want], offset)?;
            words.extend(buf[..want].chunks_exact(8).map(|b| {
                let mut w = [0u8; 8];
                w.copy_from_slice(b);
                u64::from_ne_bytes(w)
            }));
        }
        Ok(words)
    }

    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> Result<(), ProcError> {
        while !buf.is_empty() {
            match self.file.read_at(buf, offset) {
                Ok(0) => {
                    let what = format!("end of file at offset {offset:#x}");
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, what);
                    return Err(ioerr(&self.path, e));
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ioerr(&self.path, e)),
            }
        }
        Ok(())
    }
}

/// The pagemap words for `start..end` of process `pid` (opens the file
/// for this one read; use [`Pagemap`] for many).
pub fn read_pagemap(pid: i32, start: u64, end: u64) -> Result<Vec<u64>, ProcError> {
    Pagemap::open(pid)?.read(start, end)
}

/// Merges consecutive pages whose words match `pred` into runs of
/// (address, number of pages); `words[0]` is the page at `start`.
pub fn runs(words: &[u64], start: u64, pred: impl Fn(PagemapBits) -> bool) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut prev_matched = false;
    for (i, &w) in words.iter().enumerate() {
        let matched = pred(PagemapBits(w));
        if matched {
            match out.last_mut() {
                Some((_, n)) if prev_matched => *n += 1,
                _ => out.push((start + i as u64 * PAGE_SIZE, 1)),
            }
        }
        prev_matched = matched;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 1 << 63;
    const S: u64 = 1 << 62;

    #[test]
    fn bits() {
        let b = PagemapBits(P | (1 << 61) | (1 << 56) | 0x1234);
        assert!(b.present() && b.file_or_shared_anon() && b.exclusive());
        assert!(!b.swapped() && !b.uffd_wp());
        assert_eq!(b.pfn(), 0x1234);
        let b = PagemapBits(S | (1 << 57) | (1 << 55) | ((1 << 55) - 1));
        assert!(b.swapped() && b.uffd_wp() && !b.present());
        assert_eq!(b.pfn(), (1 << 55) - 1);
    }

    #[test]
    fn runs_merge_consecutive_pages() {
        let words = [P, P, 0, S, P, P, P, 0, 0, P];
        let present = runs(&words, 0x10000, |b| b.present());
        assert_eq!(present, [(0x10000, 2), (0x14000, 3), (0x19000, 1)]);
        let dumpable = runs(&words, 0x10000, |b| b.present() || b.swapped());
        assert_eq!(dumpable, [(0x10000, 2), (0x13000, 4), (0x19000, 1)]);
        assert_eq!(runs(&words, 0, |_| false), []);
        assert_eq!(runs(&words, 0, |_| true), [(0, 10)]);
        assert_eq!(runs(&[], 0, |_| true), []);
        assert_eq!(runs(&[0, P], 0x1000, |b| b.present()), [(0x2000, 1)]);
    }

    #[test]
    fn reads_own_pages() {
        let pid = std::process::id() as i32;
        let buf = vec![7u8; 3 * PAGE_SIZE as usize];
        let addr = buf.as_ptr() as u64;
        let words = read_pagemap(pid, addr, addr + buf.len() as u64).unwrap();
        assert!((3..=4).contains(&words.len()));
        assert!(words.iter().all(|&w| PagemapBits(w).present()));
        let pm = Pagemap::open(pid).unwrap();
        assert_eq!(pm.read(addr, addr).unwrap(), []);
        assert_eq!(pm.read(addr, addr + 1).unwrap().len(), 1);
        // Larger than one chunk: a whole range of mostly unmapped pages.
        let big = pm.read(0, (CHUNK_WORDS as u64 + 3) * PAGE_SIZE).unwrap();
        assert_eq!(big.len(), CHUNK_WORDS + 3);
    }

    #[test]
    fn missing_process() {
        let e = Pagemap::open(-5).unwrap_err();
        assert!(e.is_not_found());
        assert!(e.to_string().starts_with("/proc/-5/pagemap: "));
    }
}
