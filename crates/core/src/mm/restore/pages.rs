//! Filling a restored address space with its pages: runs read by the task
//! itself with injected `preadv` from the pages file, or written from crest
//! with `process_vm_writev`, on two CPUs at once.

use super::*;
use crate::error::RoomError;
use crate::mm::error::MmError;

/// A run of pages: where it goes, its length and where it is in the pages
/// file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub addr: u64,
    pub len: u64,
    pub off: u64,
}

/// The pagemap's runs with their offsets in the pages file (stored one
/// after the other, in pagemap order).
pub fn page_runs(pagemap: &[PagemapEntry]) -> Vec<Run> {
    let mut off = 0u64;
    pagemap
        .iter()
        .map(|e| {
            let len = e.pages().saturating_mul(PAGE);
            let r = Run {
                addr: e.vaddr,
                len,
                off,
            };
            off = off.saturating_add(len);
            r
        })
        .collect()
}

/// Fills the pages from the pages file (but those of the areas in
/// `placed`, which have theirs), on two CPUs at once: the task reads the
/// first part itself with injected `preadv` calls (one copy, at most 1024
/// runs each), while a crest thread writes the rest with
/// `process_vm_writev`. The page faults in the fresh memory, the slow part,
/// are thus taken in parallel.
pub fn fill_pages(
    t: &mut Tracee,
    (mm, pagemap): (&MmEntry, &[PagemapEntry]),
    placed: &[(u64, u64)],
    pages_path: &str,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    check_pagemap(pid, mm, pagemap)?;
    if pagemap.is_empty() {
        return Ok(());
    }
    let all = page_runs(pagemap);
    let need = all.last().map_or(0, |r| r.off + r.len);
    let runs: Vec<Run> = all
        .into_iter()
        .filter(|r| !placed.iter().any(|p| r.addr >= p.0 && r.addr < p.1))
        .collect();
    let total: u64 = runs.iter().map(|r| r.len).sum();
    let split = if total >= 64 << 20 { total / 2 } else { total };
    let (mine, theirs) = split_runs(&runs, split);
    let file = std::fs::File::open(pages_path).rat(pid, format!("open {pages_path}"))?;
    let len = file
        .metadata()
        .rat(pid, format!("stat {pages_path}"))?
        .len();
    if len < need {
        return Err(MmError::BadImage {
            file: pages_path.to_string(),
            what: format!("holds {len} bytes, the pagemap needs {need}"),
        }
        .in_restore(pid));
    }
    // (crest and the task pinned to one CPU for the restore: both halves
    // of a large fill run free, the task pinned again after)
    let spread = crest_sys::misc::pinned().filter(|_| !theirs.is_empty());
    if let Some((free, _)) = &spread {
        let _ = crest_sys::misc::set_affinity(t.tid(), free);
    }
    let filled = std::thread::scope(|s| {
        let helper = s.spawn(|| {
            if let Some((free, _)) = &spread {
                let _ = crest_sys::misc::set_affinity(0, free);
            }
            write_runs(pid, &file, &theirs, pages_path)
        });
        let res = read_in_task(t, &mine, pages_path);
        let helped = helper.join().unwrap_or_else(|_| {
            Err(MmError::Unsupported {
                what: "a page writer thread that panicked".into(),
            }
            .in_restore(pid))
        });
        res.and(helped)
    });
    if let Some((_, one)) = &spread {
        let _ = crest_sys::misc::set_affinity(t.tid(), one);
    }
    filled
}

/// Splits runs at byte `at` of their concatenation.
pub(super) fn split_runs(runs: &[Run], at: u64) -> (Vec<Run>, Vec<Run>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut seen = 0u64;
    for &r in runs {
        if seen + r.len <= at {
            a.push(r);
        } else if seen >= at {
            b.push(r);
        } else {
            let head = at - seen;
            a.push(Run { len: head, ..r });
            b.push(Run {
                addr: r.addr + head,
                len: r.len - head,
                off: r.off + head,
            });
        }
        seen += r.len;
    }
    (a, b)
}

/// The task reads `runs` from the pages file.
pub(super) fn read_in_task(
    t: &mut Tracee,
    runs: &[Run],
    pages_path: &str,
) -> Result<(), RestoreError> {
    if runs.is_empty() {
        return Ok(());
    }
    let fd = t.open_crest_side(pages_path, libc::O_RDONLY)?;
    // one preadv reads runs that follow each other in the file
    let mut file_off = runs[0].off;
    let mut batch: Vec<(u64, u64)> = Vec::with_capacity(IOVS_PER_CALL);
    let mut batch_bytes = 0u64;
    for r in runs {
        if r.off != file_off + batch_bytes && !batch.is_empty() {
            preadv(t, fd, &batch, file_off, pages_path)?;
            batch.clear();
            batch_bytes = 0;
        }
        if batch.is_empty() {
            file_off = r.off;
        }
        let (mut addr, mut left) = (r.addr, r.len);
        while left > 0 {
            let take = left.min(MAX_PREADV - batch_bytes);
            batch.push((addr, take));
            batch_bytes += take;
            addr += take;
            left -= take;
            if batch.len() == IOVS_PER_CALL || batch_bytes == MAX_PREADV {
                file_off = preadv(t, fd, &batch, file_off, pages_path)?;
                batch.clear();
                batch_bytes = 0;
            }
        }
    }
    if !batch.is_empty() {
        preadv(t, fd, &batch, file_off, pages_path)?;
    }
    t.close(fd)?;
    Ok(())
}

/// Writes `runs` from the pages file into the task with
/// `process_vm_writev`.
pub(super) fn write_runs(
    pid: i32,
    file: &std::fs::File,
    runs: &[Run],
    pages_path: &str,
) -> Result<(), RestoreError> {
    use std::os::unix::fs::FileExt;
    const CHUNK: u64 = 16 << 20;
    let mut buf = Vec::new();
    let mut pending: Vec<(u64, usize)> = Vec::new();
    let mut pending_len = 0u64;
    let mut flush =
        |pending: &mut Vec<(u64, usize)>, len: u64, off: u64| -> Result<(), RestoreError> {
            buf.resize(len as usize, 0);
            file.read_exact_at(&mut buf, off)
                .rat(pid, format!("read {pages_path} at {off}"))?;
            let n = crest_sys::mem::write_remote(pid, pending, &buf)
                .rat(pid, "process_vm_writev of pages")?;
            if n as u64 != len {
                return Err(RestoreError::Io {
                    pid,
                    step: "process_vm_writev of pages (short write)".into(),
                    source: std::io::Error::from_raw_os_error(libc::EFAULT),
                });
            }
            pending.clear();
            Ok(())
        };
    // one read takes runs that follow each other in the file
    let mut offset = runs.first().map_or(0, |r| r.off);
    for r in runs {
        if r.off != offset + pending_len && pending_len > 0 {
            flush(&mut pending, pending_len, offset)?;
            pending_len = 0;
        }
        if pending_len == 0 {
            offset = r.off;
        }
        let (mut addr, mut left) = (r.addr, r.len);
        while left > 0 {
            let take = left.min(CHUNK - pending_len);
            pending.push((addr, take as usize));
            pending_len += take;
            addr += take;
            left -= take;
            if pending_len == CHUNK {
                flush(&mut pending, pending_len, offset)?;
                offset += pending_len;
                pending_len = 0;
            }
        }
    }
    if pending_len > 0 {
        flush(&mut pending, pending_len, offset)?;
    }
    Ok(())
}

/// Every pagemap run must lie inside a dumped, non-special VMA.
pub(super) fn check_pagemap(
    pid: i32,
    mm: &MmEntry,
    pagemap: &[PagemapEntry],
) -> Result<(), RestoreError> {
    for e in pagemap {
        let n = e.pages();
        let end = n.checked_mul(PAGE).and_then(|b| e.vaddr.checked_add(b));
        let inside = end.is_some_and(|end| {
            e.vaddr % PAGE == 0
                && mm
                    .vmas
                    .iter()
                    .any(|v| !is_special(v) && v.start <= e.vaddr && end <= v.end)
        });
        if !inside {
            return Err(MmError::BadImage {
                file: crest_images::names::pagemap(pid as u32),
                what: format!("{n} pages at {:#x} lie outside every vma", e.vaddr),
            }
            .in_restore(pid));
        }
    }
    Ok(())
}

pub(super) fn preadv(
    t: &mut Tracee,
    fd: u64,
    iovs: &[(u64, u64)],
    mut off: u64,
    path: &str,
) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let mut rest: Vec<(u64, u64)> = iovs.to_vec();
    while !rest.is_empty() {
        let raw: Vec<u8> = rest
            .iter()
            .flat_map(|(a, l)| a.to_le_bytes().into_iter().chain(l.to_le_bytes()))
            .collect();
        let addr = t.put(&raw).rat(pid, "write iovecs")?;
        let n = t
            .syscall(nr::PREADV, &[fd, addr, rest.len() as u64, off])
            .rat(pid, format!("preadv from {path} at offset {off}"))?;
        if n == 0 {
            return Err(MmError::BadImage {
                file: path.to_string(),
                what: format!("ends at offset {off}, before all pages were read"),
            }
            .in_restore(pid));
        }
        off += n;
        crate::progress::pages(n);
        let mut done = n;
        while let Some(first) = rest.first_mut() {
            if done >= first.1 {
                done -= first.1;
                rest.remove(0);
            } else {
                first.0 += done;
                first.1 -= done;
                break;
            }
        }
    }
    Ok(off)
}
