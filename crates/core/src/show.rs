//! `crest show`: what an images directory holds, as a process tree with a
//! summary per task, for people and (as JSON) for machines.

use crate::error::RoomError;
use crest_images::pb::{CoreEntry, MmEntry, PagemapEntry, PstreeEntry};
use crest_images::{magic, names, ImageError, ImageReader};
use std::path::Path;

#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskSummary {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    pub threads: Vec<u32>,
    pub comm: String,
    pub vmas: usize,
    pub pages: u64,
    pub fds: usize,
    pub uid: Option<u32>,
    pub children: Vec<u32>,
    /// The exit status of a zombie.
    pub zombie: Option<u32>,
}

/// Reads the tree and a summary of every task.
pub fn summarize(dir: &Path) -> Result<Vec<TaskSummary>, ImageError> {
    let _inv: crest_images::pb::InventoryEntry =
        crest_images::read_one(dir, names::INVENTORY, magic::INVENTORY)?;
    let tree: Vec<PstreeEntry> = crest_images::read_image(dir, names::PSTREE, magic::PSTREE)?;
    let mut out = Vec::with_capacity(tree.len());
    let mut kids: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    for e in &tree {
        kids.entry(e.ppid).or_default().push(e.pid);
    }
    for p in &tree {
        let core: CoreEntry = crest_images::read_one(dir, &names::core(p.pid), magic::CORE)?;
        let children = kids.get(&p.pid).cloned().unwrap_or_default();
        let comm = core.tc.as_ref().map(|t| t.comm.clone()).unwrap_or_default();
        if let Some(tc) = core
            .tc
            .as_ref()
            .filter(|tc| tc.task_state == crate::task::coreimg::TASK_DEAD)
        {
            out.push(TaskSummary {
                pid: p.pid,
                ppid: p.ppid,
                pgid: p.pgid,
                sid: p.sid,
                threads: p.threads.clone(),
                comm,
                vmas: 0,
                pages: 0,
                fds: 0,
                uid: None,
                children,
                zombie: Some(tc.exit_code),
            });
            continue;
        }
        let ids: crest_images::pb::TaskKobjIdsEntry =
            crest_images::read_one(dir, &names::ids(p.pid), magic::IDS)?;
        let mut pm = ImageReader::open(dir, &names::pagemap(p.pid), magic::PAGEMAP)?;
        let _head: Option<crest_images::pb::PagemapHead> = pm.next_entry()?;
        let mut pages = 0u64;
        while let Some(e) = pm.next_entry::<PagemapEntry>()? {
            pages += e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages));
        }
        let mm: MmEntry = crest_images::read_one(dir, &names::mm(p.pid), magic::MM)?;
        let fds: Vec<crest_images::pb::FdinfoEntry> =
            crest_images::read_image(dir, &names::fdinfo(ids.files_id), magic::FDINFO)
                .unwrap_or_default();
        out.push(TaskSummary {
            pid: p.pid,
            ppid: p.ppid,
            pgid: p.pgid,
            sid: p.sid,
            threads: p.threads.clone(),
            comm,
            vmas: mm.vmas.len(),
            pages,
            fds: fds.len(),
            uid: core
                .thread_core
                .as_ref()
                .and_then(|t| t.creds.as_ref())
                .map(|c| c.uid),
            children,
            zombie: None,
        });
    }
    Ok(out)
}

/// The tree as indented text (iteratively: an image may hold a chain of
/// any depth).
pub fn render(tasks: &[TaskSummary]) -> String {
    let mut s = String::new();
    let by_pid: std::collections::HashMap<u32, &TaskSummary> =
        tasks.iter().map(|t| (t.pid, t)).collect();
    let mut seen = std::collections::HashSet::new();
    let mut stack: Vec<(&TaskSummary, usize)> = tasks
        .iter()
        .filter(|t| !by_pid.contains_key(&t.ppid))
        .rev()
        .map(|t| (t, 0))
        .collect();
    while let Some((t, depth)) = stack.pop() {
        if !seen.insert(t.pid) {
            continue;
        }
        render_one(t, depth, &mut s);
        for c in t.children.iter().rev().filter_map(|c| by_pid.get(c)) {
            stack.push((c, depth + 1));
        }
    }
    s
}

fn render_one(t: &TaskSummary, depth: usize, s: &mut String) {
    use std::fmt::Write;
    let depth = depth.min(64);
    if let Some(status) = t.zombie {
        let _ = writeln!(
            s,
            "{:indent$}pid {} ({}) ppid {} pgid {} sid {} zombie, wait status {status:#x}",
            "",
            t.pid,
            t.comm,
            t.ppid,
            t.pgid,
            t.sid,
            indent = depth * 2
        );
        return;
    }
    let _ = writeln!(
        s,
        "{:indent$}pid {} ({}) ppid {} pgid {} sid {} threads {:?} uid {} | {} vmas, {} pages ({} KiB), {} fds",
        "",
        t.pid,
        t.comm,
        t.ppid,
        t.pgid,
        t.sid,
        t.threads,
        t.uid.map_or("?".into(), |u| u.to_string()),
        t.vmas,
        t.pages,
        t.pages * 4,
        t.fds,
        indent = depth * 2
    );
}

/// The namespace graph of an images directory, as canonical text.
pub fn ns_graph_of_images(dir: &Path) -> Result<String, crate::RestoreError> {
    let tree: Vec<PstreeEntry> = crest_images::read_image(dir, names::PSTREE, magic::PSTREE)?;
    let mut tasks = Vec::with_capacity(tree.len());
    let mut others = Vec::new();
    let mut pids = Vec::new();
    for p in &tree {
        let ids: crest_images::pb::TaskKobjIdsEntry =
            crest_images::read_one(dir, &names::ids(p.pid), magic::IDS)?;
        let core: CoreEntry = crest_images::read_one(dir, &names::core(p.pid), magic::CORE)?;
        if core
            .tc
            .as_ref()
            .is_some_and(|tc| tc.task_state == crate::task::coreimg::TASK_DEAD)
        {
            continue; // a zombie has no namespaces to show, as in a live tree
        }
        if let Some(ns) = ids.user_ns_id {
            tasks.push((p.pid as i32, ns));
        }
        for ns in crate::ns::other::ids_of(&ids) {
            others.push((p.pid as i32, ns));
        }
        if let Some(ns) = ids.pid_ns_id {
            pids.push((p.pid as i32, ns));
        }
    }
    let users = crate::ns::user::UsernsGraph::read(dir, &tasks)?;
    let others = crate::ns::other::OtherGraph::read(dir, &others)?;
    let pidns =
        crate::ns::pid::PidnsGraph::from_entries(&crate::ns::other::read_entries(dir)?, &pids)
            .map_err(|why| {
                crate::ns::error::NsError::Pidns {
                    file: names::CREST_NS,
                    why,
                }
                .in_tree_restore()
            })?;
    Ok(users.render() + &others.render(&users) + &pidns.render(&users))
}

/// The namespace graph of the live tree rooted at `pid`, as canonical
/// text (zombies are left out but for their user namespaces, which the
/// kernel keeps with their credentials).
pub fn ns_graph_of_tree(pid: i32) -> Result<String, crate::DumpError> {
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() {
        let p = pids[i];
        i += 1;
        let tids = crate::procfs::list_tids(p).unwrap_or_default();
        for t in tids {
            for c in crate::procfs::read_children(p, t).unwrap_or_default() {
                if !pids.contains(&c) {
                    pids.push(c);
                }
            }
        }
    }
    // Tasks of a busy tree may end while they are read: read again
    // without them.
    let mut last = None;
    for _ in 0..5 {
        let live: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|p| crate::procfs::read_stat(*p).is_ok_and(|s| s.state != 'Z'))
            .collect();
        let read = || -> Result<String, crate::DumpError> {
            let mut users = crate::ns::user::UsernsGraph::collect(&live)?;
            // a zombie keeps its user namespace (the dump does too)
            for &z in pids.iter().filter(|p| !live.contains(p)) {
                if crate::procfs::read_stat(z).is_ok_and(|s| s.state == 'Z') {
                    users.add_zombie(z)?;
                }
            }
            let others = crate::ns::other::OtherGraph::collect(&live, &users)?;
            let pidns = crate::ns::pid::PidnsGraph::collect(
                &live,
                &users,
                others.list.len() as u32 + 1,
                &[],
            )?;
            Ok(users.render() + &others.render(&users) + &pidns.render(&users))
        };
        match read() {
            Ok(text) => return Ok(text),
            Err(e) => last = Some(e),
        }
        pids.retain(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
    }
    Err(last.unwrap_or(crate::DumpError::NoSuchProcess { pid }))
}
