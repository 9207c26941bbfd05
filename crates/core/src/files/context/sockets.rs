//! The images of what sockets held at dump, read for restore: unix
//! sockets' queued packets (`sk-queues.img`) and UDP datagrams; which
//! task made each socket so far.

use crate::error::RestoreError;
use crate::error::RoomError;
use crate::files::error::FileError;
use crest_images::carry::CarriedReader;
use crest_images::pb::SkPacketEntry;
use crest_images::MAX_QUEUE;
use crest_images::{magic, names, ImageReader};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;

/// Most UDP datagrams crest keeps per socket.
pub const MAX_PACKETS: usize = 4096;

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

/// `sk-queues.img`, indexed by file id; which task made each socket.
#[derive(Default)]
pub struct SockImages {
    pub queues: HashMap<u32, Vec<Queued>>,
    /// file id → pid of the task that made the socket.
    pub made_by: HashMap<u32, i32>,
    /// Queued UDP datagrams by file id: (sender, data).
    pub udp: UdpQueues,
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
                    return Err(FileError::BadImage {
                        file: names::SK_QUEUES.into(),
                        what: format!("socket {} claims {} bytes", e.id_for, e.length),
                    }
                    .in_tree_restore());
                }
                let mut rights = Vec::new();
                for scm in &e.scm {
                    if scm.r#type != libc::SCM_RIGHTS as u32
                        || rights.len() + scm.rights.len() > 253
                    {
                        return Err(FileError::BadImage {
                            file: names::SK_QUEUES.into(),
                            what: format!(
                                "socket {}: a message with control data of type {} ({} files)",
                                e.id_for,
                                scm.r#type,
                                scm.rights.len()
                            ),
                        }
                        .in_tree_restore());
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
            udp: read_udp(dir)?,
            dir: dir.to_path_buf(),
            shell_job: false,
            tcp_close: false,
            spare: HashMap::new(),
            pid_map: HashMap::new(),
        })
    }
}

/// Queued UDP datagrams by file id: (sender's raw address, data).
pub type UdpQueues = HashMap<u32, Vec<(Vec<u8>, Vec<u8>)>>;

/// UDP datagrams to put back, by file id.
pub fn read_udp(dir: &Path) -> Result<UdpQueues, RestoreError> {
    let mut out = UdpQueues::new();
    if !dir.join(names::CREST_UDP_QUEUES).exists() {
        return Ok(out);
    }
    let mut r = CarriedReader::<SkPacketEntry>::open(
        dir,
        names::CREST_UDP_QUEUES,
        magic::CREST_UDP_QUEUES,
    )?;
    let mut n = 0;
    while let Some(e) = r.next_entry()? {
        n += 1;
        if e.length > 1 << 16 || n > 16 * MAX_PACKETS {
            return Err(FileError::BadImage {
                file: names::CREST_UDP_QUEUES.into(),
                what: format!("a datagram of {} bytes (entry {n})", e.length),
            }
            .in_tree_restore());
        }
        let data = r.read_payload(u64::from(e.length))?;
        out.entry(e.id_for).or_default().push((e.from, data));
    }
    Ok(out)
}
