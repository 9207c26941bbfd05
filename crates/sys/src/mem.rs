//! Another process's memory: `process_vm_readv` / `process_vm_writev`.

use std::io;

/// Most iovecs the kernel takes in one call (`UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// `process_vm_readv` — fills `local` from the remote ranges `(addr, len)`,
/// which must add up to `local.len()`. Returns the bytes read; a short read
/// means a remote range was not readable.
pub fn read_remote(pid: i32, ranges: &[(u64, usize)], local: &mut [u8]) -> io::Result<usize> {
    let total: usize = ranges.iter().map(|r| r.1).sum();
    if total != local.len() {
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
            // Skip the remote iovecs already fully read in a short read.
            let rem = trim_iovecs(&remote, got);
            let dst = &mut local[done + got..done + want];
            let liov = libc::iovec {
                iov_base: dst.as_mut_ptr().cast(),
                iov_len: dst.len(),
            };
            // SAFETY: `liov` covers the live, writable slice `dst`; the
            // remote iovecs only name addresses in the other process.
            let n = unsafe {
                libc::process_vm_readv(pid, &liov, 1, rem.as_ptr(), rem.len() as libc::c_ulong, 0)
            };
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

/// `process_vm_writev` — writes `local` to the remote ranges.
pub fn write_remote(pid: i32, ranges: &[(u64, usize)], local: &[u8]) -> io::Result<usize> {
    let total: usize = ranges.iter().map(|r| r.1).sum();
    if total != local.len() {
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
            let rem = trim_iovecs(&remote, got);
            let src = &local[done + got..done + want];
            let liov = libc::iovec {
                iov_base: src.as_ptr() as *mut libc::c_void,
                iov_len: src.len(),
            };
            // SAFETY: `liov` covers the live slice `src`, which the kernel
            // only reads; the remote iovecs name the other process's memory.
            let n = unsafe {
                libc::process_vm_writev(pid, &liov, 1, rem.as_ptr(), rem.len() as libc::c_ulong, 0)
            };
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
