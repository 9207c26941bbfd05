//! Namespaces other than user namespaces that a tree has of its own.
//!
//! Each is recorded with its type and owning user namespace in crest's
//! `crest-ns.img`; its state in CRIU's image for it where there is one
//! (`utsns-<id>.img`). Restore creates each one in a helper task that is
//! inside the owning user namespace (so `NS_GET_USERNS` answers the same),
//! sets its state there, and every task enters it at the end, before its
//! user namespace.
//!
//! Supported today: uts. A task in its own pid, mount, ipc, net, cgroup or
//! time namespace fails the dump with a message saying so (issue 6), never
//! a silent restore into crest's.

use super::user::{fd_ino, ino_of, UsernsGraph};
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crest_images::pb::crest::CrestNsEntry;
use crest_images::pb::UtsnsEntry;
use crest_images::{magic, names};
use crest_inject::{nr, Tracee};
use crest_sys::proc::{spawn_stopped, SessionSetup};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
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
        supported: false,
    },
    Kind {
        name: "net",
        flag: libc::CLONE_NEWNET as u32,
        supported: false,
    },
    Kind {
        name: "mnt",
        flag: libc::CLONE_NEWNS as u32,
        supported: false,
    },
    Kind {
        name: "pid",
        flag: libc::CLONE_NEWPID as u32,
        supported: false,
    },
    Kind {
        name: "cgroup",
        flag: libc::CLONE_NEWCGROUP as u32,
        supported: false,
    },
    Kind {
        name: "time",
        flag: libc::CLONE_NEWTIME as u32,
        supported: false,
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
    #[serde(skip)]
    ino: u64,
}

/// The tree's own namespaces and which task is in which.
#[derive(Debug, Default, Clone)]
pub struct OtherGraph {
    pub list: Vec<OtherNs>,
    /// (pid, namespace id).
    pub tasks: Vec<(i32, u32)>,
}

impl OtherGraph {
    /// Finds the namespaces of `pids` that differ from crest's own. Fails
    /// for a kind crest cannot restore yet.
    pub fn collect(pids: &[i32], users: &UsernsGraph) -> Result<OtherGraph, DumpError> {
        let me = std::process::id() as i32;
        let mut g = OtherGraph::default();
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
                    return Err(DumpError::Unsupported {
                        pid,
                        what: format!("a task in a {} namespace of its own (issue 6)", kind.name),
                    });
                }
                let id = match g.list.iter().find(|n| n.ino == ino) {
                    Some(n) => n.id,
                    None => g.add(pid, kind, &path, ino, users)?,
                };
                g.tasks.push((pid, id));
            }
        }
        Ok(g)
    }

    fn add(
        &mut self,
        pid: i32,
        kind: Kind,
        path: &str,
        ino: u64,
        users: &UsernsGraph,
    ) -> Result<u32, DumpError> {
        let fd: OwnedFd = File::open(path).at(pid, "open a namespace")?.into();
        let owner_fd = crest_sys::ns::get_userns(&fd).at(pid, "NS_GET_USERNS")?;
        let owner_ino = fd_ino(&owner_fd).at(pid, "stat the owning user namespace")?;
        let owner_userns = users
            .by_ino(owner_ino)
            .ok_or_else(|| DumpError::Unsupported {
                pid,
                what: format!(
                    "a {} namespace owned by a user namespace outside the tree",
                    kind.name
                ),
            })?;
        let uts = if kind.flag == libc::CLONE_NEWUTS as u32 {
            Some(read_uts(pid, &fd)?)
        } else {
            None
        };
        let id = self.list.len() as u32 + 1;
        self.list.push(OtherNs {
            id,
            nstype: kind.flag,
            owner_userns,
            uts,
            ino,
        });
        Ok(id)
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
            })
            .chain(more)
            .collect();
        crest_images::write_image(dir, names::CREST_NS, magic::CREST_NS, &entries)?;
        for n in &self.list {
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
        let bad = |what: String| RestoreError::BadImage {
            pid: 0,
            file: names::CREST_NS.into(),
            what,
        };
        if entries.len() > 4096 {
            return Err(bad(format!("{} namespaces", entries.len())));
        }
        let mut g = OtherGraph {
            list: Vec::new(),
            tasks: tasks.to_vec(),
        };
        for e in entries
            .into_iter()
            .filter(|e| e.nstype != libc::CLONE_NEWPID as u32)
        {
            let kind = kind_of_flag(e.nstype).ok_or_else(|| {
                bad(format!(
                    "namespace {} of unknown type {:#x}",
                    e.id, e.nstype
                ))
            })?;
            if !kind.supported {
                return Err(RestoreError::Unsupported {
                    pid: 0,
                    what: format!("restoring a {} namespace", kind.name),
                });
            }
            let uts = if kind.flag == libc::CLONE_NEWUTS as u32 {
                let u: UtsnsEntry = crest_images::read_one(dir, &names::utsns(e.id), magic::UTSNS)?;
                if u.nodename.len() > 64 || u.domainname.len() > 64 {
                    return Err(RestoreError::BadImage {
                        pid: 0,
                        file: names::utsns(e.id),
                        what: "a host or domain name longer than 64 bytes".into(),
                    });
                }
                Some((u.nodename, u.domainname))
            } else {
                None
            };
            g.list.push(OtherNs {
                id: e.id,
                nstype: e.nstype,
                owner_userns: e.owner_userns,
                uts,
                ino: 0,
            });
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
                let mut pids: Vec<i32> = self.tasks.iter().filter(|t| t.1 == n.id).map(|t| t.0).collect();
                pids.sort_unstable();
                let owner_pids: Vec<i32> = {
                    let mut p: Vec<i32> = users
                        .tasks
                        .iter()
                        .filter(|t| t.1 == n.owner_userns)
                        .map(|t| t.0)
                        .collect();
                    p.sort_unstable();
                    p
                };
                let kind = kind_of_flag(n.nstype).map_or("?", |k| k.name);
                let state = n
                    .uts
                    .as_ref()
                    .map(|(h, d)| format!(" hostname {h:?} domainname {d:?}"))
                    .unwrap_or_default();
                format!(
                    "{kind} ns owned by the userns of tasks {owner_pids:?} (depth {}){state} tasks {pids:?}",
                    users.node(n.owner_userns).map_or(0, |u| u.depth)
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

/// The entries of `crest-ns.img` (none when the file is absent).
pub fn read_entries(dir: &Path) -> Result<Vec<CrestNsEntry>, RestoreError> {
    if !dir.join(names::CREST_NS).exists() {
        return Ok(Vec::new());
    }
    let entries: Vec<CrestNsEntry> =
        crest_images::read_image(dir, names::CREST_NS, magic::CREST_NS)?;
    if entries.len() > 4096 {
        return Err(RestoreError::BadImage {
            pid: 0,
            file: names::CREST_NS.into(),
            what: format!("{} namespaces", entries.len()),
        });
    }
    Ok(entries)
}

/// Host and domain name of a uts namespace, read by a short-lived crest
/// child that enters it.
fn read_uts(pid: i32, fd: &OwnedFd) -> Result<(String, String), DumpError> {
    let child = spawn_stopped(&[], SessionSetup::Inherit).at(pid, "spawn a namespace reader")?;
    let mut t = Tracee::from_stopped_child(child).at(pid, "attach the namespace reader")?;
    t.use_vdso_syscall().at(pid, "namespace reader syscall")?;
    t.syscall(
        nr::SETNS,
        &[fd.as_raw_fd() as u64, libc::CLONE_NEWUTS as u64],
    )
    .at(pid, "setns into a uts namespace")?;
    let buf = t.scratch(6 * 65).at(pid, "scratch")?;
    t.syscall(nr::UNAME, &[buf]).at(pid, "uname")?;
    let mut raw = vec![0u8; 6 * 65];
    t.read_mem(buf, &mut raw).at(pid, "read utsname")?;
    let field = |i: usize| {
        let f = &raw[i * 65..(i + 1) * 65];
        let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
        String::from_utf8_lossy(&f[..end]).into_owned()
    };
    Ok((field(1), field(5)))
}

// ---- restore side -------------------------------------------------------

/// Helper tasks that hold the restored namespaces until every task has
/// entered its own. Dropping them kills them.
#[derive(Default)]
pub struct Helpers {
    by_id: Vec<(u32, Tracee)>,
}

impl Helpers {
    /// Creates every namespace of `g` inside its owning user namespace
    /// (held by `users_h`) and sets its state.
    pub fn build(g: &OtherGraph, users_h: &super::user::Helpers) -> Result<Helpers, RestoreError> {
        let mut h = Helpers::default();
        for n in &g.list {
            let pid =
                spawn_stopped(&[], SessionSetup::Inherit).rat(0, "spawn a namespace helper")?;
            let mut t = Tracee::from_stopped_child(pid).rat(pid, "attach a namespace helper")?;
            t.use_vdso_syscall().rat(pid, "helper syscall")?;
            if let Some(owner) = users_h.pid_of(n.owner_userns) {
                super::user::enter(&mut t, owner)?;
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
            h.by_id.push((n.id, t));
        }
        Ok(h)
    }

    /// Moves task `t` into each of its own namespaces (all but its user
    /// namespace, which comes after).
    pub fn enter_all(&self, t: &mut Tracee, g: &OtherGraph) -> Result<(), RestoreError> {
        let pid = t.pid();
        for (tp, id) in g.tasks.iter().filter(|x| x.0 == pid) {
            let _ = tp;
            let Some(n) = g.list.iter().find(|n| n.id == *id) else {
                continue;
            };
            let Some((_, h)) = self.by_id.iter().find(|(i, _)| i == id) else {
                continue;
            };
            let kind = kind_of_flag(n.nstype).map_or("?", |k| k.name);
            let path = format!("/proc/{}/ns/{kind}", h.pid());
            let fd = crate::mm::restore::open_in_task(t, &path, libc::O_RDONLY)?;
            let r = t.syscall(nr::SETNS, &[fd, u64::from(n.nstype)]);
            t.syscall(nr::CLOSE, &[fd]).rat(pid, "close")?;
            r.rat(pid, format!("setns into its {kind} namespace"))?;
        }
        Ok(())
    }
}
