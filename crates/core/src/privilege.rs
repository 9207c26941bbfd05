//! Whom a dump or restore acts for, and what it may do for them (CRIU's
//! `--unprivileged`).
//!
//! crest run by root (real and effective uid 0, no `--unprivileged`) may
//! do whatever root may. Anyone else is a *caller* who holds its real
//! uid, its real gid and supplementary groups, and the capabilities it
//! brought: crest's permitted set, or, when a set-uid bit or file
//! capabilities raised crest at exec (`AT_SECURE`), only the inheritable
//! ones it passed in. For such a caller crest
//!
//! - first gives up what it was raised with beyond the caller's own
//!   power, except CAP_CHECKPOINT_RESTORE (pids through `set_tid`, a
//!   task's exe link, `/proc/PID/map_files`), so the kernel checks every
//!   file, ptrace and namespace as it would for the caller ([`Caller::confine`]);
//! - dumps only tasks the caller could trace itself ([`Caller::check_dump`]);
//! - refuses, before any task exists, images that would give a task ids,
//!   capabilities or namespaces the caller does not hold, whatever the
//!   images say ([`Caller::check_creds`], [`Caller::check_userns`],
//!   [`Caller::check_ns`]). A task in a user namespace the restore makes
//!   for the caller may hold any capability there, as the kernel allows a
//!   namespace's creator.

use crate::error::RoomError;
use crate::error::{DumpError, RestoreError};
use crate::ns::user::{Userns, UsernsGraph};
use crate::procfs::{self, IdExtent, Status};
use crest_images::pb::CredsEntry;
use std::os::unix::fs::MetadataExt;

pub const CAP_SETGID: u32 = 6;
pub const CAP_SETUID: u32 = 7;
pub const CAP_SETPCAP: u32 = 8;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_CHECKPOINT_RESTORE: u32 = 40;

const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The names of the capabilities in `set` (`cap_N` past the known ones).
pub fn cap_names(set: u64) -> String {
    let names: Vec<String> = (0..64u32)
        .filter(|c| set & (1u64 << c) != 0)
        .map(|c| {
            CAP_NAMES
                .get(c as usize)
                .map_or_else(|| format!("cap_{c}"), |n| (*n).to_string())
        })
        .collect();
    names.join(", ")
}

/// The caller of this dump or restore.
#[derive(Debug, Clone)]
pub struct Caller {
    /// false: root, nothing is checked.
    pub restricted: bool,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The capabilities the caller holds in crest's user namespace.
    pub caps: u64,
    /// crest was raised at exec beyond its caller.
    pub raised: bool,
    /// crest's own permitted and inheritable sets, bounding set and
    /// securebits (what a forked task starts with).
    crest_prm: u64,
    crest_inh: u64,
    crest_bnd: u64,
    crest_secbits: u32,
    euid: u32,
    egid: u32,
}

impl Caller {
    /// Root, unrestricted (for tests and tools that check nothing).
    pub fn root() -> Caller {
        Caller {
            restricted: false,
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            caps: u64::MAX,
            raised: false,
            crest_prm: u64::MAX,
            crest_inh: 0,
            crest_bnd: u64::MAX,
            crest_secbits: 0,
            euid: 0,
            egid: 0,
        }
    }

    /// The caller of this crest process; `unprivileged` is the option.
    pub fn detect(unprivileged: bool) -> std::io::Result<Caller> {
        let me = std::process::id() as i32;
        let st = procfs::read_status(me).map_err(std::io::Error::other)?;
        let raised = crest_sys::creds::at_secure();
        Ok(Caller::of(
            &st,
            raised,
            unprivileged,
            crest_sys::creds::securebits()?,
        ))
    }

    /// The caller, from crest's own status.
    pub fn of(st: &Status, raised: bool, unprivileged: bool, secbits: u32) -> Caller {
        let root = st.uid[0] == 0 && st.uid[1] == 0;
        Caller {
            restricted: unprivileged || !root,
            uid: st.uid[0],
            gid: st.gid[0],
            groups: st.groups.clone(),
            caps: if raised {
                st.cap_inh & st.cap_prm
            } else {
                st.cap_prm
            },
            raised,
            crest_prm: st.cap_prm,
            crest_inh: st.cap_inh,
            crest_bnd: st.cap_bnd,
            crest_secbits: secbits,
            euid: st.uid[1],
            egid: st.gid[1],
        }
    }

    /// Whether the caller holds capability `cap`.
    pub fn has(&self, cap: u32) -> bool {
        !self.restricted || self.caps & (1u64 << cap) != 0
    }

    /// crest has no rights over the namespaces a nested user namespace
    /// owns from its own: a task or helper must enter that user namespace
    /// before them.
    pub fn enters_userns_first(&self) -> bool {
        self.restricted && !self.has(CAP_SYS_ADMIN)
    }

    /// What crest keeps for a restricted caller: the caller's capabilities
    /// and CAP_CHECKPOINT_RESTORE, if crest has it.
    pub fn kept_caps(&self) -> u64 {
        self.caps | (self.crest_prm & (1u64 << CAP_CHECKPOINT_RESTORE))
    }

    /// Gives up what crest was raised with beyond the caller's power (see
    /// the module's doc): the caller's ids, and only [`Caller::kept_caps`].
    /// Nothing to do for root or for a crest that was not raised.
    pub fn confine(&self) -> std::io::Result<()> {
        if !self.restricted || !self.raised {
            return Ok(());
        }
        let keep = self.kept_caps();
        if self.euid != self.uid || self.egid != self.gid {
            crest_sys::creds::set_keep_caps(true)?;
            crest_sys::creds::become_ids(self.uid, self.gid)?;
            crest_sys::creds::set_keep_caps(false)?;
        }
        crest_sys::creds::capset_self(keep, keep, self.crest_inh & keep)?;
        // The raising exec made crest non-dumpable, and the tasks it forks
        // would be too: their /proc files root's, closed to crest itself.
        // The caller still cannot trace crest: it lacks the capabilities
        // crest keeps.
        crest_sys::creds::set_dumpable()?;
        crate::info!(
            "acting for uid {} (crest was raised at exec): keeping {}",
            self.uid,
            if keep == 0 {
                "no capability".to_string()
            } else {
                cap_names(keep)
            }
        );
        Ok(())
    }

    /// Whether crest can give restored tasks their pids (`clone3` with
    /// `set_tid` needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN).
    pub fn can_restore_pids(&self) -> bool {
        let pids = (1u64 << CAP_CHECKPOINT_RESTORE) | (1u64 << CAP_SYS_ADMIN);
        !self.restricted || self.crest_prm & pids != 0
    }

    /// Refuses a restricted restore that could not give tasks their pids
    /// (`clone3` with `set_tid` needs CAP_CHECKPOINT_RESTORE or
    /// CAP_SYS_ADMIN), before anything is made.
    pub fn check_can_restore(&self) -> Result<(), RestoreError> {
        if self.can_restore_pids() {
            return Ok(());
        }
        Err(NoPidControl { uid: self.uid }.in_tree_restore())
    }

    /// The caller holds gid `g`.
    fn holds_gid(&self, g: u32) -> bool {
        g == self.gid || self.groups.contains(&g)
    }

    /// Refuses to dump a task of `pids` (every thread) that the caller
    /// could not trace itself: another uid, a gid it lacks, capabilities
    /// it lacks, not dumpable; or a task in a user namespace that is not
    /// the caller's. `users` is the tree's user namespace graph.
    pub fn check_dump(&self, pids: &[i32], users: &UsernsGraph) -> Result<(), DumpError> {
        if !self.restricted || self.has(CAP_SYS_PTRACE) {
            return Ok(());
        }
        let forbidden = |pid: i32, what: String| DumpError::Forbidden {
            pid,
            uid: self.uid,
            what,
        };
        for &pid in pids {
            let ns = users.ns_of(pid).unwrap_or(1);
            if users.node(ns).is_some_and(|n| n.parent.is_some()) {
                // the creator of a namespace may trace all within it
                let top = top_of(users, ns);
                if let Some(t) = top.filter(|t| t.owner_uid != self.uid) {
                    return Err(forbidden(
                        pid,
                        format!(
                            "it is in a user namespace uid {} made, not the caller",
                            t.owner_uid
                        ),
                    ));
                }
                continue;
            }
            let tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| {
                    d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                        .collect()
                })
                .unwrap_or_else(|_| vec![pid]);
            for tid in tids {
                let Ok(st) = procfs::read_status(tid) else {
                    continue; // (a thread that ended)
                };
                if st.uid[..3].iter().any(|&u| u != self.uid) {
                    return Err(forbidden(
                        tid,
                        format!("it runs with uids {:?}", &st.uid[..3]),
                    ));
                }
                if let Some(g) = st.gid[..3].iter().find(|&&g| !self.holds_gid(g)) {
                    return Err(forbidden(tid, format!("it runs with gid {g}")));
                }
                let extra = st.cap_prm & !self.caps;
                if extra != 0 {
                    return Err(forbidden(tid, format!("it holds {}", cap_names(extra))));
                }
            }
            // a task that is not dumpable has its /proc directory owned
            // by root
            let owner = std::fs::metadata(format!("/proc/{pid}")).map(|m| m.uid());
            if owner.is_ok_and(|o| o != self.uid) {
                return Err(forbidden(
                    pid,
                    "it is not dumpable (a set-uid program, or PR_SET_DUMPABLE 0)".into(),
                ));
            }
        }
        Ok(())
    }

    /// Refuses creds `c` of thread `tid` of task `pid` (as the task sees
    /// them; `root_ns`: the task is in the caller's user namespace) that
    /// the caller does not hold, or that crest could set only with a
    /// capability the caller lacks. Creds absent (`None`) would leave a
    /// task crest's own, so they are refused too.
    pub fn check_creds(
        &self,
        pid: i32,
        file: &str,
        c: Option<&CredsEntry>,
        root_ns: bool,
    ) -> Result<(), RestoreError> {
        if !self.restricted {
            return Ok(());
        }
        let forbidden = |what: String| RestoreError::Forbidden {
            pid,
            file: file.to_string(),
            uid: self.uid,
            what,
        };
        let Some(c) = c else {
            return Err(forbidden(
                "no credentials (the task would keep crest's)".into(),
            ));
        };
        if !root_ns {
            return Ok(()); // its namespace's maps are checked
        }
        let uids = [c.uid, c.euid, c.suid, c.fsuid];
        if !self.has(CAP_SETUID) && uids.iter().any(|&u| u != self.uid) {
            return Err(forbidden(format!("uids {uids:?}")));
        }
        let gids = [c.gid, c.egid, c.sgid, c.fsgid];
        if !self.has(CAP_SETGID) {
            if gids.iter().any(|&g| g != self.gid) {
                return Err(forbidden(format!("gids {gids:?}")));
            }
            let (mut want, mut have) = (c.groups.clone(), self.groups.clone());
            want.sort_unstable();
            have.sort_unstable();
            if want != have {
                return Err(forbidden(format!(
                    "supplementary groups {want:?} (crest has {have:?}; changing them needs \
                     CAP_SETGID)"
                )));
            }
        }
        use crate::task::creds::join;
        let held = join(&c.cap_prm) | join(&c.cap_eff) | join(&c.cap_inh) | join(&c.cap_amb);
        let extra = held & !self.caps;
        if extra != 0 {
            return Err(forbidden(format!("capabilities {}", cap_names(extra))));
        }
        if !self.has(CAP_SETPCAP) {
            let drops = self.crest_bnd & !join(&c.cap_bnd);
            if drops != 0 {
                return Err(forbidden(format!(
                    "a bounding set without {} (dropping needs CAP_SETPCAP)",
                    cap_names(drops)
                )));
            }
            if c.secbits != self.crest_secbits {
                return Err(forbidden(format!(
                    "securebits {:#x} (crest has {:#x}; setting them needs CAP_SETPCAP)",
                    c.secbits, self.crest_secbits
                )));
            }
        }
        Ok(())
    }

    /// Refuses user namespace `n` (a child of the caller's) whose owner or
    /// maps name ids the caller does not hold.
    pub fn check_userns(&self, n: &Userns, file: &str) -> Result<(), RestoreError> {
        if !self.restricted {
            return Ok(());
        }
        let forbidden = |what: String| RestoreError::Forbidden {
            pid: 0,
            file: file.to_string(),
            uid: self.uid,
            what,
        };
        if !self.has(CAP_SETUID) {
            if n.owner_uid != self.uid {
                return Err(forbidden(format!(
                    "a user namespace owned by uid {}",
                    n.owner_uid
                )));
            }
            if let Some(e) = n.uid_map.iter().find(|e| !single(e, self.uid)) {
                return Err(forbidden(format!(
                    "a user namespace mapping uids {}",
                    range(e)
                )));
            }
        }
        if !self.has(CAP_SETGID) {
            if let Some(e) = n.gid_map.iter().find(|e| !single(e, self.gid)) {
                return Err(forbidden(format!(
                    "a user namespace mapping gids {}",
                    range(e)
                )));
            }
            if !n.gid_map.is_empty() && n.setgroups_allow {
                return Err(forbidden(
                    "a user namespace that maps gids and allows setgroups (unprivileged, the \
                     kernel takes a gid map only with setgroups denied)"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Refuses a namespace of kind `kind` owned by the caller's user
    /// namespace, which only CAP_SYS_ADMIN there may make.
    pub fn check_ns(&self, kind: &str, file: &str) -> Result<(), RestoreError> {
        if self.has(CAP_SYS_ADMIN) {
            return Ok(());
        }
        Err(RestoreError::Forbidden {
            pid: 0,
            file: file.to_string(),
            uid: self.uid,
            what: format!(
                "a {kind} namespace of the tree's own in the caller's user namespace (making it \
                 needs CAP_SYS_ADMIN)"
            ),
        })
    }
}

/// Extent `e` maps exactly the one outer id `id`.
fn single(e: &IdExtent, id: u32) -> bool {
    e.count == 1 && e.lower_first == id
}

fn range(e: &IdExtent) -> String {
    format!(
        "{}-{} of the caller's namespace",
        e.lower_first,
        u64::from(e.lower_first) + u64::from(e.count.max(1)) - 1
    )
}

/// The namespace below the caller's on the way up from `id`.
fn top_of(users: &UsernsGraph, id: u32) -> Option<&Userns> {
    let mut cur = users.node(id)?;
    loop {
        let parent = users.node(cur.parent?)?;
        if parent.parent.is_none() {
            return Some(cur);
        }
        cur = parent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(uid: u32, prm: u64, inh: u64) -> Status {
        Status {
            uid: [uid; 4],
            gid: [uid; 4],
            cap_prm: prm,
            cap_inh: inh,
            cap_bnd: (1 << 41) - 1,
            ..Status::default()
        }
    }

    fn creds(uid: u32, caps: u64) -> CredsEntry {
        let w = vec![caps as u32, (caps >> 32) as u32];
        CredsEntry {
            uid,
            euid: uid,
            suid: uid,
            fsuid: uid,
            gid: uid,
            egid: uid,
            sgid: uid,
            fsgid: uid,
            cap_prm: w.clone(),
            cap_eff: w.clone(),
            cap_inh: vec![0, 0],
            cap_amb: vec![0, 0],
            cap_bnd: vec![u32::MAX, (1 << 9) - 1],
            ..CredsEntry::default()
        }
    }

    #[test]
    fn raised_caller_holds_only_what_it_passed_in() {
        let cr = 1u64 << CAP_CHECKPOINT_RESTORE;
        let c = Caller::of(&status(1000, cr, 0), true, false, 0);
        assert!(c.restricted);
        assert_eq!(c.caps, 0);
        assert_eq!(c.kept_caps(), cr);
        let plain = Caller::of(&status(1000, cr, 0), false, false, 0);
        assert_eq!(plain.caps, cr);
        let root = Caller::of(&status(0, u64::MAX, 0), false, false, 0);
        assert!(!root.restricted);
        assert!(Caller::of(&status(0, u64::MAX, 0), false, true, 0).restricted);
    }

    #[test]
    fn creds_beyond_the_caller_are_refused() {
        let c = Caller::of(
            &status(1000, 1 << CAP_CHECKPOINT_RESTORE, 0),
            true,
            false,
            0,
        );
        let own = creds(1000, 0);
        assert!(c.check_creds(1, "core-1.img", Some(&own), true).is_ok());
        let e = c
            .check_creds(1, "core-1.img", Some(&creds(0, 0)), true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("uids [0, 0, 0, 0]") && e.contains("core-1.img"),
            "{e}"
        );
        let e = c
            .check_creds(
                1,
                "core-1.img",
                Some(&creds(1000, 1 << CAP_SYS_ADMIN)),
                true,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("CAP_SYS_ADMIN"), "{e}");
        // even the one crest keeps for itself
        let e = c
            .check_creds(
                1,
                "core-1.img",
                Some(&creds(1000, 1 << CAP_CHECKPOINT_RESTORE)),
                true,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("CAP_CHECKPOINT_RESTORE"), "{e}");
        assert!(c.check_creds(1, "core-1.img", None, true).is_err());
        // inside a namespace the restore makes: its maps are checked
        assert!(c
            .check_creds(1, "core-1.img", Some(&creds(0, u64::MAX)), false)
            .is_ok());
        let mut bits = own.clone();
        bits.secbits = 0x2f;
        assert!(c.check_creds(1, "core-1.img", Some(&bits), true).is_err());
        let root = Caller::root();
        assert!(root
            .check_creds(1, "core-1.img", Some(&creds(0, u64::MAX)), true)
            .is_ok());
    }

    #[test]
    fn userns_maps_beyond_the_caller_are_refused() {
        let c = Caller::of(&status(1000, 0, 0), false, false, 0);
        let ext = |lower_first, count| IdExtent {
            first: 0,
            lower_first,
            count,
        };
        let mut n = Userns::default();
        n.id = 2;
        n.parent = Some(1);
        n.depth = 1;
        n.uid_map = vec![ext(1000, 1)];
        n.gid_map = vec![ext(1000, 1)];
        n.owner_uid = 1000;
        assert!(c.check_userns(&n, "userns-2.img").is_ok());
        n.uid_map = vec![ext(0, 65536)];
        let e = c.check_userns(&n, "userns-2.img").unwrap_err().to_string();
        assert!(e.contains("uids 0-65535"), "{e}");
        n.uid_map = vec![ext(1000, 1)];
        n.setgroups_allow = true;
        assert!(c.check_userns(&n, "userns-2.img").is_err());
        n.setgroups_allow = false;
        n.owner_uid = 0;
        assert!(c.check_userns(&n, "userns-2.img").is_err());
        assert!(c.check_ns("net", "crest-ns.img").is_err());
    }

    #[test]
    fn cap_names_name_each() {
        assert_eq!(
            cap_names((1 << CAP_SYS_ADMIN) | (1 << 50)),
            "CAP_SYS_ADMIN, cap_50"
        );
    }
}

/// A restore whose caller may not choose pids.
#[derive(Debug, thiserror::Error)]
#[error(
    "restoring as uid {uid} without CAP_CHECKPOINT_RESTORE, which giving tasks their pids needs, \
     is not supported (run crest as root, or give it the capability: setcap \
     cap_checkpoint_restore+ep crest)"
)]
pub struct NoPidControl {
    uid: u32,
}

impl RoomError for NoPidControl {}
