//! Unix sockets of every type (stream, datagram, seqpacket).
//!
//! Dump: sock_diag gives each socket's name, peer, pending connections and
//! queue lengths; crest's copy of the fd (`pidfd_getfd`) gives the options
//! and, with `MSG_PEEK` from offset 0 (`SO_PEEK_OFF`, put back after), the
//! queued data without consuming it (`sk-queues.img`). A client whose
//! connection is not accepted yet is recorded with the listener as its
//! peer. A socket connected to one outside the dumped tree is refused,
//! naming the other socket.
//!
//! Restore, inside the task: a connected pair comes back with
//! `socketpair`, a listener with `bind` + `listen`, a pending client or a
//! one-way datagram socket with `connect` to its peer's name; then crest
//! refills each receive queue by sending from the peer (or, for a named
//! unconnected receiver, from a throwaway socket), sets the options and
//! the shutdown state.
//!
//! Known limits: an accepted socket is not bound again (the listener holds
//! the name), so a client's `getpeername` comes back empty; the senders of
//! queued datagrams are not kept.

use super::kept::{self, Kept};
use super::sockdiag::{self, UnixDiag};
use super::{skopts, FileTable};
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::remote::Remote;
use crest_images::pb::{FdTypes, FileEntry, FilePermsEntry, FownEntry, SkPacketEntry, UnixSkEntry};
use crest_images::MAX_QUEUE;
use crest_images::{magic, names, ImageReader};
use crest_inject::{nr, Tracee};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

const TCP_ESTABLISHED: u32 = 1;
const TCP_LISTEN: u32 = 10;
const TCP_CLOSE: u32 = 7;
/// `unix_sk_entry.uflags`: a socket outside the tree (CRIU's USK_EXTERN),
/// the peer a datagram socket connects to by name again.
const USK_EXTERN: u32 = 1;

/// Most packets crest keeps from one socket's queue (bytes:
/// `crest_images::MAX_QUEUE`).
const MAX_PACKETS: usize = 4096;

/// What the dump learnt about unix sockets so far.
#[derive(Default)]
pub struct UnixDump {
    /// sock_diag of each network namespace, by its inode.
    diags: HashMap<u64, HashMap<u32, UnixDiag>>,
    /// Queued packets by file id, in queue order.
    pub queues: Vec<(u32, Vec<Queued>)>,
    /// Every dumped socket: inode → who holds it and what it is.
    socks: HashMap<u32, Held>,
    /// Files passed in queued packets (`SCM_RIGHTS`), not dumped yet:
    /// (queue, packet, crest's copies, the pid whose socket holds them).
    pub(crate) flight: Vec<(usize, usize, Vec<OwnedFd>, i32)>,
    /// crest's copies of files in flight, open until the dump ends (their
    /// descriptions are compared with `kcmp`).
    pub(crate) flight_held: Vec<OwnedFd>,
    /// While a file in flight is dumped: the task whose namespaces stand
    /// for crest's (the socket's net namespace, its cwd).
    pub(crate) ctx: Option<i32>,
}

/// A packet queued on a socket: its bytes, and the files passed with it
/// (file ids).
#[derive(Debug, Clone, Default)]
pub struct Queued {
    pub data: Vec<u8>,
    pub rights: Vec<u32>,
    /// The sender's pid (crest's view at dump), uid and gid, kept where
    /// the receiver reads them (`SO_PASSCRED`).
    pub creds: Option<(i32, u32, u32)>,
}

struct Held {
    pid: i32,
    fd: i32,
    netns: u64,
    peer: u32,
    /// SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET.
    ty: i32,
    /// The peer is a listener and this connection is not accepted yet.
    pending: bool,
}

fn netns_of(pid: i32) -> Result<u64, DumpError> {
    let m = std::fs::metadata(format!("/proc/{pid}/ns/net")).at(pid, "stat the net namespace")?;
    Ok(m.ino())
}

fn show_name(name: &[u8]) -> String {
    if name.first() == Some(&0) {
        format!("@{}", String::from_utf8_lossy(&name[1..]))
    } else {
        String::from_utf8_lossy(name).into_owned()
    }
}

impl FileTable {
    /// Dumps the unix socket `ino` behind `fd` of `pid` (`copy` is crest's
    /// copy of it); returns its file id.
    pub(crate) fn dump_unix(
        &mut self,
        pid: i32,
        fd: i32,
        ino: u32,
        flags: u32,
        copy: &OwnedFd,
    ) -> Result<u32, DumpError> {
        let unsupported = |kind: String| DumpError::UnsupportedFd { pid, fd, kind };
        // (a socket in flight: found through the task that holds its queue)
        let ctx = self.unix.ctx.unwrap_or(pid);
        let netns = netns_of(ctx)?;
        if let std::collections::hash_map::Entry::Vacant(v) = self.unix.diags.entry(netns) {
            v.insert(sockdiag::unix_sockets_of(ctx).at(pid, "sock_diag of unix sockets")?);
        }
        let diag = &self.unix.diags[&netns];
        let d = diag
            .get(&ino)
            .ok_or_else(|| {
                unsupported(format!(
                    "a unix socket (inode {ino}) sock_diag does not list"
                ))
            })?
            .clone();
        let ty = i32::from(d.ty);
        if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&ty) {
            return Err(unsupported(format!("a unix socket of type {ty}")));
        }
        let name = d.name.clone().unwrap_or_default();
        let mut perms = None;
        let mut deleted = None;
        let mut name_dir = None;
        // a chrooted task's name is a path in its chroot: the restore
        // binds there (`in_root`)
        let mut crest_root = None;
        if !name.is_empty() && name[0] != 0 && crate::procfs::chrooted(ctx) {
            if name[0] != b'/' {
                return Err(unsupported(format!(
                    "a unix socket bound to the relative path {} by a chrooted task",
                    show_name(&name)
                )));
            }
            let root =
                crate::procfs::read_link(&format!("/proc/{ctx}/root")).at(pid, "read root")?;
            if !root.starts_with('/') || root.ends_with(" (deleted)") {
                return Err(unsupported(format!(
                    "a unix socket bound to {} in the chroot {root}",
                    show_name(&name)
                )));
            }
            crest_root = Some(root);
        }
        if !name.is_empty() && name[0] != 0 {
            let full = if name[0] == b'/' {
                show_name(&name)
            } else {
                // bound to a relative path: in the task's cwd, where it is
                // found again (CRIU's name_dir)
                let cwd =
                    crate::procfs::read_link(&format!("/proc/{ctx}/cwd")).at(pid, "read cwd")?;
                let full = format!("{}/{}", cwd.trim_end_matches('/'), show_name(&name));
                let m = std::fs::symlink_metadata(format!("/proc/{ctx}/root{full}")).ok();
                let found = m
                    .zip(d.vfs)
                    .is_some_and(|(m, (vino, _))| m.ino() == u64::from(vino));
                if !found {
                    return Err(unsupported(format!(
                        "a unix socket bound to the relative path {} that is not in the \
                         task's cwd ({cwd})",
                        show_name(&name)
                    )));
                }
                name_dir = Some(cwd);
                full
            };
            let path = format!("/proc/{ctx}/root{full}");
            let m = std::fs::symlink_metadata(&path).ok();
            let same = m
                .as_ref()
                .zip(d.vfs)
                .is_some_and(|(m, (vino, _))| m.ino() == u64::from(vino));
            if !same && d.state != TCP_ESTABLISHED as u8 {
                // its file was removed, or replaced by another: bound
                // again (the other stepping aside), then removed again
                deleted = Some(true);
            }
            perms = m.filter(|_| same).map(|m| FilePermsEntry {
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
            });
        }
        // A connection not accepted yet: sock_diag shows no peer (the
        // embryo in the listener's queue has no inode) and the listener
        // lists the client among its pending connections; record the
        // listener as the peer.
        let mut peer = d.peer;
        let mut pending = false;
        let connected = u32::from(d.state) == TCP_ESTABLISHED && ty != libc::SOCK_DGRAM;
        if peer == 0 && connected {
            if let Some(l) = diag
                .values()
                .find(|l| u32::from(l.state) == TCP_LISTEN && l.icons.contains(&ino))
            {
                if d.rqlen.1 != 0 {
                    return Err(unsupported(format!(
                        "a unix socket that sent data on a connection to {} not accepted yet",
                        show_name(l.name.as_deref().unwrap_or_default())
                    )));
                }
                peer = l.ino;
                pending = true;
            } else if d.shutdown & 3 != 3 {
                return Err(unsupported(
                    "a unix socket connected to a socket outside the dumped tree (a connection \
                     a listener the tree does not hold has not accepted yet)"
                        .into(),
                ));
            }
            // Else its peer is closed: it comes back as one end of a pair
            // whose other end is closed after its queue is refilled.
        }
        let packets = if u32::from(d.state) == TCP_LISTEN {
            Vec::new()
        } else {
            peek_queue(copy, ty, d.rqlen.0 as usize)
                .at(pid, "peek at a unix socket's queue")?
                .map_err(unsupported)?
        };
        let opts = skopts::dump(copy).at(pid, "read socket options")?;
        // the receiver reads who sent each message (SO_PASSCRED): a sender
        // of the tree is named again at restore; a message sent with no
        // credentials (neither end had SO_PASSCRED then: it reads as pid 0
        // and the overflow ids) is refilled so too
        let none = (
            crate::ns::user::overflow_uid(),
            crate::ns::user::overflow_gid(),
        );
        for (_, _, c) in &packets {
            match *c {
                None => {}
                Some((0, uid, gid)) if (uid, gid) == none => {}
                Some((p, _, _)) if p != 0 && self.tree.contains(&p) => {}
                Some((p, uid, gid)) => {
                    return Err(unsupported(format!(
                        "a unix socket with SO_PASSCRED holding a message from pid {p} (uid \
                         {uid}, gid {gid}), which is not in the dumped tree"
                    )))
                }
            }
        }
        let backlog = if u32::from(d.state) == TCP_LISTEN {
            d.rqlen.1
        } else {
            0
        };
        let usk = UnixSkEntry {
            id: 0,
            ino,
            r#type: ty as u32,
            state: u32::from(d.state),
            flags,
            uflags: 0,
            backlog,
            peer,
            fown: FownEntry::default(),
            opts,
            name,
            shutdown: (d.shutdown != 0).then_some(i32::from(d.shutdown & 3)),
            file_perms: perms,
            name_dir,
            crest_root,
            deleted,
        };
        let id = self.push(FileEntry {
            r#type: FdTypes::Unixsk as i32,
            id: 0,
            usk: Some(UnixSkEntry { id: 0, ..usk }),
            ..FileEntry::default()
        });
        if !packets.is_empty() {
            let q = self.unix.queues.len();
            let mut list = Vec::with_capacity(packets.len());
            for (i, (data, fds, creds)) in packets.into_iter().enumerate() {
                if !fds.is_empty() {
                    self.unix.flight.push((q, i, fds, ctx));
                }
                list.push(Queued {
                    data,
                    rights: Vec::new(),
                    creds: creds.filter(|c| c.0 != 0),
                });
            }
            self.unix.queues.push((id, list));
        }
        self.unix.socks.insert(
            ino,
            Held {
                pid,
                fd,
                netns,
                peer,
                ty,
                pending,
            },
        );
        Ok(id)
    }

    /// After every task: each connected unix socket's peer must be in the
    /// dump, held by the same task (crest rebuilds connections inside one
    /// task).
    pub(crate) fn check_unix(&mut self) -> Result<(), DumpError> {
        let mut inos: Vec<_> = self.unix.socks.keys().copied().collect();
        inos.sort_unstable();
        // (peer inode, its name, its type)
        let mut outside: Vec<(u32, Vec<u8>, i32)> = Vec::new();
        for ino in inos {
            let h = &self.unix.socks[&ino];
            if h.peer == 0 {
                continue;
            }
            let err = |kind: String| DumpError::UnsupportedFd {
                pid: h.pid,
                fd: h.fd,
                kind,
            };
            let Some(p) = self.unix.socks.get(&h.peer) else {
                let peer_name = self
                    .unix
                    .diags
                    .get(&h.netns)
                    .and_then(|d| d.get(&h.peer))
                    .and_then(|p| p.name.clone());
                let name = peer_name
                    .as_deref()
                    .map_or("an unnamed socket".to_string(), show_name);
                // --ext-unix-sk=INO: the caller gives a socket to stand
                // for this one at restore, whatever its type
                if self.ext_unix_sk_ids.contains(&ino) {
                    crate::info!(
                        "fd {} of pid {}: unix socket {ino} is connected to {name} (inode {}) \
                         outside the tree; restore it with --inherit-fd fd[N]:socket:[{ino}]",
                        h.fd,
                        h.pid,
                        h.peer
                    );
                    if !outside.iter().any(|(i, _, _)| *i == h.peer) {
                        outside.push((h.peer, peer_name.unwrap_or_default(), h.ty));
                    }
                    continue;
                }
                // --ext-unix-sk: a datagram socket connected to a named
                // socket outside (a host's /dev/log) connects to the name
                // again at restore
                if let Some(n) = peer_name.filter(|n| {
                    self.ext_unix_sk
                        && h.ty == libc::SOCK_DGRAM
                        && n.first().is_some_and(|c| *c != 0)
                }) {
                    if !outside.iter().any(|(i, _, _)| *i == h.peer) {
                        outside.push((h.peer, n, libc::SOCK_DGRAM));
                    }
                    continue;
                }
                let hint = if self.ext_unix_sk {
                    format!(
                        " (--ext-unix-sk carries datagram sockets connected to a path; \
                         --ext-unix-sk={ino} lets the restore's caller give a socket for it)"
                    )
                } else {
                    format!(
                        "; dump with --ext-unix-sk to reconnect a datagram socket to its path, \
                         or --ext-unix-sk={ino} to have the restore's caller give a socket for it"
                    )
                };
                return Err(err(format!(
                    "a unix socket connected to {name} (inode {}) outside the dumped tree{hint}",
                    h.peer
                )));
            };
            let holders = self.sock_holders.get(&ino);
            let peer_holders = self.sock_holders.get(&h.peer);
            let together = holders
                .zip(peer_holders)
                .is_some_and(|(a, b)| a.iter().any(|x| b.contains(x)));
            if !together {
                let what = if h.pending { "listener" } else { "peer" };
                crate::debug!(
                    "unix socket {ino} of pid {} and its {what} {} of pid {} are in different tasks",
                    h.pid,
                    h.peer,
                    p.pid
                );
            }
        }
        // the outside peers, as CRIU writes them: entries no fd uses,
        // marked external
        for (ino, name, ty) in outside {
            self.push(FileEntry {
                r#type: FdTypes::Unixsk as i32,
                id: 0,
                usk: Some(UnixSkEntry {
                    id: 0,
                    ino,
                    r#type: ty as u32,
                    state: TCP_CLOSE,
                    flags: 0,
                    uflags: USK_EXTERN,
                    backlog: 0,
                    peer: 0,
                    fown: FownEntry::default(),
                    opts: crest_images::pb::SkOptsEntry::default(),
                    name,
                    shutdown: None,
                    file_perms: None,
                    name_dir: None,
                    crest_root: None,
                    deleted: None,
                }),
                ..FileEntry::default()
            });
        }
        Ok(())
    }
}

/// The data queued on a socket, packet by packet, with the files passed
/// beside each (crest's copies; the queue keeps them), read with
/// `MSG_PEEK` from offset 0; `Err(kind)` for a queue crest cannot keep.
/// Stream data comes as one piece but where files were passed: a peek
/// stops after the message that carried files, and hands them with all
/// the bytes queued since the previous such message (the kernel shows no
/// boundary in between; CRIU's queues are the same).
fn peek_queue(copy: &OwnedFd, ty: i32, stream_len: usize) -> std::io::Result<PeekResult> {
    use crest_sys::net::{getsockopt_int, setsockopt_int};
    let fd = copy.as_fd();
    let old = getsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
    setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    let res = if ty == libc::SOCK_STREAM {
        peek_stream(copy, stream_len)
    } else {
        peek_packets(copy)
    };
    setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old)?;
    res
}

type Peeked = Vec<(Vec<u8>, Vec<OwnedFd>, Option<(i32, u32, u32)>)>;
type PeekResult = Result<Peeked, String>;

fn peek_stream(copy: &OwnedFd, stream_len: usize) -> std::io::Result<PeekResult> {
    use crest_sys::net::{recvmsg, setsockopt_int};
    let mut out = Vec::new();
    if stream_len > MAX_QUEUE {
        return Ok(Err(format!("a unix socket with {stream_len} bytes queued")));
    }
    let mut off = 0;
    while off < stream_len {
        setsockopt_int(copy, libc::SOL_SOCKET, libc::SO_PEEK_OFF, off as i32)?;
        let mut data = vec![0u8; stream_len - off];
        let r = recvmsg(copy, &mut data, libc::MSG_PEEK | libc::MSG_DONTWAIT)?;
        if r.len == 0 {
            return Ok(Err(format!(
                "a unix socket whose {stream_len} queued bytes could not all be read ({off})"
            )));
        }
        if r.flags & libc::MSG_CTRUNC != 0 {
            return Ok(Err(
                "a unix socket with more files in a message than crest reads".into(),
            ));
        }
        data.truncate(r.len);
        off += r.len;
        out.push((data, r.fds, r.creds));
        if out.len() > MAX_PACKETS {
            return Ok(Err(format!(
                "a unix socket with more than {MAX_PACKETS} messages queued"
            )));
        }
    }
    Ok(Ok(out))
}

fn peek_packets(copy: &OwnedFd) -> std::io::Result<PeekResult> {
    use crest_sys::net::recvmsg;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 19];
    let mut total = 0;
    loop {
        let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC;
        let r = match recvmsg(copy, &mut buf, flags) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => break,
            Err(e) => return Err(e),
        };
        if r.flags & libc::MSG_CTRUNC != 0 {
            return Ok(Err(
                "a unix socket with more files in a message than crest reads".into(),
            ));
        }
        if r.len > buf.len() {
            return Ok(Err(format!(
                "a unix socket with a {}-byte datagram queued",
                r.len
            )));
        }
        total += r.len;
        out.push((buf[..r.len].to_vec(), r.fds, r.creds));
        if out.len() > MAX_PACKETS || total > MAX_QUEUE {
            return Ok(Err(format!(
                "a unix socket with more than {MAX_PACKETS} packets or {MAX_QUEUE} bytes queued"
            )));
        }
    }
    Ok(Ok(out))
}

/// Writes `sk-queues.img`: per queued packet an `sk_packet_entry`, then
/// its bytes.
pub fn write_queues(dir: &Path, table: &FileTable) -> Result<(), DumpError> {
    let mut w = crest_images::ImageWriter::create(dir, names::SK_QUEUES, magic::SK_QUEUES)?;
    for (id, packets) in &table.unix.queues {
        for p in packets {
            let scm = if p.rights.is_empty() {
                Vec::new()
            } else {
                vec![crest_images::pb::ScmEntry {
                    r#type: libc::SCM_RIGHTS as u32,
                    rights: p.rights.clone(),
                }]
            };
            w.write_entry(&SkPacketEntry {
                id_for: *id,
                length: p.data.len() as u32,
                scm,
                ucred: p
                    .creds
                    .map(|(pid, uid, gid)| crest_images::pb::SkUcredEntry {
                        uid,
                        gid,
                        pid: pid as u32,
                    }),
                crest_from: None,
            })?;
            w.write_payload(&p.data)?;
        }
    }
    w.finish()?;
    Ok(())
}

/// `sk-queues.img`, indexed by file id; which task made each socket.
#[derive(Default)]
pub struct SockImages {
    pub queues: HashMap<u32, Vec<Queued>>,
    /// file id → pid of the task that made the socket.
    pub made_by: HashMap<u32, i32>,
    /// Queued UDP datagrams by file id: (sender, data).
    pub udp: super::inet::UdpQueues,
    /// The images directory (TCP streams are read when needed).
    pub dir: std::path::PathBuf,
    /// `--shell-job` at restore.
    pub shell_job: bool,
    /// `--tcp-close` at restore: a connected TCP socket comes back closed.
    pub tcp_close: bool,
    /// crest's own copies of sockets a task made for another task (the
    /// other end of a pair, a listener to connect to), handed over when
    /// that task's fds are made.
    pub spare: HashMap<u32, OwnedFd>,
    /// A task's pid in the images → its pid now (crest's view), where
    /// they differ: the senders queued messages name.
    pub pid_map: HashMap<i32, i32>,
}

impl SockImages {
    pub fn read(dir: &Path) -> Result<SockImages, RestoreError> {
        let mut queues: HashMap<u32, Vec<Queued>> = HashMap::new();
        if dir.join(names::SK_QUEUES).exists() {
            let mut r = ImageReader::open(dir, names::SK_QUEUES, magic::SK_QUEUES)?;
            let mut total = 0usize;
            while let Some(e) = r.next_entry::<SkPacketEntry>()? {
                total += e.length as usize;
                if e.length as usize > MAX_QUEUE || total > 16 * MAX_QUEUE {
                    return Err(RestoreError::BadImage {
                        pid: 0,
                        file: names::SK_QUEUES.into(),
                        what: format!("socket {} claims {} bytes", e.id_for, e.length),
                    });
                }
                let mut rights = Vec::new();
                for scm in &e.scm {
                    if scm.r#type != libc::SCM_RIGHTS as u32
                        || rights.len() + scm.rights.len() > 253
                    {
                        return Err(RestoreError::BadImage {
                            pid: 0,
                            file: names::SK_QUEUES.into(),
                            what: format!(
                                "socket {}: a message with control data of type {} ({} files)",
                                e.id_for,
                                scm.r#type,
                                scm.rights.len()
                            ),
                        });
                    }
                    rights.extend_from_slice(&scm.rights);
                }
                let data = r.read_payload(u64::from(e.length))?;
                let creds = e.ucred.as_ref().map(|u| (u.pid as i32, u.uid, u.gid));
                queues.entry(e.id_for).or_default().push(Queued {
                    data,
                    rights,
                    creds,
                });
            }
        }
        Ok(SockImages {
            queues,
            made_by: HashMap::new(),
            udp: super::inet::read_udp(dir)?,
            dir: dir.to_path_buf(),
            shell_job: false,
            tcp_close: false,
            spare: HashMap::new(),
            pid_map: HashMap::new(),
        })
    }
}

fn bad(pid: i32, what: String) -> RestoreError {
    RestoreError::BadImage {
        pid,
        file: names::FILES.into(),
        what,
    }
}

fn usk_of(
    files: &super::restore::RestoreFiles,
    pid: i32,
    id: u32,
) -> Result<UnixSkEntry, RestoreError> {
    files
        .entries
        .get(&id)
        .and_then(|e| e.usk.clone())
        .ok_or_else(|| bad(pid, format!("file {id} has no unix socket entry")))
}

fn by_ino(files: &super::restore::RestoreFiles, ino: u32) -> Option<UnixSkEntry> {
    files
        .entries
        .values()
        .filter_map(|e| e.usk.as_ref())
        .find(|u| u.ino == ino)
        .cloned()
}

/// The fd for a unix socket entry: made once per task, dup'd per fd.
pub fn open(
    t: &mut Tracee,
    e: &FileEntry,
    files: &mut super::restore::RestoreFiles,
    kept: &mut Kept,
) -> Result<u64, RestoreError> {
    let pid = t.pid();
    if kept.get(e.id).is_none() {
        // --inherit-fd fd[N]:socket:[INO]: the caller's socket stands for it
        let key = e.usk.as_ref().map(|u| format!("socket:[{}]", u.ino));
        if let Some(given) = key.as_ref().and_then(|k| files.inherit.get(k)) {
            let fd = t.give_fd(given)?;
            kept.keep(t, e.id, fd)?;
            files.socks.made_by.insert(e.id, pid);
            return kept.dup(t, e.id);
        }
        if let Some(copy) = files.socks.spare.get(&e.id) {
            // made by another task together with a socket of its own
            let fd = t.give_fd(copy)?;
            kept.keep(t, e.id, fd)?;
            return kept.dup(t, e.id);
        }
        if let Some(&other) = files.socks.made_by.get(&e.id) {
            if other != pid {
                return Err(RestoreError::Unsupported {
                    pid,
                    what: format!("unix socket {} shared with pid {other}", e.id),
                });
            }
        }
        let made = make(t, e.id, files, kept)?;
        finish(t, &made, files, kept)?;
        // what was made for others stays reachable through crest
        for x in made.iter().filter(|x| x.id != e.id) {
            if let Some(slot) = kept.get(x.id) {
                let copy = kept.copy(t, slot)?;
                files.socks.spare.insert(x.id, copy);
            }
        }
    }
    kept.dup(t, e.id)
}

/// `struct sockaddr_un` for a name.
fn sockaddr(name: &[u8]) -> Vec<u8> {
    let mut a = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    a.extend_from_slice(name);
    if name.first() != Some(&0) {
        a.push(0);
    }
    a
}

fn new_socket(t: &mut Tracee, ty: u32) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    t.syscall(
        nr::SOCKET,
        &[libc::AF_UNIX as u64, u64::from(ty) | flags as u64, 0],
    )
    .rat(pid, "socket(AF_UNIX)")
}

/// Whether the entry's name belongs to another socket that comes back
/// bound (an accepted socket shares its listener's name): a name belongs
/// to its listener, else to the first socket that has it.
fn name_taken(files: &super::restore::RestoreFiles, u: &UnixSkEntry) -> bool {
    let same: Vec<&UnixSkEntry> = files
        .entries
        .values()
        .filter_map(|e| e.usk.as_ref())
        .filter(|o| o.name == u.name)
        .collect();
    let owner = same
        .iter()
        .find(|o| o.state == TCP_LISTEN)
        .or_else(|| same.iter().min_by_key(|o| o.id));
    owner.is_some_and(|o| o.ino != u.ino)
}

fn bind(t: &mut Tracee, fd: u64, u: &UnixSkEntry) -> Result<(), RestoreError> {
    let pid = t.pid();
    if let Some(root) = &u.crest_root {
        if !root.starts_with('/') || root.split('/').any(|c| c == "..") {
            return Err(RestoreError::BadImage {
                pid,
                file: crest_images::names::FILES.into(),
                what: format!("a unix socket's chroot {root:?}"),
            });
        }
    }
    let relative = u.name.first().is_some_and(|&c| c != 0 && c != b'/');
    let Some(dir) = u.name_dir.as_deref().filter(|_| relative) else {
        if relative {
            return Err(RestoreError::BadImage {
                pid,
                file: crest_images::names::FILES.into(),
                what: format!(
                    "a unix socket bound to the relative path {} without its directory",
                    show_name(&u.name)
                ),
            });
        }
        return bind_in(t, fd, u, &show_name(&u.name));
    };
    // bound from its directory, as it was: the task goes there for the
    // bind, and back
    let full = format!("{}/{}", dir.trim_end_matches('/'), show_name(&u.name));
    let dot = kept::put(t, b".\0")?;
    let back = t
        .syscall(
            nr::OPENAT,
            &[
                libc::AT_FDCWD as u64,
                dot,
                (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
                0,
            ],
        )
        .rat(pid, "open the cwd")?;
    let mut d = dir.as_bytes().to_vec();
    d.push(0);
    let at = kept::put(t, &d)?;
    let bound = t
        .syscall(nr::CHDIR, &[at])
        .rat(pid, format!("chdir {dir}"))
        .and_then(|_| bind_in(t, fd, u, &full));
    let came_back = t.syscall(nr::FCHDIR, &[back]).rat(pid, "fchdir back");
    t.close(back)?;
    bound?;
    came_back.map(drop)
}

/// The chroot a socket's name is a path in: None for the root of the
/// mount namespace.
fn chroot_of(u: &UnixSkEntry) -> Option<&str> {
    u.crest_root
        .as_deref()
        .map(|r| r.trim_end_matches('/'))
        .filter(|r| r.starts_with('/') && !r.split('/').any(|c| c == ".."))
}

/// Where crest finds path `path` of socket `u`'s root in task `pid`.
fn path_here(pid: i32, u: &UnixSkEntry, path: &str) -> String {
    format!("/proc/{pid}/root{}{path}", chroot_of(u).unwrap_or(""))
}

/// Runs `f` with `t` chrooted into `root` (a path in its mount
/// namespace) if there is one, so that a socket's name means what it
/// meant to its chrooted task; `t`'s root and cwd come back after.
fn in_root<T>(
    t: &mut Tracee,
    root: Option<&str>,
    f: impl FnOnce(&mut Tracee) -> Result<T, RestoreError>,
) -> Result<T, RestoreError> {
    let Some(root) = root else {
        return f(t);
    };
    let pid = t.pid();
    let flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    let open_dir = |t: &mut Tracee, path: &[u8]| -> Result<u64, RestoreError> {
        let at = kept::put(t, path)?;
        t.syscall(nr::OPENAT, &[libc::AT_FDCWD as u64, at, flags, 0])
            .rat(pid, "open a directory to come back to")
    };
    let cwd = open_dir(t, b".\0")?;
    let top = open_dir(t, b"/\0")?;
    let mut p = root.as_bytes().to_vec();
    p.push(0);
    let at = kept::put(t, &p)?;
    let r = match t
        .syscall(nr::CHROOT, &[at])
        .rat(pid, format!("chroot {root} for a socket's name"))
    {
        Ok(_) => {
            let r = f(t);
            // back out of the chroot through the fd of the old root
            let dot = kept::put(t, b".\0")?;
            t.syscall(nr::FCHDIR, &[top])
                .rat(pid, "fchdir to the root")?;
            t.syscall(nr::CHROOT, &[dot])
                .rat(pid, "chroot back to the root")?;
            r
        }
        Err(e) => Err(e),
    };
    t.syscall(nr::FCHDIR, &[cwd]).rat(pid, "fchdir back")?;
    for fd in [cwd, top] {
        t.close(fd)?;
    }
    r
}

/// Binds to `u`'s name, whose file is at `path` (absolute, in the task's
/// root).
fn bind_in(t: &mut Tracee, fd: u64, u: &UnixSkEntry, path: &str) -> Result<(), RestoreError> {
    let pid = t.pid();
    if u.deleted == Some(true) && u.name.first() != Some(&0) {
        return bind_deleted(t, fd, u, path);
    }
    if u.name.first() != Some(&0) {
        let here = path_here(pid, u, path);
        // The dumped socket left its file behind: remove that (and only a
        // socket file) to bind again.
        if std::fs::symlink_metadata(&here).is_ok_and(|m| m.file_type().is_socket()) {
            std::fs::remove_file(&here).rat(pid, format!("remove the old socket file {path}"))?;
        }
    }
    in_root(t, chroot_of(u), |t| {
        let addr = kept::put(t, &sockaddr(&u.name))?;
        let len = sockaddr(&u.name).len() as u64;
        t.syscall(nr::BIND, &[fd, addr, len])
            .rat(pid, format!("bind a unix socket to {}", show_name(&u.name)))
    })?;
    if let Some(p) = &u.file_perms {
        let here = path_here(pid, u, path);
        std::fs::set_permissions(&here, std::fs::Permissions::from_mode(p.mode))
            .rat(pid, "chmod a socket file")?;
        std::os::unix::fs::lchown(&here, Some(p.uid), Some(p.gid))
            .rat(pid, "chown a socket file")?;
    }
    Ok(())
}

/// A socket whose file was removed (or replaced by another file) since it
/// was bound: bound to its name again, its file (at `path`) removed again;
/// whatever holds the name now steps aside meanwhile.
fn bind_deleted(t: &mut Tracee, fd: u64, u: &UnixSkEntry, path: &str) -> Result<(), RestoreError> {
    let pid = t.pid();
    let here = path_here(pid, u, path);
    let aside = format!("{here}.crest-aside-{}", u.ino);
    let occupied = std::fs::symlink_metadata(&here).is_ok();
    if occupied {
        std::fs::rename(&here, &aside).rat(pid, format!("move {path} aside"))?;
    }
    let bound = in_root(t, chroot_of(u), |t| {
        let addr = kept::put(t, &sockaddr(&u.name))?;
        let len = sockaddr(&u.name).len() as u64;
        t.syscall(nr::BIND, &[fd, addr, len])
            .rat(pid, format!("bind a unix socket to {}", show_name(&u.name)))
    });
    let removed = if bound.is_ok() {
        std::fs::remove_file(&here).rat(pid, "remove the socket file again")
    } else {
        Ok(())
    };
    if occupied {
        std::fs::rename(&aside, &here).rat(pid, format!("move {path} back"))?;
    }
    bound?;
    removed
}

fn connect(t: &mut Tracee, fd: u64, name: &[u8]) -> Result<(), RestoreError> {
    let pid = t.pid();
    let a = sockaddr(name);
    let addr = kept::put(t, &a)?;
    t.syscall(nr::CONNECT, &[fd, addr, a.len() as u64])
        .rat(pid, format!("connect a unix socket to {}", show_name(name)))?;
    Ok(())
}

/// Makes the socket of file `id` (and what it needs first: its listener,
/// its peer); returns the entries made that still need [`finish`].
fn make(
    t: &mut Tracee,
    id: u32,
    files: &mut super::restore::RestoreFiles,
    kept: &mut Kept,
) -> Result<Vec<UnixSkEntry>, RestoreError> {
    let pid = t.pid();
    let u = usk_of(files, pid, id)?;
    let peer = if u.peer != 0 {
        Some(by_ino(files, u.peer).ok_or_else(|| {
            bad(
                pid,
                format!(
                    "unix socket {id}: peer inode {} is not in the image",
                    u.peer
                ),
            )
        })?)
    } else {
        None
    };
    let named = !u.name.is_empty();
    let mut made = Vec::new();
    match peer {
        Some(p) if p.peer == u.ino && p.state != TCP_LISTEN && u.state != TCP_LISTEN => {
            // A connected pair.
            let (a, b) = pair(t, u.r#type)?;
            for (fd, x) in [(a, &u), (b, &p)] {
                if !x.name.is_empty() && !name_taken(files, x) {
                    bind(t, fd, x)?;
                }
            }
            kept.keep(t, u.id, a)?;
            kept.keep(t, p.id, b)?;
            made.push(u.clone());
            made.push(p);
        }
        Some(p) => {
            // A client of a listener, or a datagram socket connected to
            // another that is not connected back.
            let outside = p.uflags & USK_EXTERN != 0;
            if outside && (p.name.is_empty() || u.r#type != libc::SOCK_DGRAM as u32) {
                return Err(RestoreError::Unsupported {
                    pid,
                    what: format!(
                        "unix socket {}: its peer was outside the dumped tree; give crest a \
                         socket to stand for it with --inherit-fd fd[N]:socket:[{}]",
                        u.ino, u.ino
                    ),
                });
            }
            if p.name.is_empty() {
                return Err(bad(
                    pid,
                    format!("unix socket {id} is connected to an unnamed socket"),
                ));
            }
            let elsewhere = files.socks.made_by.get(&p.id).is_some_and(|o| *o != pid);
            if kept.get(p.id).is_none() && !elsewhere && !outside {
                let before = make(t, p.id, files, kept)?;
                finish(t, &before, files, kept)?;
                for x in &before {
                    if let Some(slot) = kept.get(x.id) {
                        let copy = kept.copy(t, slot)?;
                        files.socks.spare.insert(x.id, copy);
                    }
                }
            }
            let fd = new_socket(t, u.r#type)?;
            if named && !name_taken(files, &u) {
                bind(t, fd, &u)?;
            }
            // (a name in a chroot is reached from inside it)
            in_root(t, chroot_of(&p), |t| connect(t, fd, &p.name))?;
            kept.keep(t, u.id, fd)?;
            made.push(u);
        }
        None if u.state == TCP_ESTABLISHED && u.r#type != libc::SOCK_DGRAM as u32 => {
            // Its peer was closed: one end of a pair whose other end sends
            // the queued data and is closed.
            let (a, b) = pair(t, u.r#type)?;
            if named && !name_taken(files, &u) {
                bind(t, a, &u)?;
            }
            if let Some(packets) = files.socks.queues.get(&u.id).cloned() {
                let sender = kept.copy(t, b)?;
                let rights = rights_of(t, &packets, files, kept)?;
                let map = &files.socks.pid_map;
                send_all(pid, &sender, &[], (&packets, &rights, map), u.id)?;
            }
            t.close(b)?;
            kept.keep(t, u.id, a)?;
            made.push(u);
        }
        None => {
            let fd = new_socket(t, u.r#type)?;
            if named && !name_taken(files, &u) {
                bind(t, fd, &u)?;
            }
            if u.state == TCP_LISTEN {
                t.syscall(nr::LISTEN, &[fd, u64::from(u.backlog)])
                    .rat(pid, "listen")?;
            }
            kept.keep(t, u.id, fd)?;
            made.push(u);
        }
    }
    for x in &made {
        files.socks.made_by.insert(x.id, pid);
    }
    Ok(made)
}

/// `socketpair(AF_UNIX, ty)` in the task.
fn pair(t: &mut Tracee, ty: u32) -> Result<(u64, u64), RestoreError> {
    let pid = t.pid();
    let buf = kept::put(t, &[0u8; 8])?;
    let ty = u64::from(ty) | (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64;
    t.syscall(nr::SOCKETPAIR, &[libc::AF_UNIX as u64, ty, 0, buf])
        .rat(pid, "socketpair")?;
    let mut raw = [0u8; 8];
    t.read_mem(buf, &mut raw).rat(pid, "read socketpair fds")?;
    let a = u64::from(u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]));
    let b = u64::from(u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]));
    Ok((a, b))
}

/// Refills the queues of the sockets just made, then sets their options,
/// flags and shutdown state.
fn finish(
    t: &mut Tracee,
    made: &[UnixSkEntry],
    files: &mut super::restore::RestoreFiles,
    kept: &mut Kept,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let mut copies = Vec::with_capacity(made.len());
    for u in made {
        let slot = kept
            .get(u.id)
            .ok_or_else(|| bad(pid, format!("socket {} not made", u.id)))?;
        copies.push(kept.copy(t, slot)?);
    }
    for (u, copy) in made.iter().zip(&copies) {
        let Some(packets) = files.socks.queues.get(&u.id).cloned() else {
            continue;
        };
        if u.peer == 0 && u.state == TCP_ESTABLISHED && u.r#type != libc::SOCK_DGRAM as u32 {
            continue; // refilled by its closed peer in make
        }
        fill(t, u, copy, &packets, files, kept)?;
    }
    for (u, copy) in made.iter().zip(&copies) {
        skopts::restore(copy, &u.opts).rat(pid, format!("options of unix socket {}", u.id))?;
        let status = libc::O_NONBLOCK | libc::O_ASYNC;
        crest_sys::net::set_status_flags(copy, u.flags as i32 & status)
            .rat(pid, "set socket flags")?;
        if let Some(how) = u.shutdown.filter(|s| (1..=3).contains(s)) {
            crest_sys::net::shutdown(copy, how - 1).rat(pid, "shutdown")?;
        }
    }
    Ok(())
}

/// Puts `packets` back into the receive queue of `u` by sending them from
/// its peer, or from a throwaway socket to its name.
fn fill(
    t: &mut Tracee,
    u: &UnixSkEntry,
    _own: &OwnedFd,
    packets: &[Queued],
    files: &mut super::restore::RestoreFiles,
    kept: &mut Kept,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    // the files passed in them first: making one may make sockets here
    let rights = rights_of(t, packets, files, kept)?;
    let peer = by_ino(files, u.peer).filter(|p| p.state != TCP_LISTEN);
    let (sender, to, temp) = match peer.as_ref().and_then(|p| kept.get(p.id).map(|s| (p, s))) {
        Some((p, slot)) => {
            let to = if p.peer == u.ino {
                Vec::new()
            } else {
                sockaddr(&u.name)
            };
            (kept.copy(t, slot)?, to, None)
        }
        None if !u.name.is_empty() && u.peer == 0 => {
            let fd = new_socket(t, u.r#type)?;
            let c = kept.copy(t, fd)?;
            (c, sockaddr(&u.name), Some(fd))
        }
        None => {
            return Err(RestoreError::Unsupported {
                pid,
                what: format!(
                    "data queued on unix socket {} whose sender crest cannot make again",
                    u.id
                ),
            })
        }
    };
    let map = &files.socks.pid_map;
    send_all(pid, &sender, &to, (packets, &rights, map), u.id)?;
    if let Some(fd) = temp {
        t.close(fd)?;
    }
    Ok(())
}

/// Sends `packets` from `sender` (to `to`, or its peer), its send buffer
/// raised meanwhile so the whole queue fits.
fn send_all(
    pid: i32,
    sender: &OwnedFd,
    to: &[u8],
    (packets, rights, pid_map): (&[Queued], &[Vec<OwnedFd>], &HashMap<i32, i32>),
    id: u32,
) -> Result<(), RestoreError> {
    use crest_sys::net::{getsockopt_int, send_with_fds};
    use std::os::fd::AsFd;
    let total: usize = packets.iter().map(|p| p.data.len()).sum();
    let old = getsockopt_int(sender, libc::SOL_SOCKET, libc::SO_SNDBUF).rat(pid, "SO_SNDBUF")?;
    let want = (2 * total + (64 << 10)).min(i32::MAX as usize / 2) as i32;
    if want > old {
        // (unprivileged, as far as net.core.wmem_max: a queue that does
        // not fit then fails below, naming the socket)
        super::skopts::set_buf(sender, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, want)
            .rat(pid, "raise SO_SNDBUF to refill a queue")?;
    }
    for (p, fds) in packets.iter().zip(rights) {
        let fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        // the sender as it is now
        let creds = p
            .creds
            .map(|(p, u, g)| (pid_map.get(&p).copied().unwrap_or(p), u, g));
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        let n = send_with_fds(sender, &p.data, flags, to, (&fds, creds))
            .rat(pid, format!("refill the queue of socket {id}"))?;
        if n != p.data.len() {
            return Err(RestoreError::Unsupported {
                pid,
                what: format!(
                    "a socket queue that took {n} of {} bytes back",
                    p.data.len()
                ),
            });
        }
    }
    if want > old {
        let got = super::skopts::set_buf(sender, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, old / 2)
            .rat(pid, "put SO_SNDBUF back")?;
        if got != old {
            return Err(RestoreError::Unsupported {
                pid,
                what: format!(
                    "putting SO_SNDBUF of socket {id} back to {old} (the kernel gave {got})"
                ),
            });
        }
    }
    Ok(())
}

/// crest's copies of the files each packet passes.
fn rights_of(
    t: &mut Tracee,
    packets: &[Queued],
    files: &mut super::restore::RestoreFiles,
    kept: &mut Kept,
) -> Result<Vec<Vec<OwnedFd>>, RestoreError> {
    packets
        .iter()
        .map(|p| {
            p.rights
                .iter()
                .map(|&id| super::restore::flight_copy(t, id, files, kept))
                .collect()
        })
        .collect()
}
