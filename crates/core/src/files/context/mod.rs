//! What the restore of files shares between the kinds: the images
//! (`files.img` and the images beside it) indexed, and what restored tasks
//! hold so far. Data only: each kind's room reads and updates it; the
//! order of making (`restore.rs`) is the one place that calls the kinds.

pub mod sockets;
pub mod terminals;

use super::share::Holders;
use crate::error::RestoreError;
use crate::error::RoomError;
use crate::files::error::FileError;
use crest_images::pb::{FileEntry, MemfdInodeEntry, PipeDataEntry};
use crest_images::{names, ImageReader};
use crest_inject::Tracee;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// `files.img` and the images beside it, indexed, and where restored
/// tasks hold what was made so far.
#[derive(Default)]
pub struct RestoreFiles {
    pub dir: PathBuf,
    pub entries: HashMap<u32, FileEntry>,
    pub pipe_data: HashMap<u32, Vec<u8>>,
    /// Pipe id → its capacity, where it was not the default.
    pub pipe_sizes: HashMap<u32, u32>,
    pub fifo_data: HashMap<u32, Vec<u8>>,
    /// FIFOs refilled already (by pipe id).
    pub fifo_filled: HashSet<u32>,
    /// FIFOs deleted while open, made already: pipe id → the entry whose
    /// fd made it (others open it through that fd).
    pub deleted_fifos: HashMap<u32, u32>,
    /// Pipes crest made (pipe id → its read and write end as pipe2 gave
    /// them, and whether each was given to a task already).
    pub(super) pipes: HashMap<u32, CrestPipe>,
    /// file entry id → (pid, fd) of the first restored fd with it.
    pub holders: Holders,
    /// The task being restored and its fds made so far: entry id → parked
    /// fd number.
    pub(super) local: (i32, HashMap<u32, u64>),
    /// Regular-file entry id → ghost file id (`remap-fpath.img`).
    pub remaps: HashMap<u32, u32>,
    /// Ghost id → the entry whose fd made it.
    pub ghost_src: HashMap<u32, u32>,
    /// Ghost file id → crest's copy of the file once made again: every
    /// later user (a mapping, another task's fd) opens the same file
    /// through it.
    pub ghost_held: HashMap<u32, std::os::fd::OwnedFd>,
    pub memfd_inodes: HashMap<u32, MemfdInodeEntry>,
    pub memfd_src: HashMap<u32, Source>,
    /// Entry id → the task that made its description.
    pub(super) made_by: HashMap<u32, i32>,
    /// io_uring entry id → the offset of its SQ array in the rings'
    /// region, as the ring made again has it.
    pub(super) uring_arrays: HashMap<u32, u64>,
    /// io_uring entry ids with an SQ thread: a placeholder fd until the
    /// task has its own credentials.
    pub(super) uring_late: HashSet<u32>,
    /// Socket queues and which task made each socket or terminal.
    pub socks: sockets::SockImages,
    /// `filelocks.img`: the locks to take again.
    pub locks: Vec<crest_images::pb::FileLockEntry>,
    /// `--inherit-fd`: the key of a dumped file (`pipe:[INODE]`) → crest's
    /// fd that stands for it.
    pub inherit: HashMap<String, std::os::fd::OwnedFd>,
    /// Files passed in queued messages, made already: crest's copies
    /// (every later user, a queue or a task's fd, gets the same
    /// description).
    pub flight: HashMap<u32, std::os::fd::OwnedFd>,
    /// Who holds each of the tree's namespaces by now (namespace files
    /// are opened through them).
    pub ns_holders: super::nsfile::Holders,
    /// Terminals: their settings, and the pty pairs made for consoles.
    pub ttys: terminals::TtyRestore,
}

/// A pipe crest made for the tree: the descriptions `pipe2` gave (every
/// fd that had one of those gets it; one that had a description opened
/// again gets a new one, `O_LARGEFILE` and all).
pub(super) struct CrestPipe {
    pub(super) ends: [std::os::fd::OwnedFd; 2],
    pub(super) given: [bool; 2],
}

/// Most pipe data crest accepts per pipe from an image.
const MAX_PIPE_DATA: u32 = 1 << 20;

/// Pipe data and capacities of an image (`pipes-data.img`, `fifo-data.img`).
type PipeData = (HashMap<u32, Vec<u8>>, HashMap<u32, u32>);

pub(crate) fn read_pipe_data(dir: &Path, name: &str, magic: u32) -> Result<PipeData, RestoreError> {
    let mut out = (HashMap::new(), HashMap::new());
    if !dir.join(name).exists() {
        return Ok(out);
    }
    let mut r = ImageReader::open(dir, name, magic)?;
    while let Some(e) = r.next_entry::<PipeDataEntry>()? {
        let bad = |what: String| {
            FileError::BadImage {
                file: name.into(),
                what,
            }
            .in_tree_restore()
        };
        if e.bytes > MAX_PIPE_DATA {
            return Err(bad(format!("pipe {} claims {} bytes", e.pipe_id, e.bytes)));
        }
        if let Some(size) = e.size {
            if size > MAX_PIPE_DATA || size < e.bytes {
                return Err(bad(format!("pipe {} claims a size of {size}", e.pipe_id)));
            }
            out.1.insert(e.pipe_id, size);
        }
        let data = r.read_payload(u64::from(e.bytes))?;
        out.0.insert(e.pipe_id, data);
    }
    Ok(out)
}

/// Where restore finds a memfd inode made already.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// An fd of this file entry.
    File(u32),
    /// A mapping of it: (pid, start, end).
    Map(i32, u64, u64),
}

impl RestoreFiles {
    /// The path of a regular-file entry.
    pub fn reg_path(&self, id: u32) -> Option<&str> {
        self.entries
            .get(&id)
            .and_then(|e| e.reg.as_ref())
            .map(|r| r.name.as_str())
    }

    /// Where an fd of entry `id` is, as (pid, fd): one `pid` made in this
    /// restore_fds call, or the first one restored.
    pub fn where_is(&self, pid: i32, id: u32) -> Option<(i32, u64)> {
        if self.local.0 == pid {
            if let Some(fd) = self.local.1.get(&id) {
                return Some((pid, *fd));
            }
        }
        self.holders.get(&id).map(|&(p, fd)| (p, u64::from(fd)))
    }
}

/// Makes socket `S` from its entry in task `t`, with what the restore of
/// files shares.
pub(crate) type MakeSocket<S> =
    fn(&mut Tracee, &S, &mut RestoreFiles, &mut super::kept::Kept) -> Result<(), RestoreError>;

/// The fd for socket entry `e` of a kind made once per task and dup'd per
/// fd (`kind` names it; `entry` picks its message out of `e`): `make`
/// makes it, kept in `kept` under its id, the first time. Another task
/// holding it gets it through `holders`.
pub(crate) fn socket_once<S>(
    t: &mut Tracee,
    e: &FileEntry,
    (files, kept): (&mut RestoreFiles, &mut super::kept::Kept),
    (kind, entry): (&str, fn(&FileEntry) -> Option<&S>),
    make: MakeSocket<S>,
) -> Result<u64, RestoreError> {
    let pid = t.pid();
    if kept.get(e.id).is_none() {
        if let Some(&other) = files.socks.made_by.get(&e.id) {
            if other != pid {
                return Err(FileError::Unsupported {
                    what: format!("{kind} socket {} shared with pid {other}", e.id),
                }
                .in_restore(pid));
            }
        }
        let s = entry(e).ok_or_else(|| {
            FileError::MissingPart {
                file: names::FILES,
                id: e.id,
                part: format!("{kind} socket"),
            }
            .in_restore(pid)
        })?;
        make(t, s, files, kept)?;
        files.socks.made_by.insert(e.id, pid);
    }
    kept.dup(t, e.id)
}

/// Gives crest's copy of file `id`, passed in a queued message that task
/// `t` puts back, making it first where nothing made it yet. The order of
/// making (`restore::flight_copy`) hands it to the kinds whose queues pass
/// files, since making a passed file may need any kind.
pub type FlightCopy = fn(
    &mut Tracee,
    u32,
    &mut RestoreFiles,
    &mut super::kept::Kept,
) -> Result<std::os::fd::OwnedFd, RestoreError>;
