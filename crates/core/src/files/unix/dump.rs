//! Unix sockets at dump: each socket's entry from sock_diag and crest's
//! copy of the fd, its queue peeked without consuming it, and
//! `sk-queues.img`.

use super::*;
use crate::error::RoomError;
use crate::files::error::{FileError, QueueRefusal};
use crate::files::table::Held;

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
        let unsupported = |kind: String| FileError::UnsupportedFd { fd, kind }.in_dump(pid);
        // (a socket in flight: found through the task that holds its queue)
        let ctx = self.unix.ctx.unwrap_or(pid);
        let netns = netns_of(ctx)?;
        if let std::collections::hash_map::Entry::Vacant(v) = self.unix.diags.entry(netns) {
            v.insert(sockdiag::unix_sockets_of(ctx).at(pid, "sock_diag of unix sockets")?);
        }
        let diag = &self.unix.diags[&netns];
        let d = diag.get(&ino).cloned().ok_or_else(|| {
            unsupported(format!(
                "a unix socket (inode {ino}) sock_diag does not list"
            ))
        })?;
        let ty = i32::from(d.ty);
        if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&ty) {
            return Err(unsupported(format!("a unix socket of type {ty}")));
        }
        let name = d.name.clone().unwrap_or_default();
        let named = named(pid, ctx, &d, &name, &unsupported)?;
        let (peer, pending) = peer_of(diag, &d, (ino, ty), &unsupported)?;
        let packets = if u32::from(d.state) == TCP_LISTEN {
            Vec::new()
        } else {
            peek_queue(copy, ty, d.rqlen.0 as usize)
                .at(pid, "peek at a unix socket's queue")?
                .map_err(|why| FileError::Queue { fd, why }.in_dump(pid))?
        };
        let opts = skopts::dump(copy).at(pid, "read socket options")?;
        self.check_senders(&packets)
            .map_err(|why| FileError::Queue { fd, why }.in_dump(pid))?;
        let usk = entry_of(ino, &d, (flags, peer), opts, (name, named));
        let id = self.push(FileEntry {
            r#type: FdTypes::Unixsk as i32,
            id: 0,
            usk: Some(usk),
            ..FileEntry::default()
        });
        self.keep_queue(id, packets, ctx);
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

    /// Refuses a queue holding a message whose sender (read by a receiver
    /// with `SO_PASSCRED`) is not in the tree: a sender of the tree is
    /// named again at restore; a message sent with no credentials (neither
    /// end had `SO_PASSCRED` then: it reads as pid 0 and the overflow ids)
    /// is refilled so too.
    fn check_senders(&self, packets: &Peeked) -> Result<(), QueueRefusal> {
        let none = (
            crate::ns::user::overflow_uid(),
            crate::ns::user::overflow_gid(),
        );
        for (_, _, c) in packets {
            match *c {
                None => {}
                Some((0, uid, gid)) if (uid, gid) == none => {}
                Some((p, _, _)) if p != 0 && self.tree.contains(&p) => {}
                Some((p, uid, gid)) => return Err(QueueRefusal::Sender { pid: p, uid, gid }),
            }
        }
        Ok(())
    }

    /// Keeps the queue of socket file `id` (peeked through a task of
    /// `ctx`'s) for `sk-queues.img`; the files its messages pass are
    /// dumped later, from `ctx`.
    fn keep_queue(&mut self, id: u32, packets: Peeked, ctx: i32) {
        if packets.is_empty() {
            return;
        }
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
            let Some(p) = self.unix.socks.get(&h.peer) else {
                // (connected to a socket outside the tree)
                let o = self.outside_peer(ino, h)?;
                if !outside.iter().any(|(i, _, _)| *i == o.0) {
                    outside.push(o);
                }
                continue;
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
            self.push_outside(ino, name, ty);
        }
        Ok(())
    }

    /// The socket outside the tree that socket `ino` (held as `h`) is
    /// connected to, as (inode, name, type), where the dump may carry it:
    /// `--ext-unix-sk=INO` (the restore's caller gives a socket for it), or
    /// `--ext-unix-sk` for a datagram socket connected to a path (connected
    /// to the name again at restore). Refused otherwise, naming it.
    fn outside_peer(&self, ino: u32, h: &Held) -> Result<(u32, Vec<u8>, i32), DumpError> {
        let err = |kind: String| FileError::UnsupportedFd { fd: h.fd, kind }.in_dump(h.pid);
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
            return Ok((h.peer, peer_name.unwrap_or_default(), h.ty));
        }
        // --ext-unix-sk: a datagram socket connected to a named
        // socket outside (a host's /dev/log) connects to the name
        // again at restore
        if let Some(n) = peer_name.filter(|n| {
            self.ext_unix_sk && h.ty == libc::SOCK_DGRAM && n.first().is_some_and(|c| *c != 0)
        }) {
            return Ok((h.peer, n, libc::SOCK_DGRAM));
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
        Err(err(format!(
            "a unix socket connected to {name} (inode {}) outside the dumped tree{hint}",
            h.peer
        )))
    }

    /// The entry of socket `ino` outside the tree (named `name`, of type
    /// `ty`), as CRIU writes it: used by no fd, marked external.
    fn push_outside(&mut self, ino: u32, name: Vec<u8>, ty: i32) {
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
}

/// The image entry of unix socket `ino` (sock_diag's `d`), with its fd
/// flags, its peer's inode, its options, and its name with what the name
/// says beyond itself.
fn entry_of(
    ino: u32,
    d: &UnixDiag,
    (flags, peer): (u32, u32),
    opts: crest_images::pb::SkOptsEntry,
    (name, named): (Vec<u8>, Named),
) -> UnixSkEntry {
    let listening = u32::from(d.state) == TCP_LISTEN;
    UnixSkEntry {
        id: 0,
        ino,
        r#type: u32::from(d.ty),
        state: u32::from(d.state),
        flags,
        uflags: 0,
        backlog: if listening { d.rqlen.1 } else { 0 },
        peer,
        fown: FownEntry::default(),
        opts,
        name,
        shutdown: (d.shutdown != 0).then_some(i32::from(d.shutdown & 3)),
        file_perms: named.perms,
        name_dir: named.name_dir,
        crest_root: named.crest_root,
        deleted: named.deleted,
    }
}

/// What a socket's name says beyond itself: the file's owner and mode, a
/// file removed or replaced since the bind, the cwd a relative name was
/// bound in, the chroot a chrooted task bound it in.
pub(super) struct Named {
    perms: Option<FilePermsEntry>,
    deleted: Option<bool>,
    name_dir: Option<String>,
    crest_root: Option<String>,
}

/// The [`Named`] state of socket `d`'s `name`, as task `ctx` sees it.
pub(super) fn named(
    pid: i32,
    ctx: i32,
    d: &UnixDiag,
    name: &[u8],
    unsupported: &dyn Fn(String) -> DumpError,
) -> Result<Named, DumpError> {
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
                show_name(name)
            )));
        }
        let root = crate::procfs::read_link(&format!("/proc/{ctx}/root")).at(pid, "read root")?;
        if !root.starts_with('/') || root.ends_with(" (deleted)") {
            return Err(unsupported(format!(
                "a unix socket bound to {} in the chroot {root}",
                show_name(name)
            )));
        }
        crest_root = Some(root);
    }
    if !name.is_empty() && name[0] != 0 {
        let full = if name[0] == b'/' {
            show_name(name)
        } else {
            // bound to a relative path: in the task's cwd, where it is
            // found again (CRIU's name_dir)
            let cwd = crate::procfs::read_link(&format!("/proc/{ctx}/cwd")).at(pid, "read cwd")?;
            let full = format!("{}/{}", cwd.trim_end_matches('/'), show_name(name));
            let m = std::fs::symlink_metadata(format!("/proc/{ctx}/root{full}")).ok();
            let found = m
                .zip(d.vfs)
                .is_some_and(|(m, (vino, _))| m.ino() == u64::from(vino));
            if !found {
                return Err(unsupported(format!(
                    "a unix socket bound to the relative path {} that is not in the \
                     task's cwd ({cwd})",
                    show_name(name)
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
    Ok(Named {
        perms,
        deleted,
        name_dir,
        crest_root,
    })
}

/// The peer of socket `d` (inode `ino`, type `ty`) and whether it is a
/// connection not accepted yet.
pub(super) fn peer_of(
    diag: &HashMap<u32, UnixDiag>,
    d: &UnixDiag,
    (ino, ty): (u32, i32),
    unsupported: &dyn Fn(String) -> DumpError,
) -> Result<(u32, bool), DumpError> {
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
    Ok((peer, pending))
}

/// The data queued on a socket, packet by packet, with the files passed
/// beside each (crest's copies; the queue keeps them), read with
/// `MSG_PEEK` from offset 0; `Err(kind)` for a queue crest cannot keep.
/// Stream data comes as one piece but where files were passed: a peek
/// stops after the message that carried files, and hands them with all
/// the bytes queued since the previous such message (the kernel shows no
/// boundary in between; CRIU's queues are the same).
pub(super) fn peek_queue(
    copy: &OwnedFd,
    ty: i32,
    stream_len: usize,
) -> std::io::Result<PeekResult> {
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

pub(super) type Peeked = Vec<(Vec<u8>, Vec<OwnedFd>, Option<(i32, u32, u32)>)>;
pub(crate) type PeekResult = Result<Peeked, QueueRefusal>;

pub(super) fn peek_stream(copy: &OwnedFd, stream_len: usize) -> std::io::Result<PeekResult> {
    use crest_sys::net::{recvmsg, setsockopt_int};
    let mut out = Vec::new();
    if stream_len > MAX_QUEUE {
        return Ok(Err(QueueRefusal::StreamTooLong(stream_len)));
    }
    let mut off = 0;
    while off < stream_len {
        setsockopt_int(copy, libc::SOL_SOCKET, libc::SO_PEEK_OFF, off as i32)?;
        let mut data = vec![0u8; stream_len - off];
        let r = recvmsg(copy, &mut data, libc::MSG_PEEK | libc::MSG_DONTWAIT)?;
        if r.len == 0 {
            return Ok(Err(QueueRefusal::ShortRead {
                len: stream_len,
                read: off,
            }));
        }
        if r.flags & libc::MSG_CTRUNC != 0 {
            return Ok(Err(QueueRefusal::TooManyFiles));
        }
        data.truncate(r.len);
        off += r.len;
        out.push((data, r.fds, r.creds));
        if out.len() > MAX_PACKETS {
            return Ok(Err(QueueRefusal::TooManyMessages { max: MAX_PACKETS }));
        }
    }
    Ok(Ok(out))
}

pub(super) fn peek_packets(copy: &OwnedFd) -> std::io::Result<PeekResult> {
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
            return Ok(Err(QueueRefusal::TooManyFiles));
        }
        if r.len > buf.len() {
            return Ok(Err(QueueRefusal::Datagram(r.len)));
        }
        total += r.len;
        out.push((buf[..r.len].to_vec(), r.fds, r.creds));
        if out.len() > MAX_PACKETS || total > MAX_QUEUE {
            return Ok(Err(QueueRefusal::TooMuch {
                packets: MAX_PACKETS,
                bytes: MAX_QUEUE,
            }));
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
