//! Registers: the general registers (`NT_PRSTATUS`) in CRIU's
//! `user_x86_regs_entry`, the legacy FPU area in `user_x86_fpregs_entry`,
//! and the whole xsave area (`NT_X86_XSTATE`) in crest's field of the core
//! (`core_entry.crest_thread`), since CRIU's message splits it by component.
//!
//! Restore sets them last, fixing up a syscall that the dump interrupted so
//! that it restarts the way the kernel would have restarted it.

use crest_images::pb::{UserX86FpregsEntry, UserX86RegsEntry, UserX86XsaveEntry};
use crest_sys::ptrace::UserRegs;

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;

pub fn to_image(r: &UserRegs) -> UserX86RegsEntry {
    UserX86RegsEntry {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        bp: r.rbp,
        bx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        ax: r.rax,
        cx: r.rcx,
        dx: r.rdx,
        si: r.rsi,
        di: r.rdi,
        orig_ax: r.orig_rax,
        ip: r.rip,
        cs: r.cs,
        flags: r.eflags,
        sp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
        mode: Some(1),
    }
}

pub fn from_image(e: &UserX86RegsEntry) -> UserRegs {
    UserRegs {
        r15: e.r15,
        r14: e.r14,
        r13: e.r13,
        r12: e.r12,
        rbp: e.bp,
        rbx: e.bx,
        r11: e.r11,
        r10: e.r10,
        r9: e.r9,
        r8: e.r8,
        rax: e.ax,
        rcx: e.cx,
        rdx: e.dx,
        rsi: e.si,
        rdi: e.di,
        orig_rax: e.orig_ax,
        rip: e.ip,
        cs: e.cs,
        eflags: e.flags,
        rsp: e.sp,
        ss: e.ss,
        fs_base: e.fs_base,
        gs_base: e.gs_base,
        ds: e.ds,
        es: e.es,
        fs: e.fs,
        gs: e.gs,
    }
}

/// The registers a restored thread resumes with. A thread stopped inside a
/// syscall shows `orig_rax` = the syscall and `rax` = -ERESTART*. Those
/// are kept as they are: crest lets the thread go with `PTRACE_DETACH`,
/// which makes it pass the kernel's signal code on its way out, and that
/// code restarts the syscall, or, if a signal with a handler came
/// meanwhile, returns EINTR as it would have without the dump (restarting
/// it by hand from user space would lose the wakeup of a signal sent right
/// after the restore to a task in `pause()`). A syscall that would restart
/// through `restart_syscall` is restarted by hand from its original
/// arguments instead, since the restart block does not survive.
pub fn resume_regs(dumped: &UserRegs) -> UserRegs {
    let mut r = *dumped;
    if (dumped.orig_rax as i64) >= 0 {
        let ret = dumped.rax as i64;
        if -ret == ERESTART_RESTARTBLOCK {
            r.rax = dumped.orig_rax;
            r.rip = dumped.rip.wrapping_sub(2);
            r.orig_rax = u64::MAX;
        } else if !matches!(-ret, ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND) {
            r.orig_rax = u64::MAX;
        }
    } else {
        r.orig_rax = u64::MAX;
    }
    r
}

fn le_u16(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 2)
        .map_or(0, |s| u32::from(u16::from_le_bytes([s[0], s[1]])))
}

fn le_u32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le_u64(b: &[u8], off: usize) -> u64 {
    u64::from(le_u32(b, off)) | (u64::from(le_u32(b, off + 4)) << 32)
}

fn u32s(b: &[u8], off: usize, n: usize) -> Vec<u32> {
    (0..n).map(|i| le_u32(b, off + 4 * i)).collect()
}

/// Offset of the AVX (YMM_Hi128) component in the standard xsave format.
const YMMH_OFFSET: usize = 576;

/// CRIU's view of the FPU state, taken from an xsave area: the legacy
/// FXSAVE region, `xstate_bv` and the upper halves of the YMM registers.
pub fn fpregs_from_xsave(x: &[u8]) -> UserX86FpregsEntry {
    let xstate_bv = le_u64(x, 512);
    let xsave = (x.len() > 512).then(|| UserX86XsaveEntry {
        xstate_bv,
        ymmh_space: if x.len() >= YMMH_OFFSET + 256 {
            u32s(x, YMMH_OFFSET, 64)
        } else {
            Vec::new()
        },
        ..UserX86XsaveEntry::default()
    });
    UserX86FpregsEntry {
        cwd: le_u16(x, 0),
        swd: le_u16(x, 2),
        twd: le_u16(x, 4),
        fop: le_u16(x, 6),
        rip: le_u64(x, 8),
        rdp: le_u64(x, 16),
        mxcsr: le_u32(x, 24),
        mxcsr_mask: le_u32(x, 28),
        st_space: u32s(x, 32, 32),
        xmm_space: u32s(x, 160, 64),
        padding: u32s(x, 416, 24),
        xsave,
    }
}

/// Builds an xsave area of `size` bytes from CRIU's fields, for images
/// that lack crest's raw copy.
pub fn xsave_from_fpregs(f: &UserX86FpregsEntry, size: usize) -> Vec<u8> {
    let mut x = vec![0u8; size.max(576)];
    let put16 = |x: &mut Vec<u8>, off: usize, v: u32| {
        x[off..off + 2].copy_from_slice(&(v as u16).to_le_bytes())
    };
    put16(&mut x, 0, f.cwd);
    put16(&mut x, 2, f.swd);
    put16(&mut x, 4, f.twd);
    put16(&mut x, 6, f.fop);
    x[8..16].copy_from_slice(&f.rip.to_le_bytes());
    x[16..24].copy_from_slice(&f.rdp.to_le_bytes());
    x[24..28].copy_from_slice(&f.mxcsr.to_le_bytes());
    x[28..32].copy_from_slice(&f.mxcsr_mask.to_le_bytes());
    for (i, w) in f.st_space.iter().take(32).enumerate() {
        x[32 + 4 * i..36 + 4 * i].copy_from_slice(&w.to_le_bytes());
    }
    for (i, w) in f.xmm_space.iter().take(64).enumerate() {
        x[160 + 4 * i..164 + 4 * i].copy_from_slice(&w.to_le_bytes());
    }
    for (i, w) in f.padding.iter().take(24).enumerate() {
        x[416 + 4 * i..420 + 4 * i].copy_from_slice(&w.to_le_bytes());
    }
    let mut bv = 0b11u64;
    if let Some(xs) = &f.xsave {
        bv = xs.xstate_bv & 0b111;
        if x.len() >= YMMH_OFFSET + 256 {
            for (i, w) in xs.ymmh_space.iter().take(64).enumerate() {
                let off = YMMH_OFFSET + 4 * i;
                x[off..off + 4].copy_from_slice(&w.to_le_bytes());
            }
        }
    }
    x[512..520].copy_from_slice(&bv.to_le_bytes());
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_fixups() {
        let base = UserRegs {
            rip: 0x1002,
            orig_rax: 35,
            ..UserRegs::default()
        };
        // the kernel restarts these itself on the way out
        for e in [512i64, 513, 514] {
            let r = resume_regs(&UserRegs {
                rax: (-e) as u64,
                ..base
            });
            assert_eq!((r.rax, r.rip, r.orig_rax), ((-e) as u64, 0x1002, 35));
        }
        // restart_syscall's block does not survive: by hand
        let r = resume_regs(&UserRegs {
            rax: (-516i64) as u64,
            ..base
        });
        assert_eq!((r.rax, r.rip, r.orig_rax), (35, 0x1000, u64::MAX));
        // A syscall that returned normally, and a thread not in a syscall.
        let r = resume_regs(&UserRegs { rax: 7, ..base });
        assert_eq!((r.rax, r.rip), (7, 0x1002));
        let r = resume_regs(&UserRegs {
            rax: (-512i64) as u64,
            orig_rax: u64::MAX,
            ..base
        });
        assert_eq!(r.rip, 0x1002);
    }

    #[test]
    fn xsave_round_trip_through_criu_fields() {
        let mut x = vec![0u8; 2432];
        for (i, b) in x.iter_mut().enumerate().take(832) {
            *b = (i * 7 + 3) as u8;
        }
        // Only x87, SSE and AVX are carried by CRIU's fields here.
        x[512..520].copy_from_slice(&0b111u64.to_le_bytes());
        x[520..576].fill(0);
        x[464..512].fill(0);
        let back = xsave_from_fpregs(&fpregs_from_xsave(&x), x.len());
        assert_eq!(&back[..464], &x[..464]);
        assert_eq!(&back[512..832], &x[512..832]);
    }
}
