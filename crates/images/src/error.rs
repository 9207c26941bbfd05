//! The one error type of this crate.

use std::path::PathBuf;

/// Reading or writing an image failed. Every variant names the file, and the
/// byte offset when there is one.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be opened or created.
    #[error("{}: {op}: {source}", path.display())]
    Open {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// A read or write failed.
    #[error("{} at offset {offset}: {source}", path.display())]
    Io {
        path: PathBuf,
        offset: u64,
        source: std::io::Error,
    },
    /// The image name is not a plain file name.
    #[error("{}: image name must be a plain file name", path.display())]
    BadName { path: PathBuf },
    /// The file name matches no image this crate knows.
    #[error("{}: unknown image (neither name nor magic {found:#010x} is known)", path.display())]
    Unknown { path: PathBuf, found: u32 },
    /// A magic word is not the expected one.
    #[error(
        "{} at offset {offset}: bad {what}: expected {expected:#010x}, found {found:#010x}",
        path.display()
    )]
    BadMagic {
        path: PathBuf,
        offset: u64,
        what: &'static str,
        expected: u32,
        found: u32,
    },
    /// The file ends inside a header, an entry length or an entry payload.
    #[error(
        "{} at offset {offset}: truncated {what}: needed {needed} bytes, found {found}",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        offset: u64,
        what: &'static str,
        needed: u64,
        found: u64,
    },
    /// An entry length exceeds [`crate::MAX_ENTRY`].
    #[error("{} at offset {offset}: entry length {len} exceeds {limit} bytes", path.display())]
    EntryTooLarge {
        path: PathBuf,
        offset: u64,
        len: u64,
        limit: u64,
    },
    /// An entry payload is not a valid message of the expected type.
    #[error("{} at offset {offset}: decode entry: {source}", path.display())]
    Decode {
        path: PathBuf,
        offset: u64,
        source: prost::DecodeError,
    },
    /// An entry of CRIU's message lacks the crest field it must carry.
    #[error("{} at offset {offset}: entry lacks crest's {what}", path.display())]
    NotCarried {
        path: PathBuf,
        offset: u64,
        what: &'static str,
    },
    /// A directory holds more images of a kind than crest reads.
    #[error("{}: more than {limit} {what}", path.display())]
    TooMany {
        path: PathBuf,
        what: &'static str,
        limit: usize,
    },
    /// The image holds no entry where one is required.
    #[error("{}: no entry where one is required", path.display())]
    Missing { path: PathBuf },
    /// The file is not what the dump's manifest says (see `manifest`).
    #[error("{}: {what}", path.display())]
    Checksum { path: PathBuf, what: String },
    /// The image holds more entries than the one expected.
    #[error("{} at offset {offset}: unexpected entry after the only one expected", path.display())]
    ExtraEntry { path: PathBuf, offset: u64 },
}
