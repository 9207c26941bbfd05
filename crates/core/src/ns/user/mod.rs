//! User namespaces, nested to any depth.
//!
//! Dump finds each task's user namespace and walks up with `NS_GET_PARENT`
//! to crest's own; each namespace is recorded once with its maps relative
//! to its parent (CRIU's `userns_entry` in `userns-<id>.img`, one for
//! every namespace, crest's own too), with its place in the hierarchy,
//! owner and `setgroups` in crest's field of that entry (an older crest
//! kept those in `crest-userns.img`, which is still read).
//! Restore builds the same tree top-down with helper tasks (each one
//! `unshare(CLONE_NEWUSER)`s inside its parent's helper, and the parent
//! side writes its maps), and each task enters its namespace at the end.

mod helpers;

pub use helpers::{enter, write_in_task, UsernsHelpers};

use super::graph;
use super::idmap;
use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::ns::error::NsError;
use crate::procfs::{self, IdExtent};
use crate::remote::Remote;
use crest_images::pb::crest::CrestUsernsEntry;
use crest_images::pb::{UidGidExtent, UsernsEntry};
use crest_images::{magic, names};
use crest_inject::{nr, Tracee};
use crest_sys::proc::{spawn_stopped, SessionSetup};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One user namespace of the graph.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Userns {
    pub id: u32,
    pub parent: Option<u32>,
    pub depth: u32,
    /// Maps relative to the parent namespace.
    pub uid_map: Vec<IdExtent>,
    pub gid_map: Vec<IdExtent>,
    /// Maps with lower ids in crest's view (not stored).
    #[serde(skip)]
    pub uid_outer: Vec<IdExtent>,
    #[serde(skip)]
    pub gid_outer: Vec<IdExtent>,
    /// The uid that created it, in the parent's view.
    pub owner_uid: u32,
    pub setgroups_allow: bool,
    #[serde(skip)]
    ino: u64,
}

graph::impl_node!(Userns);

/// The user namespaces of a tree; id 1 is crest's own.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct UsernsGraph {
    pub nodes: Vec<Userns>,
    /// pid → namespace id.
    pub tasks: Vec<(i32, u32)>,
}

pub(crate) fn ino_of(path: &str) -> std::io::Result<u64> {
    std::fs::metadata(path).map(|m| m.ino())
}

impl Userns {
    /// A namespace with empty maps (crest's own, or one for tests of the
    /// graph arithmetic).
    pub(crate) fn bare(id: u32, parent: Option<u32>, depth: u32) -> Userns {
        Userns {
            id,
            parent,
            depth,
            uid_map: Vec::new(),
            gid_map: Vec::new(),
            uid_outer: Vec::new(),
            gid_outer: Vec::new(),
            owner_uid: 0,
            setgroups_allow: true,
            ino: 0,
        }
    }
}

impl UsernsGraph {
    /// (nsfs inode, id) of every namespace below crest's.
    pub fn ns_inos(&self) -> Vec<(u64, u32)> {
        self.nodes
            .iter()
            .filter(|n| n.parent.is_some() && n.ino != 0)
            .map(|n| (n.ino, n.id))
            .collect()
    }

    pub fn node(&self, id: u32) -> Option<&Userns> {
        graph::node(&self.nodes, id)
    }

    /// Whether namespace `id` is `ancestor` or below it.
    pub fn is_within(&self, id: u32, ancestor: u32) -> bool {
        let mut cur = Some(id);
        while let Some(c) = cur {
            if c == ancestor {
                return true;
            }
            cur = self.node(c).and_then(|n| n.parent);
        }
        false
    }

    /// The namespace of `pid`.
    pub fn ns_of(&self, pid: i32) -> Option<u32> {
        self.tasks.iter().find(|t| t.0 == pid).map(|t| t.1)
    }

    /// The maps from crest's namespace down to `id` (outermost first).
    pub fn chain(&self, id: u32, gid: bool) -> Vec<&[IdExtent]> {
        let mut out = Vec::new();
        let mut cur = self.node(id);
        while let Some(n) = cur {
            if n.parent.is_none() {
                break;
            }
            out.push(if gid { &n.gid_map[..] } else { &n.uid_map[..] });
            cur = n.parent.and_then(|p| self.node(p));
        }
        out.reverse();
        out
    }

    /// Finds the user namespace of every task in `pids`, walking up to
    /// crest's own.
    pub fn collect(pids: &[i32]) -> Result<UsernsGraph, DumpError> {
        let me = std::process::id() as i32;
        let crest_ino = ino_of("/proc/self/ns/user").at(me, "stat crest's user namespace")?;
        let mut g = UsernsGraph {
            nodes: vec![Userns {
                ino: crest_ino,
                ..Userns::bare(1, None, 0)
            }],
            tasks: Vec::new(),
        };
        for &pid in pids {
            let id = g.add_task_ns(pid)?;
            g.tasks.push((pid, id));
        }
        Ok(g)
    }

    /// The user namespace of zombie `pid` (the kernel keeps a zombie's
    /// credentials, and with them its user namespace), added to the graph
    /// if new, without making the zombie one of the namespace's tasks.
    pub fn add_zombie(&mut self, pid: i32) -> Result<u32, DumpError> {
        self.add_task_ns(pid)
    }

    /// How `crest show --ns` names the owner of a namespace, user
    /// namespace `id`: by its tasks and its depth.
    pub fn owner_text(&self, id: u32) -> String {
        format!(
            "owned by the userns of tasks {:?} (depth {})",
            graph::tasks_in(&self.tasks, id),
            self.node(id).map_or(0, |u| u.depth)
        )
    }

    /// The id of the user namespace whose nsfs inode is `ino`.
    pub fn by_ino(&self, ino: u64) -> Option<u32> {
        graph::by_ino(&self.nodes, ino)
    }

    fn add_task_ns(&mut self, pid: i32) -> Result<u32, DumpError> {
        let path = format!("/proc/{pid}/ns/user");
        let fd: OwnedFd = File::open(&path).at(pid, "open user namespace")?.into();
        let ino = fd_ino(&fd).at(pid, "stat user namespace")?;
        if let Some(id) = self.by_ino(ino) {
            return Ok(id);
        }
        // Walk up until a known namespace (at the latest crest's own).
        let mut chain: Vec<(OwnedFd, u64)> = vec![(fd, ino)];
        let parent_id = loop {
            let (last, _) = chain.last().ok_or(DumpError::NoSuchProcess { pid })?;
            let parent = crest_sys::ns::get_parent(last).map_err(|e| {
                if e.raw_os_error() == Some(libc::EPERM) {
                    NsError::Unsupported { what: "a user namespace that is not below crest's own".into() }.in_dump(pid)
                } else if e.raw_os_error() == Some(libc::ENOTTY) {
                    NsError::Unsupported { what: "nested user namespaces on a kernel whose nsfs does not answer NS_GET_PARENT".into() }.in_dump(pid)
                } else {
                    DumpError::Io {
                        pid,
                        step: "NS_GET_PARENT",
                        source: e,
                    }
                }
            })?;
            let pino = fd_ino(&parent).at(pid, "stat user namespace")?;
            if let Some(id) = self.by_ino(pino) {
                break id;
            }
            chain.push((parent, pino));
        };
        let mut parent_id = parent_id;
        for (fd, ino) in chain.into_iter().rev() {
            let reader = if ino == self_ino(pid) {
                Some(pid)
            } else {
                None
            };
            let id = self.add_node(pid, parent_id, &fd, ino, reader)?;
            parent_id = id;
        }
        Ok(parent_id)
    }

    fn add_node(
        &mut self,
        pid: i32,
        parent_id: u32,
        fd: &OwnedFd,
        ino: u64,
        reader: Option<i32>,
    ) -> Result<u32, DumpError> {
        let (uid_outer, gid_outer, setgroups_allow) = match reader {
            Some(p) => read_maps(p)?,
            None => read_maps_through_helper(pid, fd)?,
        };
        let parent = self
            .node(parent_id)
            .ok_or(DumpError::NoSuchProcess { pid })?
            .clone();
        let (uid_map, gid_map) = if parent.parent.is_none() {
            (uid_outer.clone(), gid_outer.clone())
        } else {
            let conv = |c: &[IdExtent], p: &[IdExtent]| {
                idmap::to_parent(c, p).map_err(|id| {
                    NsError::Unsupported {
                        what: format!(
                            "a user namespace map naming id {id}, which its parent does not map"
                        ),
                    }
                    .in_dump(pid)
                })
            };
            (
                conv(&uid_outer, &parent.uid_outer)?,
                conv(&gid_outer, &parent.gid_outer)?,
            )
        };
        let owner_outer = crest_sys::ns::get_owner_uid(fd).at(pid, "NS_GET_OWNER_UID")?;
        let owner_uid = if parent.parent.is_none() {
            owner_outer
        } else {
            idmap::down(&parent.uid_outer, owner_outer).unwrap_or(overflow_uid())
        };
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        self.nodes.push(Userns {
            id,
            parent: Some(parent_id),
            depth: parent.depth + 1,
            uid_map,
            gid_map,
            uid_outer,
            gid_outer,
            owner_uid,
            setgroups_allow,
            ino,
        });
        Ok(id)
    }

    /// Writes `userns-<id>.img` for every namespace: the maps of a nested
    /// one, and for each its place in the hierarchy (crest's field).
    pub fn write(&self, dir: &Path) -> Result<(), DumpError> {
        let ext = |m: &[IdExtent]| -> Vec<UidGidExtent> {
            m.iter()
                .map(|e| UidGidExtent {
                    first: e.first,
                    lower_first: e.lower_first,
                    count: e.count,
                })
                .collect()
        };
        for n in &self.nodes {
            // crest's own namespace (the root) has no maps to restore.
            let nested = n.parent.is_some();
            let e = UsernsEntry {
                uid_map: if nested { ext(&n.uid_map) } else { Vec::new() },
                gid_map: if nested { ext(&n.gid_map) } else { Vec::new() },
                crest_userns: Some(CrestUsernsEntry {
                    id: n.id,
                    parent_id: n.parent,
                    depth: n.depth,
                    owner_uid: Some(n.owner_uid),
                    setgroups_allow: Some(n.setgroups_allow),
                }),
            };
            crest_images::write_image(dir, &names::userns(n.id), magic::USERNS, &[e])?;
        }
        Ok(())
    }

    /// The hierarchy entries with each nested namespace's maps: from every
    /// `userns-<id>.img` (crest's extension in each), or from an older
    /// crest's `crest-userns.img`; `None` when neither is there.
    fn read_entries(
        dir: &Path,
    ) -> Result<Option<Vec<(CrestUsernsEntry, UsernsEntry)>>, RestoreError> {
        let bad = |file: String, what: String| NsError::BadImage { file, what }.in_tree_restore();
        if dir.join(names::CREST_USERNS).exists() {
            let hier: Vec<CrestUsernsEntry> =
                crest_images::read_image(dir, names::CREST_USERNS, magic::CREST_USERNS)?;
            if hier.len() > 4096 {
                let what = format!("{} user namespaces", hier.len());
                return Err(bad(names::CREST_USERNS.into(), what));
            }
            let mut out = Vec::with_capacity(hier.len());
            for h in hier {
                let maps = if h.parent_id.is_some() {
                    crest_images::read_one(dir, &names::userns(h.id), magic::USERNS)?
                } else {
                    UsernsEntry::default()
                };
                out.push((h, maps));
            }
            return Ok(Some(out));
        }
        let ids = crest_images::carry::userns_ids(dir)?;
        if ids.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let name = names::userns(id);
            let mut e: UsernsEntry = crest_images::read_one(dir, &name, magic::USERNS)?;
            let h = e
                .crest_userns
                .take()
                .filter(|h| h.id == id)
                .ok_or_else(|| {
                    bad(
                        name.clone(),
                        "no crest hierarchy entry (userns_entry field 1000) for this id".into(),
                    )
                })?;
            out.push((h, e));
        }
        Ok(Some(out))
    }

    /// Reads the graph back from the images (tasks from their ids).
    pub fn read(dir: &Path, tasks: &[(i32, u32)]) -> Result<UsernsGraph, RestoreError> {
        let Some(hier) = UsernsGraph::read_entries(dir)? else {
            return Ok(UsernsGraph {
                nodes: vec![root_node()],
                tasks: tasks.to_vec(),
            });
        };
        let legacy = dir.join(names::CREST_USERNS).exists();
        let bad = |id: u32, what: String| {
            NsError::BadImage {
                file: if legacy {
                    names::CREST_USERNS.into()
                } else {
                    names::userns(id)
                },
                what,
            }
            .in_tree_restore()
        };
        let mut g = UsernsGraph {
            nodes: Vec::new(),
            tasks: tasks.to_vec(),
        };
        let conv = |v: &[UidGidExtent]| -> Vec<IdExtent> {
            v.iter()
                .map(|e| IdExtent {
                    first: e.first,
                    lower_first: e.lower_first,
                    count: e.count,
                })
                .collect()
        };
        for (h, e) in &hier {
            let (uid_map, gid_map) = if h.parent_id.is_some() {
                (conv(&e.uid_map), conv(&e.gid_map))
            } else {
                (Vec::new(), Vec::new())
            };
            if let Some(p) = h.parent_id {
                let pd = g.node(p).map(|n| n.depth);
                if pd.map(|d| d + 1) != Some(h.depth) || h.depth > 33 {
                    return Err(bad(
                        h.id,
                        format!("namespace {} has a bad parent or depth", h.id),
                    ));
                }
            } else if h.depth != 0 {
                return Err(bad(
                    h.id,
                    format!("root namespace {} at depth {}", h.id, h.depth),
                ));
            }
            g.nodes.push(Userns {
                id: h.id,
                parent: h.parent_id,
                depth: h.depth,
                uid_map,
                gid_map,
                uid_outer: Vec::new(),
                gid_outer: Vec::new(),
                owner_uid: h.owner_uid.unwrap_or(0),
                setgroups_allow: h.setgroups_allow.unwrap_or(true),
                ino: 0,
            });
        }
        for (pid, ns) in tasks {
            if g.node(*ns).is_none() {
                return Err(NsError::BadImage {
                    file: names::ids(*pid as u32),
                    what: format!("task {pid} is in unknown user namespace {ns}"),
                }
                .in_restore(*pid));
            }
        }
        Ok(g)
    }

    /// The graph as canonical text: each namespace (children ordered by
    /// their smallest pid) with its maps, owner, setgroups and tasks, so
    /// that two graphs can be compared whatever ids they use.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(root) = self.nodes.iter().find(|n| n.parent.is_none()) {
            self.render_node(root, &mut s);
        }
        s
    }

    fn min_pid(&self, id: u32) -> i32 {
        let own = self.tasks.iter().filter(|t| t.1 == id).map(|t| t.0).min();
        let kids = self
            .nodes
            .iter()
            .filter(|n| n.parent == Some(id))
            .map(|n| self.min_pid(n.id))
            .min();
        own.into_iter().chain(kids).min().unwrap_or(i32::MAX)
    }

    fn render_node(&self, n: &Userns, s: &mut String) {
        use std::fmt::Write;
        let pad = "  ".repeat(n.depth as usize);
        let maps = |m: &[IdExtent]| {
            m.iter()
                .map(|e| format!("{} {} {}", e.first, e.lower_first, e.count))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let pids = graph::tasks_in(&self.tasks, n.id);
        if n.parent.is_none() {
            let _ = writeln!(s, "{pad}userns (crest's own) tasks {pids:?}");
        } else {
            let _ = writeln!(
                s,
                "{pad}userns depth {} owner {} setgroups {} uid_map [{}] gid_map [{}] tasks {pids:?}",
                n.depth,
                n.owner_uid,
                if n.setgroups_allow { "allow" } else { "deny" },
                maps(&n.uid_map),
                maps(&n.gid_map)
            );
        }
        let mut kids: Vec<&Userns> = self
            .nodes
            .iter()
            .filter(|c| c.parent == Some(n.id))
            .collect();
        kids.sort_by_key(|c| self.min_pid(c.id));
        for c in kids {
            self.render_node(c, s);
        }
    }
}

fn root_node() -> Userns {
    Userns::bare(1, None, 0)
}

pub(crate) fn fd_ino(fd: &OwnedFd) -> std::io::Result<u64> {
    ino_of(&format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn self_ino(pid: i32) -> u64 {
    ino_of(&format!("/proc/{pid}/ns/user")).unwrap_or(0)
}

fn read_maps(pid: i32) -> Result<(Vec<IdExtent>, Vec<IdExtent>, bool), DumpError> {
    Ok((
        procfs::read_uid_map(pid).at(pid, "read uid_map")?,
        procfs::read_gid_map(pid).at(pid, "read gid_map")?,
        procfs::read_setgroups(pid).at(pid, "read setgroups")?,
    ))
}

/// Reads the maps of a namespace no task lives in: a short-lived child of
/// crest enters it (it inherits the fd) and crest reads them from its
/// /proc.
fn read_maps_through_helper(
    pid: i32,
    fd: &OwnedFd,
) -> Result<(Vec<IdExtent>, Vec<IdExtent>, bool), DumpError> {
    let child = spawn_stopped(&[], SessionSetup::Inherit).at(pid, "spawn a namespace reader")?;
    let mut t = Tracee::from_stopped_child(child).at(pid, "attach the namespace reader")?;
    t.use_vdso_syscall().at(pid, "namespace reader syscall")?;
    t.setns(
        fd.as_raw_fd() as u64,
        libc::CLONE_NEWUSER as u64,
        "setns of the namespace reader",
    )
    .map_err(|e| e.for_task(pid))?;
    let maps = read_maps(child);
    drop(t); // kills the reader
    maps
}

pub fn overflow_uid() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/overflowuid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65534)
}

pub fn overflow_gid() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/overflowgid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65534)
}

/// Converts ids as crest sees them to ids as the task in namespace `ns`
/// sees them; unmapped ids become the overflow id, as the kernel shows.
pub fn to_task_view(g: &UsernsGraph, ns: u32, outer: &[u32], gid: bool) -> Vec<u32> {
    let chain = g.chain(ns, gid);
    let overflow = if gid { overflow_gid() } else { overflow_uid() };
    outer
        .iter()
        .map(|&id| idmap::to_inner(&chain, id).unwrap_or(overflow))
        .collect()
}

/// Converts ids as the task in `ns` sees them to crest's view. The ids
/// the dump recorded as crest saw them (`recorded`) win when they agree
/// with what the task sees: that keeps an id the namespace does not map
/// (which the task sees as the overflow id, itself perhaps mapped) exact.
pub fn to_outer_view(
    g: &UsernsGraph,
    ns: u32,
    inner: &[u32],
    recorded: &[u32],
    gid: bool,
) -> Vec<u32> {
    let chain = g.chain(ns, gid);
    let overflow = if gid { overflow_gid() } else { overflow_uid() };
    inner
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let seen_as = |x: u32| idmap::to_inner(&chain, x).unwrap_or(overflow);
            match recorded.get(i) {
                Some(&x) if seen_as(x) == id => x,
                _ => idmap::to_outer(&chain, id).unwrap_or(overflow),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(map: Vec<IdExtent>) -> UsernsGraph {
        let mut root = root_node();
        root.id = 1;
        let mut child = root_node();
        child.id = 2;
        child.parent = Some(1);
        child.depth = 1;
        child.uid_map = map.clone();
        child.gid_map = map;
        UsernsGraph {
            nodes: vec![root, child],
            tasks: vec![(10, 2)],
        }
    }

    #[test]
    fn unmapped_ids_come_back_exactly() {
        let g = graph(vec![IdExtent {
            first: 0,
            lower_first: 100_000,
            count: 65_536,
        }]);
        // kuid 0 is unmapped: the task sees 65534, which is itself mapped.
        let inner = to_task_view(&g, 2, &[0, 100_005], false);
        assert_eq!(inner, [overflow_uid(), 5]);
        assert_eq!(
            to_outer_view(&g, 2, &inner, &[0, 100_005], false),
            [0, 100_005]
        );
        // Without a record, the mapped meaning of the id is taken.
        assert_eq!(to_outer_view(&g, 2, &[5], &[], false), [100_005]);
        // A record that disagrees with the task's view is ignored.
        assert_eq!(to_outer_view(&g, 2, &[5], &[7], false), [100_005]);
    }
}

// ---- restore side -------------------------------------------------------
