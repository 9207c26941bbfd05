//! The files room's errors: what it refuses in a task's fds or finds
//! wrong in the images, and the lock and unix-queue refusals they carry.

use crate::error::DumpError;
use crate::error::RoomError;

/// What the files room refuses or finds wrong.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// An fd of a kind, or in a state, crest cannot dump.
    #[error("fd {fd} is {kind}, which crest cannot dump yet")]
    UnsupportedFd { fd: i32, kind: String },
    /// An fd crest dumps only when the caller asks for it by `option`.
    #[error("fd {fd} {what}; dump with {option} to take it")]
    NeedsOption {
        fd: i32,
        what: String,
        option: &'static str,
    },
    /// An fd holding a file lock crest cannot carry.
    #[error("fd {fd} is a file with {why}, which crest cannot dump yet")]
    Lock {
        fd: i32,
        #[source]
        why: LockError,
    },
    /// A lock in the images crest will not take again.
    #[error("{file}: lock of pid {pid} on fd {fd}: {why}")]
    BadLock {
        file: &'static str,
        pid: i32,
        fd: i32,
        #[source]
        why: LockError,
    },
    /// A unix socket whose queue crest cannot carry.
    #[error("fd {fd} is {why}, which crest cannot dump yet")]
    Queue {
        fd: i32,
        #[source]
        why: QueueRefusal,
    },
    /// A file entry that lacks the part its kind needs.
    #[error("{file}: file {id} has no {part} entry")]
    MissingPart {
        file: &'static str,
        id: u32,
        part: String,
    },
    /// Something crest cannot carry yet, named.
    #[error("{what} is not supported yet")]
    Unsupported { what: String },
    /// An image that contradicts itself or the rest, naming the file.
    #[error("{file}: {what}")]
    BadImage { file: String, what: String },
}

impl RoomError for FileError {}

/// A lock line crest cannot take (`parse_line`), or a lock entry of the
/// images it will not restore (`check`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error("an unreadable lock line {0:?}")]
    Unreadable(String),
    #[error("a lease being broken ({0})")]
    LeaseBroken(String),
    #[error("a delegation ({0})")]
    Delegation(String),
    #[error("a lock of a kind crest does not know ({0:?})")]
    UnknownKind(String),
    /// A mandatory (or other non-advisory) lock: its mode, the line.
    #[error("a {mode} lock ({line})")]
    NotAdvisory { mode: String, line: String },
    #[error("a lock of type {ty} ({line:?})")]
    UnknownType { ty: String, line: String },
    #[error("unknown lock kind {0}")]
    EntryKind(u32),
    #[error("unknown lock type {0}")]
    EntryType(u32),
    #[error("bad fd or range ({start} +{len})")]
    EntryRange { start: i64, len: i64 },
}

/// What a unix socket holds that crest cannot carry (the fd is refused,
/// named by it); a sender outside the tree too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueRefusal {
    #[error("a unix socket with {0} bytes queued")]
    StreamTooLong(usize),
    #[error("a unix socket whose {len} queued bytes could not all be read ({read})")]
    ShortRead { len: usize, read: usize },
    #[error("a unix socket with more files in a message than crest reads")]
    TooManyFiles,
    #[error("a unix socket with more than {max} messages queued")]
    TooManyMessages { max: usize },
    #[error("a unix socket with a {0}-byte datagram queued")]
    Datagram(usize),
    #[error("a unix socket with more than {packets} packets or {bytes} bytes queued")]
    TooMuch { packets: usize, bytes: usize },
    #[error(
        "a unix socket with SO_PASSCRED holding a message from pid {pid} (uid {uid}, gid \
         {gid}), which is not in the dumped tree"
    )]
    Sender { pid: i32, uid: u32, gid: u32 },
}

/// A value of `info` parsed by `parse`, or an UnsupportedFd naming what
/// could not be read.
pub(crate) fn need<T>(pid: i32, fd: i32, what: &str, v: Option<T>) -> Result<T, DumpError> {
    v.ok_or_else(|| {
        FileError::UnsupportedFd {
            fd,
            kind: format!("{what} whose fdinfo crest cannot read"),
        }
        .in_dump(pid)
    })
}
