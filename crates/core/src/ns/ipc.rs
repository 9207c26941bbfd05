//! SysV IPC objects of an ipc namespace of the tree's own: shared memory
//! segments with their contents, semaphore sets with their values,
//! message queues with their messages, and the namespace's sysctls.
//!
//! Dump reads them through a short-lived crest child that has entered the
//! namespace's owning user namespace and then the namespace itself, so ids
//! and modes are as the container sees them; messages are copied with
//! `msgrcv(MSG_COPY)` and segments attached read-only, so nothing is
//! consumed. Restore runs in the helper that created the namespace (inside
//! the same user namespace): each object is made with its old id through
//! `kernel/{shm,sem,msg}_next_id`, then refilled and given its owner and
//! mode with `IPC_SET`.
//!
//! Images: CRIU's `ipcns-var-<id>.img`, `ipcns-shm-<id>.img`,
//! `ipcns-sem-<id>.img` and `ipcns-msg-<id>.img`, payloads laid out as
//! CRIU lays them out.

use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::remote::Remote;
use crest_images::pb::crest::{CrestPmqEntry, CrestPmqMsg};
use crest_images::pb::{IpcDescEntry, IpcMsg, IpcMsgEntry, IpcSemEntry, IpcShmEntry, IpcVarEntry};
use crest_images::{magic, names, ImageReader, ImageWriter};
use crest_inject::{nr, Tracee};
use std::collections::HashMap;
use std::path::Path;

/// Largest segment crest copies (and accepts from an image).
const MAX_SHM: u64 = 1 << 30;
/// Most bytes a message queue may hold in an image.
const MAX_QUEUE_BYTES: u64 = 64 << 20;
/// Most objects of each kind accepted from an image.
const MAX_OBJECTS: usize = 32768;

const IPC_CREAT: u64 = 0o1000;
const IPC_EXCL: u64 = 0o2000;
const IPC_NOWAIT: u64 = 0o4000;
const IPC_SET: u64 = 1;
const IPC_STAT: u64 = 2;
const SHM_RDONLY: u64 = 0o10000;
const SHM_DEST: u32 = 0o1000;
const SHM_LOCKED: u32 = 0o2000;
const SHM_LOCK: u64 = 11;
const GETALL: u64 = 13;
const SETALL: u64 = 17;
const MSG_NOERROR: u64 = 0o10000;
const MSG_COPY: u64 = 0o40000;
/// Offset of `msg_qbytes` in the kernel's `msqid64_ds` (x86_64).
const MSG_QBYTES_AT: usize = 88;
/// Size of the kernel's `{shm,sem,msq}id64_ds` buffers we pass (all fit).
const DS_LEN: usize = 128;

/// A message queue and its messages (type, text).
pub type Queue = (IpcMsgEntry, Vec<(u64, Vec<u8>)>);

/// The SysV state of one ipc namespace.
#[derive(Debug, Clone, Default)]
pub struct IpcDump {
    pub var: IpcVarEntry,
    pub shms: Vec<(IpcShmEntry, Vec<u8>)>,
    pub sems: Vec<(IpcSemEntry, Vec<u16>)>,
    pub msgs: Vec<Queue>,
    /// POSIX message queues.
    pub pmqs: Vec<CrestPmqEntry>,
}

impl IpcDump {
    /// Whether the namespace holds any SysV object.
    pub fn is_empty(&self) -> bool {
        self.shms.is_empty() && self.sems.is_empty() && self.msgs.is_empty() && self.pmqs.is_empty()
    }
}

/// One row of `/proc/sysvipc/{shm,sem,msg}`, by column name.
type Row = HashMap<String, i64>;

/// Parses a `/proc/sysvipc/*` table: a header of column names, then one
/// row per object (`perms` is octal, everything else decimal).
fn parse_table(text: &str) -> Option<Vec<Row>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let mut rows = Vec::new();
    for l in lines.filter(|l| !l.trim().is_empty()) {
        let vals: Vec<&str> = l.split_whitespace().collect();
        if vals.len() != header.len() {
            return None;
        }
        let mut row = Row::new();
        for (h, v) in header.iter().zip(vals) {
            let n = if *h == "perms" {
                i64::from_str_radix(v, 8).ok()?
            } else {
                v.parse().ok()?
            };
            row.insert((*h).to_string(), n);
        }
        rows.push(row);
    }
    Some(rows)
}

fn col(row: &Row, name: &str) -> i64 {
    row.get(name).copied().unwrap_or(0)
}

fn desc_of(row: &Row, id_col: &str) -> IpcDescEntry {
    IpcDescEntry {
        key: col(row, "key") as u32,
        uid: col(row, "uid") as u32,
        gid: col(row, "gid") as u32,
        cuid: col(row, "cuid") as u32,
        cgid: col(row, "cgid") as u32,
        mode: col(row, "perms") as u32,
        id: col(row, id_col) as u32,
    }
}

/// Reads every SysV object of the namespace `t` (a reader inside it) is
/// in, for the task `pid` that owns it.
pub fn dump(pid: i32, t: &mut Tracee) -> Result<IpcDump, DumpError> {
    let mut out = IpcDump {
        var: read_var(pid, t)?,
        ..IpcDump::default()
    };
    let table = |t: &mut Tracee, kind: &str| -> Result<Vec<Row>, DumpError> {
        let text = t
            .read_file(&format!("/proc/sysvipc/{kind}"))
            .map_err(|e| e.for_task(pid))?;
        parse_table(&text).ok_or_else(|| DumpError::Unsupported {
            pid,
            what: format!("a /proc/sysvipc/{kind} that crest cannot read: {text:?}"),
        })
    };
    for row in table(t, "shm")? {
        out.shms.push(dump_shm(pid, t, &row)?);
    }
    for row in table(t, "sem")? {
        out.sems.push(dump_sem(pid, t, &row)?);
    }
    for row in table(t, "msg")? {
        out.msgs.push(dump_msg(pid, t, &row)?);
    }
    out.pmqs = dump_pmqs(pid, t)?;
    Ok(out)
}

/// Where the namespace's mqueue filesystem is mounted in a reader's or
/// helper's private mount namespace.
const MQ_AT: &str = "/tmp";
/// Most POSIX queues, and bytes per queue, crest takes.
const MAX_PMQS: usize = 4096;
const MAX_PMQ_BYTES: u64 = 16 << 20;

/// Gives task `t` a private mount namespace with the mqueue filesystem of
/// its ipc namespace on [`MQ_AT`] (nothing it mounts reaches crest's).
fn mount_mqueue(t: &mut Tracee) -> Result<(), crest_inject::InjectError> {
    t.syscall(nr::UNSHARE, &[libc::CLONE_NEWNS as u64])?;
    let buf = t.put(b"/\0mqueue\0/tmp\0")?;
    t.syscall(nr::MOUNT, &[0, buf, 0, libc::MS_REC | libc::MS_PRIVATE, 0])?;
    t.syscall(nr::MOUNT, &[buf + 2, buf + 9, buf + 2, 0, 0])?;
    Ok(())
}

/// `struct mq_attr` fields: flags, maxmsg, msgsize, curmsgs.
fn mq_attr(raw: &[u8]) -> [u64; 4] {
    [0, 8, 16, 24].map(|at| u64_at(raw, at))
}

/// The POSIX queues of the namespace, messages copied by receiving them
/// all and sending them back in the same order (the tree is frozen).
fn dump_pmqs(pid: i32, t: &mut Tracee) -> Result<Vec<CrestPmqEntry>, DumpError> {
    mount_mqueue(t).at(pid, "mount the mqueue filesystem of an ipc namespace")?;
    let dir = format!("/proc/{}/root{MQ_AT}", t.pid());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .at(pid, "list POSIX message queues")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names.len() > MAX_PMQS {
        return Err(DumpError::Unsupported {
            pid,
            what: format!("{} POSIX message queues", names.len()),
        });
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let path = format!("{dir}/{name}");
        let info = std::fs::read_to_string(&path).at(pid, "read a POSIX queue's status")?;
        if info
            .split_whitespace()
            .any(|f| f.starts_with("NOTIFY_PID:") && f != "NOTIFY_PID:0")
        {
            return Err(DumpError::Unsupported {
                pid,
                what: format!(
                    "POSIX message queue /{name} with a notification registered (mq_notify)"
                ),
            });
        }
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&path).at(pid, "stat a POSIX queue")?;
        let mut e = CrestPmqEntry {
            name: name.clone(),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            maxmsg: 0,
            msgsize: 0,
            messages: Vec::new(),
            times: Some(crest_images::pb::crest::CrestTimes::of(&meta)),
        };
        let n = name.as_bytes().to_vec();
        let mut buf = n.clone();
        buf.push(0);
        let addr = t.put(&buf).at(pid, "write a queue name")?;
        let fd = t
            .syscall(
                nr::MQ_OPEN,
                &[addr, (libc::O_RDWR | libc::O_NONBLOCK) as u64, 0, 0],
            )
            .at(pid, "open a POSIX message queue")?;
        let r = copy_queue(pid, t, fd, &mut e);
        t.close_quietly(fd);
        r?;
        // copying the messages out and back touched the queue's times
        if let Some(times) = &e.times {
            set_path_times(&path, times).at(pid, "put a POSIX queue's times back")?;
        }
        out.push(e);
    }
    Ok(out)
}

fn copy_queue(pid: i32, t: &mut Tracee, fd: u64, e: &mut CrestPmqEntry) -> Result<(), DumpError> {
    let attr = t.scratch(64).at(pid, "scratch")?;
    t.syscall(nr::MQ_GETSETATTR, &[fd, 0, attr])
        .at(pid, "read a POSIX queue's attributes")?;
    let mut raw = [0u8; 64];
    t.read_mem(attr, &mut raw).at(pid, "read mq_attr")?;
    let [_, maxmsg, msgsize, cur] = mq_attr(&raw);
    if msgsize.saturating_mul(cur) > MAX_PMQ_BYTES || msgsize > MAX_PMQ_BYTES {
        return Err(DumpError::Unsupported {
            pid,
            what: format!(
                "POSIX message queue /{} holding {cur} messages of up to {msgsize} bytes",
                e.name
            ),
        });
    }
    (e.maxmsg, e.msgsize) = (maxmsg as u32, msgsize as u32);
    let buf = t.scratch(msgsize as usize + 8).at(pid, "scratch")?;
    let prio_at = buf + msgsize;
    for _ in 0..cur {
        let n = t
            .syscall(nr::MQ_TIMEDRECEIVE, &[fd, buf, msgsize, prio_at, 0])
            .at(pid, "receive from a POSIX queue")?;
        let mut data = vec![0u8; n as usize];
        t.read_mem(buf, &mut data).at(pid, "read a message")?;
        let mut p = [0u8; 4];
        t.read_mem(prio_at, &mut p).at(pid, "read a priority")?;
        e.messages.push(CrestPmqMsg {
            prio: u32::from_le_bytes(p),
            data,
        });
    }
    send_all(t, fd, &e.messages).at(pid, "send messages back to a POSIX queue")
}

fn send_all(
    t: &mut Tracee,
    fd: u64,
    msgs: &[CrestPmqMsg],
) -> Result<(), crest_inject::InjectError> {
    for m in msgs {
        let addr = t.put(&m.data)?;
        t.syscall(
            nr::MQ_TIMEDSEND,
            &[fd, addr, m.data.len() as u64, u64::from(m.prio), 0],
        )?;
    }
    Ok(())
}

fn dump_shm(pid: i32, t: &mut Tracee, row: &Row) -> Result<(IpcShmEntry, Vec<u8>), DumpError> {
    let desc = desc_of(row, "shmid");
    let size = col(row, "size") as u64;
    if desc.mode & SHM_DEST != 0 {
        return Err(DumpError::Unsupported {
            pid,
            what: format!(
                "SysV segment {} removed (IPC_RMID) while still attached",
                desc.id
            ),
        });
    }
    if size > MAX_SHM {
        return Err(DumpError::Unsupported {
            pid,
            what: format!(
                "SysV segment {} of {size} bytes (crest copies at most {MAX_SHM})",
                desc.id
            ),
        });
    }
    let addr = t
        .syscall(nr::SHMAT, &[u64::from(desc.id), 0, SHM_RDONLY])
        .at(pid, "attach a SysV segment")?;
    let mut data = vec![0u8; size as usize];
    let r = crest_sys::mem::read_remote(t.pid(), &[(addr, data.len())], &mut data);
    // a SHM_HUGETLB segment: the size of its pages, where it is attached
    let huge_kb = crate::procfs::read_smaps(t.pid())
        .ok()
        .and_then(|v| v.into_iter().find(|s| s.start == addr))
        .filter(|s| s.has("ht"))
        .map(|s| s.kernel_page_kb as u32);
    let _ = t.syscall(nr::SHMDT, &[addr]);
    let n = r.at(pid, "read a SysV segment")?;
    if n != data.len() {
        return Err(DumpError::Unsupported {
            pid,
            what: format!("SysV segment {}: read {n} of {size} bytes", desc.id),
        });
    }
    let entry = IpcShmEntry {
        desc,
        size,
        in_pagemaps: Some(false),
        crest_huge_page_kb: huge_kb,
    };
    Ok((entry, data))
}

fn dump_sem(pid: i32, t: &mut Tracee, row: &Row) -> Result<(IpcSemEntry, Vec<u16>), DumpError> {
    let desc = desc_of(row, "semid");
    let nsems = col(row, "nsems").clamp(0, 65536) as usize;
    let buf = t.scratch(nsems * 2 + 8).at(pid, "scratch")?;
    t.syscall(nr::SEMCTL, &[u64::from(desc.id), 0, GETALL, buf])
        .at(pid, "read a SysV semaphore set")?;
    let mut raw = vec![0u8; nsems * 2];
    t.read_mem(buf, &mut raw).at(pid, "read semaphore values")?;
    let vals = raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let entry = IpcSemEntry {
        desc,
        nsems: nsems as u32,
    };
    Ok((entry, vals))
}

fn dump_msg(pid: i32, t: &mut Tracee, row: &Row) -> Result<Queue, DumpError> {
    let desc = desc_of(row, "msqid");
    let qnum = col(row, "qnum").max(0) as u64;
    let cbytes = col(row, "cbytes").max(0) as u64;
    if cbytes > MAX_QUEUE_BYTES {
        return Err(DumpError::Unsupported {
            pid,
            what: format!("SysV message queue {} holding {cbytes} bytes", desc.id),
        });
    }
    // qbytes is not in /proc/sysvipc/msg: ask the queue.
    let ds = t.scratch(DS_LEN).at(pid, "scratch")?;
    t.syscall(nr::MSGCTL, &[u64::from(desc.id), IPC_STAT, ds])
        .at(pid, "IPC_STAT of a SysV message queue")?;
    let mut raw = vec![0u8; DS_LEN];
    t.read_mem(ds, &mut raw).at(pid, "read msqid_ds")?;
    let qbytes = u64_at(&raw, MSG_QBYTES_AT);
    // Every message fits in the queue's byte count.
    let cap = cbytes.max(1);
    let buf = t.scratch(8 + cap as usize).at(pid, "scratch")?;
    let mut messages = Vec::with_capacity(qnum.min(4096) as usize);
    for i in 0..qnum {
        let n = t
            .syscall(
                nr::MSGRCV,
                &[
                    u64::from(desc.id),
                    buf,
                    cap,
                    i,
                    IPC_NOWAIT | MSG_COPY | MSG_NOERROR,
                ],
            )
            .at(pid, "copy a message of a SysV queue (MSG_COPY)")?;
        let mut m = vec![0u8; 8 + n as usize];
        t.read_mem(buf, &mut m).at(pid, "read a message")?;
        messages.push((u64_at(&m, 0), m.split_off(8)));
    }
    let entry = IpcMsgEntry {
        desc,
        qbytes: qbytes.min(u64::from(u32::MAX)) as u32,
        qnum: qnum as u32,
    };
    Ok((entry, messages))
}

fn u64_at(raw: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = raw.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

/// The sysctls of the namespace, in CRIU's `ipc_var_entry`.
fn read_var(pid: i32, t: &mut Tracee) -> Result<IpcVarEntry, DumpError> {
    let mut read = |name: &str| -> Result<Vec<u64>, DumpError> {
        let text = t
            .read_file(&format!("/proc/sys/{name}"))
            .map_err(|e| e.for_task(pid))?;
        text.split_whitespace()
            .map(|w| w.parse::<u64>())
            .collect::<Result<Vec<u64>, _>>()
            .map_err(|_| DumpError::Unsupported {
                pid,
                what: format!("sysctl {name} that crest cannot read: {text:?}"),
            })
    };
    let one = |v: Vec<u64>| v.first().copied().unwrap_or(0);
    Ok(IpcVarEntry {
        sem_ctls: read("kernel/sem")?.into_iter().map(|v| v as u32).collect(),
        msg_ctlmax: one(read("kernel/msgmax")?) as u32,
        msg_ctlmnb: one(read("kernel/msgmnb")?) as u32,
        msg_ctlmni: one(read("kernel/msgmni")?) as u32,
        auto_msgmni: 0,
        shm_ctlmax: one(read("kernel/shmmax")?),
        shm_ctlall: one(read("kernel/shmall")?),
        shm_ctlmni: one(read("kernel/shmmni")?) as u32,
        shm_rmid_forced: one(read("kernel/shm_rmid_forced")?) as u32,
        mq_queues_max: one(read("fs/mqueue/queues_max")?) as u32,
        mq_msg_max: one(read("fs/mqueue/msg_max")?) as u32,
        mq_msgsize_max: one(read("fs/mqueue/msgsize_max")?) as u32,
        mq_msg_default: Some(one(read("fs/mqueue/msg_default")?) as u32),
        mq_msgsize_default: Some(one(read("fs/mqueue/msgsize_default")?) as u32),
        // set by the writer
        crest_pmqs: Vec::new(),
    })
}

fn pad(len: usize, to: usize) -> usize {
    len.div_ceil(to) * to - len
}

/// Writes the four images of ipc namespace `id`; the POSIX message queues
/// ride in `ipc_var_entry.crest_pmqs`.
pub fn write(dir: &Path, id: u32, d: &IpcDump) -> Result<(), DumpError> {
    let var = IpcVarEntry {
        crest_pmqs: d.pmqs.clone(),
        ..d.var.clone()
    };
    crest_images::write_image(dir, &names::ipcns_var(id), magic::IPC_VAR, &[var])?;
    let mut w = ImageWriter::create(dir, &names::ipcns_shm(id), magic::IPCNS_SHM)?;
    for (e, data) in &d.shms {
        w.write_entry(e)?;
        w.write_payload(data)?;
        w.write_payload(&vec![0u8; pad(data.len(), 4)])?;
    }
    w.finish()?;
    let mut w = ImageWriter::create(dir, &names::ipcns_sem(id), magic::IPCNS_SEM)?;
    for (e, vals) in &d.sems {
        w.write_entry(e)?;
        let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_payload(&raw)?;
        w.write_payload(&vec![0u8; pad(raw.len(), 8)])?;
    }
    w.finish()?;
    let mut w = ImageWriter::create(dir, &names::ipcns_msg(id), magic::IPCNS_MSG)?;
    for (e, msgs) in &d.msgs {
        w.write_entry(e)?;
        for (mtype, data) in msgs {
            w.write_entry(&IpcMsg {
                mtype: *mtype,
                msize: data.len() as u32,
            })?;
            w.write_payload(data)?;
            w.write_payload(&vec![0u8; pad(data.len(), 8)])?;
        }
    }
    w.finish()?;
    Ok(())
}

/// Reads the images of ipc namespace `id` back, bounding every count and
/// size.
pub fn read(dir: &Path, id: u32) -> Result<IpcDump, RestoreError> {
    let bad = |file: String, what: String| RestoreError::BadImage { pid: 0, file, what };
    let mut var: IpcVarEntry = crest_images::read_one(dir, &names::ipcns_var(id), magic::IPC_VAR)?;
    let mut pmq_file = names::ipcns_var(id);
    let mut pmqs = std::mem::take(&mut var.crest_pmqs);
    if var.sem_ctls.len() != 4 {
        return Err(bad(
            names::ipcns_var(id),
            format!("{} semaphore limits (4 expected)", var.sem_ctls.len()),
        ));
    }
    let mut d = IpcDump {
        var,
        ..IpcDump::default()
    };
    let name = names::ipcns_shm(id);
    let mut r = ImageReader::open(dir, &name, magic::IPCNS_SHM)?;
    while let Some(e) = r.next_entry::<IpcShmEntry>()? {
        // (huge pages: a power of two from 64 KiB to 16 GiB)
        let huge_ok = e
            .crest_huge_page_kb
            .is_none_or(|kb| kb.is_power_of_two() && (64..=1 << 24).contains(&kb));
        if e.size > MAX_SHM
            || e.in_pagemaps == Some(true)
            || d.shms.len() >= MAX_OBJECTS
            || !huge_ok
        {
            return Err(bad(
                name,
                format!(
                    "segment {} of {} bytes (or in pagemaps, or too many, or of odd huge pages)",
                    e.desc.id, e.size
                ),
            ));
        }
        let data = r.read_payload(e.size)?;
        r.read_payload(pad(e.size as usize, 4) as u64)?;
        d.shms.push((e, data));
    }
    let name = names::ipcns_sem(id);
    let mut r = ImageReader::open(dir, &name, magic::IPCNS_SEM)?;
    while let Some(e) = r.next_entry::<IpcSemEntry>()? {
        if e.nsems > 65536 || d.sems.len() >= MAX_OBJECTS {
            return Err(bad(
                name,
                format!("semaphore set {} of {} semaphores", e.desc.id, e.nsems),
            ));
        }
        let len = e.nsems as usize * 2;
        let raw = r.read_payload(len as u64)?;
        r.read_payload(pad(len, 8) as u64)?;
        let vals = raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        d.sems.push((e, vals));
    }
    let name = names::ipcns_msg(id);
    let mut r = ImageReader::open(dir, &name, magic::IPCNS_MSG)?;
    while let Some(e) = r.next_entry::<IpcMsgEntry>()? {
        if d.msgs.len() >= MAX_OBJECTS {
            return Err(bad(name, "too many message queues".into()));
        }
        let mut total = 0u64;
        let mut msgs = Vec::new();
        for _ in 0..e.qnum {
            let m: IpcMsg = r.next_entry()?.ok_or_else(|| {
                bad(
                    name.clone(),
                    format!("queue {} ends before its {} messages", e.desc.id, e.qnum),
                )
            })?;
            total += u64::from(m.msize);
            if total > MAX_QUEUE_BYTES {
                return Err(bad(
                    name,
                    format!("queue {} holds over {MAX_QUEUE_BYTES} bytes", e.desc.id),
                ));
            }
            let data = r.read_payload(u64::from(m.msize))?;
            r.read_payload(pad(m.msize as usize, 8) as u64)?;
            msgs.push((m.mtype, data));
        }
        d.msgs.push((e, msgs));
    }
    if pmqs.is_empty() && dir.join(names::crest_pmq(id)).exists() {
        // an older crest's file of its own
        pmq_file = names::crest_pmq(id);
        pmqs = crest_images::read_image(dir, &pmq_file, magic::CREST_PMQ)?;
    }
    for q in &pmqs {
        let bytes: u64 = q.messages.iter().map(|m| m.data.len() as u64).sum();
        let bad_name = q.name.is_empty() || q.name.contains('/') || q.name == "." || q.name == "..";
        if pmqs.len() > MAX_PMQS || bytes > MAX_PMQ_BYTES || bad_name {
            return Err(bad(
                pmq_file,
                format!("POSIX queue {:?} ({bytes} bytes)", q.name),
            ));
        }
    }
    d.pmqs = pmqs;
    Ok(d)
}

/// Recreates the objects of `d` in the ipc namespace of helper `t` (which
/// is inside the namespace's owning user namespace).
pub fn restore(t: &mut Tracee, d: &IpcDump) -> Result<(), RestoreError> {
    // The namespace's sysctls are writable by its owner's root only (not
    // by crest's root, unmapped there): the helper becomes that root when
    // the user namespace maps one (in crest's own, it is root already).
    let _ = t.syscall(nr::SETRESGID, &[0, 0, 0]);
    let _ = t.syscall(nr::SETRESUID, &[0, 0, 0]);
    // (a uid change makes it non-dumpable: the tasks that enter its
    // namespaces through /proc/HELPER/ns must still reach them)
    t.prctl(&[libc::PR_SET_DUMPABLE as u64, 1], "prctl(PR_SET_DUMPABLE)")?;
    restore_var(t, &d.var)?;
    for (e, data) in &d.shms {
        restore_shm(t, e, data)?;
    }
    for (e, vals) in &d.sems {
        restore_sem(t, e, vals)?;
    }
    for (e, msgs) in &d.msgs {
        restore_msg(t, e, msgs)?;
    }
    if !d.pmqs.is_empty() {
        let pid = t.pid();
        mount_mqueue(t).rat(pid, "mount the mqueue filesystem of the ipc namespace")?;
        for q in &d.pmqs {
            restore_pmq(t, q)?;
        }
    }
    Ok(())
}

fn restore_pmq(t: &mut Tracee, q: &CrestPmqEntry) -> Result<(), RestoreError> {
    let pid = t.pid();
    let mut args = q.name.as_bytes().to_vec();
    args.push(0);
    let attr_at = args.len().div_ceil(8) * 8;
    args.resize(attr_at, 0);
    for v in [
        0u64,
        u64::from(q.maxmsg),
        u64::from(q.msgsize),
        0,
        0,
        0,
        0,
        0,
    ] {
        args.extend_from_slice(&v.to_le_bytes());
    }
    let base = t.put(&args).rat(pid, "write a queue name")?;
    let flags = (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NONBLOCK) as u64;
    let fd = t
        .syscall(
            nr::MQ_OPEN,
            &[
                base,
                flags,
                u64::from(q.mode & 0o777),
                base + attr_at as u64,
            ],
        )
        .rat(pid, format!("mq_open /{}", q.name))?;
    let r = send_all(t, fd, &q.messages).rat(pid, format!("refill POSIX queue /{}", q.name));
    t.close_quietly(fd);
    r?;
    // Owner and mode as crest sees them, through the helper's mount.
    let path = format!("/proc/{pid}/root{MQ_AT}/{}", q.name);
    std::os::unix::fs::chown(&path, Some(q.uid), Some(q.gid)).rat(pid, format!("chown {path}"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(q.mode))
        .rat(pid, format!("chmod {path}"))?;
    if let Some(times) = &q.times {
        set_path_times(&path, times).rat(pid, format!("set the times of {path}"))?;
    }
    Ok(())
}

/// Sets the access and modification times of a queue by its path in the
/// mqueue filesystem.
fn set_path_times(path: &str, times: &crest_images::pb::crest::CrestTimes) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    crest_sys::misc::set_times(
        &f,
        (times.atime_sec, times.atime_nsec),
        (times.mtime_sec, times.mtime_nsec),
    )
}

fn restore_var(t: &mut Tracee, v: &IpcVarEntry) -> Result<(), RestoreError> {
    let sem = v
        .sem_ctls
        .iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let mut set: Vec<(&str, String)> = vec![
        ("kernel/sem", sem),
        ("kernel/msgmax", v.msg_ctlmax.to_string()),
        ("kernel/msgmnb", v.msg_ctlmnb.to_string()),
        ("kernel/msgmni", v.msg_ctlmni.to_string()),
        ("kernel/shmmax", v.shm_ctlmax.to_string()),
        ("kernel/shmall", v.shm_ctlall.to_string()),
        ("kernel/shmmni", v.shm_ctlmni.to_string()),
        ("kernel/shm_rmid_forced", v.shm_rmid_forced.to_string()),
        ("fs/mqueue/queues_max", v.mq_queues_max.to_string()),
        ("fs/mqueue/msg_max", v.mq_msg_max.to_string()),
        ("fs/mqueue/msgsize_max", v.mq_msgsize_max.to_string()),
    ];
    if let Some(x) = v.mq_msg_default {
        set.push(("fs/mqueue/msg_default", x.to_string()));
    }
    if let Some(x) = v.mq_msgsize_default {
        set.push(("fs/mqueue/msgsize_default", x.to_string()));
    }
    for (name, val) in set {
        super::user::write_in_task(t, &format!("/proc/sys/{name}"), val.as_bytes())?;
    }
    Ok(())
}

/// Makes the next object of `kind` get `id`, then checks that it did.
fn next_id(t: &mut Tracee, kind: &str, id: u32) -> Result<(), RestoreError> {
    let path = format!("/proc/sys/kernel/{kind}_next_id");
    super::user::write_in_task(t, &path, id.to_string().as_bytes())
}

fn check_id(t: &Tracee, kind: &str, want: u32, got: u64) -> Result<(), RestoreError> {
    if got == u64::from(want) {
        return Ok(());
    }
    Err(RestoreError::Unsupported {
        pid: t.pid(),
        what: format!("SysV {kind} {want} came back as id {got}"),
    })
}

/// Sets owner, group and mode (and, for a queue, its byte limit) with an
/// `IPC_STAT`/`IPC_SET` round trip.
fn set_perm(
    t: &mut Tracee,
    call: u64,
    desc: &IpcDescEntry,
    qbytes: Option<u32>,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let ds = t.scratch(DS_LEN).rat(pid, "scratch")?;
    let id = u64::from(desc.id);
    // semctl takes (id, semnum, cmd, arg), the others (id, cmd, buf).
    let args = |cmd: u64| -> Vec<u64> {
        if call == nr::SEMCTL {
            vec![id, 0, cmd, ds]
        } else {
            vec![id, cmd, ds]
        }
    };
    t.syscall(call, &args(IPC_STAT)).rat(pid, "IPC_STAT")?;
    let mut raw = vec![0u8; DS_LEN];
    t.read_mem(ds, &mut raw).rat(pid, "read the ipc_perm")?;
    raw[4..8].copy_from_slice(&desc.uid.to_le_bytes());
    raw[8..12].copy_from_slice(&desc.gid.to_le_bytes());
    raw[20..24].copy_from_slice(&(desc.mode & 0o777).to_le_bytes());
    if let Some(q) = qbytes {
        raw[MSG_QBYTES_AT..MSG_QBYTES_AT + 8].copy_from_slice(&u64::from(q).to_le_bytes());
    }
    t.write_mem(ds, &raw).rat(pid, "write the ipc_perm")?;
    t.syscall(call, &args(IPC_SET))
        .rat(pid, format!("IPC_SET of SysV object {}", desc.id))?;
    Ok(())
}

fn restore_shm(t: &mut Tracee, e: &IpcShmEntry, data: &[u8]) -> Result<(), RestoreError> {
    let pid = t.pid();
    next_id(t, "shm", e.desc.id)?;
    let mut flags = u64::from(e.desc.mode & 0o777) | IPC_CREAT | IPC_EXCL;
    if let Some(kb) = e.crest_huge_page_kb {
        // SHM_HUGETLB with the page size's log in SHM_HUGE_SHIFT's bits
        const SHM_HUGETLB: u64 = 0o4000;
        const SHM_HUGE_SHIFT: u32 = 26;
        let bytes = u64::from(kb) * 1024;
        flags |= SHM_HUGETLB | (u64::from(bytes.trailing_zeros()) << SHM_HUGE_SHIFT);
    }
    let got = t
        .syscall(nr::SHMGET, &[u64::from(e.desc.key), e.size, flags])
        .rat(pid, format!("shmget of segment {}", e.desc.id))?;
    check_id(t, "segment", e.desc.id, got)?;
    if data.iter().any(|b| *b != 0) {
        let addr = t
            .syscall(nr::SHMAT, &[got, 0, 0])
            .rat(pid, format!("attach segment {}", e.desc.id))?;
        let r = crest_sys::mem::write_remote(pid, &[(addr, data.len())], data);
        t.syscall(nr::SHMDT, &[addr]).rat(pid, "shmdt")?;
        let n = r.rat(pid, format!("fill segment {}", e.desc.id))?;
        if n != data.len() {
            return Err(RestoreError::Unsupported {
                pid,
                what: format!("segment {}: wrote {n} of {} bytes", e.desc.id, data.len()),
            });
        }
    }
    if e.desc.mode & SHM_LOCKED != 0 {
        t.syscall(nr::SHMCTL, &[got, SHM_LOCK, 0])
            .rat(pid, format!("SHM_LOCK of segment {}", e.desc.id))?;
    }
    set_perm(t, nr::SHMCTL, &e.desc, None)
}

fn restore_sem(t: &mut Tracee, e: &IpcSemEntry, vals: &[u16]) -> Result<(), RestoreError> {
    let pid = t.pid();
    next_id(t, "sem", e.desc.id)?;
    let flags = u64::from(e.desc.mode & 0o777) | IPC_CREAT | IPC_EXCL;
    let got = t
        .syscall(
            nr::SEMGET,
            &[u64::from(e.desc.key), u64::from(e.nsems), flags],
        )
        .rat(pid, format!("semget of set {}", e.desc.id))?;
    check_id(t, "semaphore set", e.desc.id, got)?;
    let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    if !raw.is_empty() {
        let buf = t.put(&raw).rat(pid, "write semaphore values")?;
        t.syscall(nr::SEMCTL, &[got, 0, SETALL, buf])
            .rat(pid, format!("SETALL of set {}", e.desc.id))?;
    }
    set_perm(t, nr::SEMCTL, &e.desc, None)
}

fn restore_msg(
    t: &mut Tracee,
    e: &IpcMsgEntry,
    msgs: &[(u64, Vec<u8>)],
) -> Result<(), RestoreError> {
    let pid = t.pid();
    next_id(t, "msg", e.desc.id)?;
    let flags = u64::from(e.desc.mode & 0o777) | IPC_CREAT | IPC_EXCL;
    let got = t
        .syscall(nr::MSGGET, &[u64::from(e.desc.key), flags])
        .rat(pid, format!("msgget of queue {}", e.desc.id))?;
    check_id(t, "message queue", e.desc.id, got)?;
    // The byte limit first, so every message fits again.
    set_perm(t, nr::MSGCTL, &e.desc, Some(e.qbytes))?;
    for (mtype, data) in msgs {
        let mut m = mtype.to_le_bytes().to_vec();
        m.extend_from_slice(data);
        let buf = t.put(&m).rat(pid, "write a message")?;
        t.syscall(nr::MSGSND, &[got, buf, data.len() as u64, IPC_NOWAIT])
            .rat(pid, format!("msgsnd to queue {}", e.desc.id))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysvipc_tables_parse_by_header() {
        let shm = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n\
                   1234         5   1600                  4096   100   100      1     0     0     0     0          0          0 1700000000                  4096                     0\n";
        let rows = parse_table(shm).expect("parses");
        assert_eq!(rows.len(), 1);
        assert_eq!(col(&rows[0], "key"), 1234);
        assert_eq!(col(&rows[0], "shmid"), 5);
        assert_eq!(col(&rows[0], "perms"), 0o1600);
        assert_eq!(col(&rows[0], "size"), 4096);
        let d = desc_of(&rows[0], "shmid");
        assert_eq!((d.id, d.mode, d.key), (5, 0o1600, 1234));
        assert_eq!(parse_table("a b\n1\n"), None);
        assert_eq!(parse_table("a perms\n1 9\n"), None, "9 is not octal");
        assert_eq!(parse_table("key id\n").map(|r| r.len()), Some(0));
    }

    #[test]
    fn negative_keys_keep_their_bits() {
        let rows = parse_table("key semid perms nsems\n-1 3 666 2\n").expect("parses");
        assert_eq!(desc_of(&rows[0], "semid").key, u32::MAX);
    }

    #[test]
    fn padding() {
        assert_eq!(pad(0, 8), 0);
        assert_eq!(pad(1, 8), 7);
        assert_eq!(pad(8, 8), 0);
        assert_eq!(pad(4097, 4), 3);
    }
}
