//! File descriptors and the files behind them: `files.img` holds one
//! `file_entry` per open file description (or mapped file, cwd, root, exe)
//! and `fdinfo-<id>.img` maps a task's fd numbers to them.
//!
//! Fds that are one open file description (dup, or inherited across fork),
//! in one task or several, get one entry (`share`), so offsets and status
//! flags stay shared after restore.
//!
//! Kinds handled today: regular files, directories and character devices
//! (`reg`, with files deleted while open in `ghost`), pipes (`pipe`),
//! FIFOs (`fifo`), eventfd, epoll, signalfd, timerfd, inotify, memfd,
//! pidfd and io_uring (`uring`); the file locks held through them
//! (`lock`). Any other kind fails the dump with the pid, the fd number and
//! the kind.
//!
//! The room: `dump` (the order of a task's fds) fills `table` (the data a
//! dump collects); `restore` (the order of making) fills `context` (the
//! data a restore shares); each kind holds its dump and its restore;
//! `error` its refusals. This file only declares them.

pub mod context;
pub mod dump;
pub mod epoll;
pub mod error;
pub mod eventfd;
pub mod fanotify;
pub mod fifo;
pub mod fown;
pub mod ghost;
pub mod inet;
pub mod inotify;
pub mod kept;
pub mod lock;
pub mod mcast;
pub mod memfd;
pub mod mqueue;
pub mod netlink;
pub mod nsfile;
pub mod packet;
pub mod packet_ring;
pub mod pidfd;
pub mod pipe;
pub mod pty;
pub mod restore;
pub mod share;
pub mod signalfd;
pub mod skopts;
pub mod sockdiag;
pub mod table;
pub mod timerfd;
pub mod tty;
pub mod unix;
pub mod uring;
