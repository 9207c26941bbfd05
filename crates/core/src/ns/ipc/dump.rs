//! SysV IPC objects and POSIX queues at dump, read inside the namespace
//! through a reader task: shared memory with its pages, semaphores,
//! message queues copied without consuming them, the namespace's ipc
//! sysctls.

use super::*;
use crate::error::RoomError;
use crate::ns::error::NsError;

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
        parse_table(&text).ok_or_else(|| {
            NsError::Unsupported {
                what: format!("a /proc/sysvipc/{kind} that crest cannot read: {text:?}"),
            }
            .in_dump(pid)
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

/// `struct mq_attr` fields: flags, maxmsg, msgsize, curmsgs.
pub(super) fn mq_attr(raw: &[u8]) -> [u64; 4] {
    [0, 8, 16, 24].map(|at| u64_at(raw, at))
}

/// The POSIX queues of the namespace, messages copied by receiving them
/// all and sending them back in the same order (the tree is frozen).
pub(super) fn dump_pmqs(pid: i32, t: &mut Tracee) -> Result<Vec<CrestPmqEntry>, DumpError> {
    mount_mqueue(t).at(pid, "mount the mqueue filesystem of an ipc namespace")?;
    let dir = format!("/proc/{}/root{MQ_AT}", t.pid());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .at(pid, "list POSIX message queues")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names.len() > MAX_PMQS {
        return Err(NsError::Unsupported {
            what: format!("{} POSIX message queues", names.len()),
        }
        .in_dump(pid));
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let path = format!("{dir}/{name}");
        let info = std::fs::read_to_string(&path).at(pid, "read a POSIX queue's status")?;
        if info
            .split_whitespace()
            .any(|f| f.starts_with("NOTIFY_PID:") && f != "NOTIFY_PID:0")
        {
            return Err(NsError::Unsupported {
                what: format!(
                    "POSIX message queue /{name} with a notification registered (mq_notify)"
                ),
            }
            .in_dump(pid));
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

pub(super) fn copy_queue(
    pid: i32,
    t: &mut Tracee,
    fd: u64,
    e: &mut CrestPmqEntry,
) -> Result<(), DumpError> {
    let attr = t.scratch(64).at(pid, "scratch")?;
    t.syscall(nr::MQ_GETSETATTR, &[fd, 0, attr])
        .at(pid, "read a POSIX queue's attributes")?;
    let mut raw = [0u8; 64];
    t.read_mem(attr, &mut raw).at(pid, "read mq_attr")?;
    let [_, maxmsg, msgsize, cur] = mq_attr(&raw);
    if msgsize.saturating_mul(cur) > MAX_PMQ_BYTES || msgsize > MAX_PMQ_BYTES {
        return Err(NsError::Unsupported {
            what: format!(
                "POSIX message queue /{} holding {cur} messages of up to {msgsize} bytes",
                e.name
            ),
        }
        .in_dump(pid));
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

pub(super) fn dump_shm(
    pid: i32,
    t: &mut Tracee,
    row: &Row,
) -> Result<(IpcShmEntry, Vec<u8>), DumpError> {
    let desc = desc_of(row, "shmid");
    let size = col(row, "size") as u64;
    if desc.mode & SHM_DEST != 0 {
        return Err(NsError::Unsupported {
            what: format!(
                "SysV segment {} removed (IPC_RMID) while still attached",
                desc.id
            ),
        }
        .in_dump(pid));
    }
    if size > MAX_SHM {
        return Err(NsError::Unsupported {
            what: format!(
                "SysV segment {} of {size} bytes (crest copies at most {MAX_SHM})",
                desc.id
            ),
        }
        .in_dump(pid));
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
        return Err(NsError::Unsupported {
            what: format!("SysV segment {}: read {n} of {size} bytes", desc.id),
        }
        .in_dump(pid));
    }
    let entry = IpcShmEntry {
        desc,
        size,
        in_pagemaps: Some(false),
        crest_huge_page_kb: huge_kb,
    };
    Ok((entry, data))
}

pub(super) fn dump_sem(
    pid: i32,
    t: &mut Tracee,
    row: &Row,
) -> Result<(IpcSemEntry, Vec<u16>), DumpError> {
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

pub(super) fn dump_msg(pid: i32, t: &mut Tracee, row: &Row) -> Result<Queue, DumpError> {
    let desc = desc_of(row, "msqid");
    let qnum = col(row, "qnum").max(0) as u64;
    let cbytes = col(row, "cbytes").max(0) as u64;
    if cbytes > MAX_QUEUE_BYTES {
        return Err(NsError::Unsupported {
            what: format!("SysV message queue {} holding {cbytes} bytes", desc.id),
        }
        .in_dump(pid));
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

pub(super) fn u64_at(raw: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = raw.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

/// The sysctls of the namespace, in CRIU's `ipc_var_entry`.
pub(super) fn read_var(pid: i32, t: &mut Tracee) -> Result<IpcVarEntry, DumpError> {
    let mut read = |name: &str| -> Result<Vec<u64>, DumpError> {
        let text = t
            .read_file(&format!("/proc/sys/{name}"))
            .map_err(|e| e.for_task(pid))?;
        text.split_whitespace()
            .map(|w| w.parse::<u64>())
            .collect::<Result<Vec<u64>, _>>()
            .map_err(|_| {
                NsError::Unsupported {
                    what: format!("sysctl {name} that crest cannot read: {text:?}"),
                }
                .in_dump(pid)
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
