//! Filling a restored address space with its pages: runs read by the task
//! itself with injected `preadv` from the pages file, or written from crest
//! with `process_vm_writev`, on two CPUs at once.

use super::*;
use crate::error::RoomError;
use crate::mm::error::MmError;
use crest_images::{names, PE_PARENT, PE_PRESENT};
use std::path::Path;

/// A run of pages: where it goes, its length, which pages file holds it
/// (an index into [`Pages::paths`]) and where in that file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub addr: u64,
    pub len: u64,
    pub off: u64,
    pub src: usize,
}

#[cfg(test)]
impl Run {
    /// A run of the first pages file (for tests).
    pub(crate) fn at(addr: u64, len: u64, off: u64) -> Run {
        Run {
            addr,
            len,
            off,
            src: 0,
        }
    }
}

/// Pages files whose content is checked a chunk at a time as the restore
/// reads from them (`--lazy-pages`: most of their pages are the daemon's
/// to read and check), by canonical path: the chunks' sums and which are
/// checked already.
static DEFERRED: std::sync::Mutex<
    std::collections::BTreeMap<std::path::PathBuf, (crest_images::manifest::Deferred, Vec<bool>)>,
> = std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Forgets the files registered by an earlier restore of this process (a
/// `swrk` serves several).
pub fn reset_deferred() {
    DEFERRED.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Registers the files of `dir` whose checks were deferred.
pub fn defer_checks(
    dir: &Path,
    files: std::collections::BTreeMap<String, crest_images::manifest::Deferred>,
) {
    let mut reg = DEFERRED.lock().unwrap_or_else(|e| e.into_inner());
    for (name, d) in files {
        let path = dir.join(&name);
        let key = std::fs::canonicalize(&path).unwrap_or(path);
        let n = d.sums.len();
        reg.insert(key, (d, vec![false; n]));
    }
}

/// Most parent images a chain of dumps may have (pre-dumps before a dump).
const MAX_PARENTS: usize = 256;

/// A task's pages: every run, in pagemap order, and the pages files they
/// are in: the task's own first, then those of the parent images its
/// pagemap points into (`PE_PARENT`, found through each images
/// directory's `parent` link).
#[derive(Debug, Default)]
pub struct Pages {
    pub runs: Vec<Run>,
    pub paths: Vec<String>,
}

impl Pages {
    /// The pages of task `pid` whose pagemap (in `dir`) is `pagemap` and
    /// whose pages file is `pages_id`.
    pub fn load(
        dir: &Path,
        pid: u32,
        pages_id: u32,
        pagemap: &[PagemapEntry],
    ) -> Result<Pages, RestoreError> {
        let mut p = Pages::default();
        p.runs = p.level(dir, pid, (pages_id, pagemap), 0)?;
        Ok(p)
    }

    /// The runs of one images directory's pagemap, those marked as the
    /// parent's resolved in the parent images.
    fn level(
        &mut self,
        dir: &Path,
        pid: u32,
        (pages_id, pagemap): (u32, &[PagemapEntry]),
        depth: usize,
    ) -> Result<Vec<Run>, RestoreError> {
        let src = self.paths.len();
        self.paths.push(
            dir.join(names::pages(pages_id))
                .to_string_lossy()
                .into_owned(),
        );
        let bad = |what: String| {
            MmError::BadImage {
                file: dir.join(names::pagemap(pid)).display().to_string(),
                what,
            }
            .in_restore(pid as i32)
        };
        let mut parent: Option<Vec<Run>> = None;
        let mut runs = Vec::with_capacity(pagemap.len());
        let mut off = 0u64;
        for e in pagemap {
            let len = e.pages().saturating_mul(PAGE);
            let flags = e.flags.unwrap_or(if e.in_parent == Some(true) {
                PE_PARENT
            } else {
                PE_PRESENT
            });
            if flags & PE_PARENT == 0 {
                runs.push(Run {
                    addr: e.vaddr,
                    len,
                    off,
                    src,
                });
                off = off.saturating_add(len);
                continue;
            }
            if parent.is_none() {
                if depth >= MAX_PARENTS {
                    return Err(bad(format!("more than {MAX_PARENTS} parent images")));
                }
                let pdir = dir.join("parent");
                let (pid_pages, pmap) = crate::mm::image::read_pagemap(&pdir, pid)
                    .map_err(|e| bad(format!("pages in the parent images, which fail: {e}")))?;
                parent = Some(self.level(&pdir, pid, (pid_pages, &pmap), depth + 1)?);
            }
            let from = parent.as_deref().unwrap_or_default();
            let end = e.vaddr.saturating_add(len);
            let mut at = e.vaddr;
            let first = from.partition_point(|r| r.addr + r.len <= at);
            for r in &from[first..] {
                if at >= end || r.addr > at {
                    break;
                }
                let take = (r.addr + r.len).min(end) - at;
                runs.push(Run {
                    addr: at,
                    len: take,
                    off: r.off + (at - r.addr),
                    src: r.src,
                });
                at += take;
            }
            if at < end {
                return Err(bad(format!(
                    "pages at {at:#x}-{end:#x} marked as the parent images', which lack them"
                )));
            }
        }
        Ok(runs)
    }

    /// The runs of pages file `src`.
    pub fn of(runs: &[Run], src: usize) -> Vec<Run> {
        runs.iter().filter(|r| r.src == src).copied().collect()
    }

    /// Checks the chunks `runs` read of the pages files whose checks were
    /// deferred ([`defer_checks`]), those not checked yet.
    pub fn check(&self, runs: &[Run]) -> Result<(), RestoreError> {
        let mut reg = DEFERRED.lock().unwrap_or_else(|e| e.into_inner());
        if reg.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for (i, path) in self.paths.iter().enumerate() {
            let p = Path::new(path);
            let key = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            let Some((d, done)) = reg.get_mut(&key) else {
                continue;
            };
            for r in runs.iter().filter(|r| r.src == i && r.len > 0) {
                let (first, last) = (r.off / d.chunk, (r.off + r.len - 1) / d.chunk);
                for k in first..=last {
                    let k = k as usize;
                    if done.get(k) == Some(&false) {
                        crest_images::manifest::check_chunk(p, d, k, &mut buf)?;
                        done[k] = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// Opens every pages file, each checked to hold what its runs need.
    pub fn open(&self, pid: i32) -> Result<Vec<std::fs::File>, RestoreError> {
        self.paths
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let file = std::fs::File::open(path).rat(pid, format!("open {path}"))?;
                let len = file.metadata().rat(pid, format!("stat {path}"))?.len();
                let need = self
                    .runs
                    .iter()
                    .filter(|r| r.src == i)
                    .map(|r| r.off.saturating_add(r.len))
                    .max()
                    .unwrap_or(0);
                if len < need {
                    return Err(MmError::BadImage {
                        file: path.clone(),
                        what: format!("holds {len} bytes, the pagemap needs {need}"),
                    }
                    .in_restore(pid));
                }
                Ok(file)
            })
            .collect()
    }
}

/// Fills the pages from the pages file (but those of the areas in
/// `placed`, which have theirs or get them lazily), on two CPUs at once:
/// the task reads the first part itself with injected `preadv` calls (one
/// copy, at most 1024 runs each), while a crest thread writes the rest
/// with `process_vm_writev`. The page faults in the fresh memory, the slow part,
/// are thus taken in parallel.
pub fn fill_pages(
    t: &mut Tracee,
    (mm, pagemap): (&MmEntry, &[PagemapEntry]),
    placed: &[(u64, u64)],
    pages: &Pages,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    check_pagemap(pid, mm, pagemap)?;
    if pagemap.is_empty() {
        return Ok(());
    }
    let (_, runs) = crate::mm::lazy::split_by(&pages.runs, placed);
    pages.check(&runs)?;
    let total: u64 = runs.iter().map(|r| r.len).sum();
    let split = if total >= 64 << 20 { total / 2 } else { total };
    let (mine, theirs) = split_runs(&runs, split);
    let files = pages.open(pid)?;
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
            (0..files.len()).try_for_each(|i| {
                write_runs(pid, &files[i], &Pages::of(&theirs, i), &pages.paths[i])
            })
        });
        let res = (0..files.len())
            .try_for_each(|i| read_in_task(t, &Pages::of(&mine, i), &pages.paths[i]));
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
                src: r.src,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(vaddr: u64, n: u64, flags: u32) -> PagemapEntry {
        PagemapEntry {
            vaddr,
            compat_nr_pages: n as u32,
            in_parent: None,
            flags: Some(flags),
            nr_pages: Some(n),
        }
    }

    #[test]
    fn pages_marked_as_the_parents_are_found_in_the_parent_images() {
        let root = std::env::temp_dir().join(format!("crest-pages-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (d1, d2) = (root.join("d1"), root.join("d2"));
        std::fs::create_dir_all(&d1).unwrap();
        std::fs::create_dir_all(&d2).unwrap();
        std::os::unix::fs::symlink("../d1", d2.join("parent")).unwrap();
        // the parent: 0x1000-0x4000 and 0x8000-0x9000, in its pages file 5
        let older = [entry(0x1000, 3, PE_PRESENT), entry(0x8000, 1, PE_PRESENT)];
        crate::mm::image::write_pagemap(&d1, 7, 5, &older).unwrap();
        // the child: its own page at 0x1000, the parent's 0x2000-0x4000
        let newer = [
            entry(0x1000, 1, PE_PRESENT),
            entry(0x2000, 2, PE_PARENT),
            entry(0x8000, 1, PE_PRESENT),
        ];
        let p = Pages::load(&d2, 7, 1, &newer).unwrap();
        assert_eq!(p.paths.len(), 2);
        assert!(p.paths[1].ends_with("d2/parent/pages-5.img"));
        let run = |addr, len, off, src| Run {
            addr,
            len,
            off,
            src,
        };
        assert_eq!(
            p.runs,
            vec![
                run(0x1000, 0x1000, 0, 0),
                run(0x2000, 0x2000, 0x1000, 1),
                run(0x8000, 0x1000, 0x1000, 0)
            ]
        );
        // a page the parent does not have is refused, naming the pagemap
        let missing = [entry(0x4000, 1, PE_PARENT)];
        let e = Pages::load(&d2, 7, 1, &missing).unwrap_err().to_string();
        assert!(e.contains("pagemap-7.img") && e.contains("lack"), "{e}");
        // and so is a parent link to nothing
        let _ = std::fs::remove_dir_all(&d1);
        let e = Pages::load(&d2, 7, 1, &newer).unwrap_err().to_string();
        assert!(e.contains("parent"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
