//! Copying present pages out of a stopped task into `pages-<id>.img`:
//! `process_vm_readv` in large batches, each batch written at its place in
//! the file, on as many threads as there are CPUs (up to four), so reading
//! and writing overlap and the page-cache writes, the slow part, run in
//! parallel.

use crate::error::{DumpCtx, DumpError};
use crest_images::RawWriter;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A run of consecutive pages to copy.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub addr: u64,
    pub pages: u64,
    pub readable: bool,
}

/// Bytes per batch.
const BATCH: usize = 16 << 20;

/// A piece of a batch: (remote addr, len, readable).
type Piece = (u64, usize, bool);

/// Copies the runs, in order, into `out`; returns the bytes written.
pub fn copy(pid: i32, runs: &[Run], out: &mut RawWriter) -> Result<u64, DumpError> {
    let batches = plan(runs);
    let total: u64 = runs.iter().map(|r| r.pages * super::PAGE).sum();
    let mut offsets = Vec::with_capacity(batches.len());
    let mut off = out.offset();
    for b in &batches {
        offsets.push(off);
        off += b.iter().map(|p| p.1 as u64).sum::<u64>();
    }
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4)
        .min(batches.len().max(1));
    let next = AtomicUsize::new(0);
    let first_err: Mutex<Option<DumpError>> = Mutex::new(None);
    let out_ref: &RawWriter = out;
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let mut buf: Vec<u8> = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= batches.len() {
                        return;
                    }
                    let res = copy_batch(pid, &batches[i], offsets[i], &mut buf, out_ref);
                    crate::progress::pages(batches[i].iter().map(|p| p.1 as u64).sum());
                    if let Err(e) = res {
                        if let Ok(mut slot) = first_err.lock() {
                            slot.get_or_insert(e);
                        }
                        next.store(batches.len(), Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().ok().flatten() {
        return Err(e);
    }
    Ok(total)
}

fn copy_batch(
    pid: i32,
    batch: &[Piece],
    offset: u64,
    buf: &mut Vec<u8>,
    out: &RawWriter,
) -> Result<(), DumpError> {
    let len: usize = batch.iter().map(|p| p.1).sum();
    buf.resize(len, 0);
    read_batch(pid, batch, buf)?;
    out.write_at(offset, buf)?;
    Ok(())
}

/// Splits runs into batches of at most `BATCH` bytes.
fn plan(runs: &[Run]) -> Vec<Vec<Piece>> {
    let mut batches = Vec::new();
    let mut cur: Vec<Piece> = Vec::new();
    let mut cur_len = 0usize;
    for r in runs {
        let mut addr = r.addr;
        let mut left = (r.pages * super::PAGE) as usize;
        while left > 0 {
            let take = left.min(BATCH - cur_len);
            cur.push((addr, take, r.readable));
            cur_len += take;
            addr += take as u64;
            left -= take;
            if cur_len == BATCH {
                batches.push(std::mem::take(&mut cur));
                cur_len = 0;
            }
        }
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches
}

/// Reads `buf.len()` bytes of run `r` from byte `at` of it.
pub fn read_part(pid: i32, r: &Run, at: u64, buf: &mut [u8]) -> Result<(), DumpError> {
    read_batch(pid, &[(r.addr + at, buf.len(), r.readable)], buf)
}

fn read_batch(pid: i32, batch: &[Piece], buf: &mut [u8]) -> Result<(), DumpError> {
    let mut off = 0usize;
    let mut i = 0;
    while i < batch.len() {
        // Group consecutive readable pieces into one process_vm_readv.
        let mut j = i;
        let mut len = 0usize;
        while j < batch.len() && batch[j].2 {
            len += batch[j].1;
            j += 1;
        }
        if j > i {
            let ranges: Vec<(u64, usize)> = batch[i..j].iter().map(|p| (p.0, p.1)).collect();
            let n = crest_sys::mem::read_remote(pid, &ranges, &mut buf[off..off + len])
                .at(pid, "process_vm_readv of pages")?;
            if n != len {
                return Err(DumpError::Io {
                    pid,
                    step: "process_vm_readv of pages (short read)",
                    source: std::io::Error::from_raw_os_error(libc::EFAULT),
                });
            }
            off += len;
            i = j;
            continue;
        }
        let (addr, plen, _) = batch[i];
        read_forced(pid, addr, &mut buf[off..off + plen])
            .at(pid, "read pages through /proc/PID/mem")?;
        off += plen;
        i += 1;
    }
    Ok(())
}

/// Reads pages that `process_vm_readv` cannot (no read permission) or
/// must not (shared copy-on-write) through `/proc/PID/mem`, which may read
/// them by force and does not pin them.
fn read_forced(pid: i32, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    mem.read_exact_at(buf, addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_splits_runs_into_bounded_batches() {
        let runs = [
            Run {
                addr: 0x1000,
                pages: (BATCH as u64 / 4096) + 3,
                readable: true,
            },
            Run {
                addr: 0x9000_0000,
                pages: 2,
                readable: false,
            },
        ];
        let b = plan(&runs);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].iter().map(|p| p.1).sum::<usize>(), BATCH);
        assert_eq!(
            b[1],
            vec![
                (0x1000 + BATCH as u64, 3 * 4096, true),
                (0x9000_0000, 8192, false)
            ]
        );
    }
}
