//! CRIU's framing: a header of magics, then entries of a u32 length
//! (little-endian, the host order of the x86-64 machines crest runs on)
//! followed by that many bytes of protobuf.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::magic::{self, Framing};
use crate::{ImageError, MAX_ENTRY};

/// Mode of every file crest writes: images hold memory and credentials.
const IMAGE_MODE: u32 = 0o600;

/// `dir/name`, refusing names that would leave `dir`.
fn image_path(dir: &Path, name: &str) -> Result<PathBuf, ImageError> {
    let path = dir.join(name);
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(ImageError::BadName { path });
    }
    Ok(path)
}

/// Creates (or truncates) `path` with mode 0600, also when it existed.
fn create_file(path: &Path) -> Result<File, ImageError> {
    let open_err = |source| ImageError::Open {
        path: path.to_path_buf(),
        op: "create",
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(IMAGE_MODE)
        .open(path)
        .map_err(open_err)?;
    file.set_permissions(Permissions::from_mode(IMAGE_MODE))
        .map_err(open_err)?;
    Ok(file)
}

/// Writes `data` to `path` (mode 0600).
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let mut f = create_file(path)?;
    f.write_all(data).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        offset: 0,
        source,
    })
}

/// Buffered output with the offset kept for error messages.
struct Output {
    path: PathBuf,
    out: BufWriter<File>,
    offset: u64,
}

impl Output {
    fn create(dir: &Path, name: &str) -> Result<Output, ImageError> {
        let path = image_path(dir, name)?;
        let file = create_file(&path)?;
        Ok(Output {
            path,
            out: BufWriter::new(file),
            offset: 0,
        })
    }

    fn write_all(&mut self, data: &[u8]) -> Result<(), ImageError> {
        self.out.write_all(data).map_err(|source| ImageError::Io {
            path: self.path.clone(),
            offset: self.offset,
            source,
        })?;
        self.offset += data.len() as u64;
        Ok(())
    }

    fn finish(mut self) -> Result<(), ImageError> {
        self.out.flush().map_err(|source| ImageError::Io {
            path: self.path.clone(),
            offset: self.offset,
            source,
        })
    }
}

/// Writes one framed image file.
pub struct ImageWriter {
    out: Output,
}

impl ImageWriter {
    /// Creates `dir/name` (mode 0600) and writes the header for `magic`:
    /// [`magic::INVENTORY`] alone, [`magic::STATS`] after the service magic,
    /// any other magic after [`magic::IMG_COMMON`].
    pub fn create(dir: &Path, name: &str, magic: u32) -> Result<ImageWriter, ImageError> {
        let mut out = Output::create(dir, name)?;
        out.write_all(&magic::header(magic))?;
        Ok(ImageWriter { out })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.out.path
    }

    /// Appends one entry: its length, then the message.
    pub fn write_entry<M: prost::Message>(&mut self, msg: &M) -> Result<(), ImageError> {
        let body = msg.encode_to_vec();
        let len = body.len() as u64;
        if len > MAX_ENTRY {
            return Err(ImageError::EntryTooLarge {
                path: self.out.path.clone(),
                offset: self.out.offset,
                len,
                limit: MAX_ENTRY,
            });
        }
        // len <= MAX_ENTRY < u32::MAX
        let len32 = u32::try_from(len).unwrap_or(u32::MAX);
        self.out.write_all(&len32.to_le_bytes())?;
        self.out.write_all(&body)
    }

    /// Appends raw bytes after an entry, as mixed images
    /// (`pipes-data.img`) do.
    pub fn write_payload(&mut self, data: &[u8]) -> Result<(), ImageError> {
        self.out.write_all(data)
    }

    /// Flushes the file.
    pub fn finish(self) -> Result<(), ImageError> {
        self.out.finish()
    }
}

/// Writes a raw file with no framing (`pages-<id>.img`).
pub struct RawWriter {
    out: Output,
}

impl RawWriter {
    /// Creates `dir/name` with mode 0600.
    pub fn create(dir: &Path, name: &str) -> Result<RawWriter, ImageError> {
        Ok(RawWriter {
            out: Output::create(dir, name)?,
        })
    }

    /// Appends bytes.
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), ImageError> {
        self.out.write_all(data)
    }

    /// Bytes written so far by [`RawWriter::write_all`].
    pub fn offset(&self) -> u64 {
        self.out.offset
    }

    /// Writes bytes at `offset` without moving the append position, so
    /// several threads can fill disjoint parts of the file. Do not mix
    /// with unflushed [`RawWriter::write_all`] data.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), ImageError> {
        use std::os::unix::fs::FileExt;
        self.out
            .out
            .get_ref()
            .write_all_at(data, offset)
            .map_err(|source| ImageError::Io {
                path: self.out.path.clone(),
                offset,
                source,
            })
    }

    /// Flushes the file.
    pub fn finish(self) -> Result<(), ImageError> {
        self.out.finish()
    }
}

/// Creates a raw file (`pages-<id>.img`) with mode 0600.
pub fn create_raw(dir: &Path, name: &str) -> Result<RawWriter, ImageError> {
    RawWriter::create(dir, name)
}

/// Writes a whole image: header, then every entry.
pub fn write_image<M: prost::Message>(
    dir: &Path,
    name: &str,
    magic: u32,
    entries: &[M],
) -> Result<(), ImageError> {
    let mut w = ImageWriter::create(dir, name, magic)?;
    for e in entries {
        w.write_entry(e)?;
    }
    w.finish()
}

/// Reads one framed image file, checking every length before it allocates.
pub struct ImageReader {
    path: PathBuf,
    input: BufReader<File>,
    offset: u64,
    /// Size of a regular file, to refuse lengths past its end.
    size: Option<u64>,
    magic: u32,
}

impl ImageReader {
    /// Opens `dir/name` and checks its header against `expected_magic`.
    pub fn open(dir: &Path, name: &str, expected_magic: u32) -> Result<ImageReader, ImageError> {
        let path = image_path(dir, name)?;
        ImageReader::open_path(&path, expected_magic)
    }

    /// Opens `path` and checks its header against `expected_magic`.
    pub fn open_path(path: &Path, expected_magic: u32) -> Result<ImageReader, ImageError> {
        let mut r = ImageReader::open_unchecked(path)?;
        r.check_header(expected_magic)?;
        Ok(r)
    }

    /// Opens `dir/name`, a framed image with any one of `magics` (all of
    /// them framed after [`magic::IMG_COMMON`]); [`ImageReader::magic`] says
    /// which. For files whose magic changed: today's first, then legacy.
    pub fn open_any(dir: &Path, name: &str, magics: &[u32]) -> Result<ImageReader, ImageError> {
        let path = image_path(dir, name)?;
        let mut r = ImageReader::open_unchecked(&path)?;
        r.expect_magic("common magic", magic::IMG_COMMON)?;
        let offset = r.offset;
        let found = r
            .read_u32("image magic")?
            .ok_or_else(|| ImageError::Truncated {
                path: r.path.clone(),
                offset,
                what: "image magic",
                needed: 4,
                found: 0,
            })?;
        if !magics.contains(&found) || magic::framing(found) != Framing::Common {
            return Err(ImageError::BadMagic {
                path: r.path.clone(),
                offset,
                what: "image magic",
                expected: magics.first().copied().unwrap_or(magic::RAW),
                found,
            });
        }
        r.magic = found;
        Ok(r)
    }

    pub(crate) fn open_unchecked(path: &Path) -> Result<ImageReader, ImageError> {
        let open_err = |source| ImageError::Open {
            path: path.to_path_buf(),
            op: "open",
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        Ok(ImageReader {
            path: path.to_path_buf(),
            input: BufReader::new(file),
            offset: 0,
            size: meta.is_file().then_some(meta.len()),
            magic: magic::RAW,
        })
    }

    fn check_header(&mut self, expected: u32) -> Result<(), ImageError> {
        let first_expected = match magic::framing(expected) {
            Framing::Raw => return Ok(()),
            Framing::Bare => expected,
            Framing::Service => magic::IMG_SERVICE,
            Framing::Common => magic::IMG_COMMON,
        };
        let what = if first_expected == expected {
            "image magic"
        } else {
            "common magic"
        };
        self.expect_magic(what, first_expected)?;
        if first_expected != expected {
            self.expect_magic("image magic", expected)?;
        }
        self.magic = expected;
        Ok(())
    }

    fn expect_magic(&mut self, what: &'static str, expected: u32) -> Result<(), ImageError> {
        let offset = self.offset;
        let found = self.read_u32(what)?.ok_or_else(|| ImageError::Truncated {
            path: self.path.clone(),
            offset,
            what,
            needed: 4,
            found: 0,
        })?;
        if found != expected {
            return Err(ImageError::BadMagic {
                path: self.path.clone(),
                offset,
                what,
                expected,
                found,
            });
        }
        Ok(())
    }

    /// Reads the first word without judging it (for [`crate::decode_file`]).
    pub(crate) fn read_header_word(&mut self) -> Result<Option<u32>, ImageError> {
        self.read_u32("header")
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The per-file magic checked at open ([`magic::RAW`] for none).
    pub fn magic(&self) -> u32 {
        self.magic
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads until `buf` is full or the file ends; returns the bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, ImageError> {
        let mut got = 0;
        while let Some(rest) = buf.get_mut(got..) {
            if rest.is_empty() {
                break;
            }
            match self.input.read(rest) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ImageError::Io {
                        path: self.path.clone(),
                        offset: self.offset + got as u64,
                        source,
                    })
                }
            }
        }
        self.offset += got as u64;
        Ok(got)
    }

    /// A u32, `None` at a clean end of file, `Truncated` in the middle of one.
    fn read_u32(&mut self, what: &'static str) -> Result<Option<u32>, ImageError> {
        let start = self.offset;
        let mut word = [0u8; 4];
        match self.read_full(&mut word)? {
            0 => Ok(None),
            4 => Ok(Some(u32::from_le_bytes(word))),
            n => Err(ImageError::Truncated {
                path: self.path.clone(),
                offset: start,
                what,
                needed: 4,
                found: n as u64,
            }),
        }
    }

    /// Reads `len` bytes after checking that the file holds them and that
    /// `len` is at most [`MAX_ENTRY`]; `entry_offset` is where the entry began.
    fn read_bounded(
        &mut self,
        len: u64,
        entry_offset: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, ImageError> {
        if len > MAX_ENTRY {
            return Err(ImageError::EntryTooLarge {
                path: self.path.clone(),
                offset: entry_offset,
                len,
                limit: MAX_ENTRY,
            });
        }
        let start = self.offset;
        if let Some(size) = self.size {
            let remaining = size.saturating_sub(start);
            if len > remaining {
                return Err(ImageError::Truncated {
                    path: self.path.clone(),
                    offset: start,
                    what,
                    needed: len,
                    found: remaining,
                });
            }
        }
        // len <= MAX_ENTRY, which fits any usize crest runs on.
        let n = usize::try_from(len).unwrap_or(usize::MAX);
        let mut buf = vec![0u8; n];
        let got = self.read_full(&mut buf)?;
        if got < n {
            return Err(ImageError::Truncated {
                path: self.path.clone(),
                offset: start,
                what,
                needed: len,
                found: got as u64,
            });
        }
        Ok(buf)
    }

    /// The next entry, or `None` at a clean end of file (exactly at an entry
    /// boundary).
    pub fn next_entry<M: prost::Message + Default>(&mut self) -> Result<Option<M>, ImageError> {
        let entry_offset = self.offset;
        let Some(len) = self.read_u32("entry length")? else {
            return Ok(None);
        };
        let body = self.read_bounded(u64::from(len), entry_offset, "entry payload")?;
        M::decode(body.as_slice())
            .map(Some)
            .map_err(|source| ImageError::Decode {
                path: self.path.clone(),
                offset: entry_offset,
                source,
            })
    }

    /// Raw bytes following an entry in mixed images (`pipes-data.img`),
    /// bounded like an entry.
    pub fn read_payload(&mut self, len: u64) -> Result<Vec<u8>, ImageError> {
        let at = self.offset;
        self.read_bounded(len, at, "payload")
    }

    /// Every remaining entry.
    pub fn read_all<M: prost::Message + Default>(&mut self) -> Result<Vec<M>, ImageError> {
        let mut out = Vec::new();
        while let Some(m) = self.next_entry()? {
            out.push(m);
        }
        Ok(out)
    }
}

/// Reads every entry of `dir/name`.
pub fn read_image<M: prost::Message + Default>(
    dir: &Path,
    name: &str,
    magic: u32,
) -> Result<Vec<M>, ImageError> {
    ImageReader::open(dir, name, magic)?.read_all()
}

/// Reads the only entry of `dir/name`: zero entries is [`ImageError::Missing`],
/// more than one is [`ImageError::ExtraEntry`].
pub fn read_one<M: prost::Message + Default>(
    dir: &Path,
    name: &str,
    magic: u32,
) -> Result<M, ImageError> {
    let mut r = ImageReader::open(dir, name, magic)?;
    let Some(first) = r.next_entry()? else {
        return Err(ImageError::Missing {
            path: r.path.clone(),
        });
    };
    let second_at = r.offset;
    if r.next_entry::<M>()?.is_some() {
        return Err(ImageError::ExtraEntry {
            path: r.path.clone(),
            offset: second_at,
        });
    }
    Ok(first)
}
