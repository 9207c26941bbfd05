//! The address-space room's errors.

use crate::error::RoomError;

/// What the address-space room refuses or finds wrong.
#[derive(Debug, thiserror::Error)]
pub enum MmError {
    /// Something crest cannot carry yet, named.
    #[error("{what} is not supported yet")]
    Unsupported { what: String },
    /// A step that cannot go on (a file changed since the dump, the
    /// lazy-pages daemon gone), said whole.
    #[error("{what}")]
    Failed { what: String },
    /// An image that contradicts itself or the rest, naming the file.
    #[error("{file}: {what}")]
    BadImage { file: String, what: String },
    /// A NUMA policy line crest cannot read.
    #[error("{why} in {path} is not supported yet")]
    Numa {
        path: String,
        #[source]
        why: BadLine,
    },
}

impl RoomError for MmError {}

/// A `numa_maps` line crest cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("numa_maps line {0:?}")]
pub struct BadLine(pub String);
