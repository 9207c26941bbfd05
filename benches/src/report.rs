//! Numbers and how they are printed: throughput, best and median, the
//! filesystem under the images directory.

use std::fs;
use std::path::Path;

use crate::Timed;

/// One run's measurements: dump and restore (seconds, peak RSS), the
/// copy ceiling in GB/s.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub dump: Timed,
    pub restore: Timed,
    pub ceiling_gbs: f64,
}

/// KiB as MiB.
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The median of `xs` (not empty).
fn median(xs: &[f64]) -> f64 {
    best_median(xs).1
}

/// GB/s (1 GB = 1e9 bytes) for `bytes` moved in `secs`.
pub fn gbs(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / 1e9 / secs
}

/// Best (smallest) and median of `xs`; `xs` must not be empty.
fn best_median(xs: &[f64]) -> (f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], median)
}

/// Prints one run's line of `tool`.
pub fn print_run(tool: &str, k: usize, bytes: usize, r: &Run) {
    println!(
        "{tool} run {k}: dump {:.3} s ({:.2} GB/s, peak RSS {:.1} MiB), restore {:.3} s \
         ({:.2} GB/s, peak RSS {:.1} MiB), process_vm_readv ceiling {:.2} GB/s",
        r.dump.secs,
        gbs(bytes, r.dump.secs),
        mib(r.dump.peak_kib),
        r.restore.secs,
        gbs(bytes, r.restore.secs),
        mib(r.restore.peak_kib),
        r.ceiling_gbs
    );
}

/// Prints `tool`'s summary table over all runs: best and median of each
/// column, and the largest peak RSS.
pub fn print_summary(tool: &str, (fs_type, dir): (&str, &Path), mib_n: usize, runs: &[Run]) {
    if runs.is_empty() {
        return;
    }
    let bytes = mib_n << 20;
    let dump: Vec<f64> = runs.iter().map(|r| r.dump.secs).collect();
    let restore: Vec<f64> = runs.iter().map(|r| r.restore.secs).collect();
    // Best ceiling is the highest rate: sort its negation.
    let ceiling: Vec<f64> = runs.iter().map(|r| -r.ceiling_gbs).collect();
    let (d_best, d_med) = best_median(&dump);
    let (r_best, r_med) = best_median(&restore);
    let (c_best, c_med) = best_median(&ceiling);
    let d_peak = runs.iter().map(|r| r.dump.peak_kib).max().unwrap_or(0);
    let r_peak = runs.iter().map(|r| r.restore.peak_kib).max().unwrap_or(0);

    println!();
    println!(
        "{tool}: images dir {} on {fs_type}, {mib_n} MiB, {} runs; peak RSS of dump {:.1} MiB, \
         of restore {:.1} MiB",
        dir.display(),
        runs.len(),
        mib(d_peak),
        mib(r_peak)
    );
    println!(
        "{:<8} {:>6} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "", "MiB", "dump s", "dump GB/s", "rest s", "rest GB/s", "ceiling GB/s"
    );
    for (name, d, r, c) in [
        ("best", d_best, r_best, -c_best),
        ("median", d_med, r_med, -c_med),
    ] {
        println!(
            "{name:<8} {mib_n:>6} {d:>9.3} {:>9.2} {r:>9.3} {:>9.2} {c:>12.2}",
            gbs(bytes, d),
            gbs(bytes, r)
        );
    }
}

/// Prints crest's medians over CRIU's, run for run on the same machine
/// (below 1: crest is faster).
pub fn print_ratio(crest: &[Run], criu: &[Run]) {
    if crest.is_empty() || criu.is_empty() {
        return;
    }
    let med = |runs: &[Run], f: fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    println!();
    println!(
        "crest / criu (medians): dump {:.2}, restore {:.2}; peak RSS of dump {:.2}, of \
         restore {:.2}",
        med(crest, |r| r.dump.secs) / med(criu, |r| r.dump.secs),
        med(crest, |r| r.restore.secs) / med(criu, |r| r.restore.secs),
        med(crest, |r| r.dump.peak_kib as f64) / med(criu, |r| r.dump.peak_kib as f64).max(1.0),
        med(crest, |r| r.restore.peak_kib as f64)
            / med(criu, |r| r.restore.peak_kib as f64).max(1.0)
    );
}

/// One run of a scale mode: `n` tasks or threads.
#[derive(Clone, Copy, Debug)]
pub struct ScaleRun {
    pub n: usize,
    /// Seconds from starting the holder to its ready file.
    pub up_s: f64,
    pub dump: Timed,
    pub restore: Timed,
}

/// Prints one scale run's line of `tool`; `unit` is "task" or "thread".
pub fn print_scale_run(tool: &str, k: usize, unit: &str, r: &ScaleRun) {
    let n = r.n as f64;
    println!(
        "{tool} n={} run {k}: dump {:.3} s ({:.3} ms/{unit}, peak RSS {:.1} MiB), restore {:.3} \
         s ({:.3} ms/{unit}, peak RSS {:.1} MiB), holder up in {:.3} s",
        r.n,
        r.dump.secs,
        r.dump.secs * 1e3 / n,
        mib(r.dump.peak_kib),
        r.restore.secs,
        r.restore.secs * 1e3 / n,
        mib(r.restore.peak_kib),
        r.up_s
    );
}

/// Prints the summary of a scale mode: for each N, best and median of dump
/// and restore seconds, milliseconds per task (or thread) and tasks per
/// second of each median, the largest peak RSS of each; the "x" pair
/// compares each N's median per-unit cost with the first N's, so 1.0 means
/// linear.
pub fn print_scale_summary(title: &str, unit: &str, sizes: &[(usize, Vec<ScaleRun>)]) {
    println!();
    println!("{title}");
    println!(
        "{:>6} {:>4} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>7} {:>7}",
        "N",
        "runs",
        "dump best",
        "dump med",
        format!("ms/{unit}"),
        format!("{unit}s/s"),
        "rest best",
        "rest med",
        format!("ms/{unit}"),
        format!("{unit}s/s"),
        "dump MiB",
        "rest MiB",
        "dump x",
        "rest x"
    );
    let mut base: Option<(f64, f64)> = None;
    for (n, runs) in sizes {
        if runs.is_empty() {
            continue;
        }
        let dump: Vec<f64> = runs.iter().map(|r| r.dump.secs).collect();
        let restore: Vec<f64> = runs.iter().map(|r| r.restore.secs).collect();
        let (d_best, d_med) = best_median(&dump);
        let (r_best, r_med) = best_median(&restore);
        let nf = *n as f64;
        let (d_per, r_per) = (d_med * 1e3 / nf, r_med * 1e3 / nf);
        let (bd, br) = *base.get_or_insert((d_per, r_per));
        let d_peak = runs.iter().map(|r| r.dump.peak_kib).max().unwrap_or(0);
        let r_peak = runs.iter().map(|r| r.restore.peak_kib).max().unwrap_or(0);
        println!(
            "{n:>6} {:>4} {d_best:>9.3} {d_med:>9.3} {d_per:>9.3} {:>8.0} {r_best:>9.3} \
             {r_med:>9.3} {r_per:>9.3} {:>8.0} {:>9.1} {:>9.1} {:>7.2} {:>7.2}",
            runs.len(),
            nf / d_med,
            nf / r_med,
            mib(d_peak),
            mib(r_peak),
            d_per / bd,
            r_per / br
        );
    }
}

/// Prints, for each N, crest's median seconds over CRIU's (below 1: crest
/// is faster).
pub fn print_scale_ratio(
    unit: &str,
    crest: &[(usize, Vec<ScaleRun>)],
    criu: &[(usize, Vec<ScaleRun>)],
) {
    println!();
    println!("crest / criu (medians), per N {unit}s:");
    for ((n, a), (_, b)) in crest.iter().zip(criu) {
        if a.is_empty() || b.is_empty() {
            continue;
        }
        let med = |runs: &[ScaleRun], f: fn(&ScaleRun) -> f64| {
            median(&runs.iter().map(f).collect::<Vec<_>>())
        };
        println!(
            "{n:>6}: dump {:.2}, restore {:.2}",
            med(a, |r| r.dump.secs) / med(b, |r| r.dump.secs),
            med(a, |r| r.restore.secs) / med(b, |r| r.restore.secs)
        );
    }
}

/// The type of the filesystem holding `dir` (e.g. `tmpfs`, `ext4`), from the
/// longest mount point in /proc/mounts that contains it.
pub fn fs_type(dir: &Path) -> String {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Ok(mounts) = fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(_src), Some(mnt), Some(kind)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let mnt = unescape(mnt);
        if !dir.starts_with(&mnt) {
            continue;
        }
        // Later lines over the same point shadow earlier ones, hence `>=`.
        let longer = match &best {
            Some((len, _)) => mnt.len() >= *len,
            None => true,
        };
        if longer {
            best = Some((mnt.len(), kind.to_string()));
        }
    }
    best.map_or_else(|| "unknown".into(), |(_, kind)| kind)
}

/// Undoes the octal escapes (`\040` for a space) of /proc/mounts.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(best_median(&[3.0, 1.0, 2.0]), (1.0, 2.0));
        assert_eq!(best_median(&[4.0, 1.0, 2.0, 3.0]), (1.0, 2.5));
    }

    #[test]
    fn gbs_uses_decimal_gigabytes() {
        assert!((gbs(1 << 30, 1.0) - 1.073_741_824).abs() < 1e-12);
    }

    #[test]
    fn mount_escapes() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
