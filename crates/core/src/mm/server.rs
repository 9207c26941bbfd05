//! CRIU's page server: a dump sends its tasks' pages over TCP instead of
//! writing them, and `crest page-server` on the other side writes them
//! into its images directory (`pagemap-<pid>.img`, `pages-<n>.img`), where
//! the rest of the images are copied later. For iterative migration each
//! round has its page server; one started with `--prev-images-dir` tells
//! the dump that the parent images are there, and the dump then marks the
//! pages its tracking says are unchanged as the parent's.
//!
//! The protocol is CRIU's: each command is a `struct page_server_iov`
//! (`u32 cmd` with the pagemap flags in its upper 16 bits, `u64 nr_pages`,
//! `u64 vaddr`, `u64 dst_id` = task id << 8 | 1), native byte order, 32
//! bytes. `OPEN2` opens a task's pagemap and is answered with one byte
//! (whether the parent images hold that task); `ADD_F` adds an entry, its
//! pages following when it is `PE_PRESENT`; `CLOSE` ends the session and
//! is answered with a 4-byte status. Shared memory stays in the dump's own
//! images directory.

use crate::error::DumpError;
use crate::mm::pages;
use crest_images::pb::{PagemapEntry, PagemapHead};
use crest_images::{magic, names, ImageWriter, RawWriter, PE_LAZY, PE_PARENT, PE_PRESENT};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;

const PS_IOV_OPEN2: u32 = 4;
const PS_IOV_PARENT: u32 = 5;
const PS_IOV_ADD_F: u32 = 6;
const PS_IOV_CLOSE: u32 = 0x1023;
const PS_IOV_FORCE_CLOSE: u32 = 0x1024;
const PS_CMD_BITS: u32 = 16;
const PS_TYPE_BITS: u64 = 8;
const PS_TYPE_PID: u64 = 1;
const IOV_LEN: usize = 32;
/// Bytes of pages moved at a time.
const CHUNK: usize = 4 << 20;
/// Most pages one entry may carry (64 TiB).
const MAX_ENTRY_PAGES: u64 = 1 << 34;

/// One `struct page_server_iov`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Iov {
    cmd: u32,
    flags: u32,
    nr_pages: u64,
    vaddr: u64,
    dst_id: u64,
}

impl Iov {
    fn bytes(&self) -> [u8; IOV_LEN] {
        let mut b = [0u8; IOV_LEN];
        b[0..4].copy_from_slice(&(self.flags << PS_CMD_BITS | self.cmd).to_ne_bytes());
        b[8..16].copy_from_slice(&self.nr_pages.to_ne_bytes());
        b[16..24].copy_from_slice(&self.vaddr.to_ne_bytes());
        b[24..32].copy_from_slice(&self.dst_id.to_ne_bytes());
        b
    }

    fn parse(b: &[u8; IOV_LEN]) -> Iov {
        let word = |r: std::ops::Range<usize>| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[r]);
            u64::from_ne_bytes(w)
        };
        let cmd = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        Iov {
            cmd: cmd & ((1 << PS_CMD_BITS) - 1),
            flags: cmd >> PS_CMD_BITS,
            nr_pages: word(8..16),
            vaddr: word(16..24),
            dst_id: word(24..32),
        }
    }
}

fn task_dst(id: u32) -> u64 {
    u64::from(id) << PS_TYPE_BITS | PS_TYPE_PID
}

/// The dump's end of a page server session.
pub struct Client {
    sock: TcpStream,
}

impl Client {
    /// Connects to the page server at `address:port`.
    pub fn connect(address: &str, port: u16) -> io::Result<Client> {
        let sock = TcpStream::connect((address, port))?;
        sock.set_nodelay(true)?;
        Ok(Client { sock })
    }

    /// A session on an already connected socket (CRIU's `--ps-socket`).
    pub fn from_socket(fd: std::os::fd::OwnedFd) -> Client {
        Client {
            sock: TcpStream::from(fd),
        }
    }

    /// Opens task `id`'s pagemap on the server: whether its parent images
    /// hold that task.
    pub fn open(&mut self, id: u32) -> io::Result<bool> {
        let iov = Iov {
            cmd: PS_IOV_OPEN2,
            dst_id: task_dst(id),
            ..Iov::default()
        };
        self.sock.write_all(&iov.bytes())?;
        let mut has_parent = [0u8; 1];
        self.sock.read_exact(&mut has_parent)?;
        Ok(has_parent[0] != 0)
    }

    /// Sends task `id`'s pagemap `entries` (of pid `pid`), the pages of its
    /// `PE_PRESENT` entries read from the task: `copied` holds them, in
    /// order. Returns the bytes of pages sent.
    pub fn send(
        &mut self,
        (pid, id): (i32, u32),
        entries: &[PagemapEntry],
        copied: &[pages::Run],
    ) -> Result<u64, DumpError> {
        let io = |step: &'static str| {
            move |e: io::Error| DumpError::Io {
                pid,
                step,
                source: e,
            }
        };
        let mut runs = copied.iter();
        let mut buf = Vec::new();
        let mut sent = 0u64;
        for e in entries {
            let flags = e.flags.unwrap_or(PE_PRESENT);
            let iov = Iov {
                cmd: PS_IOV_ADD_F,
                flags,
                nr_pages: e.pages(),
                vaddr: e.vaddr,
                dst_id: task_dst(id),
            };
            self.sock
                .write_all(&iov.bytes())
                .map_err(io("send a pagemap entry to the page server"))?;
            if flags & PE_PRESENT == 0 {
                continue;
            }
            let r = runs.next().ok_or_else(|| DumpError::Io {
                pid,
                step: "match the pagemap with the pages read",
                source: io::Error::from_raw_os_error(libc::EINVAL),
            })?;
            let len = r.pages * super::PAGE;
            let mut at = 0u64;
            while at < len {
                let n = (len - at).min(CHUNK as u64) as usize;
                buf.resize(n, 0);
                pages::read_part(pid, r, at, &mut buf)?;
                self.sock
                    .write_all(&buf)
                    .map_err(io("send pages to the page server"))?;
                at += n as u64;
            }
            sent += len;
            crate::progress::pages(len);
        }
        Ok(sent)
    }

    /// Ends the session: the server has written everything once it
    /// answers.
    pub fn close(mut self) -> io::Result<()> {
        let iov = Iov {
            cmd: PS_IOV_CLOSE,
            ..Iov::default()
        };
        self.sock.write_all(&iov.bytes())?;
        let mut status = [0u8; 4];
        self.sock.read_exact(&mut status)?;
        match i32::from_ne_bytes(status) {
            0 => Ok(()),
            s => Err(io::Error::other(format!(
                "the page server answered status {s}"
            ))),
        }
    }
}

/// The pagemap being written by the server.
struct Open {
    id: u32,
    map: ImageWriter,
    pages: RawWriter,
    pages_name: String,
}

/// The server's session: the images it writes.
struct Session<'a> {
    dir: &'a Path,
    next_pages_id: u32,
    open: Option<Open>,
    written: Vec<String>,
}

impl Session<'_> {
    fn close_open(&mut self) -> io::Result<()> {
        if let Some(o) = self.open.take() {
            o.map.finish().map_err(io::Error::other)?;
            o.pages.finish().map_err(io::Error::other)?;
            self.written.push(names::pagemap(o.id));
            self.written.push(o.pages_name);
        }
        Ok(())
    }

    fn open(&mut self, dst: u64) -> io::Result<bool> {
        self.close_open()?;
        let id = task_id(dst)?;
        let pages_id = self.next_pages_id;
        self.next_pages_id += 1;
        let mut map = ImageWriter::create(self.dir, &names::pagemap(id), magic::PAGEMAP)
            .map_err(io::Error::other)?;
        map.write_entry(&PagemapHead { pages_id })
            .map_err(io::Error::other)?;
        let pages_name = names::pages(pages_id);
        let pages = crest_images::create_raw(self.dir, &pages_name).map_err(io::Error::other)?;
        self.open = Some(Open {
            id,
            map,
            pages,
            pages_name,
        });
        Ok(self.has_parent(id))
    }

    fn has_parent(&self, id: u32) -> bool {
        self.dir.join("parent").join(names::pagemap(id)).exists()
    }

    fn add(&mut self, iov: &Iov, sock: &mut TcpStream) -> io::Result<()> {
        let id = task_id(iov.dst_id)?;
        let o = match &mut self.open {
            Some(o) if o.id == id => o,
            _ => {
                return Err(bad(format!(
                    "pages for task {id}, whose pagemap is not open"
                )))
            }
        };
        if iov.nr_pages == 0
            || iov.nr_pages > MAX_ENTRY_PAGES
            || !iov.vaddr.is_multiple_of(super::PAGE)
        {
            return Err(bad(format!(
                "an entry of {} pages at {:#x}",
                iov.nr_pages, iov.vaddr
            )));
        }
        if iov.flags & !(PE_PARENT | PE_LAZY | PE_PRESENT) != 0 {
            return Err(bad(format!("unknown pagemap flags {:#x}", iov.flags)));
        }
        o.map
            .write_entry(&PagemapEntry {
                vaddr: iov.vaddr,
                compat_nr_pages: u32::try_from(iov.nr_pages).unwrap_or(u32::MAX),
                in_parent: None,
                flags: Some(iov.flags),
                nr_pages: Some(iov.nr_pages),
            })
            .map_err(io::Error::other)?;
        if iov.flags & PE_PRESENT == 0 {
            return Ok(());
        }
        let mut left = iov.nr_pages * super::PAGE;
        let mut buf = vec![0u8; CHUNK.min(left as usize)];
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            sock.read_exact(&mut buf[..n])?;
            o.pages.write_all(&buf[..n]).map_err(io::Error::other)?;
            left -= n as u64;
        }
        Ok(())
    }
}

fn task_id(dst: u64) -> io::Result<u32> {
    if dst & ((1 << PS_TYPE_BITS) - 1) != PS_TYPE_PID {
        return Err(bad(format!(
            "pages of kind {} (only tasks' are taken)",
            dst & ((1 << PS_TYPE_BITS) - 1)
        )));
    }
    u32::try_from(dst >> PS_TYPE_BITS).map_err(|_| bad(format!("task id {}", dst >> PS_TYPE_BITS)))
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("page server: {what}"))
}

/// Serves one session on `listener` into `dir`: the files written. The
/// images' checksums of what it wrote go into `crest-manifest.page-server`.
pub fn serve(listener: &TcpListener, dir: &Path) -> io::Result<Vec<String>> {
    let (mut sock, peer) = listener.accept()?;
    crate::info!("page server: session from {peer}");
    sock.set_nodelay(true)?;
    let mut s = Session {
        dir,
        next_pages_id: 1,
        open: None,
        written: Vec::new(),
    };
    loop {
        let mut b = [0u8; IOV_LEN];
        match sock.read_exact(&mut b) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(bad("the dump ended the session before closing it".into()))
            }
            Err(e) => return Err(e),
        }
        let iov = Iov::parse(&b);
        match iov.cmd {
            PS_IOV_OPEN2 => {
                let has_parent = s.open(iov.dst_id)?;
                sock.write_all(&[u8::from(has_parent)])?;
            }
            PS_IOV_PARENT => {
                let has = i32::from(s.has_parent(task_id(iov.dst_id)?));
                sock.write_all(&has.to_ne_bytes())?;
            }
            PS_IOV_ADD_F => s.add(&iov, &mut sock)?,
            PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE => {
                s.close_open()?;
                crest_images::manifest::write_part(dir, PART, &s.written)
                    .map_err(io::Error::other)?;
                sock.write_all(&0i32.to_ne_bytes())?;
                if iov.cmd == PS_IOV_CLOSE {
                    // (the dump closes first: no TIME_WAIT here)
                    let mut rest = [0u8; 1];
                    let _ = sock.read(&mut rest);
                }
                return Ok(s.written);
            }
            other => return Err(bad(format!("unknown command {other:#x}"))),
        }
    }
}

/// The manifest part the page server writes.
pub const PART: &str = "page-server";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iov_round_trips_with_flags() {
        let i = Iov {
            cmd: PS_IOV_ADD_F,
            flags: PE_PRESENT,
            nr_pages: 3,
            vaddr: 0x7000_0000,
            dst_id: task_dst(42),
        };
        let b = i.bytes();
        assert_eq!(
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            PE_PRESENT << 16 | 6
        );
        assert_eq!(Iov::parse(&b), i);
        assert_eq!(task_id(i.dst_id).unwrap(), 42);
        assert!(task_id(42 << 8 | 2).is_err());
    }
}
