//! Decoding any known image without knowing its type in advance, for
//! `crest show` and for round-trip checks (CRIU's `crit decode`/`recode`).

use std::path::Path;

use prost::Message;

use crate::framing::ImageReader;
use crate::names::{kind_of, ImageKind};
use crate::{magic, pb, ImageError};

macro_rules! any_entry {
    ($($(#[$doc:meta])* $variant:ident($ty:ty),)*) => {
        /// One decoded entry of any image this crate knows. Serialized as the
        /// bare message (untagged): the image's kind says what it is.
        #[derive(Debug, Clone, PartialEq, serde::Serialize)]
        #[serde(untagged)]
        pub enum AnyEntry {
            $($(#[$doc])* $variant($ty),)*
        }

        impl AnyEntry {
            /// The entry's protobuf bytes (without the length word).
            pub fn encode_message(&self) -> Vec<u8> {
                match self {
                    $(AnyEntry::$variant(m) => m.encode_to_vec(),)*
                }
            }
        }
    };
}

any_entry! {
    /// `inventory.img`
    Inventory(pb::InventoryEntry),
    /// `pstree.img`
    Pstree(pb::PstreeEntry),
    /// `core-<tid>.img`
    Core(Box<pb::CoreEntry>),
    /// `ids-<pid>.img`
    Ids(pb::TaskKobjIdsEntry),
    /// `mm-<pid>.img`
    Mm(pb::MmEntry),
    /// First entry of `pagemap-<pid>.img`
    PagemapHead(pb::PagemapHead),
    /// Other entries of `pagemap-<pid>.img`
    Pagemap(pb::PagemapEntry),
    /// `fdinfo-<files_id>.img`
    Fdinfo(pb::FdinfoEntry),
    /// `files.img`
    File(Box<pb::FileEntry>),
    /// `reg-files.img`
    RegFile(pb::RegFileEntry),
    /// `pipes.img`
    Pipe(pb::PipeEntry),
    /// `ns-files.img`
    NsFile(pb::NsFileEntry),
    /// `fs-<pid>.img`
    Fs(pb::FsEntry),
    /// `sigacts-<pid>.img`
    Sigact(pb::SaEntry),
    /// `userns-<id>.img`
    Userns(pb::UsernsEntry),
    /// `utsns-<id>.img`
    Utsns(pb::UtsnsEntry),
    /// `mountpoints-<id>.img`
    Mnt(Box<pb::MntEntry>),
    /// `crest-cgroups.img`
    Cgroup(pb::CgroupEntry),
    /// Legacy `crest-thread-<tid>.img`
    CrestThread(pb::crest::CrestThreadExtra),
    /// Legacy `crest-userns.img`
    CrestUserns(pb::crest::CrestUsernsEntry),
    /// Legacy `crest-ns.img`
    CrestNs(pb::crest::CrestNsEntry),
}

/// A whole decoded image.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DecodedImage {
    /// What the image is.
    pub kind: ImageKind,
    /// Its per-file magic ([`magic::RAW`] for raw pages).
    pub magic: u32,
    /// Its entries in file order (none for raw pages).
    pub entries: Vec<AnyEntry>,
}

impl DecodedImage {
    /// The file's bytes as this crate writes them: header, then each entry's
    /// length and message. Empty for raw pages.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = magic::header(self.magic);
        for e in &self.entries {
            let body = e.encode_message();
            let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&body);
        }
        out
    }
}

/// The next entry of `r` decoded as the type `kind` holds at position `index`.
fn next_any(
    r: &mut ImageReader,
    kind: ImageKind,
    index: usize,
) -> Result<Option<AnyEntry>, ImageError> {
    Ok(match kind {
        ImageKind::Inventory => r.next_entry()?.map(AnyEntry::Inventory),
        ImageKind::Pstree => r.next_entry()?.map(AnyEntry::Pstree),
        ImageKind::Core => r.next_entry()?.map(|c| AnyEntry::Core(Box::new(c))),
        ImageKind::Ids => r.next_entry()?.map(AnyEntry::Ids),
        ImageKind::Mm => r.next_entry()?.map(AnyEntry::Mm),
        ImageKind::Pagemap if index == 0 => r.next_entry()?.map(AnyEntry::PagemapHead),
        ImageKind::Pagemap => r.next_entry()?.map(AnyEntry::Pagemap),
        ImageKind::RawPages => None,
        ImageKind::Fdinfo => r.next_entry()?.map(AnyEntry::Fdinfo),
        ImageKind::Files => r.next_entry()?.map(|f| AnyEntry::File(Box::new(f))),
        ImageKind::RegFiles => r.next_entry()?.map(AnyEntry::RegFile),
        ImageKind::Pipes => r.next_entry()?.map(AnyEntry::Pipe),
        ImageKind::NsFiles => r.next_entry()?.map(AnyEntry::NsFile),
        ImageKind::Fs => r.next_entry()?.map(AnyEntry::Fs),
        ImageKind::Sigacts => r.next_entry()?.map(AnyEntry::Sigact),
        ImageKind::Userns => r.next_entry()?.map(AnyEntry::Userns),
        ImageKind::Utsns => r.next_entry()?.map(AnyEntry::Utsns),
        ImageKind::Mnts => r.next_entry()?.map(|m| AnyEntry::Mnt(Box::new(m))),
        ImageKind::Cgroup => r.next_entry()?.map(AnyEntry::Cgroup),
        ImageKind::CrestThread => r.next_entry()?.map(AnyEntry::CrestThread),
        ImageKind::CrestUserns => r.next_entry()?.map(AnyEntry::CrestUserns),
        ImageKind::CrestNs => r.next_entry()?.map(AnyEntry::CrestNs),
    })
}

/// The kind of the image at `path`: from its name, else from its magic.
fn sniff_kind(path: &Path) -> Result<ImageKind, ImageError> {
    if let Some(kind) = path.file_name().and_then(|n| n.to_str()).and_then(kind_of) {
        return Ok(kind);
    }
    let mut r = ImageReader::open_unchecked(path)?;
    let first = r.read_header_word()?.unwrap_or(magic::RAW);
    let found = if first == magic::IMG_COMMON {
        r.read_header_word()?.unwrap_or(magic::RAW)
    } else {
        first
    };
    ImageKind::from_magic(found).ok_or_else(|| ImageError::Unknown {
        path: path.to_path_buf(),
        found,
    })
}

/// Decodes any image this crate knows, chosen by file name (or, for an
/// unfamiliar name, by magic). Raw pages files are not read: they come back
/// as [`ImageKind::RawPages`] with no entries.
pub fn decode_file(path: &Path) -> Result<DecodedImage, ImageError> {
    let kind = sniff_kind(path)?;
    if kind == ImageKind::RawPages {
        std::fs::metadata(path).map_err(|source| ImageError::Open {
            path: path.to_path_buf(),
            op: "stat",
            source,
        })?;
        return Ok(DecodedImage {
            kind,
            magic: magic::RAW,
            entries: Vec::new(),
        });
    }
    let mut r = ImageReader::open_path(path, kind.magic())?;
    let mut entries = Vec::new();
    while let Some(e) = next_any(&mut r, kind, entries.len())? {
        entries.push(e);
    }
    Ok(DecodedImage {
        kind,
        magic: kind.magic(),
        entries,
    })
}

/// Decodes the image at `path`, re-encodes it and compares with the file's
/// bytes (CRIU's `crit recode` check). A difference means a field this crate
/// does not declare, or a non-canonical encoding. Raw pages have no framing
/// to check and always match.
pub fn recode_matches(path: &Path) -> Result<bool, ImageError> {
    let decoded = decode_file(path)?;
    if decoded.kind == ImageKind::RawPages {
        return Ok(true);
    }
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        offset: 0,
        source,
    })?;
    Ok(decoded.encode() == bytes)
}
