//! What a restore reads and checks before it makes anything: the images
//! against their manifest, the inventory, every task's images, the
//! caller's rights over them, the fds the caller hands in, and the pid
//! namespace the root goes into when it was the caller's.

use super::images::{check_inventory, check_privilege, read_tree_images, TreeImages};
use crate::error::RoomError;
use crate::error::{RestoreCtx, RestoreError};
use crate::files::context::RestoreFiles;
use crate::ns::error::NsError;
use crate::opts::Options;
use crate::task::error::TaskError;
use crest_images::pb::SeccompFilter;
use std::os::fd::OwnedFd;

/// Everything read and checked.
pub(super) struct Prepared {
    pub(super) files: RestoreFiles,
    pub(super) ti: TreeImages,
    pub(super) filters: Vec<SeccompFilter>,
    /// CRIU's `--external pid[INO]:KEY` at dump: the caller's pid
    /// namespace the root goes into (from `--inherit-fd fd[N]:KEY`).
    pub(super) ext_pidns: Option<OwnedFd>,
}

/// The parent images (a pre-dump's, through each directory's `parent`
/// link), whose pages the restore may read: each checked against its
/// manifest too.
fn verify_parents(dir: &std::path::Path, lazy: bool) -> Result<(), RestoreError> {
    let mut d = dir.join("parent");
    for _ in 0..256 {
        if !d.exists() {
            return Ok(());
        }
        if let crest_images::manifest::Verified::Intact { files, .. } = verify(&d, lazy)? {
            crate::info!(
                "{}: {files} parent image files match their checksums",
                d.display()
            );
        }
        d = d.join("parent");
    }
    Ok(())
}

/// Checks `dir` against its manifest. With `lazy` (`--lazy-pages`) the
/// tasks' pages files are checked a chunk at a time as they are read
/// instead (their manifest lists the chunks' sums): the restore checks the
/// chunks it fills from, the lazy-pages daemon those it serves; the tree
/// resumes without reading every page first.
fn verify(
    dir: &std::path::Path,
    lazy: bool,
) -> Result<crest_images::manifest::Verified, RestoreError> {
    if !lazy {
        return Ok(crest_images::manifest::verify(dir)?);
    }
    let tasks_pages = tasks_pages_files(dir);
    let (v, later) = crest_images::manifest::verify_deferring(dir, &|n| tasks_pages.contains(n))?;
    crate::mm::restore::defer_checks(dir, later);
    Ok(v)
}

/// The pages files the tasks' pagemaps (`pagemap-<pid>.img`) of `dir`
/// name (not those of shared memory).
fn tasks_pages_files(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Default::default();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid: u32 = name
                .strip_prefix("pagemap-")?
                .strip_suffix(".img")?
                .parse()
                .ok()?;
            let (id, _) = crate::mm::image::read_pagemap(dir, pid).ok()?;
            Some(crest_images::names::pages(id))
        })
        .collect()
}

/// Reads and checks the images in `opts.dir` for `caller`.
pub(super) fn prepare(
    opts: &Options,
    caller: &crate::privilege::Caller,
) -> Result<Prepared, RestoreError> {
    let dir = &opts.dir;
    crate::mm::restore::reset_deferred();
    // every file as the dump wrote it, before anything is made
    match verify(dir, opts.lazy_pages)? {
        crest_images::manifest::Verified::Intact { files, bytes } => {
            crate::info!("{files} image files ({bytes} bytes) match their checksums")
        }
        crest_images::manifest::Verified::NoManifest => crate::warn!(
            "{}: no {}: images of CRIU or of an older crest, read without checksums",
            dir.display(),
            crest_images::manifest::MANIFEST
        ),
    }
    verify_parents(dir, opts.lazy_pages)?;
    check_inventory(dir, opts.tcp_close)?;
    let mut files = RestoreFiles::read(dir)?;
    files.socks.shell_job = opts.shell_job;
    files.socks.tcp_close = opts.tcp_close;
    files.ttys.orphan_pts_master = opts.orphan_pts_master;
    for (fd, key) in &opts.inherit_fd {
        let own = crest_sys::misc::dup_own(*fd).rat(0, format!("--inherit-fd fd[{fd}]:{key}"))?;
        files.inherit.insert(key.clone(), own);
    }
    let mut ti = read_tree_images(dir)?;
    if opts.empty_ns & libc::CLONE_NEWNET as u32 != 0 {
        // CRIU's --empty-ns net: the caller sets the network up itself
        ti.others.empty_net();
    }
    let ti = ti;
    check_privilege(caller, &ti, &opts.join_ns)?;
    let filters = crate::task::seccomp::read(dir)?;
    let sandboxed = ti.imgs.iter().find(|i| {
        i.cores.iter().any(|c| {
            c.1.thread_core
                .as_ref()
                .is_some_and(crate::task::seccomp::wanted)
        })
    });
    if let (true, Some(img)) = (caller.restricted, sandboxed) {
        return Err(TaskError::Unsupported {
            what: "a seccomp sandbox restored by an unprivileged crest (suspending it while \
                   the restore goes on needs CAP_SYS_ADMIN)"
                .into(),
        }
        .in_restore(img.pid()));
    }
    // CRIU's --external pid[INO]:KEY at dump: the root goes into the
    // caller's pid namespace, given with --inherit-fd fd[N]:KEY
    let ext_pidns = match ti.imgs[0]
        .ids
        .pid_ns_id
        .and_then(|n| ti.pidns.node(n))
        .and_then(|n| n.external_key.as_ref())
    {
        Some(key) => {
            let fd = files.inherit.get(key).ok_or_else(|| {
                NsError::Unsupported {
                    what: format!(
                        "the external pid namespace {key}, the caller's: give crest an fd \
                             of it with --inherit-fd fd[N]:{key}"
                    ),
                }
                .in_restore(ti.imgs[0].pid())
            })?;
            Some(fd.try_clone().rat(0, format!("dup the fd of {key}"))?)
        }
        None => None,
    };
    Ok(Prepared {
        files,
        ti,
        filters,
        ext_pidns,
    })
}
