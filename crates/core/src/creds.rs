//! Credentials: uids, gids, groups, capabilities, securebits and
//! no_new_privs. Dump reads them from `/proc/PID/status` (never from inside
//! the task) plus the securebits by injection; restore sets them last,
//! while the task still holds every capability it needs to do so.

use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::procfs::Status;
use crest_images::pb::CredsEntry;
use crest_inject::{nr, Tracee};

const PR_GET_SECUREBITS: u64 = 27;
const PR_SET_SECUREBITS: u64 = 28;
const PR_CAPBSET_DROP: u64 = 24;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const SECBIT_NO_SETUID_FIXUP: u64 = 1 << 2;
const SECBIT_KEEP_CAPS: u64 = 1 << 4;
/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_V3: u32 = 0x2008_0522;

fn split(caps: u64) -> Vec<u32> {
    vec![caps as u32, (caps >> 32) as u32]
}

fn join(words: &[u32]) -> u64 {
    let lo = u64::from(words.first().copied().unwrap_or(0));
    let hi = u64::from(words.get(1).copied().unwrap_or(0));
    lo | (hi << 32)
}

/// The credentials of a thread as seen in `status`.
pub fn dump(t: &mut Tracee, status: &Status) -> Result<CredsEntry, DumpError> {
    let pid = t.pid();
    let secbits = t
        .syscall(nr::PRCTL, &[PR_GET_SECUREBITS])
        .at(pid, "prctl(PR_GET_SECUREBITS)")?;
    Ok(CredsEntry {
        uid: status.uid[0],
        euid: status.uid[1],
        suid: status.uid[2],
        fsuid: status.uid[3],
        gid: status.gid[0],
        egid: status.gid[1],
        sgid: status.gid[2],
        fsgid: status.gid[3],
        cap_inh: split(status.cap_inh),
        cap_prm: split(status.cap_prm),
        cap_eff: split(status.cap_eff),
        cap_bnd: split(status.cap_bnd),
        cap_amb: split(status.cap_amb),
        secbits: secbits as u32,
        groups: status.groups.clone(),
        no_new_privs: Some(u32::from(status.no_new_privs)),
        ..CredsEntry::default()
    })
}

/// Sets the credentials; the task must still be fully privileged.
pub fn restore(t: &mut Tracee, c: &CredsEntry) -> Result<(), RestoreError> {
    let pid = t.pid();
    let bnd = join(&c.cap_bnd);
    let last_cap = last_cap();
    for cap in 0..=last_cap {
        if bnd & (1u64 << cap) == 0 {
            t.syscall(nr::PRCTL, &[PR_CAPBSET_DROP, cap])
                .rat(pid, format!("prctl(PR_CAPBSET_DROP, {cap})"))?;
        }
    }
    t.syscall(
        nr::PRCTL,
        &[PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP | SECBIT_KEEP_CAPS],
    )
    .rat(pid, "prctl(PR_SET_SECUREBITS)")?;
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    let gaddr = if groups.is_empty() {
        0
    } else {
        t.put(&groups).rat(pid, "write groups")?
    };
    t.syscall(nr::SETGROUPS, &[c.groups.len() as u64, gaddr])
        .rat(pid, "setgroups")?;
    t.syscall(
        nr::SETRESGID,
        &[u64::from(c.gid), u64::from(c.egid), u64::from(c.sgid)],
    )
    .rat(pid, "setresgid")?;
    t.syscall(nr::SETFSGID, &[u64::from(c.fsgid)])
        .rat(pid, "setfsgid")?;
    t.syscall(
        nr::SETRESUID,
        &[u64::from(c.uid), u64::from(c.euid), u64::from(c.suid)],
    )
    .rat(pid, "setresuid")?;
    t.syscall(nr::SETFSUID, &[u64::from(c.fsuid)])
        .rat(pid, "setfsuid")?;
    t.syscall(nr::PRCTL, &[PR_SET_SECUREBITS, u64::from(c.secbits)])
        .rat(pid, "prctl(PR_SET_SECUREBITS)")?;
    // capset: header {version, pid} then two data words {eff, prm, inh}.
    let (eff, prm, inh) = (join(&c.cap_eff), join(&c.cap_prm), join(&c.cap_inh));
    let mut raw = Vec::with_capacity(32);
    raw.extend_from_slice(&CAP_V3.to_le_bytes());
    raw.extend_from_slice(&0i32.to_le_bytes());
    for half in [0u32, 32] {
        for v in [eff, prm, inh] {
            raw.extend_from_slice(&((v >> half) as u32).to_le_bytes());
        }
    }
    let addr = t.put(&raw).rat(pid, "write capabilities")?;
    t.syscall(nr::CAPSET, &[addr, addr + 8])
        .rat(pid, "capset")?;
    let amb = join(&c.cap_amb);
    for cap in 0..=last_cap {
        if amb & (1u64 << cap) != 0 {
            t.syscall(nr::PRCTL, &[PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap])
                .rat(pid, format!("raise ambient capability {cap}"))?;
        }
    }
    if c.no_new_privs.unwrap_or(0) != 0 {
        t.syscall(nr::PRCTL, &[PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0])
            .rat(pid, "prctl(PR_SET_NO_NEW_PRIVS)")?;
    }
    Ok(())
}

fn last_cap() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}
