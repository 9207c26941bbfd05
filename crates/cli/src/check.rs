//! `criu check`: the kernel features crest relies on, and CRIU's named
//! features (`--feature NAME`, exit status 0 when present). A CRIU feature
//! is reported present only when this kernel has it *and* crest carries
//! what it is for: a caller that asks before using something must not be
//! told yes for state crest would refuse or lose.

use crest_core::Options;
use std::path::Path;

/// How crest answers one of CRIU's feature names.
enum Answer {
    /// crest uses it; present when the path exists (None: always).
    Carried(Option<&'static str>),
    /// crest uses it where the probe says the kernel has it (else the
    /// reason).
    Probed(fn() -> bool, &'static str),
    /// The kernel may have it, crest does not carry what it is for yet.
    NotCarried(&'static str),
}

use Answer::{Carried, NotCarried, Probed};

/// CRIU's feature names (criu/cr-check.c), with crest's answer.
const FEATURES: &[(&str, Answer)] = &[
    ("mnt_id", Carried(None)),
    (
        "mem_dirty_track",
        Probed(
            crest_core::features::memory_tracking,
            "no asynchronous userfaultfd write protection or PAGEMAP_SCAN",
        ),
    ),
    ("aio_remap", NotCarried("AIO rings are not dumped")),
    ("timerfd", Carried(None)),
    ("tun", NotCarried("tun devices are refused")),
    ("tun_ns", NotCarried("tun devices are refused")),
    ("userns", Carried(Some("/proc/self/ns/user"))),
    ("fdinfo_lock", Carried(None)),
    ("seccomp_suspend", Carried(None)),
    ("seccomp_filters", Carried(None)),
    (
        "loginuid",
        NotCarried("the audit login uid is not restored"),
    ),
    ("cgroupns", Carried(Some("/proc/self/ns/cgroup"))),
    ("autofs", NotCarried("autofs mounts are refused")),
    (
        "tcp_half_closed",
        NotCarried("closing TCP states are refused"),
    ),
    ("compat_cr", NotCarried("32-bit tasks are not supported")),
    (
        "uffd",
        Probed(
            crest_core::features::lazy_pages,
            "no userfaultfd with the fork event (lazy pages need CAP_SYS_PTRACE)",
        ),
    ),
    (
        "uffd-noncoop",
        Probed(
            crest_core::features::lazy_pages,
            "no userfaultfd with the fork, remap, remove and unmap events",
        ),
    ),
    ("can_map_vdso", Carried(None)),
    ("sk_ns", Carried(None)),
    ("net_diag_raw", NotCarried("raw sockets are refused")),
    ("nsid", NotCarried("netns ids are not dumped")),
    ("link_nsid", NotCarried("netns ids are not dumped")),
    ("kcmp_epoll", Carried(None)),
    ("timens", Carried(Some("/proc/self/ns/time"))),
    // (CRIU's check is of the version: it takes --external net[INO]:KEY)
    ("external_net_ns", Carried(None)),
    ("clone3_set_tid", Carried(None)),
    ("newifindex", NotCarried("interface indexes are not kept")),
    ("nftables", NotCarried("netfilter tables are refused")),
    ("has_ipt_legacy", NotCarried("netfilter tables are refused")),
    (
        "network_lock_nftables",
        NotCarried("crest does not lock the network"),
    ),
    ("pidfd_store", NotCarried("no pidfd store")),
    ("ns_pid", Carried(None)),
    ("ns_get_userns", Carried(None)),
    ("ns_get_parent", Carried(None)),
    ("get_rseq_conf", Carried(None)),
    (
        "sockopt_buf_lock",
        NotCarried("socket buffer locks are not dumped"),
    ),
    (
        "memfd_hugetlb",
        NotCarried("hugetlb memfds are not carried faithfully yet"),
    ),
    ("move_mount_set_group", NotCarried("not used")),
    ("openat2", Carried(None)),
    ("ipv6_freebind", NotCarried("IPV6_FREEBIND is not dumped")),
    (
        "apparmor_stacking",
        NotCarried("LSM profiles are not dumped"),
    ),
    ("mdev", NotCarried("not used")),
];

/// Why crest answers no to a CRIU feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Lacks {
    /// The kernel lacks what crest would use (the path it looks for).
    #[error("this kernel lacks it ({0})")]
    Kernel(&'static str),
    /// crest does not carry it, and why.
    #[error("{0}")]
    Crest(&'static str),
}

/// Whether crest answers yes to a CRIU feature name (None: not a name
/// CRIU knows).
pub fn feature(name: &str) -> Option<Result<(), Lacks>> {
    let (_, a) = FEATURES.iter().find(|(n, _)| *n == name)?;
    Some(match a {
        Carried(None) => Ok(()),
        Carried(Some(p)) if Path::new(p).exists() => Ok(()),
        Carried(Some(p)) => Err(Lacks::Kernel(p)),
        Probed(has, _) if has() => Ok(()),
        Probed(_, why) => Err(Lacks::Kernel(why)),
        NotCarried(why) => Err(Lacks::Crest(why)),
    })
}

/// `check`: with `--feature`, the named features (or `list`); else every
/// feature crest relies on. Returns the exit status.
pub fn run(opts: &Options) -> i32 {
    if !opts.features.is_empty() {
        let mut status = 0;
        for name in &opts.features {
            if name == "list" {
                let names: Vec<&str> = FEATURES.iter().map(|(n, _)| *n).collect();
                println!("{}", names.join(" "));
                continue;
            }
            match feature(name) {
                Some(Ok(())) => println!("{name} is supported"),
                Some(Err(why)) => {
                    println!("{name} is not supported: {why}");
                    status = 1;
                }
                None => {
                    eprintln!("Error (crest): unknown feature {name}");
                    return 1;
                }
            }
        }
        return status;
    }
    let mut feats = crest_core::features::probe();
    // acting for a caller other than root (CRIU's `check --unprivileged`):
    // what restoring needs beyond the caller's own rights
    if let Ok(caller) = crest_core::privilege::Caller::detect(opts.unprivileged) {
        if caller.restricted {
            let ok = caller.can_restore_pids();
            feats.push(crest_core::features::Feature {
                name: "CAP_CHECKPOINT_RESTORE (unprivileged)",
                required: true,
                ok,
                detail: format!(
                    "acting for uid {}; {}",
                    caller.uid,
                    if ok {
                        "restore can give tasks their pids"
                    } else {
                        "restore cannot give tasks their pids: setcap cap_checkpoint_restore+ep"
                    }
                ),
            });
        }
    }
    let mut missing = 0;
    let mut absent = 0;
    for f in &feats {
        let state = match (f.ok, f.required) {
            (true, _) => "ok",
            (false, true) => {
                missing += 1;
                "MISSING"
            }
            (false, false) => {
                absent += 1;
                "absent"
            }
        };
        println!("{:<45} {:<8} {}", f.name, state, f.detail);
    }
    if missing > 0 {
        eprintln!("Error (crest): {missing} required feature(s) missing");
        return 1;
    }
    if (opts.check_extra || opts.check_experimental) && absent > 0 {
        println!("Looks good but some kernel features are missing\nwhich, depending on your process tree, may cause\ndump or restore failure.");
        return 0;
    }
    println!("Looks good.");
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_answers() {
        assert_eq!(feature("clone3_set_tid"), Some(Ok(())));
        assert_eq!(
            feature("mem_dirty_track").map(|r| r.is_ok()),
            Some(crest_core::features::memory_tracking())
        );
        assert_eq!(
            feature("uffd").map(|r| r.is_ok()),
            Some(crest_core::features::lazy_pages())
        );
        assert!(matches!(feature("tun"), Some(Err(_))));
        assert_eq!(feature("no_such_thing"), None);
    }
}
