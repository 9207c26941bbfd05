//! The restore side: helper tasks that make each namespace inside its
//! owning user namespace, set its state, replay mounts, and hold it until
//! every task has entered its own.

use super::*;
use crate::error::RoomError;
use crate::ns::error::NsError;

/// Helper tasks that hold the restored namespaces until every task has
/// entered its own. Dropping them kills them.
#[derive(Default)]
pub struct NsHelpers {
    by_id: Vec<(u32, Tracee)>,
    /// The namespaces joined with `--join-ns` (they keep what they have:
    /// a joined mount namespace's mounts are not replayed).
    joined: Vec<u32>,
    /// crest has no rights over namespaces nested user namespaces own from
    /// its own (unprivileged): the mount helper enters the owning user
    /// namespace before the others.
    pub userns_first: bool,
}

impl NsHelpers {
    /// (namespace id, pid) of every helper holding a namespace.
    pub fn holders(&self) -> Vec<(u32, i32)> {
        self.by_id.iter().map(|(id, t)| (*id, t.pid())).collect()
    }

    /// Creates every namespace of `g` inside its owning user namespace
    /// (held by `users_h`) and sets its state.
    /// `external`: the `--external` entries of the restore.
    pub fn build(
        g: &OtherGraph,
        users_h: &crate::ns::user::UsernsHelpers,
        external: &[String],
        inherit: &std::collections::HashMap<String, OwnedFd>,
        join: &[crate::opts::JoinNs],
    ) -> Result<NsHelpers, RestoreError> {
        let mut h = NsHelpers::default();
        // --join-ns: the tree's namespace of that kind is the given one
        let joined = join_files(g, join)?;
        for n in &g.list {
            let join_file = joined.iter().find(|(id, _)| *id == n.id).map(|x| &x.1);
            if n.mnt.as_ref().is_some_and(|m| m.base.is_some()) && join_file.is_none() {
                continue; // a copy of another of the tree's: made at replay
            }
            if join_file.is_some() {
                h.joined.push(n.id);
            }
            let mut t = crate::ns::pid::spawn_helper(&[])?;
            if n.external_key.is_some() || join_file.is_some() {
                // the caller's namespace
                if join_callers(&mut t, n, join_file, inherit)? {
                    h.by_id.push((n.id, t));
                }
                continue;
            }
            make_own(&mut t, n, users_h)?;
            h.by_id.push((n.id, t));
        }
        let nets: Vec<(u32, &crate::ns::net::NetNs, i32)> = g
            .list
            .iter()
            // (a joined namespace keeps what it has)
            .filter(|n| !joined.iter().any(|(id, _)| *id == n.id))
            .filter_map(|n| {
                let helper = h.by_id.iter().find(|x| x.0 == n.id)?.1.pid();
                Some((n.id, n.net.as_ref()?, helper))
            })
            .collect();
        crate::ns::net::restore(&nets, external)?;
        Ok(h)
    }

    /// Replays the mounts of mount namespace `id`: a namespace copied
    /// from another of the tree's is made now (a helper enters that one,
    /// then the owning user namespace, and unshares); then a crest child
    /// made in the pid namespace of its proc mounts enters the namespaces
    /// of one of its tasks and replays them. `init_of` names a pid
    /// namespace's init (crest's view).
    pub fn replay_mounts(
        &mut self,
        g: &OtherGraph,
        id: u32,
        users_h: &crate::ns::user::UsernsHelpers,
        init_of: &dyn Fn(u32) -> Option<i32>,
        how: &crate::ns::mnt::Replay<'_>,
    ) -> Result<(), RestoreError> {
        if self.joined.contains(&id) {
            return Ok(()); // --join-ns: its mounts are the caller's
        }
        let Some(n) = g.list.iter().find(|n| n.id == id) else {
            return Ok(());
        };
        let Some(m) = n.mnt.as_ref() else {
            return Ok(());
        };
        if let Some(b) = m.base {
            self.copy_mount_ns(id, b, users_h.pid_of(n.owner_userns))?;
        }
        let mut e = match m.proc_pidns {
            Some(p) => {
                let init = init_of(p).ok_or_else(|| {
                    NsError::BadImage {
                        file: names::mountpoints(id),
                        what: format!("proc mounts of pid namespace {p}, which has no init"),
                    }
                    .in_tree_restore()
                })?;
                // a pid high in that namespace, out of the way of the
                // tree's threads, which are made after it
                let high = crate::clone::pid_max() - 1001 - (id % 1000) as i32;
                crate::ns::pid::spawn_in(init, &[high])?
            }
            None => crate::ns::pid::spawn_helper(&[])?,
        };
        if let Some(owner) = users_h.pid_of(n.owner_userns).filter(|_| self.userns_first) {
            let (here, there) = (
                crate::ns::user::ino_of(&format!("/proc/{}/ns/user", e.pid())).ok(),
                crate::ns::user::ino_of(&format!("/proc/{owner}/ns/user")).ok(),
            );
            if here != there {
                crate::ns::user::enter(&mut e, owner)?;
            }
        }
        self.enter_all_as(&mut e, g, m.as_pid, &std::collections::HashSet::new())?;
        crate::ns::mnt::replay(&mut e, m, how)?;
        // reaped at once, so its pids are free again
        let epid = e.pid();
        e.exit_as(0).rat(epid, "end the mount helper")
    }

    /// Makes mount namespace `id`, a copy of the tree's namespace `b`: a
    /// helper enters that one, then the owning user namespace (whose
    /// helper is `owner`), and unshares.
    fn copy_mount_ns(&mut self, id: u32, b: u32, owner: Option<i32>) -> Result<(), RestoreError> {
        let holder = self
            .by_id
            .iter()
            .find(|(i, _)| *i == b)
            .map(|(_, h)| h.pid())
            .ok_or_else(|| {
                NsError::BadImage {
                    file: names::mountpoints(id),
                    what: format!("a copy of mount namespace {b}, which is not made"),
                }
                .in_tree_restore()
            })?;
        let mut t = crate::ns::pid::spawn_helper(&[])?;
        let pid = t.pid();
        let fd = t.open_crest_side(&format!("/proc/{holder}/ns/mnt"), libc::O_RDONLY)?;
        t.with_fd(fd, |t, fd| {
            t.setns(
                fd,
                libc::CLONE_NEWNS as u64,
                "setns into the mount namespace it is a copy of",
            )
        })?;
        if let Some(owner) = owner {
            crate::ns::user::enter(&mut t, owner)?;
        }
        t.syscall(nr::UNSHARE, &[libc::CLONE_NEWNS as u64])
            .rat(pid, "unshare(CLONE_NEWNS)")?;
        self.by_id.push((id, t));
        Ok(())
    }

    /// Moves task `t` into each of its own namespaces (all but its user
    /// namespace, which comes after).
    pub fn enter_all(
        &self,
        t: &mut Tracee,
        g: &OtherGraph,
        inherited: &std::collections::HashSet<u32>,
    ) -> Result<(), RestoreError> {
        let pid = t.pid();
        self.enter_all_as(t, g, pid, inherited)
    }

    /// The uts, ipc, net and cgroup namespaces of task `pid` as paths to
    /// their holders with their types: a helper that makes a task inside a
    /// nested user namespace joins them first (once inside, the task could
    /// not join one an outer user namespace owns).
    pub fn early_joins(&self, g: &OtherGraph, pid: i32) -> Vec<(String, u32)> {
        let early = [
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWCGROUP,
        ];
        g.tasks
            .iter()
            .filter(|x| x.0 == pid)
            .filter_map(|(_, id)| {
                let n = g.list.iter().find(|n| n.id == *id)?;
                if !early.contains(&(n.nstype as i32)) {
                    return None;
                }
                let (_, h) = self.by_id.iter().find(|(i, _)| i == id)?;
                let kind = kind_of_flag(n.nstype)?.name;
                Some((format!("/proc/{}/ns/{kind}", h.pid()), n.nstype))
            })
            .collect()
    }

    /// Moves task `t` into each of task `as_pid`'s own namespaces (all but
    /// its user namespace).
    pub fn enter_all_as(
        &self,
        t: &mut Tracee,
        g: &OtherGraph,
        as_pid: i32,
        inherited: &std::collections::HashSet<u32>,
    ) -> Result<(), RestoreError> {
        let pid = t.pid();
        for (_, id) in g.tasks.iter().filter(|x| x.0 == as_pid) {
            if inherited.contains(id) {
                continue; // the task got it at fork from its parent
            }
            let Some(n) = g.list.iter().find(|n| n.id == *id) else {
                continue;
            };
            let Some((_, h)) = self.by_id.iter().find(|(i, _)| i == id) else {
                continue;
            };
            let kind = kind_of_flag(n.nstype).map_or("?", |k| k.name);
            // A new time namespace is entered through what its helper's
            // children would get.
            let file = if kind == "time" {
                "time_for_children"
            } else {
                kind
            };
            let path = format!("/proc/{}/ns/{file}", h.pid());
            // in it already (forked by a task that is): nothing to do, and
            // a task already in a nested user namespace could not setns
            // into one its namespace does not own
            let here = crate::ns::user::ino_of(&format!("/proc/{pid}/ns/{kind}")).ok();
            if here.is_some() && here == crate::ns::user::ino_of(&path).ok() {
                continue;
            }
            let fd = t.open_crest_side(&path, libc::O_RDONLY)?;
            t.with_fd(fd, |t, fd| {
                t.setns(
                    fd,
                    u64::from(n.nstype),
                    &format!("setns into its {kind} namespace"),
                )
            })?;
        }
        Ok(())
    }
}

/// Whether `pid` is in a net namespace other than crest's (false when
/// either cannot be read).
pub fn own_net_ns(pid: i32) -> bool {
    match (
        ino_of("/proc/self/ns/net"),
        ino_of(&format!("/proc/{pid}/ns/net")),
    ) {
        (Ok(mine), Ok(theirs)) => mine != theirs,
        _ => false,
    }
}

/// The namespaces `--join-ns` names (net, uts, ipc), as (the tree's
/// namespace of that kind, which the given one replaces; the file to join:
/// a path, or `/proc/PID/ns/KIND` for a pid).
pub(super) fn join_files(
    g: &OtherGraph,
    join: &[crate::opts::JoinNs],
) -> Result<Vec<(u32, String)>, RestoreError> {
    let mut out = Vec::new();
    // (a user namespace is joined by the user namespace helpers)
    for j in join.iter().filter(|j| j.ns != "user") {
        let refuse = |what: String| {
            NsError::Unsupported {
                what: format!("--join-ns {}:{}: {what}", j.ns, j.file),
            }
            .in_tree_restore()
        };
        let kind = KINDS
            .iter()
            .find(|k| {
                k.name == j.ns
                    && matches!(k.name, "net" | "uts" | "ipc" | "mnt" | "cgroup" | "time")
            })
            .ok_or_else(|| refuse(format!("joining a {} namespace", j.ns)))?;
        let file = if j.file.chars().all(|c| c.is_ascii_digit()) {
            format!("/proc/{}/ns/{}", j.file, j.ns)
        } else {
            j.file.clone()
        };
        let ids: Vec<u32> = g
            .list
            .iter()
            .filter(|n| n.nstype == kind.flag)
            .map(|n| n.id)
            .collect();
        match ids[..] {
            [id] => out.push((id, file)),
            [] => {
                return Err(refuse(format!(
                    "a tree without a {} namespace of its own",
                    j.ns
                )))
            }
            _ => return Err(refuse(format!("a tree with several {} namespaces", j.ns))),
        }
    }
    Ok(out)
}

/// Helper `t` joins the caller's namespace standing for `n`: the file
/// `join_file` (`--join-ns`), or the fd `--inherit-fd fd[N]:KEY` gave for
/// an external one. False if `n` is neither.
fn join_callers(
    t: &mut Tracee,
    n: &OtherNs,
    join_file: Option<&String>,
    inherit: &std::collections::HashMap<String, OwnedFd>,
) -> Result<bool, RestoreError> {
    let pid = t.pid();
    // the caller's namespace: --inherit-fd fd[N]:KEY for an
    // external one, a file for --join-ns
    let opened;
    let fd = match (&n.external_key, join_file) {
        (_, Some(f)) => {
            opened = OwnedFd::from(File::open(f).rat(pid, format!("open {f}"))?);
            &opened
        }
        (Some(key), None) => inherit.get(key).ok_or_else(|| {
            NsError::Unsupported {
                what: format!("the external namespace {key} without --inherit-fd fd[N]:{key}"),
            }
            .in_restore(pid)
        })?,
        (None, None) => return Ok(false),
    };
    let key = join_file
        .cloned()
        .or(n.external_key.clone())
        .unwrap_or_default();
    let there = t.give_fd(fd)?;
    t.with_fd(there, |t, fd| {
        t.setns(
            fd,
            u64::from(n.nstype),
            &format!("setns into the caller's namespace {key}"),
        )
    })?;
    Ok(true)
}

/// Helper `t` makes namespace `n` of the tree: in its cgroup (a cgroup
/// namespace), inside its owning user namespace (held by `users_h`),
/// with its state (names, ipc objects, clock offsets, mount
/// propagation).
fn make_own(
    t: &mut Tracee,
    n: &OtherNs,
    users_h: &crate::ns::user::UsernsHelpers,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    if let Some(root) = &n.cgroup_root {
        // A cgroup namespace is rooted where its creator is.
        crate::ns::cgroup::move_to(pid, root)?;
    }
    if let Some(owner) = users_h.pid_of(n.owner_userns) {
        crate::ns::user::enter(t, owner)?;
    }
    t.syscall(nr::UNSHARE, &[u64::from(n.nstype)])
        .rat(pid, format!("unshare({:#x})", n.nstype))?;
    if let Some((host, dom)) = &n.uts {
        for (call, v) in [(nr::SETHOSTNAME, host), (nr::SETDOMAINNAME, dom)] {
            let addr = t.put(v.as_bytes()).rat(pid, "write a name")?;
            t.syscall(call, &[addr, v.len() as u64])
                .rat(pid, format!("set host/domain name {v:?}"))?;
        }
    }
    if let Some(d) = &n.ipc {
        crate::ns::ipc::restore(t, d)?;
    }
    if let Some([(ms, mn), (bs, bn)]) = n.offsets {
        let path = format!("/proc/{pid}/timens_offsets");
        std::fs::write(&path, format!("monotonic {ms} {mn}\nboottime {bs} {bn}\n"))
            .rat(pid, format!("write {path}"))?;
    }
    if n.nstype == libc::CLONE_NEWNS as u32 && n.mnt_private {
        let root = t.put(b"/\0").rat(pid, "write a path")?;
        t.syscall(nr::MOUNT, &[0, root, 0, libc::MS_REC | libc::MS_PRIVATE, 0])
            .rat(pid, "make the mount namespace private")?;
    }
    Ok(())
}
