//! crest-images: CRIU's image format, byte-compatible with CRIU.
//!
//! - [`pb`]: the protobuf messages, with CRIU's field numbers (package `criu`
//!   at the top of [`pb`], crest's own messages in [`pb::crest`]).
//! - [`magic`]: every file magic; [`names`]: file names and [`ImageKind`].
//! - [`ImageWriter`] / [`ImageReader`]: CRIU's framing, read defensively
//!   (magics checked, every length bounded before allocating).
//! - [`carry`]: crest's additions inside CRIU's messages, and the reader of
//!   the older crest-only files.
//! - [`decode_file`] / [`recode_matches`]: decode any known image, for
//!   `crest show` and round-trip tests.
//!
//! No syscalls beyond file I/O, and `forbid(unsafe_code)`.
#![forbid(unsafe_code)]

pub mod carry;
mod decode;
mod error;
mod framing;
pub mod magic;
pub mod manifest;
pub mod names;

pub use decode::{decode_file, recode_matches, AnyEntry, DecodedImage};
pub use error::ImageError;
pub use framing::{
    create_raw, read_image, read_one, write_image, ImageReader, ImageWriter, RawWriter,
};
pub use names::{kind_of, ImageKind};

/// Generated message types: CRIU's (package `criu`) at this level,
/// e.g. `pb::PstreeEntry`; crest's own (package `crest`) in [`pb::crest`].
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    /// CRIU's messages (package `criu`), re-exported at [`pb`]'s level.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod criu {
        include!(concat!(env!("OUT_DIR"), "/criu.rs"));
    }
    pub use criu::*;

    /// CRIU's RPC (`criu swrk`): requests, answers, notifications.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/rpc.rs"));
    }

    /// crest's own messages, stored in files with crest magics.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod crest {
        include!(concat!(env!("OUT_DIR"), "/crest.rs"));
    }
}

impl pb::crest::CrestTimes {
    /// The access and modification times of a file.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        pb::crest::CrestTimes {
            atime_sec: meta.atime(),
            atime_nsec: meta.atime_nsec() as u32,
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec() as u32,
        }
    }
}

impl pb::PagemapEntry {
    /// How many pages the entry covers (CRIU's old images have the count
    /// in `compat_nr_pages`).
    pub fn pages(&self) -> u64 {
        self.nr_pages.unwrap_or(u64::from(self.compat_nr_pages))
    }
}

/// Largest entry (or raw payload) this crate reads or writes: 32 MiB.
pub const MAX_ENTRY: u64 = 32 << 20;

/// Most bytes crest keeps of one socket queue: a queue is one payload.
pub const MAX_QUEUE: usize = MAX_ENTRY as usize;

/// `inventory_entry.img_version` CRIU writes today.
pub const INVENTORY_IMG_VERSION: u32 = 2;

/// `pagemap_entry.flags`: the pages are in the parent image.
pub const PE_PARENT: u32 = 1 << 0;
/// `pagemap_entry.flags`: the pages are served lazily.
pub const PE_LAZY: u32 = 1 << 1;
/// `pagemap_entry.flags`: the pages are in this image's pages file.
pub const PE_PRESENT: u32 = 1 << 2;

#[cfg(test)]
mod carry_tests;
#[cfg(test)]
mod tests;
