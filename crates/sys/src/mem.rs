//! Another process's memory: `process_vm_readv` / `process_vm_writev`.

use std::io;

/// Most iovecs the kernel takes in one call (`UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// `process_vm_readv` — fills `local` from the remote ranges `(addr, len)`,
/// which must add up to `local.len()`. Returns the bytes read; a short read
/// means a remote range was not readable.
pub fn read_remote(pid: i32, ranges: &[(u64, usize)], local: &mut [u8]) -> io::Result<usize> {
    let base = local.as_mut_ptr();
    transfer(ranges, local.len(), |at, len, rem| {
        let liov = libc::iovec {
            // SAFETY: `transfer` keeps `at + len` within `local`.
            iov_base: unsafe { base.add(at) }.cast(),
            iov_len: len,
        };
        // SAFETY: `liov` covers a live, writable part of `local`; the
        // remote iovecs only name addresses in the other process.
        unsafe {
            libc::process_vm_readv(pid, &liov, 1, rem.as_ptr(), rem.len() as libc::c_ulong, 0)
        }
    })
}

/// `process_vm_writev` — writes `local` to the remote ranges.
pub fn write_remote(pid: i32, ranges: &[(u64, usize)], local: &[u8]) -> io::Result<usize> {
    let base = local.as_ptr();
    transfer(ranges, local.len(), |at, len, rem| {
        let liov = libc::iovec {
            // SAFETY: `transfer` keeps `at + len` within `local`.
            iov_base: unsafe { base.add(at) } as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: `liov` covers a live part of `local`, which the kernel
        // only reads; the remote iovecs name the other process's memory.
        unsafe {
            libc::process_vm_writev(pid, &liov, 1, rem.as_ptr(), rem.len() as libc::c_ulong, 0)
        }
    })
}

/// Moves `total` bytes between a local buffer and the remote `ranges`
/// (which must add up to it), at most `IOV_MAX` ranges a call: `call(at,
/// len, remote)` moves the local bytes `at..at + len` from or to the
/// remote iovecs and returns what the syscall did. Returns the bytes
/// moved; it stops short where a remote range could not be reached.
fn transfer(
    ranges: &[(u64, usize)],
    total: usize,
    mut call: impl FnMut(usize, usize, &[libc::iovec]) -> isize,
) -> io::Result<usize> {
    if ranges.iter().map(|r| r.1).sum::<usize>() != total {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "remote ranges do not match the local buffer",
        ));
    }
    let mut done = 0usize;
    for chunk in ranges.chunks(IOV_MAX) {
        let want: usize = chunk.iter().map(|r| r.1).sum();
        let remote: Vec<libc::iovec> = chunk
            .iter()
            .map(|&(addr, len)| libc::iovec {
                iov_base: addr as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        let mut got = 0usize;
        while got < want {
            // (the remote iovecs already moved whole in a short call are
            // skipped)
            let rem = trim_iovecs(&remote, got);
            let n = call(done + got, want - got, &rem);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                return Ok(done + got);
            }
            got += n as usize;
        }
        done += want;
    }
    Ok(done)
}

/// The iovecs left after `skip` bytes were transferred.
fn trim_iovecs(iovs: &[libc::iovec], mut skip: usize) -> Vec<libc::iovec> {
    let mut out = Vec::with_capacity(iovs.len());
    for iov in iovs {
        if skip >= iov.iov_len {
            skip -= iov.iov_len;
            continue;
        }
        out.push(libc::iovec {
            iov_base: (iov.iov_base as usize + skip) as *mut libc::c_void,
            iov_len: iov.iov_len - skip,
        });
        skip = 0;
    }
    out
}
