//! Batches of injected calls run in one stop: a small loop, written in the
//! gadget's page of a restored task (after `syscall; int3`), runs a table
//! of calls from the scratch area one after another and stops on an int3
//! after the last, or after the first that fails.
//!
//! Only where a call may end on a trap ([`Tracee::syscall_raw`]): else,
//! and for a batch with a call that may touch the gadget's page or make a
//! task, the calls run one by one, with the same results.

use super::*;
use crate::call::may_touch;

/// Where the loop starts in the gadget's page (the gadget is its first 3
/// bytes).
const LOOP_AT: u64 = 16;

/// The loop. `rbx` points at the table, `r12` counts the calls left; each
/// entry is 8 words: the number, 6 arguments and the result, which the
/// loop writes. It stops (int3) when `r12` is 0, or after a result in
/// -4095..-1, `r12` then counting that call too.
#[rustfmt::skip]
const LOOP: [u8; 56] = [
    0x4d, 0x85, 0xe4,                   //  0: test r12, r12
    0x74, 0x32,                         //  3: jz done (55)
    0x48, 0x8b, 0x03,                   //  5: mov rax, [rbx]
    0x48, 0x8b, 0x7b, 0x08,             //  8: mov rdi, [rbx+8]
    0x48, 0x8b, 0x73, 0x10,             // 12: mov rsi, [rbx+16]
    0x48, 0x8b, 0x53, 0x18,             // 16: mov rdx, [rbx+24]
    0x4c, 0x8b, 0x53, 0x20,             // 20: mov r10, [rbx+32]
    0x4c, 0x8b, 0x43, 0x28,             // 24: mov r8, [rbx+40]
    0x4c, 0x8b, 0x4b, 0x30,             // 28: mov r9, [rbx+48]
    0x0f, 0x05,                         // 32: syscall
    0x48, 0x89, 0x43, 0x38,             // 34: mov [rbx+56], rax
    0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, // 38: cmp rax, -4095
    0x73, 0x09,                         // 44: jae done (55)
    0x48, 0x83, 0xc3, 0x40,             // 46: add rbx, 64
    0x49, 0xff, 0xcc,                   // 50: dec r12
    0xeb, 0xc9,                         // 53: jmp 0
    0xcc,                               // 55: done: int3
];

/// One argument of a batched call: a value, or the address of a byte of
/// the batch's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    Val(u64),
    Data(usize),
}

/// Most calls in one stop.
const BATCH: usize = 256;

impl Tracee {
    /// Writes the loop after the gadget at `trap_at` (see
    /// [`Tracee::set_trap_gadget`]).
    pub(crate) fn write_loop(&self) -> Result<()> {
        self.write_mem(self.trap_at + LOOP_AT, &LOOP)
    }

    /// Puts `data` in the scratch area and runs `calls` as the task, one
    /// after another, in one stop for each [`BATCH`] of them where it can
    /// (see the module). Returns the results of the calls that ran: all
    /// of them, or up to and including the first that failed (a result in
    /// -4095..-1).
    pub fn batch(&mut self, data: &[u8], calls: &[(u64, [Arg; 6])]) -> Result<Vec<i64>> {
        let mut out = Vec::with_capacity(calls.len());
        for part in calls.chunks(BATCH) {
            let done = self.batch_one(data, part)?;
            let failed =
                done.len() < part.len() || done.last().is_some_and(|r| (-4095..0).contains(r));
            out.extend(done);
            if failed {
                break;
            }
        }
        Ok(out)
    }

    /// [`Tracee::batch`] of at most [`BATCH`] calls: `data`, then the
    /// table, written at the scratch area's start in one go.
    fn batch_one(&mut self, data: &[u8], calls: &[(u64, [Arg; 6])]) -> Result<Vec<i64>> {
        let table_at = data.len().div_ceil(64) * 64;
        let base = self.scratch(table_at + calls.len() * 64)?;
        let resolve = |a: &Arg| match *a {
            Arg::Val(v) => v,
            Arg::Data(off) => base + off as u64,
        };
        let resolved: Vec<(u64, [u64; 6])> = calls
            .iter()
            .map(|(nr, args)| (*nr, args.map(|a| resolve(&a))))
            .collect();
        let page = self.trap_at & !0xfff;
        let one_stop = self.traps_now()
            && resolved.len() > 1
            && resolved
                .iter()
                .all(|(nr, args)| !may_touch(*nr, args, page) && !makes_task(*nr));
        if !one_stop {
            if !data.is_empty() {
                self.write_mem(base, data)?;
            }
            let mut out = Vec::with_capacity(resolved.len());
            for (nr, args) in &resolved {
                let r = self.syscall_raw(*nr, args)?;
                out.push(r);
                if (-4095..0).contains(&r) {
                    break;
                }
            }
            return Ok(out);
        }
        let mut buf = data.to_vec();
        buf.resize(table_at, 0);
        for (nr, args) in &resolved {
            for w in std::iter::once(*nr)
                .chain(args.iter().copied())
                .chain(std::iter::once(0))
            {
                buf.extend_from_slice(&w.to_ne_bytes());
            }
        }
        self.write_mem(base, &buf)?;
        let table_addr = base + table_at as u64;
        let mut regs = self.orig_regs;
        regs.rip = self.trap_at + LOOP_AT;
        regs.rbx = table_addr;
        regs.r12 = resolved.len() as u64;
        regs.orig_rax = u64::MAX;
        regs.eflags &= !(0x100 | 0x10000);
        let tid = self.tid;
        ptrace::set_regs(tid, &regs).map_err(pt(tid, "PTRACE_SETREGSET"))?;
        self.mask_for(true)?;
        fault::point("injected call: registers set")?;
        let op = syscalls::name(resolved[0].0);
        let after = self.run_to_trap(op, self.trap_at + LOOP_AT + LOOP.len() as u64)?;
        let ran = resolved.len() - after.r12 as usize + usize::from(after.r12 != 0);
        let mut raw = vec![0u8; buf.len() - table_at];
        self.read_mem(table_addr, &mut raw)?;
        fault::point("injected call: at its exit")?;
        Ok(raw
            .chunks_exact(64)
            .take(ran)
            .map(|e| i64::from_ne_bytes(e[56..64].try_into().unwrap_or([0; 8])))
            .collect())
    }
}

/// Whether call `nr` makes a task or thread, or execs (whose events a
/// batch would not report).
fn makes_task(nr: u64) -> bool {
    matches!(
        nr as i64,
        libc::SYS_clone | libc::SYS_clone3 | libc::SYS_fork | libc::SYS_vfork | libc::SYS_execve
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_jumps_where_it_says() {
        // jz done, jae done, jmp back to the start, int3 last
        let at = |i: usize, rel: u8| (i + 2) as i64 + i64::from(rel as i8);
        assert_eq!(LOOP[3], 0x74);
        assert_eq!(at(3, LOOP[4]), 55);
        assert_eq!(LOOP[44], 0x73);
        assert_eq!(at(44, LOOP[45]), 55);
        assert_eq!(LOOP[53], 0xeb);
        assert_eq!(at(53, LOOP[54]), 0);
        assert_eq!(LOOP[55], 0xcc);
        assert_eq!(&LOOP[32..34], &[0x0f, 0x05]);
    }
}
