//! `crest demo`: the main job of a fresh checkout. Starts a counter that
//! holds patterned memory, checkpoints it (which kills it), restores it
//! from the images and shows it counting on from where it stopped.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The counter workload (`crest demo-counter`): prints a number every
/// 100 ms and checks that its 32 MiB of patterned memory is intact.
pub fn counter() -> Result<i32> {
    let _ = rustix::process::setsid();
    let _ = crest_sys::proc::close_from(3);
    let mut mem: Vec<u64> = (0..(32u64 << 20) / 8)
        .map(|i| i.wrapping_mul(0x9e37_79b9))
        .collect();
    let mut n: u64 = 0;
    let out = std::io::stdout();
    loop {
        let idx = (n as usize * 4099) % mem.len();
        mem[idx] = (idx as u64).wrapping_mul(0x9e37_79b9);
        let ok = mem
            .iter()
            .step_by(4096)
            .enumerate()
            .all(|(i, v)| *v == (i as u64 * 4096).wrapping_mul(0x9e37_79b9));
        let mut o = out.lock();
        writeln!(o, "count {n} memory {}", if ok { "ok" } else { "CORRUPT" })?;
        o.flush()?;
        drop(o);
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

fn last_count(path: &Path) -> Option<u64> {
    tail(path, 1)
        .first()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn run(images_dir: Option<PathBuf>) -> Result<i32> {
    let dir = images_dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("crest-demo-{}", std::process::id())));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let log = dir.join("counter.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("open {}", log.display()))?;
    let exe = std::env::current_exe().context("find the crest binary")?;
    let mut child = Command::new(&exe)
        .arg("demo-counter")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("start the counter")?;
    let pid = child.id() as i32;
    println!("started counter, pid {pid}, printing to {}", log.display());
    std::thread::sleep(Duration::from_millis(1500));
    for l in tail(&log, 3) {
        println!("  | {l}");
    }

    let images = dir.join("images");
    let t = Instant::now();
    let s = crest_core::dump(&crest_core::Options {
        pid,
        dir: images.clone(),
        ..Default::default()
    })?;
    println!(
        "dumped pid {pid} to {} in {:.3} s ({} MiB of memory); the counter is killed",
        images.display(),
        t.elapsed().as_secs_f64(),
        s.pages_bytes >> 20
    );
    let _ = child.wait();
    let before = last_count(&log).context("the counter printed nothing")?;
    println!("last count before the checkpoint: {before}");
    std::thread::sleep(Duration::from_millis(500));
    if last_count(&log) != Some(before) {
        bail!("the counter kept running after the dump");
    }

    let t = Instant::now();
    let r = crest_core::restore(&crest_core::Options {
        dir: images,
        detached: true,
        ..Default::default()
    })?;
    println!(
        "restored pid {} in {:.3} s",
        r.root_pid,
        t.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let lines = tail(&log, 5);
    for l in &lines {
        println!("  | {l}");
    }
    let after = last_count(&log).unwrap_or(0);
    let _ = crest_sys::misc::kill(r.root_pid, libc_sigterm());
    let _ = r.wait();
    let text = std::fs::read_to_string(&log)?;
    let next = format!("count {} memory ok", before + 1);
    if after > before && text.contains(&next) && !text.contains("CORRUPT") {
        println!("the counter went on from {before} to {after} with its memory intact: demo OK");
        Ok(0)
    } else {
        bail!("the restored counter did not go on (last count {after}, before {before})")
    }
}

fn libc_sigterm() -> i32 {
    15
}
