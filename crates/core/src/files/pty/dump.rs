//! Pty pairs at dump: each pair's settings, modes and owner, and the
//! bytes queued both ways, read and put back at once.

use super::*;
use crate::error::RoomError;
use crate::files::error::FileError;
use crate::files::table::PairKey;

impl FileTable {
    /// A pty fd (`meta`: its device file's metadata) of a pair whose
    /// master the tree holds: None if it is no such fd.
    pub(crate) fn dump_pty(
        &mut self,
        (pid, fd): (i32, i32),
        link: &str,
        flags: u32,
        meta: &std::fs::Metadata,
    ) -> Result<Option<u32>, DumpError> {
        let rdev = meta.rdev();
        let key = if is_ptmx(rdev) {
            master_key(pid, fd, link)
        } else {
            slave_index(rdev).map(|i| (meta.dev(), i))
        };
        let Some(key) = key else {
            return Ok(None);
        };
        if self.tty.pty.pairs.is_none() {
            self.tty.pty.pairs = Some(scan(&self.tree));
        }
        let has_master = self
            .tty
            .pty
            .pairs
            .as_ref()
            .and_then(|p| p.get(&key))
            .is_some_and(|p| p.master.is_some());
        if !has_master {
            return Ok(None);
        }
        let (master_info, slave_info) = self.dump_pair(key)?;
        let info = if is_ptmx(rdev) {
            master_info
        } else {
            slave_info.ok_or_else(|| {
                FileError::UnsupportedFd {
                    fd,
                    kind: format!("{link}, a pty slave the scan of the tree did not see"),
                }
                .in_dump(pid)
            })?
        };
        Ok(Some(self.push(crate::files::tty::file_entry(info, flags))))
    }

    /// `/dev/tty` (fd `fd` of `pid`) when the task's controlling
    /// terminal is the slave of a pair whose master the tree holds: None
    /// otherwise.
    pub(crate) fn dump_dev_tty(
        &mut self,
        pid: i32,
        fd: i32,
        flags: u32,
    ) -> Result<Option<u32>, DumpError> {
        let st = crate::procfs::read_stat(pid).at(pid, "read stat")?;
        let Some(index) = slave_index(st.tty_nr as u32 as u64) else {
            return Ok(None);
        };
        if self.tty.pty.pairs.is_none() {
            self.tty.pty.pairs = Some(scan(&self.tree));
        }
        let pairs = self.tty.pty.pairs.as_ref().expect("scanned");
        let mut keys: Vec<PairKey> = pairs
            .iter()
            .filter(|(k, p)| k.1 == index && p.master.is_some())
            .map(|(k, _)| *k)
            .collect();
        if keys.len() > 1 {
            // several devpts have that index: the task's own /dev/pts
            let root = crate::procfs::ns_root(pid);
            let dev = std::fs::metadata(format!("{root}/dev/pts")).map(|m| m.dev());
            keys.retain(|k| dev.as_ref().is_ok_and(|d| *d == k.0));
        }
        let [key] = keys[..] else {
            return Ok(None);
        };
        self.dump_pair(key)?;
        let seen = self.tty.pty.pairs.as_ref().and_then(|p| p.get(&key));
        let info = match seen.and_then(|s| s.ctty_info) {
            Some(id) => id,
            None => {
                let rdev = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
                    .at(pid, "stat /dev/tty")?
                    .rdev();
                let id = self.tty.next_info_id();
                self.tty.infos.push(TtyInfoEntry {
                    id,
                    r#type: TtyType::Ctty as i32,
                    rdev: rdev as u32,
                    dev: Some(key.0 as u32),
                    crest_ctty_index: Some(index),
                    ..TtyInfoEntry::default()
                });
                if let Some(p) = self.tty.pty.pairs.as_mut().and_then(|p| p.get_mut(&key)) {
                    p.ctty_info = Some(id);
                }
                id
            }
        };
        Ok(Some(self.push(crate::files::tty::file_entry(info, flags))))
    }

    /// The infos of pair `key` (the master's, the slave's if it is or was
    /// open), dumped with its queued bytes the first time.
    fn dump_pair(&mut self, key: PairKey) -> Result<(u32, Option<u32>), DumpError> {
        let seen = self
            .tty
            .pty
            .pairs
            .as_ref()
            .and_then(|p| p.get(&key))
            .expect("dump_pair on a scanned pair");
        if let Some(ids) = seen.infos {
            return Ok(ids);
        }
        let (mpid, mfd) = seen.master.expect("a pair with a master");
        let slave_held = seen.slave_held;
        let index = key.1;
        let (master, link, mrdev) = master_of_task(mpid, mfd)?;
        let get = |req| crest_sys::misc::ioctl_get_int(&master, req);
        let locked = get(libc::TIOCGPTLCK).at(mpid, "TIOCGPTLCK of a pty pair")? != 0;
        let packet = get(libc::TIOCGPKT).at(mpid, "TIOCGPKT of a pty pair")? != 0;
        let excl = get(libc::TIOCGEXCL).at(mpid, "TIOCGEXCL of a pty pair")? != 0;
        let (base, t) = self.pair_settings(&master, mpid, key)?;
        let ev =
            crest_sys::misc::poll_one(&master, libc::POLLIN, 0).at(mpid, "poll of a pty pair")?;
        let hup = ev & libc::POLLHUP != 0 && !slave_held;
        // the queued bytes, read out and put back at once; the input only
        // goes back with TIOCSTI, so a crest that cannot use it leaves
        // the pair alone
        if slave_held && !can_push_input() {
            return Err(FileError::Unsupported {
                what: format!(
                    "pty {index} with its slave open: the input queued in it goes back only \
                     through TIOCSTI, which wants CAP_SYS_ADMIN in the initial user namespace"
                ),
            }
            .in_dump(mpid));
        }
        let peer = if slave_held || hup {
            Some(peer(&master).at(mpid, "TIOCGPTPEER of a pty pair")?)
        } else {
            None
        };
        let (output, input, status) = take_queues(
            &master,
            peer.as_ref(),
            (packet, slave_held, &t),
            (mpid, index),
        )?;
        let mid = self.tty.next_info_id();
        self.tty.infos.push(TtyInfoEntry {
            id: mid,
            locked,
            exclusive: excl,
            packet_mode: packet,
            rdev: mrdev as u32,
            crest_ptmx: Some(link),
            crest_slave_closed: Some(hup),
            crest_pkt_status: (status != 0).then_some(u32::from(status)),
            ..base.clone()
        });
        let sid_info = match &peer {
            Some(p) if slave_held => Some(self.slave_info(p, mpid, base)?),
            _ => None,
        };
        if !output.is_empty() {
            self.tty.pty.data.push(TtyDataEntry {
                tty_id: mid,
                data: output,
            });
        }
        if let (Some(s), false) = (sid_info, input.is_empty()) {
            self.tty.pty.data.push(TtyDataEntry {
                tty_id: s,
                data: input,
            });
        }
        let ids = (mid, sid_info);
        if let Some(p) = self.tty.pty.pairs.as_mut().and_then(|p| p.get_mut(&key)) {
            p.infos = Some(ids);
        }
        Ok(ids)
    }

    /// What the infos of both ends of pair `key` share: its settings
    /// (termios, locked termios, window size) and the session and group
    /// it controls; and its termios.
    fn pair_settings(
        &self,
        master: &OwnedFd,
        mpid: i32,
        key: PairKey,
    ) -> Result<(TtyInfoEntry, libc::termios), DumpError> {
        let t = crest_sys::misc::tcgets(master).at(mpid, "TCGETS of a pty pair")?;
        let tl = crest_sys::misc::tcgets_locked(master).at(mpid, "TIOCGLCKTRMIOS of a pty pair")?;
        let w = crest_sys::misc::get_winsize(master).at(mpid, "TIOCGWINSZ of a pty pair")?;
        let (sid, pgrp) = crate::files::tty::controlled(&self.tree, slave_rdev(key.1));
        let winsize = crest_images::pb::WinsizeEntry {
            ws_row: u32::from(w.ws_row),
            ws_col: u32::from(w.ws_col),
            ws_xpixel: u32::from(w.ws_xpixel),
            ws_ypixel: u32::from(w.ws_ypixel),
        };
        let base = TtyInfoEntry {
            id: 0,
            r#type: TtyType::Pty as i32,
            locked: false,
            exclusive: false,
            packet_mode: false,
            sid,
            pgrp,
            rdev: 0,
            termios: Some(termios_entry(&t)),
            termios_locked: Some(termios_entry(&tl)),
            winsize: Some(winsize),
            pty: Some(TtyPtyEntry { index: key.1 }),
            dev: Some(key.0 as u32),
            ..TtyInfoEntry::default()
        };
        Ok((base, t))
    }

    /// The info of the open slave `p` of a pair (its exclusive mode, its
    /// device file's owner and mode), pushed; returns its id.
    fn slave_info(&mut self, p: &OwnedFd, mpid: i32, base: TtyInfoEntry) -> Result<u32, DumpError> {
        let m = std::fs::File::from(p.try_clone().at(mpid, "dup")?)
            .metadata()
            .at(mpid, "stat the slave of a pty pair")?;
        let sexcl = crest_sys::misc::ioctl_get_int(p, libc::TIOCGEXCL)
            .at(mpid, "TIOCGEXCL of the slave of a pty pair")?
            != 0;
        let id = self.tty.next_info_id();
        self.tty.infos.push(TtyInfoEntry {
            id,
            exclusive: sexcl,
            rdev: m.rdev() as u32,
            crest_uid: Some(m.uid()),
            crest_gid: Some(m.gid()),
            crest_mode: Some(m.mode() & 0o777),
            ..base
        });
        Ok(id)
    }
}

/// The bytes queued in a pty pair, read out and put back at once: its
/// output (and packet status) through the `master`, its input through the
/// slave `peer` where it is held (`slave_held`; `t`: its termios).
/// Output queued in a pair whose slave was never opened is refused.
fn take_queues(
    master: &OwnedFd,
    peer: Option<&OwnedFd>,
    (packet, slave_held, t): (bool, bool, &libc::termios),
    (mpid, index): (i32, u32),
) -> Result<(Vec<u8>, Vec<u8>, u8), DumpError> {
    let (output, status) = read_output(master, packet).at(mpid, "read the output of a pty pair")?;
    let input = match peer {
        Some(p) if slave_held => read_input(p, t).at(mpid, "read the input of a pty pair")?,
        _ => Vec::new(),
    };
    if peer.is_none() && !output.is_empty() {
        return Err(FileError::Unsupported {
            what: format!("output queued in pty {index}, whose slave was never opened"),
        }
        .in_dump(mpid));
    }
    refill(master, peer, packet, (&output, &input, status), index)
        .at(mpid, "put the queues and status of a pty pair back")?;
    Ok((output, input, status))
}

/// crest's copy of pty master `mfd` of `mpid`, the path it was opened by
/// (the `ptmx` of its devpts) and its device number.
fn master_of_task(mpid: i32, mfd: i32) -> Result<(OwnedFd, String, u64), DumpError> {
    let pidfd = crest_sys::misc::pidfd_open(mpid).at(mpid, "pidfd_open")?;
    let master =
        rustix::process::pidfd_getfd(&pidfd, mfd, rustix::process::PidfdGetfdFlags::empty())
            .at(mpid, "pidfd_getfd of a pty master")?;
    let path = format!("/proc/{mpid}/fd/{mfd}");
    let link = crate::procfs::read_link(&path).at(mpid, "read an fd link")?;
    let rdev = std::fs::metadata(&path)
        .at(mpid, "stat a pty master")?
        .rdev();
    Ok((master, link, rdev))
}
