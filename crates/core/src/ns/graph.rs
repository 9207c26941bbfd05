//! What the namespace graphs (user, pid, and the other kinds) share: a
//! node is found by its id or its nsfs inode, and the tasks of a graph
//! are (pid, namespace id) pairs.

/// A namespace of a graph: its id in the images and its nsfs inode at
/// dump (0 once read back).
pub trait Node {
    fn id(&self) -> u32;
    fn ino(&self) -> u64;
}

/// The node of `list` with id `id`.
pub fn node<N: Node>(list: &[N], id: u32) -> Option<&N> {
    list.iter().find(|n| n.id() == id)
}

/// The id of the node of `list` whose nsfs inode is `ino`.
pub fn by_ino<N: Node>(list: &[N], ino: u64) -> Option<u32> {
    list.iter().find(|n| n.ino() == ino).map(Node::id)
}

/// The pids of `tasks` (pid, namespace id) in namespace `id`, sorted.
pub fn tasks_in(tasks: &[(i32, u32)], id: u32) -> Vec<i32> {
    let mut pids: Vec<i32> = tasks.iter().filter(|t| t.1 == id).map(|t| t.0).collect();
    pids.sort_unstable();
    pids
}

/// Implements [`Node`] for a namespace struct with `id` and `ino` fields.
macro_rules! impl_node {
    ($t:ty) => {
        impl $crate::ns::graph::Node for $t {
            fn id(&self) -> u32 {
                self.id
            }
            fn ino(&self) -> u64 {
                self.ino
            }
        }
    };
}
pub(crate) use impl_node;

#[cfg(test)]
mod tests {
    use super::*;

    struct N(u32, u64);
    impl Node for N {
        fn id(&self) -> u32 {
            self.0
        }
        fn ino(&self) -> u64 {
            self.1
        }
    }

    #[test]
    fn finds_by_id_and_inode() {
        let list = [N(1, 100), N(2, 200)];
        assert_eq!(node(&list, 2).map(|n| n.1), Some(200));
        assert!(node(&list, 3).is_none());
        assert_eq!(by_ino(&list, 100), Some(1));
        assert_eq!(by_ino(&list, 5), None);
    }

    #[test]
    fn tasks_in_sorts_the_namespace_s_pids() {
        let tasks = [(30, 1), (10, 1), (20, 2)];
        assert_eq!(tasks_in(&tasks, 1), vec![10, 30]);
        assert!(tasks_in(&tasks, 3).is_empty());
    }
}
