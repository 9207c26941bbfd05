//! The process tree: which tasks and threads are dumped, seized and
//! stopped, and `pstree.img` (CRIU's `pstree_entry`: pid, ppid, pgid, sid,
//! threads). Restore forks every task from its real parent, in tree order.

pub mod seize;
pub mod sessions;

use crate::error::RoomError;
use crest_images::pb::PstreeEntry;

/// One task of the tree, seized (or a zombie, which cannot be).
#[derive(Debug, Clone)]
pub struct Task {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Thread ids, the leader first.
    pub threads: Vec<i32>,
    /// The raw wait status of a zombie.
    pub zombie: Option<i32>,
    /// The signal that stopped it, when it was stopped (job control).
    pub stopped: Option<i32>,
}

impl Task {
    pub fn entry(&self) -> PstreeEntry {
        PstreeEntry {
            pid: self.pid as u32,
            ppid: self.ppid as u32,
            pgid: self.pgid as u32,
            sid: self.sid as u32,
            threads: self.threads.iter().map(|t| *t as u32).collect(),
        }
    }
}

/// A process tree crest cannot seize, dump or fork, or whose image is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("no tasks")]
    Empty,
    #[error("pid {0} appears twice")]
    Twice(u32),
    #[error("tasks {lost:?} have no parent in the tree rooted at {root}")]
    Orphans { lost: Vec<u32>, root: u32 },
    #[error("sessions whose leaders and members wait on each other")]
    SessionLoop,
    /// Something crest cannot carry yet, named.
    #[error("{what} is not supported yet")]
    Unsupported { what: String },
    /// An image that contradicts itself or the rest, naming the file.
    #[error("{file}: {what}")]
    BadImage { file: String, what: String },
}

impl RoomError for TreeError {}

/// Orders pstree entries so that every parent comes before its children,
/// the root first; entries whose parent is missing (other than the root)
/// are an error in the image.
pub fn tree_order(entries: &[PstreeEntry]) -> Result<Vec<usize>, TreeError> {
    let Some(root) = entries.first() else {
        return Err(TreeError::Empty);
    };
    let mut seen = std::collections::HashSet::new();
    for e in entries {
        if !seen.insert(e.pid) {
            return Err(TreeError::Twice(e.pid));
        }
    }
    let mut kids: std::collections::HashMap<u32, Vec<usize>> = std::collections::HashMap::new();
    for (j, e) in entries.iter().enumerate().skip(1) {
        kids.entry(e.ppid).or_default().push(j);
    }
    let mut order = vec![0usize];
    let mut placed = vec![false; entries.len()];
    placed[0] = true;
    let mut i = 0;
    while i < order.len() {
        let parent = entries[order[i]].pid;
        for &j in kids.get(&parent).map_or(&[][..], |v| &v[..]) {
            if !placed[j] {
                placed[j] = true;
                order.push(j);
            }
        }
        i += 1;
    }
    if order.len() == entries.len() {
        order = after_leaders(entries, &order)?;
    }
    if order.len() != entries.len() {
        let lost: Vec<u32> = entries
            .iter()
            .enumerate()
            .filter(|(j, _)| !placed[*j])
            .map(|(_, e)| e.pid)
            .take(16)
            .collect();
        return Err(TreeError::Orphans {
            lost,
            root: root.pid,
        });
    }
    Ok(order)
}

/// `order` (parents first) changed so that a task whose session leader is
/// in the tree but is not its ancestor comes after that leader (it is
/// forked from the leader's side): the first task whose parent and leader
/// are placed goes next.
fn after_leaders(entries: &[PstreeEntry], order: &[usize]) -> Result<Vec<usize>, TreeError> {
    let index: std::collections::HashMap<u32, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.pid, i))
        .collect();
    let is_ancestor = |a: usize, mut of: usize| {
        for _ in 0..entries.len() {
            match index.get(&entries[of].ppid) {
                Some(&p) if p == a => return true,
                Some(&p) if p != of => of = p,
                _ => return false,
            }
        }
        false
    };
    let needs = |j: usize| -> Vec<usize> {
        let e = &entries[j];
        let mut d: Vec<usize> = index.get(&e.ppid).copied().into_iter().collect();
        if let Some(&l) = index.get(&e.sid) {
            if l != j && !is_ancestor(l, j) {
                d.push(l);
            }
        }
        d
    };
    if !(0..entries.len()).any(|j| needs(j).len() > 1) {
        return Ok(order.to_vec());
    }
    let mut placed = vec![false; entries.len()];
    let mut out = Vec::with_capacity(order.len());
    while out.len() < order.len() {
        let next = order
            .iter()
            .copied()
            .find(|&j| !placed[j] && needs(j).iter().all(|&d| placed[d] || d == j));
        let Some(j) = next else {
            return Err(TreeError::SessionLoop);
        };
        placed[j] = true;
        out.push(j);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(pid: u32, ppid: u32) -> PstreeEntry {
        PstreeEntry {
            pid,
            ppid,
            pgid: pid,
            sid: pid,
            threads: vec![pid],
        }
    }

    #[test]
    fn parents_come_first() {
        let entries = [e(10, 1), e(30, 20), e(20, 10), e(11, 10)];
        let order = tree_order(&entries).unwrap();
        let pids: Vec<u32> = order.iter().map(|i| entries[*i].pid).collect();
        assert_eq!(pids, [10, 20, 11, 30]);
    }

    #[test]
    fn members_come_after_a_leader_that_is_not_their_ancestor() {
        // 12 (a member of 11's session, reparented to 10) listed first
        let member = PstreeEntry {
            sid: 11,
            pgid: 11,
            ..e(12, 10)
        };
        let entries = [e(10, 1), member, e(11, 10), e(13, 11)];
        let order = tree_order(&entries).unwrap();
        let pids: Vec<u32> = order.iter().map(|i| entries[*i].pid).collect();
        assert_eq!(pids, [10, 11, 12, 13]);
    }

    #[test]
    fn orphans_and_duplicates_are_refused() {
        assert!(tree_order(&[e(10, 1), e(30, 20)])
            .unwrap_err()
            .to_string()
            .contains("[30]"));
        assert!(tree_order(&[e(10, 1), e(11, 10), e(11, 10)]).is_err());
        assert!(tree_order(&[]).is_err());
    }
}
