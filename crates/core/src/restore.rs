//! `crest restore`: read the images, fork each task with its old pid,
//! transform it from outside, set credentials, registers, and let it go.
//! Only the order lives here; every step is in the room of its object.

use crate::error::{RestoreCtx, RestoreError};
use crate::files::restore::{restore_fds, RestoreFiles};
use crate::{creds, mm, regs, signals, task};
use crest_images::pb::crest::CrestThreadExtra;
use crest_images::pb::{
    CoreEntry, FdinfoEntry, FsEntry, MmEntry, PagemapEntry, PagemapHead, PstreeEntry,
    TaskKobjIdsEntry,
};
use crest_images::{magic, names, ImageReader};
use crest_inject::{nr, Tracee};
use crest_sys::proc::{spawn_stopped, SessionSetup};
use crest_sys::ptrace::{self, WaitStatus};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub dir: PathBuf,
    pub detached: bool,
    pub shell_job: bool,
}

/// A restored tree, running.
pub struct Restored {
    pub root_pid: i32,
}

impl Restored {
    /// Waits for the root task and returns its exit status the way a shell
    /// reports it (128 + signal for a killed task).
    pub fn wait(&self) -> Result<i32, RestoreError> {
        loop {
            match ptrace::wait(self.root_pid).rat(self.root_pid, "wait for the restored task")? {
                WaitStatus::Exited(c) => return Ok(c),
                WaitStatus::Signaled(s) => return Ok(128 + s),
                _ => continue,
            }
        }
    }
}

/// Everything the images say about one task.
struct TaskImage {
    entry: PstreeEntry,
    core: CoreEntry,
    extra: Option<CrestThreadExtra>,
    ids: TaskKobjIdsEntry,
    mm: MmEntry,
    pagemap: Vec<PagemapEntry>,
    pages_id: u32,
    fdinfo: Vec<FdinfoEntry>,
    fs: FsEntry,
}

const MAX_PAGEMAP_ENTRIES: usize = 1 << 24;

impl TaskImage {
    fn read(dir: &Path, entry: PstreeEntry) -> Result<TaskImage, RestoreError> {
        let pid = entry.pid;
        let core: CoreEntry = crest_images::read_one(dir, &names::core(pid), magic::CORE)?;
        let extra_name = names::crest_thread(pid);
        let extra = if dir.join(&extra_name).exists() {
            Some(crest_images::read_one(
                dir,
                &extra_name,
                magic::CREST_THREAD,
            )?)
        } else {
            None
        };
        let ids: TaskKobjIdsEntry = crest_images::read_one(dir, &names::ids(pid), magic::IDS)?;
        let mm: MmEntry = crest_images::read_one(dir, &names::mm(pid), magic::MM)?;
        let mut r = ImageReader::open(dir, &names::pagemap(pid), magic::PAGEMAP)?;
        let head: PagemapHead = r.next_entry()?.ok_or_else(|| RestoreError::BadImage {
            pid: pid as i32,
            file: names::pagemap(pid),
            what: "no pagemap head".into(),
        })?;
        let mut pagemap = Vec::new();
        while let Some(e) = r.next_entry::<PagemapEntry>()? {
            if pagemap.len() >= MAX_PAGEMAP_ENTRIES {
                return Err(RestoreError::BadImage {
                    pid: pid as i32,
                    file: names::pagemap(pid),
                    what: format!("more than {MAX_PAGEMAP_ENTRIES} entries"),
                });
            }
            pagemap.push(e);
        }
        let fdinfo = crest_images::read_image(dir, &names::fdinfo(ids.files_id), magic::FDINFO)?;
        let fs: FsEntry = crest_images::read_one(dir, &names::fs(pid), magic::FS)?;
        Ok(TaskImage {
            entry,
            core,
            extra,
            ids,
            mm,
            pagemap,
            pages_id: head.pages_id,
            fdinfo,
            fs,
        })
    }

    fn pid(&self) -> i32 {
        self.entry.pid as i32
    }

    fn bad(&self, what: &str) -> RestoreError {
        RestoreError::BadImage {
            pid: self.pid(),
            file: names::core(self.entry.pid),
            what: what.into(),
        }
    }
}

/// Restores the tree in `opts.dir`. On failure every task made is killed.
pub fn restore(opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    let dir = &opts.dir;
    let tree: Vec<PstreeEntry> = crest_images::read_image(dir, names::PSTREE, magic::PSTREE)?;
    let Some(root) = tree.first().cloned() else {
        return Err(RestoreError::BadImage {
            pid: 0,
            file: names::PSTREE.into(),
            what: "no tasks".into(),
        });
    };
    if tree.len() > 1 || root.threads.len() > 1 {
        return Err(RestoreError::Unsupported {
            pid: root.pid as i32,
            what: "restoring more than one single-threaded task".into(),
        });
    }
    let files = RestoreFiles::read(dir)?;
    let img = TaskImage::read(dir, root)?;
    let pid = img.pid();
    crate::info!("restoring pid {pid}");
    let session = if img.entry.sid == img.entry.pid {
        SessionSetup::NewSession
    } else if img.entry.pgid == img.entry.pid {
        SessionSetup::NewGroup
    } else {
        SessionSetup::Inherit
    };
    let child = spawn_stopped(&[pid], session).map_err(|e| match e.raw_os_error() {
        Some(libc::EEXIST) => RestoreError::PidTaken { pid },
        _ => RestoreError::Io {
            pid,
            step: "clone3 with set_tid".into(),
            source: e,
        },
    })?;
    let mut t = Tracee::from_stopped_child(child).rat(pid, "attach to the new task")?;
    transform(&mut t, &img, &files, dir)?;
    t.release().rat(pid, "let the task go")?;
    crate::info!("pid {pid} restored and running");
    Ok(Restored { root_pid: pid })
}

/// Turns the stopped fork of crest into the dumped task.
fn transform(
    t: &mut Tracee,
    img: &TaskImage,
    files: &RestoreFiles,
    dir: &Path,
) -> Result<(), RestoreError> {
    let pid = img.pid();
    let tc = img
        .core
        .tc
        .as_ref()
        .ok_or_else(|| img.bad("no task core"))?;
    let th = img
        .core
        .thread_core
        .as_ref()
        .ok_or_else(|| img.bad("no thread core"))?;
    let info = img
        .core
        .thread_info
        .as_ref()
        .ok_or_else(|| img.bad("no thread info"))?;
    t.use_vdso_syscall()
        .rat(pid, "find a syscall instruction")?;
    task::unregister_inherited_rseq(t)?;

    // Memory.
    let work = mm::restore::map_work_area(t, &img.mm)?;
    restore_fds(t, img.ids.files_id, &img.fdinfo, files)?;
    mm::restore::unmap_inherited(t, &work)?;
    mm::restore::map_vmas(t, &img.mm, files)?;
    let pages = absolute(dir)
        .rat(pid, "images directory path")?
        .join(names::pages(img.pages_id));
    let started = std::time::Instant::now();
    mm::restore::fill_pages(t, &img.mm, &img.pagemap, &pages.to_string_lossy())?;
    crate::debug!(
        "pid {pid}: pages filled in {:.3} s",
        started.elapsed().as_secs_f64()
    );
    mm::restore::protect(t, &img.mm)?;
    let exe = files
        .reg_path(img.mm.exe_file_id)
        .ok_or_else(|| img.bad("exe file is not in files.img"))?;
    mm::restore::set_mm_fields(t, &img.mm, exe)?;

    // fs, limits, timers, signals and the rest.
    restore_fs(t, &img.fs, files)?;
    task::restore_rlimits(pid, tc.rlimits.as_ref())?;
    task::restore_itimers(t, tc.timers.as_ref())?;
    signals::restore_actions(t, &tc.sigactions)?;
    signals::restore_altstack(t, th.sas.as_ref())?;
    task::restore_misc(
        t,
        &task::ThreadMisc {
            comm: th.comm.as_deref().unwrap_or(&tc.comm),
            personality: tc.personality,
            rseq: th.rseq_entry.as_ref(),
            robust_list: (th.futex_rla, u64::from(th.futex_rla_len)),
            clear_tid: info.clear_tid_addr,
            pdeath_sig: th.pdeath_sig.unwrap_or(0),
        },
    )?;

    // The vdso last among mappings: from here on injection goes through it
    // and the work area can go.
    mm::restore::place_vdso(t, &img.mm)?;
    t.adopt_scratch(work.addr, work.len as usize);

    if let Some(c) = th.creds.as_ref() {
        creds::restore(t, c)?;
    }
    signals::restore_pending(t, pid, th.signals_p.as_ref(), false)?;
    signals::restore_pending(t, pid, tc.signals_s.as_ref(), true)?;

    let xsave = match img.extra.as_ref().and_then(|e| e.xsave.as_ref()) {
        Some(x) => x.clone(),
        None => {
            let size = ptrace::get_xstate(t.tid()).map_or(2432, |x| x.len());
            regs::xsave_from_fpregs(&info.fpregs, size)
        }
    };
    ptrace::set_xstate(t.tid(), &xsave).rat(pid, "PTRACE_SETREGSET(NT_X86_XSTATE)")?;
    let dumped = regs::from_image(&info.gpregs);
    let mask = th.blk_sigset.unwrap_or(tc.blk_sigset);
    t.set_final_state(regs::resume_regs(&dumped), mask);
    Ok(())
}

fn restore_fs(t: &mut Tracee, fs: &FsEntry, files: &RestoreFiles) -> Result<(), RestoreError> {
    let pid = t.pid();
    let cwd = files.reg_path(fs.cwd_id).unwrap_or("/");
    let root = files.reg_path(fs.root_id).unwrap_or("/");
    let mut p = cwd.as_bytes().to_vec();
    p.push(0);
    let addr = t.put(&p).rat(pid, "write cwd")?;
    t.syscall(nr::CHDIR, &[addr])
        .rat(pid, format!("chdir {cwd}"))?;
    if root != "/" {
        let mut p = root.as_bytes().to_vec();
        p.push(0);
        let addr = t.put(&p).rat(pid, "write root")?;
        t.syscall(nr::CHROOT, &[addr])
            .rat(pid, format!("chroot {root}"))?;
    }
    t.syscall(nr::UMASK, &[u64::from(fs.umask.unwrap_or(0o022))])
        .rat(pid, "umask")?;
    Ok(())
}

fn absolute(p: &Path) -> std::io::Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}
