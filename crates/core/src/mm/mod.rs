//! The address space: VMAs from `/proc/PID/maps` and `smaps`, present pages
//! from `/proc/PID/pagemap`, mm fields from `stat`, `auxv` and `exe`.
//!
//! Dump writes `mm-<pid>.img` (CRIU's `mm_entry` with its `vma_entry`s),
//! `pagemap-<pid>.img` and the raw `pages-<id>.img`. Restore maps every VMA
//! at its address in a task that has unmapped everything it inherited, fills
//! the pages from the pages file (read by the task itself with `preadv`),
//! puts vdso/vvar where they were and sets the mm fields with
//! `PR_SET_MM_MAP`.

//!
//! The room: `dump` (reading an address space), `image` (its images
//! written and read), `restore` (mapping and filling it again), `cow`
//! (pages shared copy-on-write between parent and child), `numa` (range
//! policies), `pages` (reading pages without unsharing them), `track`
//! (which pages a task wrote since the last dump) and `keeper` (the
//! process that holds that tracking between dumps).

pub mod cow;
pub mod dump;
pub mod error;
pub mod image;
pub mod keeper;
pub mod lazy;
pub mod numa;
mod pages;
pub mod restore;
pub mod server;
pub mod track;

pub const PAGE: u64 = 4096;

/// CRIU's `vma_entry.status` bits.
pub mod status {

    pub const REGULAR: u32 = 1 << 0;
    pub const STACK: u32 = 1 << 1;
    pub const VSYSCALL: u32 = 1 << 2;
    pub const VDSO: u32 = 1 << 3;
    pub const HEAP: u32 = 1 << 5;
    pub const FILE_PRIVATE: u32 = 1 << 6;
    pub const FILE_SHARED: u32 = 1 << 7;
    pub const ANON_SHARED: u32 = 1 << 8;
    pub const ANON_PRIVATE: u32 = 1 << 9;
    pub const SYSVIPC: u32 = 1 << 10;
    pub const VVAR: u32 = 1 << 12;
    pub const MEMFD: u32 = 1 << 14;
}

/// `vma_entry.madv` bit crest uses for a VMA locked on fault
/// (`mlock2(MLOCK_ONFAULT)`, smaps `lf`); the advice numbers stay far
/// below it.
pub const MADV_BIT_LOCKONFAULT: u32 = 63;

/// The kernel's default `coredump_filter` (anonymous and ELF headers).
pub const DEFAULT_COREDUMP_FILTER: u32 = 0x33;

/// `prctl` that sets memory-deny-write-execute.
pub const PR_SET_MDWE: u64 = 65;

/// `prctl` that turns transparent huge pages off for the whole process.
pub const PR_SET_THP_DISABLE: u64 = 41;

/// The registration commands, each answered again at restore.
pub const MEMBARRIER_REGISTER: [u32; 4] = [1 << 2, 1 << 4, 1 << 6, 1 << 8];
