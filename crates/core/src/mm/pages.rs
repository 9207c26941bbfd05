//! Copying present pages out of a stopped task into `pages-<id>.img`:
//! `process_vm_readv` in large batches on one thread, file writes on
//! another, so reading and writing overlap.

use crate::error::{DumpCtx, DumpError};
use crest_images::RawWriter;
use std::sync::mpsc;

/// A run of consecutive pages to copy.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub addr: u64,
    pub pages: u64,
    pub readable: bool,
}

/// Bytes per batch handed from the reader to the writer.
const BATCH: usize = 32 << 20;

/// Copies the runs, in order, into `out`; returns the bytes written.
pub fn copy(pid: i32, runs: &[Run], out: &mut RawWriter) -> Result<u64, DumpError> {
    let batches = plan(runs);
    let total: u64 = runs.iter().map(|r| r.pages * super::PAGE).sum();
    let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(2);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..3 {
        let _ = empty_tx.send(Vec::new());
    }
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> Result<(), DumpError> {
            for batch in &batches {
                let mut buf = empty_rx.recv().unwrap_or_default();
                let len: usize = batch.iter().map(|r| r.1).sum();
                buf.resize(len, 0);
                read_batch(pid, batch, &mut buf)?;
                if full_tx.send(buf).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let mut write_err = None;
        for buf in full_rx.iter() {
            if write_err.is_none() {
                if let Err(e) = out.write_all(&buf) {
                    write_err = Some(e);
                }
            }
            let _ = empty_tx.send(buf);
        }
        let read_res = reader.join().unwrap_or_else(|_| {
            Err(DumpError::Unsupported {
                pid,
                what: "page reader thread panicked".into(),
            })
        });
        read_res?;
        if let Some(e) = write_err {
            return Err(DumpError::Image(e));
        }
        Ok(total)
    })
}

/// Splits runs into batches of at most `BATCH` bytes; each element is
/// (addr, len, readable).
fn plan(runs: &[Run]) -> Vec<Vec<(u64, usize, bool)>> {
    let mut batches = Vec::new();
    let mut cur: Vec<(u64, usize, bool)> = Vec::new();
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

fn read_batch(pid: i32, batch: &[(u64, usize, bool)], buf: &mut [u8]) -> Result<(), DumpError> {
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
        super::read_forced(pid, addr, &mut buf[off..off + plen])
            .at(pid, "read unreadable pages through /proc/PID/mem")?;
        off += plen;
        i += 1;
    }
    Ok(())
}
