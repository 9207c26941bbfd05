//! crest-core: one module (a room) per kind of kernel object, each with
//! its dump and restore side; `dump` and `restore` only put them in order.
//!
//! A room uses only rooms before it in this order (lowest first):
//! `log`, `stats`, `features`, `progress` (which use none), `procfs`, `netlink`,
//! `remote`, `helper`, `notify`, `error`, `opts`, `clone`, `ns`,
//! `task` (the per-task state: creds, signals, timers, regs, seccomp, the
//! core image), `privilege`, `guard`, `files`, `fs`, `mm`, `pstree`,
//! `dump`, `restore`, `show`. `tools/rooms.py --strict` fails on any
//! import circle, between rooms or between the files of one room.

pub mod log;

pub mod clone;
pub mod dump;
pub mod error;
pub mod features;
pub mod files;
pub mod fs;
pub mod guard;
pub mod helper;
pub mod mm;
pub mod netlink;
pub mod notify;
pub mod ns;
pub mod opts;
pub mod privilege;
pub mod procfs;
pub mod progress;
pub mod pstree;
pub mod remote;
pub mod restore;
pub mod show;
pub mod stats;
pub mod task;

pub use dump::{dump, DumpSummary};
pub use error::{DumpError, RestoreError};
pub use opts::{Action, Options};

pub use restore::{restore, Restored};
