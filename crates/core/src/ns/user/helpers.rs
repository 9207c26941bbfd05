//! User namespaces at restore: helper tasks that make each one with its
//! maps written from outside (or join the caller's with --join-ns), and
//! the moves of tasks into them.

use super::*;
use crate::error::RoomError;
use crate::ns::error::NsError;

/// Helper tasks that hold the restored user namespaces until every task
/// has entered its own. Dropping them kills them.
#[derive(Default)]
pub struct UsernsHelpers {
    by_ns: HashMap<u32, Tracee>,
}

impl UsernsHelpers {
    /// The pid of the helper that lives in namespace `id`.
    pub fn pid_of(&self, id: u32) -> Option<i32> {
        self.by_ns.get(&id).map(|t| t.pid())
    }

    /// Builds every nested namespace of `g`, top-down. `join` (CRIU's
    /// `--join-ns user:FILE[,UID[,GID]]`): the tree's outermost user
    /// namespace is that one, which must map ids as the dumped one did;
    /// only the namespaces below it are made.
    pub fn build(
        g: &UsernsGraph,
        join: Option<&crate::opts::JoinNs>,
    ) -> Result<UsernsHelpers, RestoreError> {
        let mut h = UsernsHelpers::default();
        let mut order: Vec<&Userns> = g.nodes.iter().filter(|n| n.parent.is_some()).collect();
        order.sort_by_key(|n| n.depth);
        let joined = match join {
            Some(j) => Some(join_target(g, j)?),
            None => None,
        };
        for n in order {
            let parent = n.parent.unwrap_or(1);
            let parent_is_root = g.node(parent).is_some_and(|p| p.parent.is_none());
            if joined == Some(n.id) {
                if let Some(j) = join {
                    let t = join_helper(n, j)?;
                    h.by_ns.insert(n.id, t);
                }
                continue;
            }
            let mut t = if parent_is_root {
                let pid = spawn_stopped(&[], SessionSetup::Inherit)
                    .rat(0, "spawn a user namespace helper")?;
                let mut t =
                    Tracee::from_stopped_child(pid).rat(pid, "attach a user namespace helper")?;
                t.trace_new_tasks().rat(pid, "trace new tasks")?;
                t.use_vdso_syscall().rat(pid, "helper syscall")?;
                t
            } else {
                let ph = h.by_ns.get_mut(&parent).ok_or_else(|| {
                    NsError::BadImage {
                        file: names::userns(n.id),
                        what: format!("namespace {} comes before its parent {parent}", n.id),
                    }
                    .in_tree_restore()
                })?;
                crate::clone::clone_plain(ph)?
            };
            unshare_as_owner(&mut t, g, n, parent_is_root)?;
            h.write_maps(t.pid(), n, parent_is_root)?;
            h.by_ns.insert(n.id, t);
        }
        Ok(h)
    }

    /// Writes the id maps (and `setgroups`) of namespace `n`, just made
    /// by helper `pid`: from crest where its parent is crest's namespace,
    /// else from the parent's helper.
    fn write_maps(
        &mut self,
        pid: i32,
        n: &Userns,
        parent_is_root: bool,
    ) -> Result<(), RestoreError> {
        let parent = n.parent.unwrap_or(1);
        let writes = [
            (
                "setgroups",
                if n.setgroups_allow {
                    String::new()
                } else {
                    "deny".to_string()
                },
            ),
            ("uid_map", idmap::to_text(&n.uid_map)),
            ("gid_map", idmap::to_text(&n.gid_map)),
        ];
        for (file, text) in writes {
            if text.is_empty() {
                continue;
            }
            let path = format!("/proc/{pid}/{file}");
            if parent_is_root {
                std::fs::write(&path, &text).rat(pid, format!("write {path}"))?;
            } else if let Some(ph) = self.by_ns.get_mut(&parent) {
                write_in_task(ph, &path, text.as_bytes())?;
            }
        }
        Ok(())
    }
}

/// Helper `t` becomes the owner of namespace `n` (of `g`) and unshares
/// it. The namespace's owner is the euid of its creator; its egid must be
/// mapped in the parent namespace too (crest's namespace maps every gid:
/// crest's own will do). Below crest's namespace, an owner the helper is
/// already (its status shows crest's view, then the parent's) is not set
/// again: an unprivileged crest could not.
fn unshare_as_owner(
    t: &mut Tracee,
    g: &UsernsGraph,
    n: &Userns,
    parent_is_root: bool,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let parent = n.parent.unwrap_or(1);
    let now = procfs::read_status(pid).ok().filter(|_| parent_is_root);
    let egid = g
        .node(parent)
        .and_then(|p| p.gid_map.first())
        .map_or(0, |e| e.first);
    if !parent_is_root {
        t.syscall(nr::SETRESGID, &[u64::MAX, u64::from(egid), u64::MAX])
            .rat(pid, format!("setegid({egid}) of a user namespace helper"))?;
    }
    if now.as_ref().is_none_or(|s| s.uid[1] != n.owner_uid) {
        t.syscall(nr::SETRESUID, &[u64::MAX, u64::from(n.owner_uid), u64::MAX])
            .rat(
                pid,
                format!("seteuid({}) of a user namespace helper", n.owner_uid),
            )?;
    }
    t.prctl(&[libc::PR_SET_DUMPABLE as u64, 1], "prctl(PR_SET_DUMPABLE)")?;
    t.syscall(nr::UNSHARE, &[libc::CLONE_NEWUSER as u64])
        .rat(pid, "unshare(CLONE_NEWUSER)")?;
    Ok(())
}

/// The namespace `--join-ns user:...` stands for: the tree's one user
/// namespace directly below crest's.
pub(super) fn join_target(g: &UsernsGraph, j: &crate::opts::JoinNs) -> Result<u32, RestoreError> {
    let refuse = |what: &str| {
        NsError::Unsupported {
            what: format!("--join-ns user:{}: {what}", j.file),
        }
        .in_tree_restore()
    };
    let top: Vec<u32> = g
        .nodes
        .iter()
        .filter(|n| {
            n.parent
                .is_some_and(|p| g.node(p).is_some_and(|x| x.parent.is_none()))
        })
        .map(|n| n.id)
        .collect();
    match top[..] {
        [id] => Ok(id),
        [] => Err(refuse("a tree without a user namespace of its own")),
        _ => Err(refuse("a tree with several user namespaces below crest's")),
    }
}

/// A helper inside the user namespace `--join-ns` names (a path, or a pid
/// whose namespace it is), which must map uids and gids to the same ids of
/// crest's namespace as the dumped namespace `n` did, with the same
/// `setgroups`: the tasks' ids and the namespaces below are made from
/// those maps. CRIU's extra `UID,GID` (the ids CRIU takes inside for
/// itself) must be mapped there.
pub(super) fn join_helper(n: &Userns, j: &crate::opts::JoinNs) -> Result<Tracee, RestoreError> {
    let file = if j.file.chars().all(|c| c.is_ascii_digit()) {
        format!("/proc/{}/ns/user", j.file)
    } else {
        j.file.clone()
    };
    let refuse = |what: String| {
        NsError::Unsupported {
            what: format!("--join-ns user:{}: {what}", j.file),
        }
        .in_tree_restore()
    };
    let fd = OwnedFd::from(File::open(&file).rat(0, format!("open {file}"))?);
    let pid = spawn_stopped(&[], SessionSetup::Inherit).rat(0, "spawn a user namespace helper")?;
    let mut t = Tracee::from_stopped_child(pid).rat(pid, "attach a user namespace helper")?;
    t.trace_new_tasks().rat(pid, "trace new tasks")?;
    t.use_vdso_syscall().rat(pid, "helper syscall")?;
    let there = t.give_fd(&fd)?;
    t.with_fd(there, |t, fd| {
        t.setns(
            fd,
            libc::CLONE_NEWUSER as u64,
            &format!("setns into the user namespace {file}"),
        )
    })?;
    let (uids, gids, setgroups) = read_maps(pid).map_err(|e| refuse(e.to_string()))?;
    let sorted = |m: &[IdExtent]| {
        let mut v = m.to_vec();
        v.sort_by_key(|e| e.first);
        v
    };
    for (what, theirs, ours) in [("uid", &uids, &n.uid_map), ("gid", &gids, &n.gid_map)] {
        if sorted(theirs) != sorted(ours) {
            return Err(refuse(format!(
                "it maps {what}s as {:?}, the dumped namespace as {:?}",
                idmap::to_text(theirs),
                idmap::to_text(ours)
            )));
        }
    }
    if setgroups != n.setgroups_allow {
        return Err(refuse(format!(
            "its setgroups is {}, the dumped namespace's {}",
            if setgroups { "allow" } else { "deny" },
            if n.setgroups_allow { "allow" } else { "deny" }
        )));
    }
    if let Some(extra) = &j.extra {
        let mut ids = extra.split(',');
        for (what, map) in [("uid", &uids), ("gid", &gids)] {
            let Some(id) = ids.next() else { break };
            let id: u32 = id
                .parse()
                .map_err(|_| refuse(format!("{what} {id:?} is not a number")))?;
            if idmap::up(map, id).is_none() {
                return Err(refuse(format!("{what} {id} is not mapped there")));
            }
        }
    }
    Ok(t)
}

/// Writes `data` to `path` from inside task `t`.
pub fn write_in_task(t: &mut Tracee, path: &str, data: &[u8]) -> Result<(), RestoreError> {
    let pid = t.pid();
    let fd = t.open(path, libc::O_WRONLY)?;
    let addr = t.put(data).rat(pid, "write data")?;
    let r = t.syscall(nr::WRITE, &[fd, addr, data.len() as u64]);
    t.close(fd)?;
    r.rat(pid, format!("write {path}"))?;
    Ok(())
}

/// Moves task `t` into the user namespace held by helper `helper_pid`.
pub fn enter(t: &mut Tracee, helper_pid: i32) -> Result<(), RestoreError> {
    let path = format!("/proc/{helper_pid}/ns/user");
    let fd = t.open_crest_side(&path, libc::O_RDONLY)?;
    t.with_fd(fd, |t, fd| {
        t.setns(fd, libc::CLONE_NEWUSER as u64, "setns(CLONE_NEWUSER)")
    })?;
    Ok(())
}
