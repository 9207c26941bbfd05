//! The holder: a process that owns N MiB of present, patterned memory and
//! sleeps, so crest has something big to dump; and the bench's side of it —
//! start it, read its ready file, check its memory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Bytes in one MiB.
pub const MIB: usize = 1 << 20;

/// How long the holder may take to fill its memory and say ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Mixed into every word so a zero page or a stale page never passes.
const SALT: u64 = 0xc4e5_7b3e_0dd5_a11e;

/// The value the holder stores in word `i` of its buffer.
pub fn word(i: usize) -> u64 {
    (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ SALT
}

/// `crest-bench hold MIB READY BENCH`: fill the buffer, write the ready
/// file, sleep until killed. Runs in the re-executed child; returns only
/// once the bench (pid `bench`) is gone, so a killed bench leaves no holder.
///
/// No parent-death signal for that: crest restores it, and the restored
/// holder's parent at restore is `crest restore`, which exits at once.
pub fn hold(mib: usize, ready: &Path, bench: u32) -> Result<()> {
    let buf = fill_and_announce(mib, ready)?;

    let bench = PathBuf::from(format!("/proc/{bench}"));
    while bench.exists() {
        thread::sleep(Duration::from_secs(1));
    }
    // Keep the buffer alive (and observably used) for the whole sleep.
    std::hint::black_box(&buf);
    Ok(())
}

/// The holder's start: a session of its own, no inherited fds, `mib` MiB
/// filled with the pattern (every page present), the ready file written
/// ("PID ADDR WORDS"). Returns the buffer.
pub fn fill_and_announce(mib: usize, ready: &Path) -> Result<Vec<u64>> {
    rustix::process::setsid().context("setsid")?;
    crest_sys::proc::close_from(3).context("close_range")?;
    let words = mib * MIB / 8;
    let mut buf: Vec<u64> = vec![0; words];
    // Writing every word faults in every page, so all of them are present.
    for (i, w) in buf.iter_mut().enumerate() {
        *w = word(i);
    }
    let tmp = ready.with_extension("tmp");
    let line = format!(
        "{} {:#x} {}\n",
        std::process::id(),
        buf.as_ptr() as usize,
        words
    );
    fs::write(&tmp, line).with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, ready).with_context(|| format!("rename to {}", ready.display()))?;
    Ok(buf)
}

/// A started holder, as its ready file describes it.
pub struct Holder {
    pub child: Child,
    pub pid: i32,
    /// Address of the buffer in the holder.
    pub addr: u64,
    /// Length of the buffer in bytes.
    pub len: usize,
}

/// Re-executes this binary as a holder of `mib` MiB and waits for it to say
/// ready in `ready`.
pub fn start(mib: usize, ready: PathBuf) -> Result<Holder> {
    let exe = std::env::current_exe().context("current_exe")?;
    let _ = fs::remove_file(&ready);
    let mut child = Command::new(&exe)
        .arg("hold")
        .arg(mib.to_string())
        .arg(&ready)
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawn holder {}", exe.display()))?;
    match wait_ready(&mut child, &ready) {
        Ok((pid, addr, len)) => {
            let _ = fs::remove_file(&ready);
            Ok(Holder {
                child,
                pid,
                addr,
                len,
            })
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

fn wait_ready(child: &mut Child, ready: &Path) -> Result<(i32, u64, usize)> {
    let text = wait_ready_text(child, ready)?;
    parse_ready(&text).with_context(|| format!("ready file {}", ready.display()))
}

/// Waits for `child` to write its ready file `ready` (atomically, by a
/// rename) and returns its text; fails if the child exits first.
pub fn wait_ready_text(child: &mut Child, ready: &Path) -> Result<String> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("wait for holder")? {
            bail!("holder exited before it was ready: {status}");
        }
        if let Ok(text) = fs::read_to_string(ready) {
            return Ok(text);
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!("holder not ready after {READY_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn parse_ready(text: &str) -> Result<(i32, u64, usize)> {
    let mut it = text.split_whitespace();
    let (Some(pid), Some(addr), Some(words), None) = (it.next(), it.next(), it.next(), it.next())
    else {
        bail!("want \"PID ADDR WORDS\", got {text:?}");
    };
    let pid: i32 = pid.parse().context("pid")?;
    let addr = u64::from_str_radix(addr.trim_start_matches("0x"), 16).context("address")?;
    let words: usize = words.parse().context("words")?;
    Ok((pid, addr, words * 8))
}

/// Bytes read per sample.
const SAMPLE_LEN: usize = 4096;
/// Samples spread evenly over the buffer (plus one at its very end).
const SAMPLES: usize = 256;

/// Reads a sample of the buffer of `pid` at `addr` (`SAMPLES` blocks of 4 KiB
/// spread evenly, the first and the last included) and checks the pattern.
pub fn verify_sample(pid: i32, addr: u64, len: usize) -> Result<()> {
    let block = SAMPLE_LEN.min(len);
    let last = len - block;
    let mut offsets: Vec<usize> = (0..SAMPLES).map(|k| (last / SAMPLES * k) & !7).collect();
    offsets.push(last & !7);
    let ranges: Vec<(u64, usize)> = offsets.iter().map(|&o| (addr + o as u64, block)).collect();
    let mut local = vec![0u8; ranges.len() * block];
    let got = crest_sys::mem::read_remote(pid, &ranges, &mut local)
        .with_context(|| format!("process_vm_readv pid {pid}"))?;
    if got != local.len() {
        bail!(
            "pid {pid}: short read of the sample: {got} of {} bytes",
            local.len()
        );
    }
    for (k, &off) in offsets.iter().enumerate() {
        check(pid, &local[k * block..(k + 1) * block], off)?;
    }
    Ok(())
}

/// The holder's ready file `ready`, read: its pid, the buffer's address
/// and length.
pub fn parse_ready_file(ready: &Path) -> Result<(i32, u64, usize)> {
    let text = fs::read_to_string(ready).with_context(|| format!("read {}", ready.display()))?;
    parse_ready(&text).with_context(|| format!("ready file {}", ready.display()))
}

/// Checks every word of the buffer at `addr` from byte `from` (a multiple
/// of 8) to byte `len`, reading `chunk` bytes at a time.
pub fn verify_from(pid: i32, addr: u64, (from, len): (usize, usize), chunk: usize) -> Result<()> {
    let mut local = vec![0u8; chunk.min(len.saturating_sub(from))];
    let mut off = from;
    while off < len {
        let n = chunk.min(len - off);
        let got = crest_sys::mem::read_remote(pid, &[(addr + off as u64, n)], &mut local[..n])
            .with_context(|| format!("process_vm_readv pid {pid}"))?;
        if got != n {
            bail!("pid {pid}: short read at offset {off:#x}: {got} of {n} bytes");
        }
        check(pid, &local[..n], off)?;
        off += n;
    }
    Ok(())
}

/// Reads the whole buffer in `chunk`-sized pieces and checks every word.
pub fn verify_full(pid: i32, addr: u64, len: usize, chunk: usize) -> Result<()> {
    verify_from(pid, addr, (0, len), chunk)
}

/// Checks that `bytes`, read from buffer offset `off` (a multiple of 8), hold
/// the pattern.
fn check(pid: i32, bytes: &[u8], off: usize) -> Result<()> {
    for (j, w) in bytes.chunks_exact(8).enumerate() {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(w);
        let got = u64::from_ne_bytes(raw);
        let i = off / 8 + j;
        if got != word(i) {
            bail!(
                "pid {pid}: memory differs at buffer offset {:#x}: {got:#018x}, want {:#018x}",
                i * 8,
                word(i)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_round_trips() {
        assert_eq!(
            parse_ready("42 0x7f0000001000 16\n").unwrap(),
            (42, 0x7f00_0000_1000, 128)
        );
        assert!(parse_ready("42 0x10").is_err());
        assert!(parse_ready("42 0x10 1 extra").is_err());
    }

    #[test]
    fn check_catches_a_changed_word() {
        let mut bytes: Vec<u8> = (4..12).flat_map(|i| word(i).to_ne_bytes()).collect();
        assert!(check(1, &bytes, 32).is_ok());
        bytes[17] ^= 1;
        assert!(check(1, &bytes, 32).is_err());
    }
}
