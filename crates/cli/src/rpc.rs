//! `criu swrk FD`: CRIU's RPC, as container runtimes speak it (runc, crun's
//! libcriu, go-criu for podman and containerd). One protobuf message per
//! SOCK_SEQPACKET datagram, sized with `MSG_PEEK|MSG_TRUNC`; the answer has
//! the request's type. Descriptor options (`images_dir_fd`, `work_dir_fd`,
//! `status_fd`) are the caller's: opened through `/proc/PEER/fd/N`, the
//! peer named by `SO_PEERCRED`. Notifications go to the caller, who must
//! answer each before crest goes on.

use crate::criu_args;
use crest_core::notify::{hook, Notify, NotifyError, Silent};
use crest_core::opts::{CgMode, JoinNs, NetworkLock, Options};
use crest_images::pb::rpc::{
    CriuDumpResp, CriuFeatures, CriuNotify, CriuOpts, CriuReq, CriuReqType, CriuResp,
    CriuRestoreResp, CriuVersion,
};
use prost::Message;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The CRIU version crest answers VERSION with: what runc (≥ 3.16 for
/// external pid namespaces, ≥ 3.16 for LSM options), podman (≥ 3.11) and
/// containerd (≥ 3.16) ask for.
pub const CRIU_MAJOR: i32 = 4;
pub const CRIU_MINOR: i32 = 2;

/// Largest request crest reads (runc's are about 1 KiB).
const MAX_REQUEST: usize = 1 << 20;

/// The caller's end of the conversation.
struct Peer {
    sock: OwnedFd,
    pid: i32,
}

impl Peer {
    /// Receives one request: Ok(None) at the end of the stream, Err for a
    /// datagram that is not a `criu_req`.
    fn recv(&self) -> Result<Option<CriuReq>, RpcError> {
        let mut probe = [0u8; 1];
        let size = crest_sys::net::recv(&self.sock, &mut probe, libc::MSG_PEEK | libc::MSG_TRUNC)
            .map_err(RpcError::io("receive a request"))?;
        if size == 0 {
            // an empty datagram and the end of the stream look alike: take
            // it off the queue either way
            let _ = crest_sys::net::recv(&self.sock, &mut probe, 0);
            return Ok(None);
        }
        if size > MAX_REQUEST {
            let _ = crest_sys::net::recv(&self.sock, &mut probe, 0);
            return Err(RpcError::TooLarge(size));
        }
        let mut buf = vec![0u8; size];
        let n = crest_sys::net::recv(&self.sock, &mut buf, 0)
            .map_err(RpcError::io("receive a request"))?;
        CriuReq::decode(&buf[..n])
            .map(Some)
            .map_err(RpcError::NotARequest)
    }

    fn send(&self, resp: &CriuResp, fd: Option<BorrowedFd<'_>>) -> Result<(), RpcError> {
        let bytes = resp.encode_to_vec();
        crest_sys::misc::send_with_fd(&self.sock, &bytes, fd.map(|f| f.as_raw_fd()))
            .map(drop)
            .map_err(RpcError::io("send an answer"))
    }

    /// The caller's fd `n`, opened anew through /proc.
    fn open_fd(&self, n: i32, write: bool) -> Result<std::fs::File, RpcError> {
        let path = format!("/proc/{}/fd/{n}", self.pid);
        std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .open(&path)
            .map_err(RpcError::io(format!("the caller's fd {n} ({path})")))
    }

    /// The directory the caller's fd `n` is open on.
    fn dir_of_fd(&self, n: i32) -> Result<PathBuf, RpcError> {
        let path = format!("/proc/{}/fd/{n}", self.pid);
        let target =
            std::fs::read_link(&path).map_err(RpcError::io(format!("the caller's fd {n}")))?;
        if target.is_absolute() && target.is_dir() {
            Ok(target)
        } else {
            // (a directory of another mount namespace: reach it through
            // the caller's fd)
            if !Path::new(&path).is_dir() {
                return Err(RpcError::NotADirectory(n));
            }
            Ok(PathBuf::from(path))
        }
    }
}

/// What goes wrong serving a request: the conversation, the request, or
/// the action it asked for.
#[derive(Debug, thiserror::Error)]
enum RpcError {
    #[error("{step}: {source}")]
    Io {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a request of {0} bytes (at most {MAX_REQUEST})")]
    TooLarge(usize),
    #[error("a request that is not a criu_req: {0}")]
    NotARequest(#[source] prost::DecodeError),
    #[error("a request without options (criu_opts)")]
    NoOptions,
    #[error("the caller's fd {0} is not a directory")]
    NotADirectory(i32),
    #[error("{field}: {why}")]
    Refused { field: &'static str, why: String },
    #[error("{0}: not supported by crest yet")]
    Unsupported(&'static str),
    #[error(transparent)]
    Args(#[from] criu_args::ArgError),
    #[error(transparent)]
    Dump(#[from] crest_core::DumpError),
    #[error(transparent)]
    Restore(#[from] crest_core::RestoreError),
}

impl RpcError {
    /// Wraps an I/O error of `step`.
    fn io(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> RpcError {
        let step = step.into();
        move |source| RpcError::Io { step, source }
    }
}

fn answer(t: CriuReqType, success: bool) -> CriuResp {
    CriuResp {
        r#type: t as i32,
        success,
        ..CriuResp::default()
    }
}

fn failed(t: CriuReqType, msg: String) -> CriuResp {
    crest_core::log::line(0, format_args!("Error (crest): {msg}"));
    CriuResp {
        cr_errmsg: Some(msg),
        ..answer(t, false)
    }
}

/// Serves requests on fd `fd_arg` until one that ends the conversation;
/// returns the exit status.
pub fn serve(fd_arg: Option<&String>) -> i32 {
    let Some(fd) = fd_arg.and_then(|s| s.parse::<i32>().ok()) else {
        eprintln!("Error (crest): swrk needs the number of its socket (criu swrk FD)");
        return 1;
    };
    let sock = match crest_sys::misc::own_fd(fd) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Error (crest): swrk socket {fd}: {e}");
            return 1;
        }
    };
    let pid = match crest_sys::misc::peer_cred(&sock) {
        Ok((pid, _, _)) => pid,
        Err(e) => {
            eprintln!("Error (crest): swrk socket {fd}: SO_PEERCRED: {e}");
            return 1;
        }
    };
    let peer = Peer { sock, pid };
    loop {
        let req = match peer.recv() {
            Ok(Some(r)) => r,
            Ok(None) => return 0,
            Err(e) => {
                let _ = peer.send(&failed(CriuReqType::Empty, e.to_string()), None);
                return 1;
            }
        };
        let t = CriuReqType::try_from(req.r#type).unwrap_or(CriuReqType::Empty);
        let (resp, ok) = handle(&peer, t, &req);
        if let Err(e) = peer.send(&resp, None) {
            eprintln!("Error (crest): {e}");
            return 1;
        }
        // (a PRE_DUMP is followed by more, or by the DUMP, on the same
        // socket, as CRIU serves them)
        let keep = (req.keep_open.unwrap_or(false)
            && matches!(t, CriuReqType::Version | CriuReqType::FeatureCheck))
            || (t == CriuReqType::PreDump && ok);
        if !keep {
            return if ok { 0 } else { 1 };
        }
    }
}

/// Serves one request: the answer and whether it succeeded.
fn handle(peer: &Peer, t: CriuReqType, req: &CriuReq) -> (CriuResp, bool) {
    let res = match t {
        CriuReqType::Version => Ok(version()),
        CriuReqType::FeatureCheck => Ok(features(req.features.as_ref())),
        CriuReqType::Check => Ok(check()),
        CriuReqType::Dump => dump(peer, req),
        CriuReqType::Restore => restore(peer, req),
        CriuReqType::PreDump | CriuReqType::SinglePreDump => pre_dump(peer, req, t),
        CriuReqType::PageServer | CriuReqType::PageServerChld => {
            Err(RpcError::Unsupported("the page server"))
        }
        CriuReqType::CpuinfoDump | CriuReqType::CpuinfoCheck => {
            Err(RpcError::Unsupported("cpuinfo images"))
        }
        CriuReqType::WaitPid => Err(RpcError::Unsupported("WAIT_PID")),
        CriuReqType::Notify | CriuReqType::Empty => {
            let resp = failed(
                CriuReqType::Empty,
                format!("unexpected request type {}", req.r#type),
            );
            return (resp, false);
        }
    };
    match res {
        Ok(mut r) => {
            r.r#type = t as i32;
            let ok = r.success;
            (r, ok)
        }
        Err(e) => (failed(t, crate::message(&e.into())), false),
    }
}

fn version() -> CriuResp {
    CriuResp {
        version: Some(CriuVersion {
            major_number: CRIU_MAJOR,
            minor_number: CRIU_MINOR,
            gitid: None,
            sublevel: Some(0),
            extra: None,
            name: Some(format!("crest {}", env!("CARGO_PKG_VERSION"))),
        }),
        ..answer(CriuReqType::Version, true)
    }
}

/// Answers only what crest has: memory tracking where the kernel has
/// asynchronous userfaultfd write protection and `PAGEMAP_SCAN`, lazy
/// pages where a userfaultfd has the events they need; no pidfd store.
fn features(asked: Option<&CriuFeatures>) -> CriuResp {
    let asked = asked.cloned().unwrap_or_default();
    CriuResp {
        features: Some(CriuFeatures {
            mem_track: asked
                .mem_track
                .map(|_| crest_core::features::memory_tracking()),
            lazy_pages: asked.lazy_pages.map(|_| crest_core::features::lazy_pages()),
            pidfd_store: asked.pidfd_store.map(|_| false),
        }),
        ..answer(CriuReqType::FeatureCheck, true)
    }
}

fn check() -> CriuResp {
    let ok = crest_core::features::probe()
        .iter()
        .all(|f| f.ok || !f.required);
    answer(CriuReqType::Check, ok)
}

/// Notifications over the socket: the caller answers each.
struct RpcNotify<'a> {
    peer: &'a Peer,
}

impl Notify for RpcNotify<'_> {
    fn notify(
        &mut self,
        script: &str,
        pid: Option<i32>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), NotifyError> {
        // CRIU sends the pid with these two only
        let pid = pid.filter(|_| script == hook::SETUP_NAMESPACES || script == hook::POST_RESTORE);
        let msg = CriuResp {
            notify: Some(CriuNotify {
                script: Some(script.to_string()),
                pid,
            }),
            ..answer(CriuReqType::Notify, true)
        };
        let channel = |e: RpcError| NotifyError::Channel(e.to_string());
        self.peer.send(&msg, fd).map_err(channel)?;
        match self.peer.recv().map_err(channel)? {
            Some(r) if r.r#type == CriuReqType::Notify as i32 && r.notify_success == Some(true) => {
                Ok(())
            }
            Some(_) => Err(NotifyError::Refused(script.to_string())),
            None => Err(NotifyError::Gone(script.to_string())),
        }
    }
}

/// Options from a request: the RPC's fields, then its `config_file`.
fn options(peer: &Peer, req: &CriuReq, dump: bool) -> Result<Options, RpcError> {
    let mut base = criu_args::Parsed::default();
    for f in criu_args::default_configs() {
        criu_args::apply_config(&mut base, &f)?;
    }
    let mut o = base.opts;
    let r = req.opts.as_ref().ok_or(RpcError::NoOptions)?;
    fill(peer, r, &mut o, dump)?;
    if let Some(cfg) = &r.config_file {
        let mut p = criu_args::Parsed {
            opts: o,
            ..Default::default()
        };
        criu_args::apply_config(&mut p, Path::new(cfg))?;
        o = p.opts;
    }
    Ok(o)
}

/// Copies the request's options into `o` (each only when the caller set
/// it: a field left out keeps what the configuration files said).
fn fill(peer: &Peer, r: &CriuOpts, o: &mut Options, dump: bool) -> Result<(), RpcError> {
    fn set<T: Clone>(to: &mut T, v: Option<T>) {
        if let Some(v) = v {
            *to = v;
        }
    }
    o.dir = peer.dir_of_fd(r.images_dir_fd)?;
    if let Some(w) = r.work_dir_fd {
        o.work_dir = Some(peer.dir_of_fd(w)?);
    }
    match r.pid {
        Some(p) => o.pid = p,
        // CRIU dumps the caller when no pid is given
        None if dump => o.pid = peer.pid,
        None => {}
    }
    set(&mut o.leave_running, r.leave_running);
    set(&mut o.ext_unix_sk, r.ext_unix_sk);
    if !r.unix_sk_ino.is_empty() {
        o.ext_unix_sk = true;
        o.ext_unix_sk_ids
            .extend(r.unix_sk_ino.iter().map(|u| u.inode));
    }
    set(&mut o.tcp_established, r.tcp_established);
    set(&mut o.evasive_devices, r.evasive_devices);
    set(&mut o.shell_job, r.shell_job);
    set(&mut o.file_locks, r.file_locks);
    if let Some(l) = r.log_level {
        o.verbosity = u32::try_from(l).unwrap_or(0);
    }
    if let Some(f) = &r.log_file {
        if f.contains('/') {
            return Err(RpcError::Refused {
                field: "log_file",
                why: format!("{f:?}: no directories allowed (use work_dir_fd)"),
            });
        }
        o.log_file = Some(PathBuf::from(f));
    }
    if let Some(ps) = &r.ps {
        // (runc's --page-server: the pages go to a page server there)
        o.page_server = true;
        o.address = ps.address.clone().or(o.address.take());
        if let Some(port) = ps.port {
            o.port = Some(u16::try_from(port).map_err(|_| RpcError::Refused {
                field: "ps.port",
                why: format!("{port} is no TCP port"),
            })?);
        }
    }
    set(&mut o.root, r.root.as_ref().map(|p| Some(PathBuf::from(p))));
    set(
        &mut o.prev_images_dir,
        r.parent_img.as_ref().map(|p| Some(PathBuf::from(p))),
    );
    set(&mut o.track_mem, r.track_mem);
    set(&mut o.auto_dedup, r.auto_dedup);
    set(&mut o.link_remap, r.link_remap);
    for v in &r.veths {
        o.external.push(format!("veth[{}]:{}", v.if_in, v.if_out));
    }
    if let Some(c) = r.cpu_cap.filter(|&c| c != u32::MAX) {
        o.cpu_cap = Some(format!("{c:#x}"));
    }
    set(&mut o.force_irmap, r.force_irmap);
    o.exec_cmd.extend(r.exec_cmd.iter().cloned());
    for m in &r.ext_mnt {
        o.external.push(format!("mnt[{}]:{}", m.key, m.val));
    }
    if let Some(m) = r.manage_cgroups {
        o.manage_cgroups = if m { CgMode::Soft } else { CgMode::Ignore };
    }
    if let Some(m) = r.manage_cgroups_mode {
        o.manage_cgroups = CgMode::from_rpc(m).ok_or_else(|| RpcError::Refused {
            field: "manage_cgroups_mode",
            why: format!("{m} is not a mode crest knows"),
        })?;
    }
    for c in &r.cg_root {
        // (ctrl "" names the cgroup v2 hierarchy; none: every hierarchy)
        o.cgroup_roots.push((c.ctrl.clone(), c.path.clone()));
    }
    set(&mut o.restore_sibling, r.rst_sibling);
    for i in &r.inherit_fd {
        o.inherit_fd.push((i.fd, i.key.clone()));
    }
    set(&mut o.auto_ext_mnt, r.auto_ext_mnt);
    set(&mut o.ext_sharing, r.ext_sharing);
    set(&mut o.ext_masters, r.ext_masters);
    o.skip_mnt.extend(r.skip_mnt.iter().cloned());
    o.enable_fs.extend(r.enable_fs.iter().cloned());
    if let Some(g) = r.ghost_limit {
        o.ghost_limit = u64::from(g);
    }
    o.irmap_scan_paths
        .extend(r.irmap_scan_paths.iter().cloned());
    o.external.extend(r.external.iter().cloned());
    if let Some(e) = r.empty_ns {
        o.empty_ns = e;
    }
    for j in &r.join_ns {
        o.join_ns.push(JoinNs {
            ns: j.ns.clone(),
            file: j.ns_file.clone(),
            extra: j.extra_opt.clone(),
        });
    }
    set(&mut o.cgroup_props, r.cgroup_props.clone().map(Some));
    set(
        &mut o.cgroup_props_file,
        r.cgroup_props_file.clone().map(Some),
    );
    o.cgroup_dump_controllers
        .extend(r.cgroup_dump_controller.iter().cloned());
    set(
        &mut o.freeze_cgroup,
        r.freeze_cgroup.as_ref().map(|p| Some(PathBuf::from(p))),
    );
    set(&mut o.timeout, r.timeout);
    set(&mut o.tcp_skip_in_flight, r.tcp_skip_in_flight);
    set(&mut o.weak_sysctls, r.weak_sysctls);
    set(&mut o.lazy_pages, r.lazy_pages);
    if let Some(n) = r.status_fd {
        // ours for as long as crest runs
        let f = peer.open_fd(n, true)?;
        o.status_fd = Some(OwnedFd::from(f).into_raw_fd());
    }
    set(&mut o.orphan_pts_master, r.orphan_pts_master);
    set(&mut o.tcp_close, r.tcp_close);
    set(&mut o.lsm_profile, r.lsm_profile.clone().map(Some));
    o.tls |= r.tls.unwrap_or(false)
        || r.tls_cacert.is_some()
        || r.tls_cert.is_some()
        || r.tls_key.is_some();
    set(&mut o.cgroup_yard, r.cgroup_yard.clone().map(Some));
    if let Some(m) = r.pre_dump_mode {
        o.pre_dump_mode = Some(if m == 2 { "read" } else { "splice" }.to_string());
    }
    if r.pidfd_store_sk.is_some() {
        return Err(RpcError::Refused {
            field: "pidfd_store_sk",
            why: "no pidfd store in crest".into(),
        });
    }
    set(
        &mut o.lsm_mount_context,
        r.lsm_mount_context.clone().map(Some),
    );
    if let Some(n) = r.network_lock {
        o.network_lock = Some(match n {
            2 => NetworkLock::Nftables,
            3 => NetworkLock::Skip,
            _ => NetworkLock::Iptables,
        });
    }
    set(&mut o.mntns_compat_mode, r.mntns_compat_mode);
    set(&mut o.skip_file_rwx_check, r.skip_file_rwx_check);
    set(&mut o.unprivileged, r.unprivileged);
    set(&mut o.leave_stopped, r.leave_stopped);
    set(&mut o.display_stats, r.display_stats);
    set(&mut o.log_to_stderr, r.log_to_stderr);
    set(&mut o.allow_uprobes, r.allow_uprobes);
    set(&mut o.ghost_fiemap, r.ghost_fiemap.map(Some));
    if r.file_validation_method.is_some() {
        o.file_validation = Some("rpc".into());
    }
    Ok(())
}

/// Where the notifications of request `req` go: to the caller when it
/// asked for them (`notify_scripts`), else nowhere.
struct Notifier<'a> {
    rpc: Option<RpcNotify<'a>>,
}

impl<'a> Notifier<'a> {
    fn of(peer: &'a Peer, req: &CriuReq) -> Notifier<'a> {
        let on = req
            .opts
            .as_ref()
            .and_then(|r| r.notify_scripts)
            .unwrap_or(false);
        Notifier {
            rpc: on.then_some(RpcNotify { peer }),
        }
    }
}

impl Notify for Notifier<'_> {
    fn notify(
        &mut self,
        hook: &str,
        pid: Option<i32>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), NotifyError> {
        match &mut self.rpc {
            Some(r) => r.notify(hook, pid, fd),
            None => Silent.notify(hook, pid, fd),
        }
    }
}

fn dump(peer: &Peer, req: &CriuReq) -> Result<CriuResp, RpcError> {
    let o = options(peer, req, true)?;
    crate::init_log(&o);
    crest_core::debug!("dump over RPC for pid {}: {o:?}", peer.pid);
    let mut n = Notifier::of(peer, req);
    // a runtime's SIGTERM: the tree released (see main's dump)
    let _stop = crest_sys::fault::catch_termination().map_err(RpcError::io("catch SIGTERM"))?;
    let s = crest_core::dump::dump_notified(&o, &mut n)?;
    crest_core::info!("dump of {:?} done over RPC", s.pids);
    crate::after_action(&o, Some(s.stats.render()));
    Ok(CriuResp {
        dump: Some(CriuDumpResp {
            restored: Some(false),
        }),
        ..answer(CriuReqType::Dump, true)
    })
}

/// A PRE_DUMP or SINGLE_PRE_DUMP: the tree runs on.
fn pre_dump(peer: &Peer, req: &CriuReq, t: CriuReqType) -> Result<CriuResp, RpcError> {
    let o = options(peer, req, true)?;
    crate::init_log(&o);
    crest_core::debug!("pre-dump over RPC for pid {}: {o:?}", peer.pid);
    let _stop = crest_sys::fault::catch_termination().map_err(RpcError::io("catch SIGTERM"))?;
    let s = crest_core::dump::pre_dump(&o)?;
    crest_core::info!("pre-dump of {:?} done over RPC", s.pids);
    crate::after_action(&o, Some(s.stats.render()));
    Ok(answer(t, true))
}

fn restore(peer: &Peer, req: &CriuReq) -> Result<CriuResp, RpcError> {
    let mut o = options(peer, req, false)?;
    // over RPC the caller waits for the tree, not crest
    o.detached = true;
    crate::init_log(&o);
    crest_core::debug!("restore over RPC for pid {}: {o:?}", peer.pid);
    let mut n = Notifier::of(peer, req);
    let _stop = crest_sys::fault::catch_termination().map_err(RpcError::io("catch SIGTERM"))?;
    let r = crest_core::restore::restore_notified(&o, &mut n)?;
    crate::after_action(&o, Some(r.stats.render()));
    Ok(CriuResp {
        restore: Some(CriuRestoreResp { pid: r.root_pid }),
        ..answer(CriuReqType::Restore, true)
    })
}
