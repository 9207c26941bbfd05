//! The task's memory: read and written from crest, and the scratch space
//! in the work area that injected calls take their arguments from.

use super::*;

impl Tracee {
    /// Reads the task's memory at `addr`.
    pub fn read_mem(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len();
        let r = crest_sys::mem::read_remote(self.pid, &[(addr, len)], buf);
        let ops = ("process_vm_readv", "process_vm_readv (short)");
        self.whole(ops, addr, len, r)
    }

    /// Writes the task's memory at `addr` (the pages must be writable).
    pub fn write_mem(&self, addr: u64, buf: &[u8]) -> Result<()> {
        let len = buf.len();
        let r = crest_sys::mem::write_remote(self.pid, &[(addr, len)], buf);
        let ops = ("process_vm_writev", "process_vm_writev (short)");
        self.whole(ops, addr, len, r)
    }

    /// The outcome `r` of moving `len` bytes at `addr` with `op`: a short
    /// move is `EFAULT` (named `short`).
    fn whole(
        &self,
        (op, short): (&'static str, &'static str),
        addr: u64,
        len: usize,
        r: io::Result<usize>,
    ) -> Result<()> {
        let mem = |op, source| InjectError::Mem {
            pid: self.pid,
            op,
            addr,
            len,
            source,
        };
        match r {
            Err(e) => Err(mem(op, e)),
            Ok(n) if n != len => Err(mem(short, io::Error::from_raw_os_error(libc::EFAULT))),
            Ok(_) => Ok(()),
        }
    }

    /// A private read-write scratch area of at least `len` bytes in the
    /// task, mapped on first use; [`Tracee::release`] unmaps it.
    pub fn scratch(&mut self, len: usize) -> Result<u64> {
        if let Some((addr, have)) = self.scratch {
            if have >= len {
                return Ok(addr);
            }
            self.syscall(nr::MUNMAP, &[addr, have as u64])?;
            self.scratch = None;
        }
        let size = (len.max(1) as u64).div_ceil(4096) * 4096;
        let addr = self.syscall(
            nr::MMAP,
            &[
                0,
                size,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )?;
        self.scratch = Some((addr, size as usize));
        Ok(addr)
    }

    /// Adopts an area the caller mapped in the task as the scratch area.
    pub fn adopt_scratch(&mut self, addr: u64, len: usize) {
        self.scratch = Some((addr, len));
    }

    /// Forgets the scratch area without unmapping it.
    pub fn forget_scratch(&mut self) {
        self.scratch = None;
    }

    /// Writes `data` into the scratch area and returns its address.
    pub fn put(&mut self, data: &[u8]) -> Result<u64> {
        let addr = self.scratch(data.len())?;
        self.write_mem(addr, data)?;
        Ok(addr)
    }
}
