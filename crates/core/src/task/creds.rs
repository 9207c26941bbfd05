//! Credentials: uids, gids, groups, capabilities, securebits and
//! no_new_privs. Dump reads them from `/proc/PID/status` (never from inside
//! the task) plus the securebits by injection; restore sets them last,
//! while the task still holds every capability it needs to do so.

use crate::error::{DumpError, RestoreCtx, RestoreError};
use crate::ns::user::{to_task_view, UsernsGraph};
use crate::procfs::Status;
use crate::remote::Remote;
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

/// A capability set from its two 32-bit words (an image's layout).
pub(crate) fn join(words: &[u32]) -> u64 {
    let lo = u64::from(words.first().copied().unwrap_or(0));
    let hi = u64::from(words.get(1).copied().unwrap_or(0));
    lo | (hi << 32)
}

/// The credentials of a thread: `status` shows ids as crest sees them;
/// the image holds them as the task sees them in its user namespace `ns`
/// (as CRIU's images do), capabilities as they are in that namespace.
pub fn dump(
    t: &mut Tracee,
    status: &Status,
    users: &UsernsGraph,
    ns: u32,
) -> Result<CredsEntry, DumpError> {
    let secbits = t.prctl(&[PR_GET_SECUREBITS], "prctl(PR_GET_SECUREBITS)")?;
    let u = to_task_view(users, ns, &status.uid, false);
    let g = to_task_view(users, ns, &status.gid, true);
    Ok(CredsEntry {
        uid: u[0],
        euid: u[1],
        suid: u[2],
        fsuid: u[3],
        gid: g[0],
        egid: g[1],
        sgid: g[2],
        fsgid: g[3],
        cap_inh: split(status.cap_inh),
        cap_prm: split(status.cap_prm),
        cap_eff: split(status.cap_eff),
        cap_bnd: split(status.cap_bnd),
        cap_amb: split(status.cap_amb),
        secbits: secbits as u32,
        groups: to_task_view(users, ns, &status.groups, true),
        no_new_privs: Some(u32::from(status.no_new_privs)),
        ..CredsEntry::default()
    })
}

/// Real, effective, saved and fs uids and gids, and the groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
}

impl Ids {
    /// The ids of an image's creds, as the task sees them.
    pub fn of(c: &CredsEntry) -> Ids {
        Ids {
            uids: [c.uid, c.euid, c.suid, c.fsuid],
            gids: [c.gid, c.egid, c.sgid, c.fsgid],
            groups: c.groups.clone(),
        }
    }
}

/// Sets the credentials; the task must still be fully privileged.
pub fn restore(t: &mut Tracee, c: &CredsEntry) -> Result<(), RestoreError> {
    set_ids(t, &Ids::of(c), true)?;
    set_caps(t, c)
}

/// The thread's status when it is in crest's own user namespace (so the
/// ids it shows are the ones the thread sees).
fn status_in_own_userns(tid: i32) -> Option<Status> {
    // (crest's own is read once: it never changes)
    static MINE: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let mine = (*MINE.get_or_init(|| crate::ns::user::ino_of("/proc/self/ns/user").ok()))?;
    let its = crate::ns::user::ino_of(&format!("/proc/{tid}/ns/user")).ok()?;
    if mine != its {
        return None;
    }
    crate::procfs::read_status(tid).ok()
}

/// Sets uids, gids and (if `groups`) the supplementary groups, keeping
/// every capability (securebits NO_SETUID_FIXUP and KEEP_CAPS). A thread
/// that has them already is left alone: changing nothing needs no
/// privilege (an unprivileged restore gives tasks crest's own ids).
pub fn set_ids(t: &mut Tracee, ids: &Ids, groups: bool) -> Result<(), RestoreError> {
    let pid = t.pid();
    if let Some(now) = status_in_own_userns(pid) {
        let same_groups = !groups || {
            let (mut a, mut b) = (now.groups.clone(), ids.groups.clone());
            a.sort_unstable();
            b.sort_unstable();
            a == b
        };
        if now.uid == ids.uids && now.gid == ids.gids && same_groups {
            return Ok(());
        }
    }
    t.prctl(
        &[PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP | SECBIT_KEEP_CAPS],
        "prctl(PR_SET_SECUREBITS)",
    )?;
    if groups {
        let raw: Vec<u8> = ids.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        let gaddr = if raw.is_empty() {
            0
        } else {
            t.put(&raw).rat(pid, "write groups")?
        };
        t.syscall(nr::SETGROUPS, &[ids.groups.len() as u64, gaddr])
            .rat(pid, "setgroups")?;
    }
    let [g, eg, sg, fg] = ids.gids.map(u64::from);
    let [u, eu, su, fu] = ids.uids.map(u64::from);
    t.syscall(nr::SETRESGID, &[g, eg, sg])
        .rat(pid, format!("setresgid({g}, {eg}, {sg})"))?;
    t.syscall(nr::SETFSGID, &[fg]).rat(pid, "setfsgid")?;
    t.syscall(nr::SETRESUID, &[u, eu, su])
        .rat(pid, format!("setresuid({u}, {eu}, {su})"))?;
    t.syscall(nr::SETFSUID, &[fu]).rat(pid, "setfsuid")?;
    Ok(())
}

/// Sets the bounding set, securebits, capabilities, ambient set and
/// no_new_privs; the task must hold CAP_SETPCAP in its namespace.
pub fn set_caps(t: &mut Tracee, c: &CredsEntry) -> Result<(), RestoreError> {
    let pid = t.pid();
    let bnd = join(&c.cap_bnd);
    // (dropping one already dropped would need CAP_SETPCAP all the same)
    let now_bnd = crate::procfs::read_status(pid).map_or(u64::MAX, |s| s.cap_bnd);
    let last_cap = last_cap();
    for cap in 0..=last_cap {
        if bnd & (1u64 << cap) == 0 && now_bnd & (1u64 << cap) != 0 {
            t.prctl(
                &[PR_CAPBSET_DROP, cap],
                &format!("prctl(PR_CAPBSET_DROP, {cap})"),
            )?;
        }
    }
    let now_bits = t.prctl(&[PR_GET_SECUREBITS], "prctl(PR_GET_SECUREBITS)")?;
    if now_bits != u64::from(c.secbits) {
        t.prctl(
            &[PR_SET_SECUREBITS, u64::from(c.secbits)],
            "prctl(PR_SET_SECUREBITS)",
        )?;
    }
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
            t.prctl(
                &[PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap],
                &format!("raise ambient capability {cap}"),
            )?;
        }
    }
    if c.no_new_privs.unwrap_or(0) != 0 {
        t.prctl(
            &[PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0],
            "prctl(PR_SET_NO_NEW_PRIVS)",
        )?;
    }
    Ok(())
}

fn last_cap() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}
