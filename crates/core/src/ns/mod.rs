//! Namespaces. Today: user namespaces, nested to any depth (`user`), and
//! the id-map arithmetic they need (`idmap`).

pub mod idmap;
pub mod user;
