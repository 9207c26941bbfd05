//! Terminals at restore: the images (`tty-info.img`, `tty-data.img`)
//! read, and the pty pairs crest made so far.

use crate::error::RestoreError;
use crate::error::RoomError;
use crate::files::error::FileError;
use crest_images::pb::{TtyDataEntry, TtyInfoEntry};
use crest_images::{magic, names};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;

/// Terminals at restore.
#[derive(Default)]
pub struct TtyRestore {
    /// `tty-info.img` by id.
    pub infos: HashMap<u32, TtyInfoEntry>,
    /// The caller takes masters of consoles that were outside the tree.
    pub orphan_pts_master: bool,
    /// tty info id → (the new pair's master, held by crest; its index).
    pub masters: Vec<(u32, std::os::fd::OwnedFd, u32)>,
    /// Pty pairs whose master the tree held.
    pub pty: PtyRestore,
}

impl TtyRestore {
    pub fn read(dir: &Path) -> Result<TtyRestore, RestoreError> {
        let list: Vec<TtyInfoEntry> = if dir.join(names::TTY_INFO).exists() {
            crest_images::read_image(dir, names::TTY_INFO, magic::TTY_INFO)?
        } else {
            Vec::new()
        };
        let data: Vec<TtyDataEntry> = if dir.join(names::TTY_DATA).exists() {
            crest_images::read_image(dir, names::TTY_DATA, magic::TTY_DATA)?
        } else {
            Vec::new()
        };
        let infos: HashMap<u32, TtyInfoEntry> = list.into_iter().map(|i| (i.id, i)).collect();
        let mut pty = PtyRestore::default();
        for d in data {
            if !infos.contains_key(&d.tty_id) {
                return Err(FileError::BadImage {
                    file: names::TTY_DATA.into(),
                    what: format!(
                        "data of terminal {}, which {} lacks",
                        d.tty_id,
                        names::TTY_INFO
                    ),
                }
                .in_tree_restore());
            }
            pty.data.entry(d.tty_id).or_default().extend(d.data);
        }
        Ok(TtyRestore {
            infos,
            pty,
            ..TtyRestore::default()
        })
    }
}

/// A pair made again, held by crest until the restore ends.
pub struct MadePair {
    pub master: OwnedFd,
    /// crest's open file of the slave (kept so the slave does not close
    /// before the tasks that hold it are restored).
    pub peer: Option<OwnedFd>,
}

/// Pty pairs at restore.
#[derive(Default)]
pub struct PtyRestore {
    /// By the master's info id.
    pub made: HashMap<u32, MadePair>,
    /// `tty-data.img`, by info id.
    pub data: HashMap<u32, Vec<u8>>,
    /// Tasks that took their controlling terminal back.
    pub ctty_taken: std::collections::HashSet<i32>,
}
