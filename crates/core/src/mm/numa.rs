//! The NUMA memory policy of address ranges (`mbind(2)`). At dump the
//! VMAs that `/proc/PID/numa_maps` shows with a policy other than "default"
//! are asked with an injected `get_mempolicy(MPOL_F_ADDR)` (numa_maps shows
//! the task's policy for a VMA without one of its own, get_mempolicy tells
//! them apart). The policy is kept as `vma_entry.crest_mempolicy` (the
//! mode with its flags as `mbind` takes them, and the node mask) and set
//! again with an injected `mbind` once the VMA is mapped and filled. A
//! thread's own policy is the thread's (`coreimg`).

use crate::error::RoomError;
use crate::error::{RestoreCtx, RestoreError};
use crate::mm::error::{BadLine, MmError};
use crest_images::pb::crest::CrestMempolicy;
use crest_images::pb::MmEntry;
use crest_inject::Tracee;

/// `mbind`'s number on x86-64.
const MBIND: u64 = 237;
/// Most node mask words kept (4096 nodes).
const MAX_WORDS: usize = 64;

/// The VMAs (by start) whose line in `numa_maps` names a policy other than
/// "default": those with a policy of their own, and every VMA when the
/// task has one (the kernel shows the task's for a VMA without its own).
pub fn maybe_own(text: &str) -> Result<Vec<u64>, BadLine> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((addr, rest)) = line.split_once(' ') else {
            continue;
        };
        let start = u64::from_str_radix(addr, 16).map_err(|_| BadLine(line.to_string()))?;
        if rest.split(' ').next() != Some("default") {
            out.push(start);
        }
    }
    Ok(out)
}

/// The policy `get_mempolicy(MPOL_F_ADDR)` gave for a VMA, if it has one
/// of its own (mode 0 is none), its node mask without trailing empty words.
pub fn own(mode: u32, mut nodes: Vec<u64>) -> Option<CrestMempolicy> {
    while nodes.last() == Some(&0) {
        nodes.pop();
    }
    (mode != 0).then_some(CrestMempolicy { mode, nodes })
}

/// Sets every VMA's own policy again, in the task.
pub fn restore(t: &mut Tracee, mm: &MmEntry) -> Result<(), RestoreError> {
    let pid = t.pid();
    for v in &mm.vmas {
        let Some(p) = &v.crest_mempolicy else {
            continue;
        };
        if p.nodes.len() > MAX_WORDS {
            return Err(MmError::BadImage {
                file: crest_images::names::mm(pid as u32),
                what: format!("a memory policy of {} node mask words", p.nodes.len()),
            }
            .in_restore(pid));
        }
        let raw: Vec<u8> = p.nodes.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mask = if raw.is_empty() {
            0
        } else {
            t.put(&raw).rat(pid, "write a node mask")?
        };
        let maxnode = (p.nodes.len() * 64) as u64;
        t.syscall(
            MBIND,
            &[
                v.start,
                v.end - v.start,
                u64::from(p.mode),
                mask,
                maxnode,
                0,
            ],
        )
        .rat(
            pid,
            format!("mbind {:#x}-{:#x} (mode {:#x})", v.start, v.end, p.mode),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numa_maps_lines() {
        let text = "559bcaf0e000 default file=/usr/bin/head mapped=2 N0=2 kernelpagesize_kB=4\n\
                    7f0000000000 bind:0 anon=3 dirty=3 N0=3 kernelpagesize_kB=4\n\
                    7f0000010000 weighted interleave:0 anon=1 N0=1\n\
                    7f0000020000 default\n";
        assert_eq!(
            maybe_own(text).unwrap(),
            vec![0x7f00_0000_0000, 0x7f00_0001_0000]
        );
        assert!(maybe_own("zz default\n").is_err());
    }

    #[test]
    fn own_policies() {
        assert_eq!(own(0, vec![1]), None);
        assert_eq!(
            own(2, vec![1, 0, 0]),
            Some(CrestMempolicy {
                mode: 2,
                nodes: vec![1]
            })
        );
    }
}
