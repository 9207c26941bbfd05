//! A mount namespace's image (`mountpoints-<id>.img`), written and read
//! with bounds.

use super::*;
use crate::error::RoomError;
use crate::ns::error::NsError;

/// Writes `mountpoints-<id>.img` (CRIU's `mnt_entry` per mount, carrying
/// crest's) and the tmpfs images.
pub fn write(dir: &Path, id: u32, ns: &MntNs) -> Result<(), DumpError> {
    let head = CrestMntNsHead {
        executor: ns.as_pid,
        count: ns.mounts.len() as u32,
        proc_pidns: ns.proc_pidns,
        base: ns.base,
    };
    crest_images::carry::write_mounts(dir, id, head, &ns.mounts)?;
    for (mnt, items) in &ns.contents {
        tmpfs::write(dir, id, *mnt, items)?;
    }
    Ok(())
}

/// Reads a mount namespace's images back (`mountpoints-<id>.img`, or an
/// older crest's `crest-mnt-<id>.img`), bounding every count and size.
pub fn read(dir: &Path, id: u32) -> Result<MntNs, RestoreError> {
    let bad = |file: &str, what: String| {
        NsError::BadImage {
            file: file.to_string(),
            what,
        }
        .in_tree_restore()
    };
    let mut r = MountsReader::open(dir, id)?;
    let name = r.name().to_string();
    let head = r.head();
    if head.count > 65536 {
        return Err(bad(&name, format!("{} mounts", head.count)));
    }
    let mut ns = MntNs {
        as_pid: head.executor,
        proc_pidns: head.proc_pidns,
        base: head.base,
        ..MntNs::default()
    };
    while let Some(m) = r.next_mount()? {
        if ns.mounts.len() >= head.count as usize {
            return Err(bad(
                &name,
                format!("more mounts than the {} announced", head.count),
            ));
        }
        if !m.mountpoint.starts_with('/')
            || m.kind > CGROUP_V1
            || m.mountpoint.split('/').any(|c| c == "..")
        {
            return Err(bad(
                &name,
                format!(
                    "mount {} at {:?} of kind {}",
                    m.mnt_id, m.mountpoint, m.kind
                ),
            ));
        }
        if m.kind == EXTERNAL && m.external_key.as_deref().is_none_or(str::is_empty) {
            return Err(bad(
                &name,
                format!("external mount {} without a key", m.mnt_id),
            ));
        }
        if m.kind == BIND && !m.bind_source.as_deref().is_some_and(|s| s.starts_with('/')) {
            return Err(bad(
                &name,
                format!("bind mount {} without a source path", m.mnt_id),
            ));
        }
        // (a filesystem --enable-fs let the dump take is made afresh too,
        // but only one that needs no device: images never mount a disk)
        if m.kind == NEW && !NEW_KINDS.contains(&m.fstype.as_str()) && !deviceless(&m.fstype) {
            return Err(bad(&name, format!("new mount of {:?}", m.fstype)));
        }
        if m.has_contents == Some(true) {
            let items = tmpfs::read_contents(dir, id, m.mnt_id)?;
            ns.contents.insert(m.mnt_id, items);
        }
        ns.mounts.push(m);
    }
    if ns.mounts.len() != head.count as usize {
        return Err(bad(
            &name,
            format!("{} of {} mounts", ns.mounts.len(), head.count),
        ));
    }
    Ok(ns)
}
