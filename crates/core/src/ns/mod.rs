//! Namespaces: user namespaces, nested to any depth (`user`), the id-map
//! arithmetic they need (`idmap`), and the other kinds a tree may have of
//! its own (`other`).

pub mod cgprops;
pub mod cgroup;
pub mod cgyard;
pub mod error;
pub mod graph;
pub mod idmap;
pub mod ipc;
pub mod mnt;
pub mod net;
pub mod other;
pub mod pid;
pub mod pidinit;
pub mod user;
