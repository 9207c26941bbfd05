//! Netlink, the one client crest speaks it through: messages framed and
//! split with every length checked, a request sent to the kernel and its
//! answer read up to its end (the ack, or `NLMSG_DONE` of a dump).
//! rtnetlink (`ns::net`) and sock_diag (`files::sockdiag`) build their
//! payloads and parse the answers' on top of it.

use std::io;
use std::os::fd::OwnedFd;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;

/// The size of `struct nlmsghdr`.
pub const HDR: usize = 16;
/// Most messages crest takes from one buffer (kernel replies or an image).
const MAX_MSGS: usize = 1 << 16;

/// A buffer of netlink messages (from the kernel or an image) that does
/// not split into whole messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Framing {
    #[error("{0} stray bytes after the last message")]
    Stray(usize),
    #[error("a message of length {len} at offset {at}")]
    Message { len: usize, at: usize },
    #[error("more than {0} messages")]
    TooMany(usize),
}

pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// One netlink message: its type, flags, sequence number and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: Vec<u8>,
}

/// A whole message: header then payload (padded).
pub fn encode(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = HDR + payload.len();
    let mut out = Vec::with_capacity(align4(len));
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align4(len), 0);
    out
}

/// The messages of a buffer (a datagram from the kernel, or a saved file
/// without its magic).
pub fn split(buf: &[u8]) -> Result<Vec<Msg>, Framing> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        if buf.len() - at < HDR {
            return Err(Framing::Stray(buf.len() - at));
        }
        let len = u32_at(buf, at).unwrap_or(0) as usize;
        if len < HDR || len > buf.len() - at {
            return Err(Framing::Message { len, at });
        }
        if out.len() >= MAX_MSGS {
            return Err(Framing::TooMany(MAX_MSGS));
        }
        out.push(Msg {
            ty: u16_at(buf, at + 4).unwrap_or(0),
            flags: u16_at(buf, at + 6).unwrap_or(0),
            seq: u32_at(buf, at + 8).unwrap_or(0),
            payload: buf[at + HDR..at + len].to_vec(),
        });
        at = (at + align4(len)).min(buf.len());
    }
    Ok(out)
}

/// The error code of an `NLMSG_ERROR` payload (0 for an ack).
pub fn error_code(payload: &[u8]) -> i32 {
    u32_at(payload, 0).map_or(-libc::EPROTO, |v| v as i32)
}

/// A netlink socket and the sequence numbers of its requests.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// A socket of `proto` in the network namespace of the calling thread.
    pub fn open(proto: i32) -> io::Result<Netlink> {
        let fd = crest_sys::net::socket(libc::AF_NETLINK, libc::SOCK_RAW, proto)?;
        Ok(Netlink::from_fd(fd))
    }

    /// Speaks through netlink socket `fd` (made elsewhere: in another
    /// namespace).
    pub fn from_fd(fd: OwnedFd) -> Netlink {
        Netlink { fd, seq: 0 }
    }

    /// Sends request `ty` (`NLM_F_REQUEST` and `flags`) with `payload` to
    /// the kernel; returns its sequence number.
    pub fn send(&mut self, ty: u16, flags: u16, payload: &[u8]) -> io::Result<u32> {
        self.seq += 1;
        let msg = encode(ty, flags | NLM_F_REQUEST, self.seq, payload);
        let mut kernel = [0u8; 12];
        kernel[..2].copy_from_slice(&(libc::AF_NETLINK as u16).to_ne_bytes());
        crest_sys::net::sendto(&self.fd, &msg, 0, &kernel)?;
        Ok(self.seq)
    }

    /// The messages of the answer to request `seq`, up to its end (the
    /// ack, or `NLMSG_DONE` of a dump), at most `max`; an error the
    /// kernel answers is returned as such.
    pub fn answer(&mut self, seq: u32, max: usize) -> io::Result<Vec<Msg>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = crest_sys::net::recv(&self.fd, &mut buf, libc::MSG_TRUNC)?;
            if n == 0 {
                return Err(io::Error::other("a netlink answer ended early"));
            }
            if n > buf.len() {
                return Err(io::Error::other(format!("a netlink answer of {n} bytes")));
            }
            for m in split(&buf[..n])
                .map_err(io::Error::other)?
                .into_iter()
                .filter(|m| m.seq == seq)
            {
                match m.ty {
                    NLMSG_ERROR | NLMSG_DONE => {
                        let code = if m.payload.len() >= 4 {
                            error_code(&m.payload)
                        } else {
                            0
                        };
                        if code < 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        return Ok(out);
                    }
                    _ => {
                        if out.len() >= max {
                            return Err(io::Error::other("too many netlink messages"));
                        }
                        out.push(m);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_and_split_round_trip() {
        let mut buf = encode(16, NLM_F_REQUEST, 7, &[1, 2, 3]);
        buf.extend(encode(NLMSG_DONE, 0, 7, &[0, 0, 0, 0]));
        let msgs = split(&buf).expect("split");
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[0].ty, msgs[0].seq), (16, 7));
        assert_eq!(msgs[0].payload, vec![1, 2, 3]);
        assert_eq!(msgs[1].ty, NLMSG_DONE);
    }

    #[test]
    fn split_refuses_what_does_not_frame() {
        let m = encode(16, 0, 1, &[0; 8]);
        assert!(matches!(split(&m[..10]), Err(Framing::Stray(10))));
        let mut long = m.clone();
        long[0] = 200;
        assert!(matches!(split(&long), Err(Framing::Message { .. })));
    }
}
