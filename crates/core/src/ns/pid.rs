//! Pid namespaces, nested to any depth below crest's own.
//!
//! Dump walks each task's pid namespace up with `NS_GET_PARENT` to crest's
//! and records each one (parent, owning user namespace) in
//! `crest-ns.img`; every thread's ids at every level (`NSpid`, `NSpgid`,
//! `NSsid`) go to crest's field of its core image. The init of every pid namespace
//! must be part of the tree.
//!
//! Restore forks the init of each pid namespace from its parent with
//! `CLONE_NEWPID`, and every task gets its pid at every level with
//! `clone3`'s `set_tid` array. That makes the namespace owned by the
//! parent's user namespace, which is crest's while the tree is forked. A
//! pid namespace owned by a nested user namespace is made by a helper
//! inside that user namespace, which forks the init and exits (the init
//! is inherited by its real parent, a child subreaper meanwhile; a pid
//! namespace cannot be referred to before it has an init, so nobody else
//! can fork it). Such an init and its descendants are then already in
//! their user namespace: crest's level of their pids is set through
//! `ns_last_pid`.

use super::graph;
use super::user::{fd_ino, ino_of, UsernsGraph};
use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError};
use crate::ns::error::{NsError, PidnsError};
use crate::remote::Remote;
use std::fs::File;
use std::os::fd::OwnedFd;

/// One pid namespace below crest's.
#[derive(Debug, Clone)]
pub struct Pidns {
    pub id: u32,
    /// None: crest's own pid namespace is the parent.
    pub parent: Option<u32>,
    pub owner_userns: u32,
    pub depth: u32,
    ino: u64,
    /// A namespace from outside the tree (CRIU's `--external
    /// pid[INO]:KEY`, a container sharing another's pid namespace): its
    /// init is not dumped; the restore forks the root into the namespace
    /// given with `--inherit-fd fd[N]:KEY`.
    pub external_key: Option<String>,
}

graph::impl_node!(Pidns);

/// The tree's pid namespaces and which task is in which.
#[derive(Debug, Default, Clone)]
pub struct PidnsGraph {
    pub list: Vec<Pidns>,
    /// (pid, namespace id) of every task not in crest's pid namespace.
    pub tasks: Vec<(i32, u32)>,
}

impl PidnsGraph {
    /// (nsfs inode, id) of every pid namespace below crest's.
    pub fn ns_inos(&self) -> Vec<(u64, u32)> {
        self.list
            .iter()
            .filter(|n| n.ino != 0)
            .map(|n| (n.ino, n.id))
            .collect()
    }

    /// Finds the pid namespaces of `pids` below crest's. `first_id` keeps
    /// the ids apart from the other namespaces in `crest-ns.img`;
    /// `externals` are the dump's `--external` entries.
    pub fn collect(
        pids: &[i32],
        users: &UsernsGraph,
        first_id: u32,
        externals: &[String],
    ) -> Result<PidnsGraph, DumpError> {
        let me = std::process::id() as i32;
        let mine = ino_of("/proc/self/ns/pid").at(me, "stat crest's pid namespace")?;
        let mut g = PidnsGraph::default();
        for &pid in pids {
            let path = format!("/proc/{pid}/ns/pid");
            let ino = ino_of(&path).at(pid, "stat a pid namespace")?;
            if ino == mine {
                continue;
            }
            let fd: OwnedFd = File::open(&path).at(pid, "open a pid namespace")?.into();
            let id = g.add(pid, fd, ino, mine, users, first_id)?;
            g.tasks.push((pid, id));
        }
        for n in &mut g.list {
            n.external_key = crate::opts::external_ns(externals, "pid", n.ino);
        }
        Ok(g)
    }

    fn add(
        &mut self,
        pid: i32,
        fd: OwnedFd,
        ino: u64,
        mine: u64,
        users: &UsernsGraph,
        first_id: u32,
    ) -> Result<u32, DumpError> {
        if let Some(n) = self.list.iter().find(|n| n.ino == ino) {
            return Ok(n.id);
        }
        let parent_fd = crest_sys::ns::get_parent(&fd).map_err(|e| {
            NsError::Unsupported {
                what: format!("a pid namespace that is not below crest's own ({e})"),
            }
            .in_dump(pid)
        })?;
        let parent_ino = fd_ino(&parent_fd).at(pid, "stat a pid namespace")?;
        let parent = if parent_ino == mine {
            None
        } else {
            Some(self.add(pid, parent_fd, parent_ino, mine, users, first_id)?)
        };
        let owner_fd =
            crest_sys::ns::get_userns(&fd).at(pid, "NS_GET_USERNS of a pid namespace")?;
        let owner_ino = fd_ino(&owner_fd).at(pid, "stat the owning user namespace")?;
        let owner_userns = users.by_ino(owner_ino).ok_or_else(|| {
            NsError::Unsupported {
                what: "a pid namespace owned by a user namespace outside the tree".into(),
            }
            .in_dump(pid)
        })?;

        let depth = parent.and_then(|p| self.node(p)).map_or(1, |p| p.depth + 1);
        let id = first_id + self.list.len() as u32;
        self.list.push(Pidns {
            id,
            parent,
            owner_userns,
            depth,
            ino,
            external_key: None,
        });
        Ok(id)
    }

    pub fn node(&self, id: u32) -> Option<&Pidns> {
        graph::node(&self.list, id)
    }

    /// The id of the pid namespace whose nsfs inode is `ino`.
    pub fn by_ino(&self, ino: u64) -> Option<u32> {
        graph::by_ino(&self.list, ino)
    }

    /// The pid namespace of `pid`, None for crest's own.
    pub fn ns_of(&self, pid: i32) -> Option<u32> {
        self.tasks.iter().find(|t| t.0 == pid).map(|t| t.1)
    }

    /// Every pid namespace's init (pid 1 inside) must be in the tree:
    /// `inner_pid(pid)` gives a task's pid in its own namespace. The init
    /// of a namespace owned by a nested user namespace must live in that
    /// user namespace (restore forks it from inside). A namespace none of
    /// the tree's tasks is in lies above the tree's root (a container
    /// inside another dumped by its init): restore makes the root's
    /// namespace afresh and leaves those out. An external namespace is
    /// the root's (`root`), and its init is not in the tree.
    pub fn check_inits(
        &self,
        users: &UsernsGraph,
        root: i32,
        inner_pid: impl Fn(i32) -> Option<i32>,
    ) -> Result<(), DumpError> {
        for n in &self.list {
            if !self.tasks.iter().any(|t| t.1 == n.id) {
                continue;
            }
            let init = self
                .tasks
                .iter()
                .find(|(p, id)| *id == n.id && inner_pid(*p) == Some(1));
            if let Some(key) = &n.external_key {
                let refuse = |pid: i32, what: &str| {
                    NsError::Unsupported {
                        what: format!("--external pid[..]:{key}: {what}"),
                    }
                    .in_dump(pid)
                };
                if self.ns_of(root) != Some(n.id) {
                    let pid = self.tasks.iter().find(|t| t.1 == n.id).map_or(0, |t| t.0);
                    return Err(refuse(
                        pid,
                        "an external pid namespace that is not the root's",
                    ));
                }
                if let Some((p, _)) = init {
                    return Err(refuse(
                        *p,
                        "an external pid namespace whose init (pid 1) is in the tree",
                    ));
                }
                continue;
            }
            let nested_owner = users
                .node(n.owner_userns)
                .is_some_and(|u| u.parent.is_some());
            if let Some((p, _)) = init {
                let inside = users
                    .ns_of(*p)
                    .is_some_and(|u| users.is_within(u, n.owner_userns));
                if nested_owner && !inside {
                    return Err(NsError::Unsupported {
                        what: "the init of a pid namespace outside the user namespace that owns it"
                            .into(),
                    }
                    .in_dump(*p));
                }
            }
            if init.is_none() {
                let pid = self.tasks.iter().find(|t| t.1 == n.id).map_or(0, |t| t.0);
                return Err(NsError::Unsupported {
                    what: "a pid namespace whose init (pid 1) is not in the dumped tree (the \
                           root's may be the caller's: --external pid[INODE]:KEY)"
                        .into(),
                }
                .in_dump(pid));
            }
        }
        Ok(())
    }

    /// The namespaces as `crest-ns.img` entries.
    pub fn entries(&self) -> Vec<crest_images::pb::crest::CrestNsEntry> {
        self.list
            .iter()
            .map(|n| crest_images::pb::crest::CrestNsEntry {
                id: n.id,
                nstype: libc::CLONE_NEWPID as u32,
                owner_userns: n.owner_userns,
                parent: n.parent,
                external_key: n.external_key.clone(),
                ..Default::default()
            })
            .collect()
    }

    /// Rebuilds the graph from `crest-ns.img` entries of type pid.
    pub fn from_entries(
        entries: &[crest_images::pb::crest::CrestNsEntry],
        tasks: &[(i32, u32)],
    ) -> Result<PidnsGraph, PidnsError> {
        let mut g = PidnsGraph {
            list: Vec::new(),
            tasks: tasks.to_vec(),
        };
        for e in entries
            .iter()
            .filter(|e| e.nstype == libc::CLONE_NEWPID as u32)
        {
            let depth = match e.parent {
                None => 1,
                Some(p) => g.node(p).map(|n| n.depth + 1).ok_or(PidnsError::Order {
                    id: e.id,
                    parent: p,
                })?,
            };
            if depth > 32 {
                return Err(PidnsError::TooDeep { id: e.id, depth });
            }
            g.list.push(Pidns {
                id: e.id,
                parent: e.parent,
                owner_userns: e.owner_userns,
                depth,
                ino: 0,
                external_key: e.external_key.clone(),
            });
        }
        for (pid, id) in tasks {
            if g.node(*id).is_none() {
                return Err(PidnsError::Unknown { pid: *pid, id: *id });
            }
        }
        Ok(g)
    }

    /// Canonical text for `crest show --ns`.
    pub fn render(&self, users: &UsernsGraph) -> String {
        let mut lines: Vec<String> = self
            .list
            .iter()
            .map(|n| {
                let pids = graph::tasks_in(&self.tasks, n.id);
                format!(
                    "pid ns depth {} {} tasks {pids:?}\n",
                    n.depth,
                    users.owner_text(n.owner_userns)
                )
            })
            .collect();
        lines.sort();
        lines.concat()
    }
}

/// Tasks that set a middle level of new pids: a task forked inside a
/// nested user namespace cannot give a pid namespace its user namespace
/// does not own a `set_tid` level, so that level goes through the
/// namespace's `ns_last_pid`, written by one of these — a crest child made
/// inside that pid namespace (crest's `pid_for_children` pointed there for
/// the fork), with crest's rights. Dropping them kills them.
#[derive(Default)]
pub struct Writers {
    by_ns: Vec<(u32, crest_inject::Tracee)>,
    /// Where crest's pids for them start (see `crate::clone::spare_pids`).
    spare: i32,
}

impl Writers {
    pub fn new(spare: i32) -> Writers {
        Writers {
            by_ns: Vec::new(),
            spare,
        }
    }

    /// Makes the next pid that namespace `ns` (whose init is `init`, crest's
    /// view) gives out `next`.
    pub fn set_next(
        &mut self,
        ns: u32,
        init: i32,
        next: i32,
    ) -> Result<(), crate::error::RestoreError> {
        let i = match self.by_ns.iter().position(|w| w.0 == ns) {
            Some(i) => i,
            None => {
                crate::clone::steer_pids(self.spare + self.by_ns.len() as i32 + 64);
                let t = make_writer(ns, init)?;
                self.by_ns.push((ns, t));
                self.by_ns.len() - 1
            }
        };
        let w = &mut self.by_ns[i].1;
        super::user::write_in_task(
            w,
            "/proc/sys/kernel/ns_last_pid",
            format!("{}", next - 1).as_bytes(),
        )
    }
}

fn make_writer(ns: u32, init: i32) -> Result<crest_inject::Tracee, crate::error::RestoreError> {
    // A pid high in the namespace, out of the way of the tree's.
    spawn_in(init, &[crate::clone::pid_max() - 1 - ns as i32 % 1000])
}

/// A stopped crest child, attached, made inside the pid namespace whose
/// init is `init` (crest's view; `set_tid` its pid there, or any).
pub fn spawn_in(
    init: i32,
    set_tid: &[i32],
) -> Result<crest_inject::Tracee, crate::error::RestoreError> {
    use crate::error::RestoreCtx;
    // (its pid at crest's level comes from crest's ns_last_pid)
    crate::clone::steer_to_spare();
    let mine = File::open("/proc/self/ns/pid").rat(init, "open crest's pid namespace")?;
    let theirs = File::open(format!("/proc/{init}/ns/pid")).rat(init, "open a pid namespace")?;
    match rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&theirs),
        Some(rustix::thread::LinkNameSpaceType::ProcessID),
    ) {
        Err(rustix::io::Errno::PERM) => {
            return spawn_in_through_owner(init, &theirs, set_tid);
        }
        r => r.rat(init, "setns into a pid namespace")?,
    }
    let child = spawn_helper(set_tid);
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&mine),
        Some(rustix::thread::LinkNameSpaceType::ProcessID),
    )
    .rat(init, "setns back to crest's pid namespace")?;
    child
}

/// [`spawn_in`] for a crest without rights over the pid namespace `pidns`
/// from its own user namespace (an unprivileged crest): a helper enters
/// the namespace's owning user namespace, where it has them, points its
/// children at `pidns` and forks the task; the helper is gone after.
fn spawn_in_through_owner(
    init: i32,
    pidns: &File,
    set_tid: &[i32],
) -> Result<crest_inject::Tracee, crate::error::RestoreError> {
    use crate::error::RestoreCtx;
    use std::os::fd::AsRawFd;
    let owner = crest_sys::ns::get_userns(pidns).rat(init, "the owner of a pid namespace")?;
    // (the helper inherits both fds)
    let mut h = spawn_helper(&[])?;
    for (fd, flag, what) in [
        (
            owner.as_raw_fd(),
            libc::CLONE_NEWUSER,
            "its owning user namespace",
        ),
        (pidns.as_raw_fd(), libc::CLONE_NEWPID, "a pid namespace"),
    ] {
        h.setns(
            fd as u64,
            flag as u64,
            &format!("setns of a helper into {what}"),
        )?;
    }
    crate::clone::clone_with_tid(&mut h, set_tid)
    // (dropping `h` kills it: crest, a child subreaper, takes the task)
}

/// A stopped crest child (with pids `set_tid`, or any), attached and ready
/// for injected syscalls: a helper of the restore.
pub fn spawn_helper(set_tid: &[i32]) -> Result<crest_inject::Tracee, crate::error::RestoreError> {
    use crate::error::RestoreCtx;
    use crest_sys::proc::{spawn_stopped, SessionSetup};
    if set_tid.is_empty() {
        crate::clone::steer_to_spare();
    }
    let child = spawn_stopped(set_tid, SessionSetup::Inherit).rat(0, "spawn a helper task")?;
    let mut t =
        crest_inject::Tracee::from_stopped_child(child).rat(child, "attach a helper task")?;
    t.use_vdso_syscall()
        .rat(child, "find a syscall instruction in a helper")?;
    Ok(t)
}

/// A crest helper made as a sibling of crest (a child of crest's parent)
/// and seized: for a root restored with CRIU's `--restore-sibling`.
pub fn spawn_sibling_helper() -> Result<crest_inject::Tracee, crate::error::RestoreError> {
    use crate::error::RestoreCtx;
    use crest_sys::proc::{spawn_sibling, SessionSetup};
    let child = spawn_sibling(&[], SessionSetup::Inherit, 0).rat(0, "spawn a helper task")?;
    seize_sibling(child)
}

/// Takes charge of `pid`, a sibling crest made, once it waits to be
/// seized (asleep in `pause()`, its session set up).
pub fn seize_sibling(pid: i32) -> Result<crest_inject::Tracee, crate::error::RestoreError> {
    use crate::error::RestoreCtx;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.chars().next()))
            .flatten();
        match state {
            Some('S') => break,
            Some('Z' | 'X') | None => {
                return Err(NsError::Unsupported {
                    what: "a sibling task that died before it was seized".into(),
                }
                .in_restore(pid))
            }
            _ if std::time::Instant::now() > deadline => {
                let _ = crest_sys::misc::kill(pid, libc::SIGKILL);
                return Err(NsError::Unsupported {
                    what: "a sibling task that did not get ready in 5 s".into(),
                }
                .in_restore(pid));
            }
            _ => std::thread::sleep(std::time::Duration::from_micros(200)),
        }
    }
    let mut t = crest_inject::Tracee::seize_made(pid).rat(pid, "seize a sibling task")?;
    t.use_vdso_syscall()
        .rat(pid, "find a syscall instruction in a sibling task")?;
    Ok(t)
}

/// How a task's pid is chosen at each level when its parent is in user
/// namespace `userns`: `settable` innermost levels with `set_tid`; then at
/// most one `middle` level through that namespace's writer; crest's level
/// through crest's `ns_last_pid` (`crest_last`) when the parent is not in
/// crest's user namespace and crest's level is not left to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Levels {
    pub settable: usize,
    /// (pid namespace id, its init's pid in crest's namespace)
    pub middle: Option<(u32, i32)>,
    pub crest_last: bool,
}

impl PidnsGraph {
    /// The pid namespaces of a task, innermost first.
    pub fn chain(&self, own: Option<u32>) -> Vec<u32> {
        let mut out = Vec::new();
        let mut cur = own;
        while let Some(n) = cur {
            if out.len() > 64 {
                break;
            }
            out.push(n);
            cur = self.node(n).and_then(|x| x.parent);
        }
        out
    }

    /// See [`Levels`]; `init_of` gives a namespace's init (crest's view).
    /// `cut` outer levels of every task's pids are left to the kernel (the
    /// tree's outermost pid namespace is made afresh below crest's): the
    /// namespaces above the tree's are dropped, crest's level with them.
    pub fn levels(
        &self,
        own: Option<u32>,
        userns: u32,
        users: &UsernsGraph,
        init_of: &dyn Fn(u32) -> Option<i32>,
        cut: usize,
    ) -> Result<Levels, PidnsError> {
        let mut chain = self.chain(own);
        // levels: chain.len() namespaces, then crest's
        let keep = (chain.len() + 1)
            .checked_sub(cut)
            .filter(|k| *k > 0)
            .ok_or(PidnsError::AboveTree)?;
        let crest_level = cut == 0;
        chain.truncate(keep);
        if userns == 1 {
            return Ok(Levels {
                settable: keep,
                ..Levels::default()
            });
        }
        let settable = chain
            .iter()
            .take_while(|n| {
                self.node(**n)
                    .is_some_and(|x| users.is_within(x.owner_userns, userns))
            })
            .count();
        let middle = match chain.len() - settable {
            0 => None,
            1 => {
                let n = chain[settable];
                Some((n, init_of(n).ok_or(PidnsError::NoInit)?))
            }
            _ => return Err(PidnsError::Unowned),
        };
        Ok(Levels {
            settable,
            middle,
            crest_last: crest_level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::user::Userns;

    /// crest's user namespace 1 > 2 > 3; pid namespace 10 (owned by 2)
    /// below crest's, 11 (owned by 3) below 10.
    fn graphs() -> (PidnsGraph, UsernsGraph) {
        let users = UsernsGraph {
            nodes: vec![
                Userns::bare(1, None, 0),
                Userns::bare(2, Some(1), 1),
                Userns::bare(3, Some(2), 2),
            ],
            tasks: Vec::new(),
        };
        let entry = |id, parent, owner| crest_images::pb::crest::CrestNsEntry {
            id,
            nstype: libc::CLONE_NEWPID as u32,
            owner_userns: owner,
            parent,
            ..Default::default()
        };
        let pidns = PidnsGraph::from_entries(&[entry(10, None, 2), entry(11, Some(10), 3)], &[])
            .expect("graph");
        (pidns, users)
    }

    fn levels(own: u32, userns: u32, cut: usize) -> Result<Levels, PidnsError> {
        let (pidns, users) = graphs();
        let init = |n: u32| Some(100 + n as i32);
        pidns.levels(Some(own), userns, &users, &init, cut)
    }

    #[test]
    fn every_level_with_crest_level() {
        // from crest's user namespace: all three levels with set_tid
        let l = levels(11, 1, 0).unwrap();
        assert_eq!((l.settable, l.middle, l.crest_last), (3, None, false));
        // from the innermost user namespace: its own level, the middle
        // through 10's writer, crest's through crest's ns_last_pid
        let l = levels(11, 3, 0).unwrap();
        assert_eq!(
            (l.settable, l.middle, l.crest_last),
            (1, Some((10, 110)), true)
        );
        let l = levels(10, 2, 0).unwrap();
        assert_eq!((l.settable, l.middle, l.crest_last), (1, None, true));
    }

    #[test]
    fn fresh_tree_namespace_drops_the_outer_levels() {
        // the tree's root is 10's init: crest's level is the kernel's
        let l = levels(11, 1, 1).unwrap();
        assert_eq!((l.settable, l.middle, l.crest_last), (2, None, false));
        let l = levels(11, 3, 1).unwrap();
        assert_eq!(
            (l.settable, l.middle, l.crest_last),
            (1, Some((10, 110)), false)
        );
        let l = levels(10, 2, 1).unwrap();
        assert_eq!((l.settable, l.middle, l.crest_last), (1, None, false));
        // the root is 11's init: 10's level goes too
        let l = levels(11, 3, 2).unwrap();
        assert_eq!((l.settable, l.middle, l.crest_last), (1, None, false));
        // a task of 10 cannot be in a tree rooted in 11
        assert!(levels(10, 2, 2).is_err());
    }
}
