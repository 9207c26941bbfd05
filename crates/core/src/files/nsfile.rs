//! Namespace files held open (an fd of `/proc/PID/ns/KIND`, or of a bind
//! mount of one): CRIU's `NS` kind with its `ns_file_entry`. Those of the
//! namespaces crest shares itself (the machine's, in the host case) have
//! `ns_id` 0, and the restore opens crest's own `/proc/PID/ns/KIND` again,
//! the same namespace. Those of the tree's own namespaces name the
//! namespace's id (in `crest-ns.img` or `userns-<id>.img`), and the
//! restore opens the namespace made again through whatever holds it by
//! then: its helper, the init of a pid namespace, a task already in it. A
//! namespace neither crest's nor the tree's is refused naming it.

use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreError};
use crate::files::error::FileError;
use crate::remote::Remote;
use crest_images::pb::{FdTypes, FileEntry, NsFileEntry};
use crest_inject::Tracee;
use std::os::unix::fs::MetadataExt;

/// The kinds of namespace file, by the name `/proc/PID/ns` gives them.
const KINDS: [(&str, i32); 8] = [
    ("net", libc::CLONE_NEWNET),
    ("uts", libc::CLONE_NEWUTS),
    ("ipc", libc::CLONE_NEWIPC),
    ("pid", libc::CLONE_NEWPID),
    ("user", libc::CLONE_NEWUSER),
    ("mnt", libc::CLONE_NEWNS),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("time", libc::CLONE_NEWTIME),
];

/// The kind a link such as "net:[4026531833]" names.
fn kind_of(link: &str) -> Option<(&'static str, i32)> {
    let (name, rest) = link.split_once(":[")?;
    rest.strip_suffix(']')?.parse::<u64>().ok()?;
    KINDS.iter().copied().find(|(n, _)| *n == name)
}

/// The tree's own namespaces: nsfs inode → (`CLONE_NEW*` type, id).
pub type TreeNs = std::collections::HashMap<u64, (u32, u32)>;

/// The entry of fd `fd` of `pid` if it is a namespace file (None if it is
/// not one).
pub fn dump(
    pid: i32,
    fd: i32,
    link: &str,
    flags: u32,
    tree: &TreeNs,
) -> Result<Option<FileEntry>, DumpError> {
    let Some((name, flag)) = kind_of(link) else {
        return Ok(None);
    };
    let held =
        std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).at(pid, "stat a namespace file")?;
    let mine =
        std::fs::metadata(format!("/proc/self/ns/{name}")).at(pid, "stat crest's own namespace")?;
    let ns_id = if (held.dev(), held.ino()) == (mine.dev(), mine.ino()) {
        0
    } else {
        match tree.get(&held.ino()) {
            Some(&(ty, id)) if ty == flag as u32 => id,
            _ => {
                return Err(FileError::UnsupportedFd {
                    fd,
                    kind: format!(
                        "a file of a {name} namespace neither crest's nor one of the tree's \
                         own ({link})"
                    ),
                }
                .in_dump(pid))
            }
        }
    };
    Ok(Some(FileEntry {
        r#type: FdTypes::Ns as i32,
        id: 0,
        nsf: Some(NsFileEntry {
            id: 0,
            ns_id,
            ns_cflag: flag as u32,
            flags: flags & libc::O_ACCMODE as u32,
            crest_ns: None,
        }),
        ..FileEntry::default()
    }))
}

/// Who holds each of the tree's namespaces while the tree is restored:
/// (`CLONE_NEW*` type, id) → a pid in it (crest's view) and whether it
/// holds it for its children only (a helper that unshared a time
/// namespace: `/proc/PID/ns/time_for_children`).
pub type Holders = std::collections::HashMap<(u32, u32), (i32, bool)>;

/// Opens the namespace file of `e` again in the task.
pub fn open(t: &mut Tracee, e: &NsFileEntry, holders: &Holders) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let bad = |what: String| {
        FileError::BadImage {
            file: crest_images::names::FILES.into(),
            what,
        }
        .in_restore(pid)
    };
    let Some((name, _)) = KINDS.iter().find(|(_, f)| *f as u32 == e.ns_cflag) else {
        return Err(bad(format!("a namespace file of type {:#x}", e.ns_cflag)));
    };
    let (holder, for_children) = if e.ns_id == 0 {
        (std::process::id() as i32, false)
    } else {
        *holders.get(&(e.ns_cflag, e.ns_id)).ok_or_else(|| {
            FileError::Unsupported {
                what: format!(
                    "a file of the tree's {name} namespace {}, which nothing holds yet when the \
                 file is made",
                    e.ns_id
                ),
            }
            .in_restore(pid)
        })?
    };
    let suffix = if for_children { "_for_children" } else { "" };
    let path = format!("/proc/{holder}/ns/{name}{suffix}");
    Ok(t.open_crest_side(&path, (e.flags & libc::O_ACCMODE as u32) as i32)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links() {
        assert_eq!(
            kind_of("net:[4026531833]"),
            Some(("net", libc::CLONE_NEWNET))
        );
        assert_eq!(kind_of("mnt:[1]"), Some(("mnt", libc::CLONE_NEWNS)));
        assert_eq!(kind_of("net:[x]"), None);
        assert_eq!(kind_of("socket:[12]"), None);
        assert_eq!(kind_of("/tmp/net:[1]"), None);
    }
}
