//! Where a thread goes if crest dies during a call injected before the
//! thread is armed (the recovery area's own `mmap`) or after it is disarmed
//! (the area's final `munmap`): the recovery code cannot catch it there.
//!
//! Such calls run on a `syscall` instruction of the vdso that a `leave`,
//! register-clearing `xor`s and a `ret` follow (the vdso's own fallback
//! paths end that way). Before the call, crest writes two words below the
//! thread's red zone, at `S`: `S` itself and the address of that `syscall`,
//! and gives the call `rbp = S`. While crest lives the thread stops at the
//! call's exit and never runs on. If crest dies, the thread finishes the
//! call, and `leave` (`rsp = S`, `rbp = [S] = S`) and `ret` (to `[S + 8]`)
//! bring it back to the `syscall`, with a number that is no call: it loops
//! there, harmless, every signal blocked, its stack and registers pinned,
//! until the dump's guard (told of it before) seizes it, puts its seized
//! registers, mask and the two words back, and lets it go
//! ([`crate::leftover::return_parked`]).
//!
//! Without such an instruction in the vdso (another kernel's build), or
//! without room below the stack pointer, the call runs as before: the
//! window stays open, and the fault points say "unguarded".

use crate::{Result, Tracee};
use crest_sys::ptrace::UserRegs;

/// A thread parked (or about to be) in the vdso loop: all the guard needs
/// to return it to the state crest seized it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parked {
    pub tid: i32,
    /// The two words' address (the thread's `rbp` while it loops).
    pub sentinel: u64,
    /// The loop's `syscall` and its `ret`: the thread's `rip` is in
    /// `[site, ret]` while it loops.
    pub site: u64,
    pub ret: u64,
    /// What the two words held before.
    pub saved: [u8; 16],
    /// The thread's seized registers (a syscall it was in set to restart)
    /// and signal mask.
    pub regs: UserRegs,
    pub mask: u64,
}

/// How far below the stack pointer the two words go: past the red zone
/// (128 bytes) with room to spare.
const BELOW_RSP: u64 = 256;

/// The offsets of a `syscall` that `leave`, `xor`s of 32-bit registers
/// other than `esp`/`ebp` and `ret` follow, and of that `ret`, in `code`.
pub fn loop_site(code: &[u8]) -> Option<(usize, usize)> {
    let same = |modrm: u8| modrm >> 6 == 3 && (modrm >> 3) & 7 == modrm & 7;
    (0..code.len().saturating_sub(3)).find_map(|i| {
        if code[i..i + 3] != [0x0f, 0x05, 0xc9] {
            return None;
        }
        let mut j = i + 3;
        loop {
            match code.get(j..)? {
                [0xc3, ..] => return Some((i, j)),
                // xor r32, r32 (not esp, ebp: the loop needs them)
                [0x31, m, ..] if same(*m) && !matches!(m & 7, 4 | 5) => j += 2,
                // xor r8d..r15d, same register
                [0x45, 0x31, m, ..] if same(*m) => j += 3,
                _ => return None,
            }
        }
    })
}

impl Tracee {
    /// Prepares this thread's parking (see the module): the vdso's loop
    /// site and the two words' place below its stack pointer. None when
    /// there is no such site or no room.
    pub fn parking(&self) -> Option<Parked> {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).ok()?;
        let range = |l: &str| -> Option<(u64, u64)> {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        };
        let vdso = maps
            .lines()
            .find(|l| l.ends_with("[vdso]"))
            .and_then(range)?;
        let mut code = vec![0u8; (vdso.1 - vdso.0).min(1 << 16) as usize];
        self.read_mem(vdso.0, &mut code).ok()?;
        let (site, ret) = loop_site(&code)?;
        let rsp = self.orig_regs.rsp;
        let sentinel = rsp.checked_sub(BELOW_RSP)? & !15;
        // the two words in the writable mapping the stack pointer is in (a
        // thread stack's guard page is a mapping of its own)
        let room = maps.lines().any(|l| {
            range(l).is_some_and(|(a, b)| a <= sentinel && rsp <= b)
                && l.split_whitespace()
                    .nth(1)
                    .is_some_and(|p| p.starts_with("rw"))
        });
        if !room {
            return None;
        }
        let mut saved = [0u8; 16];
        self.read_mem(sentinel, &mut saved).ok()?;
        Some(Parked {
            tid: self.tid,
            sentinel,
            site: vdso.0 + site as u64,
            ret: vdso.0 + ret as u64,
            saved,
            regs: crate::recovery::resumed_regs(&self.orig_regs),
            mask: self.orig_sigmask,
        })
    }

    /// Lays the two words for `p` and makes the next calls run on its
    /// site with `rbp` on them, until [`Tracee::unpark`].
    pub(crate) fn park(&mut self, p: &Parked) -> Result<()> {
        let mut words = [0u8; 16];
        words[..8].copy_from_slice(&p.sentinel.to_le_bytes());
        words[8..].copy_from_slice(&p.site.to_le_bytes());
        self.write_mem(p.sentinel, &words)?;
        self.syscall_ip = p.site;
        self.parked = Some(*p);
        Ok(())
    }

    /// Puts the two words back (the thread is stopped; the calls that
    /// follow are guarded again, or none follows).
    pub(crate) fn unpark(&mut self) -> Result<()> {
        if let Some(p) = self.parked.take() {
            self.write_mem(p.sentinel, &p.saved)?;
        }
        Ok(())
    }
}

/// `p` as bytes, for the guard's socket.
pub fn to_bytes(p: &Parked) -> Vec<u8> {
    let mut out = Vec::with_capacity(PARKED_LEN);
    out.extend_from_slice(&p.tid.to_le_bytes());
    for w in [p.sentinel, p.site, p.ret] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(&p.saved);
    out.extend_from_slice(&p.mask.to_le_bytes());
    for w in crest_sys::ptrace::regs_words(&p.regs) {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

/// Length of [`to_bytes`]'s output.
pub const PARKED_LEN: usize = 4 + 3 * 8 + 16 + 8 + 27 * 8;

/// [`to_bytes`] read back.
pub fn from_bytes(b: &[u8]) -> Option<Parked> {
    if b.len() != PARKED_LEN {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    let mut regs = [0u64; 27];
    for (k, r) in regs.iter_mut().enumerate() {
        *r = word(4 + 3 * 8 + 16 + 8 + 8 * k);
    }
    Some(Parked {
        tid: i32::from_le_bytes(b[..4].try_into().ok()?),
        sentinel: word(4),
        site: word(12),
        ret: word(20),
        saved: b[28..44].try_into().ok()?,
        mask: word(44),
        regs: crest_sys::ptrace::regs_from_words(&regs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_leave_xor_ret_site() {
        // syscall; leave; xor edx,edx; xor r8d,r8d; ret
        let code = [0x90, 0x0f, 0x05, 0xc9, 0x31, 0xd2, 0x45, 0x31, 0xc0, 0xc3];
        assert_eq!(loop_site(&code), Some((1, 9)));
        // a syscall that a plain ret follows: no leave, no loop
        assert_eq!(loop_site(&[0x0f, 0x05, 0xc3]), None);
        // xor ebp,ebp would break the loop
        assert_eq!(loop_site(&[0x0f, 0x05, 0xc9, 0x31, 0xed, 0xc3]), None);
        // anything else between
        assert_eq!(loop_site(&[0x0f, 0x05, 0xc9, 0x5b, 0xc3]), None);
    }

    #[test]
    fn parked_round_trip() {
        let p = Parked {
            tid: 4242,
            sentinel: 0x7ffd_0000_1000,
            site: 0x7fff_0000_0947,
            ret: 0x7fff_0000_095e,
            saved: [7; 16],
            regs: UserRegs {
                rip: 0x401000,
                rsp: 0x7ffd_0000_1200,
                gs: 9,
                ..UserRegs::default()
            },
            mask: 1 << 9,
        };
        assert_eq!(from_bytes(&to_bytes(&p)), Some(p));
        assert_eq!(from_bytes(&to_bytes(&p)[1..]), None);
    }
}
