//! Namespaces other than user namespaces that a tree has of its own.
//!
//! Each is recorded with its type and owning user namespace in crest's
//! `crest-ns.img` (CRIU's `ns_file_entry` per namespace, carrying crest's
//! `crest_ns_entry`); its state in CRIU's image for it where there is one
//! (`utsns-<id>.img`). Restore creates each one in a helper task that is
//! inside the owning user namespace (so `NS_GET_USERNS` answers the same),
//! sets its state there, and every task enters it at the start of its
//! transform (its user namespace comes last).
//!
//! Kinds and their rooms: uts (host and domain name, here); ipc with its
//! SysV objects and POSIX queues (`ipc`); net as far as it can be rebuilt
//! from inside (`net`); time (clock offsets, here); mnt with its changes
//! against the namespace it was copied from (`mnt`); cgroup v2 (`cgroup`).
//! What crest cannot rebuild fails the dump with a message saying so,
//! never a silent restore into crest's namespaces.

mod helpers;
mod inside;

use crate::error::RoomError;
use crate::ns::error::NsError;
pub use helpers::{own_net_ns, NsHelpers};
use inside::{read_time_offsets, read_uts, reader};

use super::graph;
use super::user::{fd_ino, ino_of, UsernsGraph};
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::remote::Remote;
use crest_images::carry::MountsReader;
use crest_images::pb::crest::CrestNsEntry;
use crest_images::pb::{NsFileEntry, UtsnsEntry};
use crest_images::{magic, names};
use crest_inject::{nr, Tracee};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;

/// A kind of namespace: its /proc/PID/ns name, its CLONE_NEW* flag and
/// whether crest restores it yet.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    pub name: &'static str,
    pub flag: u32,
    pub supported: bool,
}

pub const KINDS: [Kind; 7] = [
    Kind {
        name: "uts",
        flag: libc::CLONE_NEWUTS as u32,
        supported: true,
    },
    Kind {
        name: "ipc",
        flag: libc::CLONE_NEWIPC as u32,
        supported: true,
    },
    Kind {
        name: "net",
        flag: libc::CLONE_NEWNET as u32,
        supported: true,
    },
    Kind {
        name: "mnt",
        flag: libc::CLONE_NEWNS as u32,
        supported: true,
    },
    Kind {
        name: "pid",
        flag: libc::CLONE_NEWPID as u32,
        supported: true,
    },
    Kind {
        name: "cgroup",
        flag: libc::CLONE_NEWCGROUP as u32,
        supported: true,
    },
    Kind {
        name: "time",
        flag: libc::CLONE_NEWTIME as u32,
        supported: true,
    },
];

fn kind_of_flag(flag: u32) -> Option<Kind> {
    KINDS.iter().copied().find(|k| k.flag == flag)
}

/// One namespace of the tree's own.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OtherNs {
    pub id: u32,
    pub nstype: u32,
    pub owner_userns: u32,
    /// uts: (nodename, domainname).
    pub uts: Option<(String, String)>,
    /// net: the loopback device is up.
    pub lo_up: bool,
    /// time: (seconds, nanoseconds) offsets of CLOCK_MONOTONIC and
    /// CLOCK_BOOTTIME.
    pub offsets: Option<[(i64, i64); 2]>,
    /// mnt: the mounts are private.
    pub mnt_private: bool,
    /// ipc: the SysV objects.
    #[serde(skip)]
    pub ipc: Option<super::ipc::IpcDump>,
    /// mnt: the mounts.
    #[serde(skip)]
    pub mnt: Option<super::mnt::MntNs>,
    /// cgroup: the namespace's root (a cgroup v2 path, crest's view).
    pub cgroup_root: Option<String>,
    /// A namespace from outside (`--external net[INO]:KEY`): its key.
    pub external_key: Option<String>,
    /// net: devices, addresses, routes, sysctls.
    #[serde(skip)]
    pub net: Option<super::net::NetNs>,
    #[serde(skip)]
    ino: u64,
}

graph::impl_node!(OtherNs);

/// The tree's own namespaces and which task is in which.
#[derive(Debug, Default, Clone)]
pub struct OtherGraph {
    pub list: Vec<OtherNs>,
    /// (pid, namespace id).
    pub tasks: Vec<(i32, u32)>,
    /// Dump: the kinds (`CLONE_NEW*`) whose contents are left out.
    pub empty_ns: u32,
    /// Dump: the `--external` entries.
    pub externals: Vec<String>,
    /// Dump: how mounts are treated (`--external mnt[MP]:KEY`,
    /// `--ext-mount-map auto`, `--skip-mnt`, `--enable-fs`); show: mounts
    /// from outside are described (as external), not refused.
    mnt_opts: super::mnt::MntOpts,
}

/// Namespace `e` of the images with its state read (names, clock
/// offsets, ipc objects, mounts, network); a kind crest cannot restore is
/// refused.
fn read_one(dir: &Path, e: CrestNsEntry) -> Result<OtherNs, RestoreError> {
    let bad = |what: String| {
        NsError::BadImage {
            file: names::CREST_NS.into(),
            what,
        }
        .in_tree_restore()
    };
    let kind = kind_of_flag(e.nstype).ok_or_else(|| {
        bad(format!(
            "namespace {} of unknown type {:#x}",
            e.id, e.nstype
        ))
    })?;
    if !kind.supported {
        return Err(NsError::Unsupported {
            what: format!("restoring a {} namespace", kind.name),
        }
        .in_tree_restore());
    }
    let uts = if kind.flag == libc::CLONE_NEWUTS as u32 {
        let u: UtsnsEntry = crest_images::read_one(dir, &names::utsns(e.id), magic::UTSNS)?;
        if u.nodename.len() > 64 || u.domainname.len() > 64 {
            return Err(NsError::BadImage {
                file: names::utsns(e.id),
                what: "a host or domain name longer than 64 bytes".into(),
            }
            .in_tree_restore());
        }
        Some((u.nodename, u.domainname))
    } else {
        None
    };
    let offsets = (kind.name == "time").then(|| {
        [
            (e.monotonic_sec.unwrap_or(0), e.monotonic_nsec.unwrap_or(0)),
            (e.boottime_sec.unwrap_or(0), e.boottime_nsec.unwrap_or(0)),
        ]
    });
    let ipc = if kind.name == "ipc" && dir.join(names::ipcns_var(e.id)).exists() {
        Some(super::ipc::read(dir, e.id)?)
    } else {
        None
    };
    let mnt = if kind.name == "mnt" && MountsReader::exists(dir, e.id) {
        Some(super::mnt::read(dir, e.id)?)
    } else {
        None
    };
    let net = if kind.name == "net" && e.external_key.is_none() {
        Some(
            super::net::read(dir, e.id)?
                .unwrap_or_else(|| super::net::NetNs::bare(e.lo_up.unwrap_or(false))),
        )
    } else {
        None
    };
    Ok(OtherNs {
        id: e.id,
        nstype: e.nstype,
        owner_userns: e.owner_userns,
        uts,
        lo_up: e.lo_up.unwrap_or(false),
        offsets,
        mnt_private: e.mnt_private.unwrap_or(false),
        ipc,
        mnt,
        cgroup_root: e.cgroup_root.clone(),
        net,
        external_key: e.external_key.clone(),
        ino: 0,
    })
}

impl OtherGraph {
    /// (nsfs inode, id, `CLONE_NEW*` type) of every namespace of the tree's
    /// own.
    pub fn ns_inos(&self) -> Vec<(u64, u32, u32)> {
        self.list
            .iter()
            .filter(|n| n.ino != 0)
            .map(|n| (n.ino, n.id, n.nstype))
            .collect()
    }

    /// Finds the namespaces of `pids` that differ from crest's own, to show
    /// them (a veth whose peer is outside the tree is described, not
    /// refused).
    pub fn collect(pids: &[i32], users: &UsernsGraph) -> Result<OtherGraph, DumpError> {
        let describe = super::mnt::MntOpts {
            describe: true,
            ..Default::default()
        };
        Self::collect_with(pids, users, (None, describe), 0)
    }

    /// Finds the namespaces of `pids` that differ from crest's own, to dump
    /// them with the `--external` entries `external`; the contents of the
    /// kinds in `empty_ns` (CRIU's `--empty-ns net`: a runtime sets the
    /// network up again itself) are left out, the namespaces kept. Fails
    /// for a kind crest cannot restore yet.
    pub fn collect_with(
        pids: &[i32],
        users: &UsernsGraph,
        (external, mnt_opts): (Option<&[String]>, super::mnt::MntOpts),
        empty_ns: u32,
    ) -> Result<OtherGraph, DumpError> {
        let me = std::process::id() as i32;
        let mut g = OtherGraph {
            mnt_opts,
            empty_ns,
            externals: external.unwrap_or(&[]).to_vec(),
            ..OtherGraph::default()
        };
        for kind in KINDS.iter().copied().filter(|k| k.name != "pid") {
            let mine = ino_of(&format!("/proc/self/ns/{}", kind.name))
                .at(me, "stat crest's namespaces")?;
            for &pid in pids {
                let path = format!("/proc/{pid}/ns/{}", kind.name);
                let ino = ino_of(&path).at(pid, "stat a namespace")?;
                if ino == mine {
                    continue;
                }
                if !kind.supported {
                    return Err(NsError::Unsupported {
                        what: format!("a task in a {} namespace of its own (issue 6)", kind.name),
                    }
                    .in_dump(pid));
                }
                let id = match g.list.iter().find(|n| n.ino == ino) {
                    Some(n) => n.id,
                    None => {
                        let base = if kind.name == "mnt" {
                            g.mount_base(pid, pids, mine)?
                        } else {
                            None
                        };
                        g.add(pid, kind, &path, ino, users, base)?
                    }
                };
                g.tasks.push((pid, id));
            }
        }
        let mut nets: Vec<(u32, &mut super::net::NetNs)> = g
            .list
            .iter_mut()
            .filter_map(|n| Some((n.id, n.net.as_mut()?)))
            .collect();
        super::net::resolve_peers(&mut nets, external)?;
        Ok(g)
    }

    /// The mount namespace `pid`'s was copied from: that of its nearest
    /// ancestor in the tree in another one, if the tree has it of its own
    /// (then: that ancestor and the namespace's id); None for crest's.
    fn mount_base(
        &self,
        pid: i32,
        pids: &[i32],
        crest_ino: u64,
    ) -> Result<Option<(i32, u32)>, DumpError> {
        let ino = ino_of(&format!("/proc/{pid}/ns/mnt")).at(pid, "stat a namespace")?;
        let mut cur = pid;
        for _ in 0..pids.len() {
            let status =
                std::fs::read_to_string(format!("/proc/{cur}/status")).at(cur, "read status")?;
            let ppid: i32 = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if !pids.contains(&ppid) {
                return Ok(None);
            }
            let theirs = ino_of(&format!("/proc/{ppid}/ns/mnt")).at(ppid, "stat a namespace")?;
            if theirs != ino {
                if theirs == crest_ino {
                    return Ok(None);
                }
                return Ok(self.by_ino(theirs).map(|id| (ppid, id)));
            }
            cur = ppid;
        }
        Ok(None)
    }

    /// Names the pid namespace of each mount namespace's new proc mounts
    /// by its id in `pids` (None: crest's own).
    pub fn resolve_proc_pidns(&mut self, pids: &super::pid::PidnsGraph) -> Result<(), DumpError> {
        let me = std::process::id() as i32;
        let mine = ino_of("/proc/self/ns/pid").at(me, "stat crest's pid namespace")?;
        for n in self.list.iter_mut() {
            let Some(m) = n.mnt.as_mut() else { continue };
            let Some(ino) = m.proc_pidns_ino else {
                continue;
            };
            if ino == mine {
                continue;
            }
            m.proc_pidns = Some(pids.by_ino(ino).ok_or_else(|| {
                NsError::Unsupported {
                    what: "a proc mount of a pid namespace outside the tree".into(),
                }
                .in_dump(m.as_pid)
            })?);
        }
        Ok(())
    }

    /// Every task in a cgroup namespace of the tree's own, with its cgroup.
    pub fn cgroup_members(&self) -> Result<Vec<(i32, String)>, DumpError> {
        let mut out = Vec::new();
        for (pid, id) in &self.tasks {
            let cg = self
                .list
                .iter()
                .any(|n| n.id == *id && n.nstype == libc::CLONE_NEWCGROUP as u32);
            if cg {
                out.push((*pid, super::cgroup::path_of(*pid)?));
            }
        }
        Ok(out)
    }

    /// The mount namespaces with mounts to replay, each after the one it
    /// was copied from.
    pub fn mount_order(&self) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        let with: Vec<(u32, Option<u32>)> = self
            .list
            .iter()
            .filter_map(|n| Some((n.id, n.mnt.as_ref()?.base)))
            .collect();
        for _ in 0..with.len() {
            for (id, base) in &with {
                let ready = base.is_none_or(|b| out.contains(&b) || !with.iter().any(|w| w.0 == b));
                if ready && !out.contains(id) {
                    out.push(*id);
                }
            }
        }
        out
    }

    fn add(
        &mut self,
        pid: i32,
        kind: Kind,
        path: &str,
        ino: u64,
        users: &UsernsGraph,
        mnt_base: Option<(i32, u32)>,
    ) -> Result<u32, DumpError> {
        let fd: OwnedFd = File::open(path).at(pid, "open a namespace")?.into();
        let owner_fd = crest_sys::ns::get_userns(&fd).at(pid, "NS_GET_USERNS")?;
        let owner_ino = fd_ino(&owner_fd).at(pid, "stat the owning user namespace")?;
        let owner_userns = users.by_ino(owner_ino).ok_or_else(|| {
            NsError::Unsupported {
                what: format!(
                    "a {} namespace owned by a user namespace outside the tree",
                    kind.name
                ),
            }
            .in_dump(pid)
        })?;
        let mut n = OtherNs {
            id: self.list.len() as u32 + 1,
            nstype: kind.flag,
            owner_userns,
            uts: None,
            lo_up: false,
            offsets: None,
            mnt_private: false,
            ipc: None,
            mnt: None,
            cgroup_root: None,
            net: None,
            external_key: None,
            ino,
        };
        match kind.name {
            "uts" => n.uts = Some(read_uts(pid, &fd, &owner_fd)?),
            "cgroup" => {
                let mut t = reader(pid, &fd, libc::CLONE_NEWCGROUP, Some(&owner_fd))?;
                n.cgroup_root = Some(super::cgroup::dump_root(pid, &mut t)?);
            }
            "ipc" => {
                let mut t = reader(pid, &fd, libc::CLONE_NEWIPC, Some(&owner_fd))?;
                n.ipc = Some(super::ipc::dump(pid, &mut t)?);
            }
            "net" if crate::opts::external_ns(&self.externals, "net", ino).is_some() => {
                // the caller's: neither dumped nor made again
                n.external_key = crate::opts::external_ns(&self.externals, "net", ino);
            }
            "net" if self.empty_ns & kind.flag != 0 => {
                // only the loopback device's state
                let (up, mtu) = super::net::lo_state_in(pid, &fd)?;
                n.lo_up = up;
                n.net = Some(super::net::NetNs::bare_with(up, mtu));
            }
            "net" => {
                let net = super::net::collect(pid, &fd)?;
                n.lo_up = net.lo_up();
                n.net = Some(net);
            }
            "time" => n.offsets = Some(read_time_offsets(pid)?),
            "mnt" => {
                let m = super::mnt::collect(pid, mnt_base, &self.mnt_opts)?;
                n.mnt_private = m
                    .mounts
                    .iter()
                    .all(|x| x.shared.is_none() && x.master.is_none());
                n.mnt = Some(m);
            }
            _ => {}
        }
        let id = n.id;
        self.list.push(n);
        Ok(id)
    }

    /// Leaves every network namespace's contents out but the loopback
    /// device's state (a restore with `--empty-ns net`).
    pub fn empty_net(&mut self) {
        for n in &mut self.list {
            if n.nstype == libc::CLONE_NEWNET as u32 && n.external_key.is_none() {
                let mtu = n.net.as_ref().and_then(|x| x.lo_mtu());
                n.net = Some(match mtu {
                    Some(m) => super::net::NetNs::bare_with(n.lo_up, m),
                    None => super::net::NetNs::bare(n.lo_up),
                });
            }
        }
    }

    /// Whether the tree has a namespace of this kind (`CLONE_NEW*`) of its
    /// own.
    pub fn has_kind(&self, flag: u32) -> bool {
        self.list.iter().any(|n| n.nstype == flag)
    }

    /// The id of the namespace whose nsfs inode is `ino`.
    pub fn by_ino(&self, ino: u64) -> Option<u32> {
        graph::by_ino(&self.list, ino)
    }

    /// The id of `pid`'s namespace of type `flag`, if it has its own.
    pub fn ns_of(&self, pid: i32, flag: u32) -> Option<u32> {
        self.tasks
            .iter()
            .filter(|t| t.0 == pid)
            .find(|t| self.list.iter().any(|n| n.id == t.1 && n.nstype == flag))
            .map(|t| t.1)
    }

    /// Writes `crest-ns.img` (with `more` entries, the pid namespaces) and
    /// each namespace's state image.
    pub fn write(&self, dir: &Path, more: Vec<CrestNsEntry>) -> Result<(), DumpError> {
        let entries: Vec<CrestNsEntry> = self
            .list
            .iter()
            .map(|n| CrestNsEntry {
                id: n.id,
                nstype: n.nstype,
                owner_userns: n.owner_userns,
                parent: None,
                lo_up: Some(n.lo_up),
                monotonic_sec: n.offsets.map(|o| o[0].0),
                monotonic_nsec: n.offsets.map(|o| o[0].1),
                boottime_sec: n.offsets.map(|o| o[1].0),
                boottime_nsec: n.offsets.map(|o| o[1].1),
                mnt_private: Some(n.mnt_private),
                cgroup_root: n.cgroup_root.clone(),
                external_key: n.external_key.clone(),
            })
            .chain(more)
            .collect();
        crest_images::carry::write::<NsFileEntry>(dir, names::CREST_NS, entries)?;
        for n in &self.list {
            if let Some(d) = &n.ipc {
                super::ipc::write(dir, n.id, d)?;
            }
            if let Some(m) = &n.mnt {
                super::mnt::write(dir, n.id, m)?;
            }
            if let Some(net) = &n.net {
                super::net::write(dir, n.id, net)?;
            }
            if let Some((node, dom)) = &n.uts {
                let e = UtsnsEntry {
                    nodename: node.clone(),
                    domainname: dom.clone(),
                };
                crest_images::write_image(dir, &names::utsns(n.id), magic::UTSNS, &[e])?;
            }
        }
        Ok(())
    }

    /// Reads the namespaces back; `tasks` pairs each pid with its ids
    /// entry's namespace ids.
    pub fn read(dir: &Path, tasks: &[(i32, u32)]) -> Result<OtherGraph, RestoreError> {
        let entries = read_entries(dir)?;
        let bad = |what: String| {
            NsError::BadImage {
                file: names::CREST_NS.into(),
                what,
            }
            .in_tree_restore()
        };
        if entries.len() > 4096 {
            return Err(bad(format!("{} namespaces", entries.len())));
        }
        let mut g = OtherGraph {
            list: Vec::new(),
            tasks: tasks.to_vec(),
            mnt_opts: super::mnt::MntOpts::default(),
            empty_ns: 0,
            externals: Vec::new(),
        };
        for e in entries
            .into_iter()
            .filter(|e| e.nstype != libc::CLONE_NEWPID as u32)
        {
            g.list.push(read_one(dir, e)?);
        }
        Ok(g)
    }

    /// The namespaces as canonical text lines (type, owner's depth-first
    /// position is given by the user-namespace graph's rendering of
    /// tasks), for `crest show --ns`.
    pub fn render(&self, users: &UsernsGraph) -> String {
        use std::fmt::Write;
        let mut lines: Vec<String> = self
            .list
            .iter()
            .map(|n| {
                let pids = graph::tasks_in(&self.tasks, n.id);
                let kind = kind_of_flag(n.nstype).map_or("?", |k| k.name);
                let state = match kind {
                    "uts" => n
                        .uts
                        .as_ref()
                        .map(|(h, d)| format!(" hostname {h:?} domainname {d:?}"))
                        .unwrap_or_default(),
                    "cgroup" => format!(" rooted at {:?}", n.cgroup_root.as_deref().unwrap_or("?")),
                    "net" => format!(
                        " lo {}{}",
                        if n.lo_up { "up" } else { "down" },
                        n.net
                            .as_ref()
                            .map_or_else(String::new, |x| format!(" {}", x.render()))
                    ),
                    "ipc" => n.ipc.as_ref().map_or_else(String::new, |d| {
                        format!(
                            " shm {:?} sem {:?} msg {:?} posix {:?}",
                            d.shms
                                .iter()
                                .map(|s| (s.0.desc.id, s.0.size))
                                .collect::<Vec<_>>(),
                            d.sems
                                .iter()
                                .map(|s| (s.0.desc.id, s.0.nsems))
                                .collect::<Vec<_>>(),
                            d.msgs
                                .iter()
                                .map(|s| (s.0.desc.id, s.0.qnum))
                                .collect::<Vec<_>>(),
                            d.pmqs
                                .iter()
                                .map(|q| (q.name.as_str(), q.messages.len()))
                                .collect::<Vec<_>>()
                        )
                    }),
                    "time" => format!(" offsets {:?}", n.offsets.unwrap_or_default()),
                    "mnt" => match &n.mnt {
                        Some(m) => format!(
                            " {} mounts: {}",
                            m.mounts.len(),
                            m.mounts
                                .iter()
                                .filter(|x| x.kind != 0)
                                .map(|x| format!("{} {}", x.fstype, x.mountpoint))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        None => format!(
                            " a copy of crest's mounts, {}",
                            if n.mnt_private { "private" } else { "shared" }
                        ),
                    },
                    _ => String::new(),
                };
                format!(
                    "{kind} ns {}{state} tasks {pids:?}",
                    users.owner_text(n.owner_userns)
                )
            })
            .collect();
        lines.sort();
        let mut s = String::new();
        for l in lines {
            let _ = writeln!(s, "{l}");
        }
        s
    }
}

/// A task's own namespaces (other than user and pid) named by its ids.
pub fn ids_of(ids: &crest_images::pb::TaskKobjIdsEntry) -> Vec<u32> {
    [
        ids.uts_ns_id,
        ids.ipc_ns_id,
        ids.net_ns_id,
        ids.mnt_ns_id,
        ids.time_ns_id,
        ids.cgroup_ns_id,
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The entries of `crest-ns.img` (none when the file is absent).
pub fn read_entries(dir: &Path) -> Result<Vec<CrestNsEntry>, RestoreError> {
    if !dir.join(names::CREST_NS).exists() {
        return Ok(Vec::new());
    }
    let entries = crest_images::carry::read::<NsFileEntry>(dir, names::CREST_NS, magic::CREST_NS)?;
    if entries.len() > 4096 {
        return Err(NsError::BadImage {
            file: names::CREST_NS.into(),
            what: format!("{} namespaces", entries.len()),
        }
        .in_tree_restore());
    }
    Ok(entries)
}
