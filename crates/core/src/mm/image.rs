//! A task's memory images: `mm-<pid>.img` (CRIU's `mm_entry` with its
//! `vma_entry`s) and `pagemap-<pid>.img` (a head naming the pages file,
//! then one entry per run of pages), written at dump and read, bounded, at
//! restore. The pages themselves are in `pages-<id>.img`.

use crate::error::RestoreError;
use crate::error::RoomError;
use crate::mm::error::MmError;
use crest_images::pb::{MmEntry, PagemapEntry, PagemapHead};
use crest_images::{magic, names, ImageError, ImageReader, ImageWriter};
use std::path::Path;

/// Most pagemap entries accepted from an image.
pub const MAX_PAGEMAP_ENTRIES: usize = 1 << 24;

/// The memory images of one task.
pub struct MmImages {
    pub mm: MmEntry,
    pub pagemap: Vec<PagemapEntry>,
    /// The id of its pages file.
    pub pages_id: u32,
}

/// Writes the memory images of task `pid`, whose pages are in the pages
/// file `pages_id`; without `pagemap`, `mm-<pid>.img` alone (its pages
/// went to a page server, which writes the pagemap).
pub fn write(
    dir: &Path,
    pid: u32,
    pages_id: u32,
    mm: &MmEntry,
    pagemap: Option<&[PagemapEntry]>,
) -> Result<(), ImageError> {
    crest_images::write_image(dir, &names::mm(pid), magic::MM, std::slice::from_ref(mm))?;
    match pagemap {
        Some(p) => write_pagemap(dir, pid, pages_id, p),
        None => Ok(()),
    }
}

/// Reads the memory images of task `pid`.
pub fn read(dir: &Path, pid: u32) -> Result<MmImages, RestoreError> {
    let mm: MmEntry = crest_images::read_one(dir, &names::mm(pid), magic::MM)?;
    let (pages_id, pagemap) = read_pagemap(dir, pid)?;
    Ok(MmImages {
        mm,
        pagemap,
        pages_id,
    })
}

/// Reads `pagemap-<pid>.img`: the id of its pages file and its entries.
pub fn read_pagemap(dir: &Path, pid: u32) -> Result<(u32, Vec<PagemapEntry>), RestoreError> {
    let mut r = ImageReader::open(dir, &names::pagemap(pid), magic::PAGEMAP)?;
    let bad = |what: String| {
        MmError::BadImage {
            file: names::pagemap(pid),
            what,
        }
        .in_restore(pid as i32)
    };
    let head: PagemapHead = r
        .next_entry()?
        .ok_or_else(|| bad("no pagemap head".into()))?;
    let mut pagemap = Vec::new();
    while let Some(e) = r.next_entry::<PagemapEntry>()? {
        if pagemap.len() >= MAX_PAGEMAP_ENTRIES {
            return Err(bad(format!("more than {MAX_PAGEMAP_ENTRIES} entries")));
        }
        pagemap.push(e);
    }
    Ok((head.pages_id, pagemap))
}

/// Writes `pagemap-<pid>.img` alone (a pre-dump's).
pub fn write_pagemap(
    dir: &Path,
    pid: u32,
    pages_id: u32,
    pagemap: &[PagemapEntry],
) -> Result<(), ImageError> {
    let mut pm = ImageWriter::create(dir, &names::pagemap(pid), magic::PAGEMAP)?;
    pm.write_entry(&PagemapHead { pages_id })?;
    for e in pagemap {
        pm.write_entry(e)?;
    }
    pm.finish()
}
