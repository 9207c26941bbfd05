//! Namespace files held open (an fd of `/proc/PID/ns/KIND`, or of a bind
//! mount of one): CRIU's `NS` kind with its `ns_file_entry`. crest carries
//! those of the namespaces it shares itself (the machine's, in the host
//! case): `ns_id` 0 says so, and the restore opens crest's own
//! `/proc/PID/ns/KIND` again, the same namespace. A namespace of the
//! tree's own or of another process is refused naming it.

use crate::error::{DumpCtx, DumpError, RestoreError};
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

/// The entry of fd `fd` of `pid` if it is a namespace file (None if it is
/// not one).
pub fn dump(pid: i32, fd: i32, link: &str, flags: u32) -> Result<Option<FileEntry>, DumpError> {
    let Some((name, flag)) = kind_of(link) else {
        return Ok(None);
    };
    let held =
        std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).at(pid, "stat a namespace file")?;
    let mine =
        std::fs::metadata(format!("/proc/self/ns/{name}")).at(pid, "stat crest's own namespace")?;
    if (held.dev(), held.ino()) != (mine.dev(), mine.ino()) {
        return Err(DumpError::UnsupportedFd {
            pid,
            fd,
            kind: format!(
                "a file of a {name} namespace other than crest's ({link}; namespace files of \
                 the tree's own namespaces are not carried yet)"
            ),
        });
    }
    Ok(Some(FileEntry {
        r#type: FdTypes::Ns as i32,
        id: 0,
        nsf: Some(NsFileEntry {
            id: 0,
            ns_id: 0,
            ns_cflag: flag as u32,
            flags: flags & libc::O_ACCMODE as u32,
            crest_ns: None,
        }),
        ..FileEntry::default()
    }))
}

/// Opens the namespace file of `e` again in the task.
pub fn open(t: &mut Tracee, e: &NsFileEntry) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let bad = |what: String| RestoreError::BadImage {
        pid,
        file: crest_images::names::FILES.into(),
        what,
    };
    let Some((name, _)) = KINDS.iter().find(|(_, f)| *f as u32 == e.ns_cflag) else {
        return Err(bad(format!("a namespace file of type {:#x}", e.ns_cflag)));
    };
    if e.ns_id != 0 {
        return Err(RestoreError::Unsupported {
            pid,
            what: format!(
                "a file of the {name} namespace {} of the tree's own",
                e.ns_id
            ),
        });
    }
    let path = format!("/proc/{}/ns/{name}", std::process::id());
    crate::mm::restore::open_crest_side(t, &path, (e.flags & libc::O_ACCMODE as u32) as i32)
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
