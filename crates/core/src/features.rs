//! What this kernel offers crest, probed on demand (CRIU's kerndat):
//! `crest check` prints it, and the RPC's FEATURE_CHECK answers from it.

use crest_sys::{misc, ns, proc as sproc, ptrace};
use std::fs::File;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub required: bool,
    pub ok: bool,
    pub detail: String,
}

/// Why a probed feature is not there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Lacking(pub String);

impl From<String> for Lacking {
    fn from(s: String) -> Lacking {
        Lacking(s)
    }
}

/// What a probe found: the feature works (and how it showed), or why not.
type Probed = Result<String, Lacking>;

/// Every feature crest relies on, probed now.
pub fn probe() -> Vec<Feature> {
    vec![
        f(
            "ptrace seize/interrupt + syscall injection",
            true,
            probe_inject(),
        ),
        f("clone3 with set_tid", true, probe_clone3()),
        f("pidfd_open + pidfd_getfd", true, probe_pidfd()),
        f("PTRACE_GET_RSEQ_CONFIGURATION", true, probe_rseq()),
        f("process_vm_readv", true, probe_vm_readv()),
        f("nsfs NS_GET_PARENT", false, probe_ns_parent()),
        f(
            "nsfs NS_GET_USERNS / NS_GET_OWNER_UID",
            false,
            probe_ns_userns(),
        ),
        f(
            "PAGEMAP_SCAN",
            false,
            ok_if(misc::pagemap_scan_supported(), "ioctl"),
        ),
        f(
            "userfaultfd WP_ASYNC (memory tracking)",
            false,
            ok_if(misc::uffd_wp_async_supported(), "UFFDIO_API"),
        ),
        f("PR_SET_MM_MAP", true, probe_mm_map()),
        f(
            "CAP_SYS_RESOURCE in the bounding set",
            false,
            probe_sys_resource(),
        ),
        f("user namespaces", false, exists("/proc/self/ns/user")),
        f("time namespaces", false, exists("/proc/self/ns/time")),
    ]
}

/// Whether crest can track memory between dumps here (pre-dump,
/// `--track-mem`): asynchronous userfaultfd write protection and
/// `PAGEMAP_SCAN`.
pub fn memory_tracking() -> bool {
    misc::pagemap_scan_supported() && misc::uffd_wp_async_supported()
}

/// Whether crest can restore lazily here (`--lazy-pages`): a userfaultfd
/// for kernel faults too, with the fork, remap, remove and unmap events
/// (the fork event needs CAP_SYS_PTRACE).
pub fn lazy_pages() -> bool {
    crest_sys::uffd::lazy_supported()
}

fn f(name: &'static str, required: bool, r: Probed) -> Feature {
    let (ok, detail) = match r {
        Ok(d) => (true, d),
        Err(d) => (false, d.0),
    };
    Feature {
        name,
        required,
        ok,
        detail,
    }
}

fn ok_if(ok: bool, what: &str) -> Probed {
    if ok {
        Ok(format!("{what} works"))
    } else {
        Err(format!("{what} failed").into())
    }
}

fn exists(path: &str) -> Probed {
    ok_if(std::path::Path::new(path).exists(), path)
}

/// A stopped child of ours, killed on drop.
struct Child(i32);

impl Child {
    fn spawn() -> Result<Child, Lacking> {
        let pid = sproc::spawn_stopped(&[], sproc::SessionSetup::Inherit)
            .map_err(|e| format!("clone3: {e}"))?;
        let c = Child(pid);
        match ptrace::wait(pid) {
            Ok(ptrace::WaitStatus::Stopped { .. }) => Ok(c),
            other => Err(format!("child did not stop: {other:?}").into()),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = misc::kill(self.0, libc::SIGKILL);
        let _ = ptrace::wait(self.0);
    }
}

fn probe_inject() -> Probed {
    let pid = sproc::spawn_stopped(&[], sproc::SessionSetup::Inherit)
        .map_err(|e| format!("clone3: {e}"))?;
    // The tracee kills the child when dropped.
    let mut t = crest_inject::Tracee::from_stopped_child(pid).map_err(|e| e.to_string())?;
    t.use_vdso_syscall().map_err(|e| e.to_string())?;
    let got = t
        .syscall(crest_inject::nr::GETPID, &[])
        .map_err(|e| e.to_string())?;
    if got == pid as u64 {
        Ok(format!("injected getpid() returned {got}"))
    } else {
        Err(format!("injected getpid() returned {got}, expected {pid}").into())
    }
}

fn probe_clone3() -> Probed {
    // Pick a pid that is free now and ask for it.
    let last = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(1000);
    let max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(32768);
    let mut want = last + 100;
    while want < max && std::path::Path::new(&format!("/proc/{want}")).exists() {
        want += 1;
    }
    if want >= max {
        want = 300;
    }
    let pid = sproc::spawn_stopped(&[want], sproc::SessionSetup::Inherit)
        .map_err(|e| format!("clone3(set_tid={want}): {e}"))?;
    let c = Child(pid);
    if c.0 == want {
        Ok(format!("got the asked pid {want}"))
    } else {
        Err(format!("asked for pid {want}, got {}", c.0).into())
    }
}

fn probe_pidfd() -> Probed {
    let me = std::process::id() as i32;
    let pidfd = misc::pidfd_open(me).map_err(|e| format!("pidfd_open: {e}"))?;
    rustix::process::pidfd_getfd(&pidfd, 0, rustix::process::PidfdGetfdFlags::empty())
        .or_else(|_| {
            rustix::process::pidfd_getfd(
                &pidfd,
                pidfd_raw(&pidfd),
                rustix::process::PidfdGetfdFlags::empty(),
            )
        })
        .map_err(|e| format!("pidfd_getfd: {e}"))?;
    Ok("pidfd_getfd copied an fd".into())
}

fn pidfd_raw(fd: &std::os::fd::OwnedFd) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

fn probe_rseq() -> Probed {
    let c = Child::spawn()?;
    ptrace::get_rseq_config(c.0)
        .map(|r| format!("rseq size {} signature {:#x}", r.rseq_abi_size, r.signature))
        .map_err(|e| Lacking(e.to_string()))
}

fn probe_vm_readv() -> Probed {
    let c = Child::spawn()?;
    let regs = ptrace::get_regs(c.0).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 8];
    crest_sys::mem::read_remote(c.0, &[(regs.rsp, 8)], &mut buf)
        .map(|_| "read a traced child's stack".to_string())
        .map_err(|e| Lacking(e.to_string()))
}

fn probe_ns_parent() -> Probed {
    let f = File::open("/proc/self/ns/user").map_err(|e| e.to_string())?;
    match ns::get_parent(&f) {
        Ok(_) => Ok("answers (crest is in a nested user namespace)".into()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            Ok("answers (EPERM at the top namespace, as expected)".into())
        }
        Err(e) => Err(format!("NS_GET_PARENT: {e}").into()),
    }
}

fn probe_ns_userns() -> Probed {
    let f = File::open("/proc/self/ns/uts").map_err(|e| e.to_string())?;
    let u = ns::get_userns(&f).map_err(|e| format!("NS_GET_USERNS: {e}"))?;
    let uid = ns::get_owner_uid(&u).map_err(|e| format!("NS_GET_OWNER_UID: {e}"))?;
    Ok(format!("owner uid {uid}"))
}

fn probe_mm_map() -> Probed {
    Ok("used for mm fields (the single PR_SET_MM_* calls are not needed)".into())
}

fn probe_sys_resource() -> Probed {
    let s = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let bnd = s
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if bnd & (1u64 << 24) != 0 {
        Ok("present".into())
    } else {
        Err(Lacking("absent: crest uses only PR_SET_MM_MAP".into()))
    }
}
