//! The checksums of a dump's files, in `crest-manifest` beside CRIU's
//! images (a name CRIU's tools do not read): a dump writes it last, a
//! restore checks every file against it before it touches any task, and
//! `crest check-images` checks a directory alone.
//!
//! The format is text, one file a line after a header:
//!
//! ```text
//! crest-manifest 2 xxh3-128/1M
//! <32 hex digits> <size> <name>
//! chunks <32 hex digits per chunk> <name>
//! ```
//!
//! A file's sum is the XXH3-128 of the XXH3-128 sums of its 1 MiB chunks
//! (so that big pages files are hashed on every CPU); it guards against
//! bits flipped or files cut short, not against someone who rewrites the
//! manifest too. A pages file's chunk sums are listed too (`chunks`, after
//! its line, bound to its sum): a lazy restore checks a chunk only when it
//! first reads from it ([`verify_deferring`], [`check_chunk`]). Version 1
//! manifests (64 MiB chunks, no chunk lists) are still read.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::ImageError;

/// The manifest's file name.
pub const MANIFEST: &str = "crest-manifest";
const HEADER: &str = "crest-manifest 2 xxh3-128/1M";
const CHUNK: u64 = 1 << 20;
const HEADER_V1: &str = "crest-manifest 1 xxh3-128/64M";
const CHUNK_V1: u64 = 64 << 20;
/// Largest manifest read (a line is under 300 bytes).
const MAX_MANIFEST: u64 = 64 << 20;

/// Files of an images directory that are no images: logs, statistics and
/// the manifest itself (CRIU writes `stats-restore` beside the images).
fn not_an_image(name: &str) -> bool {
    name.starts_with(MANIFEST) || name.ends_with(".log") || name.starts_with("stats-")
}

fn err(path: &Path, what: impl Into<String>) -> ImageError {
    ImageError::Checksum {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        offset: 0,
        source,
    }
}

/// The regular files of `dir` that are images, by name.
fn image_files(dir: &Path) -> Result<Vec<String>, ImageError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        let ft = e.file_type().map_err(io(dir))?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if ft.is_file() && !not_an_image(&name) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// One chunk of one file to hash.
struct Chunk {
    file: usize,
    off: u64,
    len: u64,
}

/// A file's size, sum and the sums of its chunks.
type Summed = (u64, u128, Vec<u128>);

/// The sums of `files` (each with its chunk size): size, XXH3-128 of the
/// chunks' sums and those, hashed on every CPU.
fn sums(dir: &Path, files: &[(String, u64)]) -> Result<Vec<Summed>, ImageError> {
    let mut sizes = Vec::with_capacity(files.len());
    let mut chunks = Vec::new();
    for (i, (name, chunk)) in files.iter().enumerate() {
        let path = dir.join(name);
        let size = std::fs::metadata(&path).map_err(io(&path))?.len();
        sizes.push(size);
        let mut off = 0;
        loop {
            let len = (size - off).min(*chunk);
            chunks.push(Chunk { file: i, off, len });
            off += len;
            if off >= size {
                break;
            }
        }
    }
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(chunks.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<Vec<(usize, u128)>, ImageError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(c) = chunks.get(k) else {
                            return Ok(mine);
                        };
                        let path = dir.join(&files[c.file].0);
                        mine.push((k, chunk_sum(&path, c, &mut buf)?));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(err(dir, "a checksum thread panicked")))
            })
            .collect()
    });
    let mut by_chunk = vec![0u128; chunks.len()];
    for r in results {
        for (k, sum) in r? {
            by_chunk[k] = sum;
        }
    }
    let mut per_file: Vec<Vec<u128>> = vec![Vec::new(); files.len()];
    for (c, sum) in chunks.iter().zip(by_chunk) {
        per_file[c.file].push(sum);
    }
    Ok(sizes
        .into_iter()
        .zip(per_file)
        .map(|(size, sums)| (size, sum_of(&sums), sums))
        .collect())
}

/// A file's sum from its chunks' sums.
fn sum_of(chunks: &[u128]) -> u128 {
    let mut b = Vec::with_capacity(chunks.len() * 16);
    for c in chunks {
        b.extend_from_slice(&c.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_128(&b)
}

fn chunk_sum(path: &Path, c: &Chunk, buf: &mut [u8]) -> Result<u128, ImageError> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path).map_err(io(path))?;
    f.seek(SeekFrom::Start(c.off)).map_err(io(path))?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut left = c.len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = f.read(&mut buf[..want]).map_err(io(path))?;
        if n == 0 {
            return Err(err(path, "shorter than it was a moment ago"));
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(h.digest128())
}

/// The manifest text of `files` of `dir`: a pages file's chunk sums are
/// listed after its line.
fn render(dir: &Path, files: &[String]) -> Result<String, ImageError> {
    let with_chunk: Vec<(String, u64)> = files.iter().map(|n| (n.clone(), CHUNK)).collect();
    let sums = sums(dir, &with_chunk)?;
    let mut text = format!("{HEADER}\n");
    for (name, (size, sum, chunks)) in files.iter().zip(sums) {
        text.push_str(&format!("{sum:032x} {size} {name}\n"));
        if name.starts_with("pages-") {
            text.push_str("chunks ");
            for c in chunks {
                text.push_str(&format!("{c:032x}"));
            }
            text.push_str(&format!(" {name}\n"));
        }
    }
    Ok(text)
}

/// Writes the manifest of every image file in `dir` (mode 0600).
pub fn write(dir: &Path) -> Result<(), ImageError> {
    let files = image_files(dir)?;
    let text = render(dir, &files)?;
    let path = dir.join(MANIFEST);
    crate::framing::write_private(&path, text.as_bytes())
}

/// Writes a manifest part, `crest-manifest.<part>`, of `files` of `dir`
/// alone: images written there by another process than the dump (the
/// page server's pagemaps and pages), which [`verify`] checks with the
/// dump's own.
pub fn write_part(dir: &Path, part: &str, files: &[String]) -> Result<(), ImageError> {
    let mut files = files.to_vec();
    files.sort();
    files.dedup();
    let text = render(dir, &files)?;
    let path = dir.join(format!("{MANIFEST}.{part}"));
    crate::framing::write_private(&path, text.as_bytes())
}

/// A file whose content is checked a chunk at a time as it is read: its
/// chunk size and the chunks' sums (bound to the file's sum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    pub size: u64,
    pub chunk: u64,
    pub sums: Vec<u128>,
}

/// Reads chunk `idx` of the file at `path` into `buf` and checks it
/// against `d`; `buf` holds the chunk after.
pub fn check_chunk(
    path: &Path,
    d: &Deferred,
    idx: usize,
    buf: &mut Vec<u8>,
) -> Result<(), ImageError> {
    use std::os::unix::fs::FileExt;
    let Some(want) = d.sums.get(idx) else {
        return Err(err(path, format!("no chunk {idx} in its manifest")));
    };
    let off = idx as u64 * d.chunk;
    let len = d.size.saturating_sub(off).min(d.chunk) as usize;
    buf.resize(len, 0);
    let f = File::open(path).map_err(io(path))?;
    f.read_exact_at(buf, off).map_err(io(path))?;
    if xxhash_rust::xxh3::xxh3_128(buf) != *want {
        return Err(err(
            path,
            format!(
                "bytes {off}..{} differ from {MANIFEST}: the file changed since the dump",
                off + len as u64
            ),
        ));
    }
    Ok(())
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// Every file has its sum.
    Intact { files: usize, bytes: u64 },
    /// There is no manifest (images of CRIU or of an older crest).
    NoManifest,
}

/// One file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub size: u64,
    pub sum: u128,
    /// Its chunk size.
    pub chunk: u64,
    /// Its chunks' sums, when listed.
    pub chunks: Option<Vec<u128>>,
}

/// Parses a manifest: name to its entry.
pub fn parse(path: &Path, text: &str) -> Result<BTreeMap<String, Entry>, ImageError> {
    let mut lines = text.lines();
    let chunk = match lines.next() {
        Some(HEADER) => CHUNK,
        Some(HEADER_V1) => CHUNK_V1,
        _ => {
            return Err(err(
                path,
                format!("not a manifest (first line is not {HEADER:?})"),
            ))
        }
    };
    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    for (i, line) in lines.enumerate() {
        let bad = || err(path, format!("line {}: {:.200?}", i + 2, line));
        if let Some(rest) = line.strip_prefix("chunks ") {
            let (hex, name) = rest.split_once(' ').ok_or_else(bad)?;
            let e = out.get_mut(name).ok_or_else(bad)?;
            let n = e.size.div_ceil(chunk).max(1) as usize;
            if e.chunks.is_some() || hex.len() != 32 * n || !hex.is_ascii() {
                return Err(bad());
            }
            let sums = (0..n)
                .map(|k| u128::from_str_radix(&hex[32 * k..32 * k + 32], 16))
                .collect::<Result<Vec<u128>, _>>()
                .map_err(|_| bad())?;
            if sum_of(&sums) != e.sum {
                return Err(err(
                    path,
                    format!("the chunk sums of {name} do not make its sum"),
                ));
            }
            e.chunks = Some(sums);
            continue;
        }
        let mut f = line.splitn(3, ' ');
        let (Some(sum), Some(size), Some(name)) = (f.next(), f.next(), f.next()) else {
            return Err(bad());
        };
        if sum.len() != 32 || name.is_empty() || name.contains('/') || not_an_image(name) {
            return Err(bad());
        }
        let sum = u128::from_str_radix(sum, 16).map_err(|_| bad())?;
        let size: u64 = size.parse().map_err(|_| bad())?;
        let e = Entry {
            size,
            sum,
            chunk,
            chunks: None,
        };
        if out.insert(name.to_string(), e).is_some() {
            return Err(err(path, format!("{name} listed twice")));
        }
    }
    Ok(out)
}

/// A manifest's files: name, then its entry.
type Listing = BTreeMap<String, Entry>;

/// A manifest read and parsed, None when there is none.
fn read_manifest(path: &Path) -> Result<Option<Listing>, ImageError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let mut text = String::new();
    file.take(MAX_MANIFEST + 1)
        .read_to_string(&mut text)
        .map_err(io(path))?;
    if text.len() as u64 > MAX_MANIFEST {
        return Err(err(path, "larger than any manifest crest writes"));
    }
    parse(path, &text).map(Some)
}

/// The manifest of `dir` with its parts; None when there is none.
fn listing(dir: &Path) -> Result<Option<(Listing, bool)>, ImageError> {
    let main = read_manifest(&dir.join(MANIFEST))?;
    let has_main = main.is_some();
    let mut listed = main.unwrap_or_default();
    let mut parts = 0;
    for name in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let name = name.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{MANIFEST}.")) {
            if let Some(more) = read_manifest(&dir.join(&name))? {
                listed.extend(more);
                parts += 1;
            }
        }
    }
    if !has_main && parts == 0 {
        return Ok(None);
    }
    Ok(Some((listed, has_main)))
}

/// The files of `dir`'s manifest whose chunk sums are listed.
pub fn deferred(dir: &Path) -> Result<BTreeMap<String, Deferred>, ImageError> {
    let Some((listed, _)) = listing(dir)? else {
        return Ok(BTreeMap::new());
    };
    Ok(listed
        .into_iter()
        .filter_map(|(name, e)| {
            let sums = e.chunks?;
            Some((
                name,
                Deferred {
                    size: e.size,
                    chunk: e.chunk,
                    sums,
                },
            ))
        })
        .collect())
}

/// Checks every image file of `dir` against the manifest: a file whose
/// size or sum differs, one listed but missing and one not listed are
/// refused, naming the file.
pub fn verify(dir: &Path) -> Result<Verified, ImageError> {
    verify_deferring(dir, &|_| false).map(|(v, _)| v)
}

/// [`verify`], but the files `defer` names whose chunk sums the manifest
/// lists are only checked for their size: their content is for the reader
/// to check a chunk at a time ([`check_chunk`]); they are returned.
/// Long because it is one pass of checks in order: listed, present, sizes,
/// contents.
pub fn verify_deferring(
    dir: &Path,
    defer: &dyn Fn(&str) -> bool,
) -> Result<(Verified, BTreeMap<String, Deferred>), ImageError> {
    let Some((listed, has_main)) = listing(dir)? else {
        return Ok((Verified::NoManifest, BTreeMap::new()));
    };
    let present = image_files(dir)?;
    // (with no manifest of the dump's own, only the parts' files are known;
    // a file added that crest would not read as an image, such as a
    // pidfile written into the directory, is no change of the dump)
    if has_main {
        if let Some(extra) = present
            .iter()
            .find(|n| !listed.contains_key(*n) && n.ends_with(".img"))
        {
            return Err(err(
                &dir.join(extra),
                format!("not in {MANIFEST}: the directory changed since the dump"),
            ));
        }
    }
    let names: Vec<String> = listed.keys().cloned().collect();
    if let Some(missing) = names.iter().find(|n| !present.contains(n)) {
        return Err(err(
            &dir.join(missing),
            format!("listed in {MANIFEST} but missing"),
        ));
    }
    // sizes first: a file cut short is named without reading it all
    for name in &names {
        let p = dir.join(name);
        let size = std::fs::metadata(&p).map_err(io(&p))?.len();
        if size != listed[name].size {
            return Err(err(
                &p,
                format!(
                    "{size} bytes, {} when dumped (see {MANIFEST})",
                    listed[name].size
                ),
            ));
        }
    }
    let mut later = BTreeMap::new();
    let mut now = Vec::new();
    for name in &names {
        let e = &listed[name];
        match &e.chunks {
            Some(sums) if defer(name) => {
                later.insert(
                    name.clone(),
                    Deferred {
                        size: e.size,
                        chunk: e.chunk,
                        sums: sums.clone(),
                    },
                );
            }
            _ => now.push((name.clone(), e.chunk)),
        }
    }
    let got = sums(dir, &now)?;
    let mut bytes = later.values().map(|d| d.size).sum::<u64>();
    for ((name, _), (size, sum, _)) in now.iter().zip(got) {
        if sum != listed[name].sum {
            return Err(err(
                &dir.join(name),
                format!("its checksum differs from {MANIFEST}: the file changed since the dump"),
            ));
        }
        bytes += size;
    }
    Ok((
        Verified::Intact {
            files: names.len(),
            bytes,
        },
        later,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("crest-manifest-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_and_every_kind_of_change() {
        let d = tmpdir("rt");
        std::fs::write(d.join("core-1.img"), b"abc").unwrap();
        std::fs::write(d.join("pages-1.img"), vec![7u8; 100_000]).unwrap();
        std::fs::write(d.join("dump.log"), b"log").unwrap();
        assert_eq!(verify(&d).unwrap(), Verified::NoManifest);
        write(&d).unwrap();
        assert_eq!(
            verify(&d).unwrap(),
            Verified::Intact {
                files: 2,
                bytes: 100_003
            }
        );
        // logs, stats and pidfiles may come and go
        std::fs::write(d.join("restore.log"), b"x").unwrap();
        std::fs::write(d.join("stats-restore"), b"x").unwrap();
        std::fs::write(d.join("restore.pid"), b"42").unwrap();
        assert!(verify(&d).is_ok());
        // a flipped bit
        let mut p = std::fs::read(d.join("pages-1.img")).unwrap();
        p[50_000] ^= 1;
        std::fs::write(d.join("pages-1.img"), &p).unwrap();
        let e = verify(&d).unwrap_err().to_string();
        assert!(e.contains("pages-1.img") && e.contains("checksum"), "{e}");
        p[50_000] ^= 1;
        std::fs::write(d.join("pages-1.img"), &p).unwrap();
        // cut short
        std::fs::write(d.join("core-1.img"), b"ab").unwrap();
        assert!(verify(&d).unwrap_err().to_string().contains("core-1.img"));
        std::fs::write(d.join("core-1.img"), b"abc").unwrap();
        // an extra image, a missing one
        std::fs::write(d.join("mm-2.img"), b"").unwrap();
        assert!(verify(&d).unwrap_err().to_string().contains("mm-2.img"));
        std::fs::remove_file(d.join("mm-2.img")).unwrap();
        std::fs::remove_file(d.join("core-1.img")).unwrap();
        assert!(verify(&d).unwrap_err().to_string().contains("core-1.img"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn deferred_pages_are_checked_a_chunk_at_a_time() {
        let d = tmpdir("chunks");
        std::fs::write(d.join("core-1.img"), b"abc").unwrap();
        let mut pages = vec![3u8; (2 * CHUNK + 100) as usize];
        std::fs::write(d.join("pages-1.img"), &pages).unwrap();
        write(&d).unwrap();
        // a chunk changed: the deferring check passes, the chunk's fails
        pages[(CHUNK + 5) as usize] ^= 1;
        std::fs::write(d.join("pages-1.img"), &pages).unwrap();
        assert!(verify(&d).is_err());
        let (v, later) = verify_deferring(&d, &|n| n.starts_with("pages-")).unwrap();
        assert_eq!(
            v,
            Verified::Intact {
                files: 2,
                bytes: 2 * CHUNK + 103
            }
        );
        let p = &later["pages-1.img"];
        assert_eq!(p.sums.len(), 3);
        assert_eq!(deferred(&d).unwrap()["pages-1.img"], *p);
        let mut buf = Vec::new();
        let path = d.join("pages-1.img");
        check_chunk(&path, p, 0, &mut buf).unwrap();
        assert_eq!(buf.len(), CHUNK as usize);
        let e = check_chunk(&path, p, 1, &mut buf).unwrap_err().to_string();
        assert!(e.contains("pages-1.img") && e.contains("differ"), "{e}");
        check_chunk(&path, p, 2, &mut buf).unwrap();
        assert_eq!(buf.len(), 100);
        assert!(check_chunk(&path, p, 3, &mut buf).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn bad_manifests_are_refused() {
        let p = Path::new("m");
        assert!(parse(p, "").is_err());
        assert!(parse(p, "garbage\n").is_err());
        let h = format!("{HEADER}\n");
        assert!(parse(p, &format!("{h}00 1 a.img\n")).is_err());
        assert!(parse(p, &format!("{h}{:032x} x a.img\n", 1)).is_err());
        assert!(parse(p, &format!("{h}{:032x} 1 ../a.img\n", 1)).is_err());
        assert!(parse(p, &format!("{h}{:032x} 1 a.img\n{:032x} 1 a.img\n", 1, 2)).is_err());
        let ok = parse(p, &format!("{h}{:032x} 12 a b.img\n", 5)).unwrap();
        assert_eq!((ok["a b.img"].size, ok["a b.img"].sum), (12, 5));
        // chunk sums that do not make the file's sum
        let two = format!(
            "{h}{:032x} {} pages-1.img\nchunks {}{} pages-1.img\n",
            5,
            CHUNK + 1,
            "0".repeat(32),
            "1".repeat(32)
        );
        assert!(parse(p, &two).is_err());
        // a version 1 manifest
        let v1 = parse(p, &format!("{HEADER_V1}\n{:032x} 12 a.img\n", 5)).unwrap();
        assert_eq!(v1["a.img"].chunk, CHUNK_V1);
    }
}
