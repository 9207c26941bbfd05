//! SysV IPC objects and POSIX queues made again inside the restored
//! namespace by its helper, with their ids, owners, modes, contents and
//! times.

use super::*;
use crate::error::RoomError;
use crate::ns::error::NsError;

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

pub(super) fn restore_pmq(t: &mut Tracee, q: &CrestPmqEntry) -> Result<(), RestoreError> {
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

pub(super) fn restore_var(t: &mut Tracee, v: &IpcVarEntry) -> Result<(), RestoreError> {
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
        crate::ns::user::write_in_task(t, &format!("/proc/sys/{name}"), val.as_bytes())?;
    }
    Ok(())
}

/// Makes the next object of `kind` get `id`, then checks that it did.
pub(super) fn next_id(t: &mut Tracee, kind: &str, id: u32) -> Result<(), RestoreError> {
    let path = format!("/proc/sys/kernel/{kind}_next_id");
    crate::ns::user::write_in_task(t, &path, id.to_string().as_bytes())
}

pub(super) fn check_id(t: &Tracee, kind: &str, want: u32, got: u64) -> Result<(), RestoreError> {
    if got == u64::from(want) {
        return Ok(());
    }
    Err(NsError::Unsupported {
        what: format!("SysV {kind} {want} came back as id {got}"),
    }
    .in_restore(t.pid()))
}

/// Sets owner, group and mode (and, for a queue, its byte limit) with an
/// `IPC_STAT`/`IPC_SET` round trip.
pub(super) fn set_perm(
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

pub(super) fn restore_shm(
    t: &mut Tracee,
    e: &IpcShmEntry,
    data: &[u8],
) -> Result<(), RestoreError> {
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
            return Err(NsError::Unsupported {
                what: format!("segment {}: wrote {n} of {} bytes", e.desc.id, data.len()),
            }
            .in_restore(pid));
        }
    }
    if e.desc.mode & SHM_LOCKED != 0 {
        t.syscall(nr::SHMCTL, &[got, SHM_LOCK, 0])
            .rat(pid, format!("SHM_LOCK of segment {}", e.desc.id))?;
    }
    set_perm(t, nr::SHMCTL, &e.desc, None)
}

pub(super) fn restore_sem(
    t: &mut Tracee,
    e: &IpcSemEntry,
    vals: &[u16],
) -> Result<(), RestoreError> {
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

pub(super) fn restore_msg(
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
