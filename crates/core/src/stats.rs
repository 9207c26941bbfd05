//! `stats-dump` and `stats-restore`: what an action took, in CRIU's
//! `stats_entry`, written to the work directory (podman's `--print-stats`
//! and checkpointctl read them) and printed with `--display-stats`.

use crest_images::pb::{DumpStatsEntry, RestoreStatsEntry, StatsEntry};
use crest_images::{magic, names, ImageError};
use std::path::Path;
use std::time::Duration;

/// The times and counts of one dump.
/// What a dump did: the tasks, the bytes of pages, and what it took.
#[derive(Debug, Clone, Default)]
pub struct DumpSummary {
    pub pids: Vec<i32>,
    pub pages_bytes: u64,
    /// What it took (also in `stats-dump` in the work directory).
    pub stats: DumpStats,
}

#[derive(Debug, Clone, Default)]
pub struct DumpStats {
    /// Seizing the tree.
    pub freezing: Duration,
    /// From the tree stopped to its release.
    pub frozen: Duration,
    /// Collecting and writing everything (crest reads and writes memory in
    /// one pass: CRIU's memdump time holds both, memwrite is 0).
    pub memdump: Duration,
    pub pages_scanned: u64,
    /// Pages the parent images hold and the tasks had not written since
    /// (marked as the parent's, not written).
    pub pages_skipped_parent: u64,
    pub pages_written: u64,
    /// Pages of shared memory (shared anonymous mappings, SysV segments,
    /// memfds) written beside the tasks' own.
    pub shpages_written: u64,
}

/// The times and counts of one restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreStats {
    /// Forking the tree.
    pub forking: Duration,
    /// The whole restore.
    pub restore: Duration,
    /// Not counted yet (the field is optional in CRIU's message).
    pub pages_restored: Option<u64>,
    /// `--lazy-pages`: bytes of pages left to the lazy-pages daemon.
    pub lazy_bytes: Option<u64>,
}

fn us(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// The pages of every `pages-*.img` of an images directory (what CRIU's
/// suite compares with the page counts of `stats-dump`).
pub fn pages_in(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len() / 4096)
        .sum()
}

impl DumpStats {
    pub fn entry(&self) -> DumpStatsEntry {
        DumpStatsEntry {
            freezing_time: us(self.freezing),
            frozen_time: us(self.frozen),
            memdump_time: us(self.memdump),
            memwrite_time: 0,
            pages_scanned: self.pages_scanned,
            pages_skipped_parent: self.pages_skipped_parent,
            pages_written: self.pages_written,
            irmap_resolve: Some(0),
            pages_lazy: 0,
            shpages_written: Some(self.shpages_written),
            ..DumpStatsEntry::default()
        }
    }

    /// Writes `stats-dump` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), ImageError> {
        let e = StatsEntry {
            dump: Some(self.entry()),
            restore: None,
        };
        crest_images::write_image(dir, names::STATS_DUMP, magic::STATS, &[e])
    }

    /// CRIU's `--display-stats` text.
    pub fn render(&self) -> String {
        let e = self.entry();
        format!(
            "Displaying dump stats:\nFreezing time: {} us\nFrozen time: {} us\nMemory dump time: {} us\nMemory write time: {} us\nIRMAP resolve time: 0 us\nMemory pages scanned: {} (0x{:x})\nMemory pages skipped from parent: {} (0x{:x})\nMemory pages written: {} (0x{:x})\nLazy memory pages: 0 (0x0)\n",
            e.freezing_time,
            e.frozen_time,
            e.memdump_time,
            e.memwrite_time,
            e.pages_scanned,
            e.pages_scanned,
            e.pages_skipped_parent,
            e.pages_skipped_parent,
            e.pages_written,
            e.pages_written
        )
    }
}

impl RestoreStats {
    pub fn entry(&self) -> RestoreStatsEntry {
        RestoreStatsEntry {
            pages_compared: 0,
            pages_skipped_cow: 0,
            forking_time: us(self.forking),
            restore_time: us(self.restore),
            pages_restored: self.pages_restored,
        }
    }

    /// Writes `stats-restore` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), ImageError> {
        let e = StatsEntry {
            dump: None,
            restore: Some(self.entry()),
        };
        crest_images::write_image(dir, names::STATS_RESTORE, magic::STATS, &[e])
    }

    /// CRIU's `--display-stats` text.
    pub fn render(&self) -> String {
        let e = self.entry();
        let mut s = format!(
            "Displaying restore stats:\nPages compared: 0 (0x0)\nPages skipped COW: 0 (0x0)\nRestore time: {} us\nForking time: {} us\n",
            e.restore_time, e.forking_time
        );
        if let Some(b) = self.lazy_bytes {
            // (with --lazy-pages the restore time is the time to resume)
            s.push_str(&format!("Lazy pages: {} (0x{:x})\n", b / 4096, b / 4096));
        }
        s
    }
}
