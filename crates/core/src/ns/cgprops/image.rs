//! `cgroup.img`'s settings, written and read with bounds.

use super::*;
use crate::error::RoomError;
use crate::ns::error::NsError;

/// Writes `cgroup.img`.
pub fn write(dir: &Path, entry: &CgroupEntry) -> Result<(), DumpError> {
    crest_images::write_image(
        dir,
        names::CGROUP,
        crest_images::magic::CGROUP,
        std::slice::from_ref(entry),
    )?;
    Ok(())
}

/// Reads `cgroup.img` (none when absent).
pub fn read(dir: &Path) -> Result<Option<CgroupEntry>, RestoreError> {
    if !dir.join(names::CGROUP).exists() {
        return Ok(None);
    }
    let mut all: Vec<CgroupEntry> =
        crest_images::read_image(dir, names::CGROUP, crest_images::magic::CGROUP)?;
    let bad = |what: String| {
        NsError::BadImage {
            file: names::CGROUP.into(),
            what,
        }
        .in_tree_restore()
    };
    if all.len() > 1 {
        return Err(bad(format!("{} entries", all.len())));
    }
    let Some(entry) = all.pop() else {
        return Ok(None);
    };
    let mut count = 0;
    for c in &entry.controllers {
        for d in &c.dirs {
            check_dir(d, 0, &mut count, true).map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(Some(entry))
}

/// Bounds and names of a recorded directory tree.
pub(super) fn check_dir(
    d: &CgroupDirEntry,
    depth: usize,
    count: &mut usize,
    top: bool,
) -> Result<(), PropsError> {
    *count += 1;
    if *count > MAX_DIRS || depth > MAX_DEPTH {
        return Err(PropsError::TooMany {
            dirs: MAX_DIRS,
            depth: MAX_DEPTH,
        });
    }
    if top {
        if !d.dir_name.starts_with('/') || d.dir_name.split('/').any(|c| c == "..") {
            return Err(PropsError::Path(d.dir_name.clone()));
        }
    } else {
        check_name(&d.dir_name)?;
    }
    for p in &d.properties {
        check_name(&p.name)?;
        if p.value.len() > MAX_VALUE {
            return Err(PropsError::Value {
                len: p.value.len(),
                name: p.name.clone(),
            });
        }
    }
    for c in &d.children {
        check_dir(c, depth + 1, count, false)?;
    }
    Ok(())
}
