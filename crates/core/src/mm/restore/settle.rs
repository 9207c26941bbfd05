//! What comes after the pages: AIO rings at their address, protections,
//! vdso and vvar where they were, the mm fields.

use super::*;
use crate::error::RoomError;
use crate::mm::error::MmError;

/// The calls that give the mappings of `mm` their protections, advice,
/// locks and guards, and register its membarriers.
fn settle_calls(mm: &MmEntry, pagemap: &[PagemapEntry]) -> crate::remote::Calls {
    let mut calls = crate::remote::Calls::default();
    for v in mm.vmas.iter().filter(|v| !is_special(v)) {
        let widened = v.prot & libc::PROT_WRITE as u32 == 0 && has_pages(v, pagemap);
        // (a shared file mapping was mapped with its protection; an
        // io_uring's rings were widened to be filled)
        let filled = v.status & status::FILE_SHARED == 0 || v.crest_map_fd.is_some();
        let (at, len) = (v.start, v.end - v.start);
        if filled && widened {
            calls.push(
                nr::MPROTECT,
                &[at, len, u64::from(v.prot)],
                format!("mprotect {:#x}-{:#x}", v.start, v.end),
            );
        }
        let madv = v.madv.unwrap_or(0);
        for adv in 0..u64::from(crate::mm::MADV_BIT_LOCKONFAULT) {
            if madv & (1 << adv) != 0 {
                calls.push(
                    nr::MADVISE,
                    &[at, len, adv],
                    format!("madvise({adv}) {:#x}-{:#x}", v.start, v.end),
                );
            }
        }
        if v.flags & libc::MAP_LOCKED as u32 != 0 {
            let on_fault = madv & (1 << crate::mm::MADV_BIT_LOCKONFAULT) != 0;
            calls.push(
                nr::MLOCK2,
                &[at, len, u64::from(on_fault)],
                format!("mlock2 {:#x}-{:#x}", v.start, v.end),
            );
        }
    }
    for g in mm.crest_guards.chunks_exact(2) {
        calls.push(
            nr::MADVISE,
            &[g[0], g[1], MADV_GUARD_INSTALL],
            format!("madvise(MADV_GUARD_INSTALL) {:#x}+{:#x}", g[0], g[1]),
        );
    }
    if let Some(mask) = mm.crest_membarrier {
        for cmd in crate::mm::MEMBARRIER_REGISTER
            .iter()
            .filter(|c| mask & **c != 0)
        {
            calls.push(
                nr::MEMBARRIER,
                &[u64::from(*cmd), 0, 0],
                format!("membarrier register {cmd:#x}"),
            );
        }
    }
    calls
}

/// Makes each AIO context again: `io_setup` with the size that gives a
/// ring of the dumped length, the ring moved to the dumped address (the
/// context's id) with `mremap`, which the kernel follows.
pub fn restore_aios(t: &mut Tracee, mm: &MmEntry, image: &str) -> Result<(), RestoreError> {
    let pid = t.pid();
    for a in &mm.aios {
        let len = u64::from(a.ring_len);
        let bad = |what: String| {
            MmError::BadImage {
                file: image.to_string(),
                what,
            }
            .in_restore(pid)
        };
        if a.id % PAGE != 0 || a.id == 0 || len == 0 || len % PAGE != 0 || a.nr_req == 0 {
            return Err(bad(format!(
                "an AIO ring at {:#x} of {len} bytes for {} requests",
                a.id, a.nr_req
            )));
        }
        let slot = t.scratch(8).rat(pid, "scratch")?;
        t.write_mem(slot, &0u64.to_ne_bytes())
            .rat(pid, "write an AIO context id")?;
        t.syscall(nr::IO_SETUP, &[u64::from(a.nr_req), slot]).rat(
            pid,
            format!("io_setup({}) for the AIO ring at {:#x}", a.nr_req, a.id),
        )?;
        let mut raw = [0u8; 8];
        t.read_mem(slot, &mut raw)
            .rat(pid, "read an AIO context id")?;
        let ctx = u64::from_ne_bytes(raw);
        if ctx != a.id {
            let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
            let at = t
                .syscall(nr::MREMAP, &[ctx, len, len, flags, a.id])
                .rat(pid, format!("move the AIO ring {ctx:#x} to {:#x}", a.id))?;
            if at != a.id {
                return Err(bad(format!(
                    "the AIO ring made again went to {at:#x}, not {:#x}",
                    a.id
                )));
            }
        }
    }
    Ok(())
}

/// Sets the final protection of the VMAs that were made writable to be
/// filled, and the madvise advice of every VMA.
pub fn protect(t: &mut Tracee, mm: &MmEntry, pagemap: &[PagemapEntry]) -> Result<(), RestoreError> {
    let pid = t.pid();
    // (protections, advice, locks, guards and membarrier registrations in
    // one batch)
    settle_calls(mm, pagemap).run(t)?;
    for v in mm.vmas.iter().filter(|v| !is_special(v)) {
        if let Some(name) = v.crest_anon_name.as_deref() {
            const PR_SET_VMA: u64 = 0x5356_4d41;
            let mut raw = name.as_bytes().to_vec();
            raw.push(0);
            let p = t.put(&raw).rat(pid, "write a mapping's name")?;
            t.prctl(
                &[PR_SET_VMA, 0, v.start, v.end - v.start, p],
                &format!("name the mapping {:#x}-{:#x} {name:?}", v.start, v.end),
            )?;
        }
    }
    if let Some(filter) = mm.crest_coredump_filter {
        let path = format!("/proc/{pid}/coredump_filter");
        std::fs::write(&path, format!("{filter:#x}")).rat(pid, format!("write {path}"))?;
    }
    if mm.thp_disabled == Some(true) {
        t.prctl(
            &[crate::mm::PR_SET_THP_DISABLE, 1, 0, 0, 0],
            "prctl(PR_SET_THP_DISABLE)",
        )?;
    }
    if let Some(mcl) = mm.crest_mlockall.filter(|m| *m != 0) {
        t.syscall(nr::MLOCKALL, &[u64::from(mcl)])
            .rat(pid, format!("mlockall({mcl:#x})"))?;
    }
    Ok(())
}

/// Maps vvar and vdso where the dumped task had them (injection goes on
/// through the work area's gadget, which the task's own `syscall`
/// instructions, or their absence, do not matter to).
pub fn place_vdso(t: &mut Tracee, mm: &MmEntry) -> Result<(), RestoreError> {
    let pid = t.pid();
    let special: Vec<&VmaEntry> = mm
        .vmas
        .iter()
        .filter(|v| v.status & (status::VDSO | status::VVAR) != 0)
        .collect();
    let Some(start) = special.iter().map(|v| v.start).min() else {
        return Ok(());
    };
    t.syscall(nr::ARCH_PRCTL, &[ARCH_MAP_VDSO_64, start])
        .rat(pid, format!("arch_prctl(ARCH_MAP_VDSO_64, {start:#x})"))?;
    let now = crate::procfs::read_maps(pid).map_err(|source| RestoreError::Proc {
        pid,
        step: "read maps after placing the vdso",
        source,
    })?;
    for v in &special {
        if !now.iter().any(|m| m.start == v.start && m.end == v.end) {
            return Err(MmError::Unsupported {
                what: format!(
                    "a vdso/vvar layout different from this kernel's ({:#x}-{:#x} not placed)",
                    v.start, v.end
                ),
            }
            .in_restore(pid));
        }
    }
    Ok(())
}

/// `prctl(PR_SET_MM, PR_SET_MM_MAP)` with the dumped mm fields, auxv and
/// executable.
pub fn set_mm_fields(t: &mut Tracee, mm: &MmEntry, exe: &str) -> Result<(), RestoreError> {
    let pid = t.pid();
    // The task inherited crest's executable; when the dumped one is the
    // same file it stays (the kernel refuses to replace an exe that is
    // still mapped), otherwise it is replaced through exe_fd.
    let current = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let same = current.is_some_and(|c| c.as_os_str() == std::ffi::OsStr::new(exe));
    let exe_fd = if same {
        u64::from(u32::MAX)
    } else {
        t.open(exe, libc::O_RDONLY)?
    };
    let auxv: Vec<u8> = mm
        .mm_saved_auxv
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let mut raw = Vec::with_capacity(PRCTL_MM_MAP_SIZE + auxv.len());
    for w in [
        mm.mm_start_code,
        mm.mm_end_code,
        mm.mm_start_data,
        mm.mm_end_data,
        mm.mm_start_brk,
        mm.mm_brk,
        mm.mm_start_stack,
        mm.mm_arg_start,
        mm.mm_arg_end,
        mm.mm_env_start,
        mm.mm_env_end,
    ] {
        raw.extend_from_slice(&w.to_le_bytes());
    }
    let base = t
        .scratch(PRCTL_MM_MAP_SIZE + auxv.len())
        .rat(pid, "scratch")?;
    let auxv_addr = base + PRCTL_MM_MAP_SIZE as u64;
    raw.extend_from_slice(&auxv_addr.to_le_bytes());
    raw.extend_from_slice(&(auxv.len() as u32).to_le_bytes());
    raw.extend_from_slice(&(exe_fd as u32).to_le_bytes());
    raw.extend_from_slice(&auxv);
    t.write_mem(base, &raw).rat(pid, "write prctl_mm_map")?;
    let r = t.syscall(
        nr::PRCTL,
        &[PR_SET_MM, PR_SET_MM_MAP, base, PRCTL_MM_MAP_SIZE as u64, 0],
    );
    if !same {
        t.close(exe_fd)?;
    }
    r.rat(pid, "prctl(PR_SET_MM, PR_SET_MM_MAP)")?;
    Ok(())
}
