//! The rings of a packet socket (`PACKET_RX_RING`, `PACKET_TX_RING`,
//! `PACKET_MMAP`), in CRIU's `packet_ring` of `packet_sock_entry`. Their
//! settings come from sock_diag; their frames are the memory of the
//! task's mapping of the socket (`mm`, `vma_entry.crest_map_fd`), saved
//! and filled back like any memory.
//!
//! A ring made again starts where a new one does: the kernel's next frame
//! (TPACKET_V1/V2) or block (TPACKET_V3) is the first. Where the kernel
//! had moved on in the task's RX ring, dump finds how far ([`position`]:
//! after the frame it wrote last; after the blocks before the one it
//! opened last, or waits on), and restore moves the new ring on as far by
//! sending it frames on lo before it is bound ([`advance`]); the task's
//! memory, filled after, puts every frame back as it was. What cannot be
//! made again is refused, naming where the kernel stood: a TX ring that
//! was used (its next frame is not seen), a TPACKET_V3 block its timer
//! did not close while crest waited. The sequence numbers of the blocks
//! the kernel opens after a restore go on from the ones crest closed.

use crest_images::pb::PacketRing;
use std::os::fd::OwnedFd;

const TPACKET_V3: u32 = 2;
const SOL_PACKET: i32 = 263;
const PACKET_RX_RING: i32 = 5;
const PACKET_TX_RING: i32 = 13;

/// Most bytes crest maps from an image for one ring (its blocks), and
/// most frames.
const MAX_RING: u64 = 1 << 30;
const MAX_FRAMES: u32 = 1 << 22;

/// CRIU's `packet_ring` of sock_diag's `packet_diag_ring`.
pub fn entry(r: [u32; 7]) -> PacketRing {
    PacketRing {
        block_size: r[0],
        block_nr: r[1],
        frame_size: r[2],
        frame_nr: r[3],
        retire_tmo: r[4],
        sizeof_priv: r[5],
        features: r[6],
    }
}

/// The bytes ring `r` maps.
pub fn len(r: &PacketRing) -> u64 {
    u64::from(r.block_size) * u64::from(r.block_nr)
}

/// Where frame `i` of ring `r` starts in it (frames never cross blocks).
fn frame_at(r: &PacketRing, i: u32) -> Option<usize> {
    let per_block = r.block_size.checked_div(r.frame_size)?;
    let block = i.checked_div(per_block)?;
    let at = u64::from(block) * u64::from(r.block_size)
        + u64::from(i % per_block) * u64::from(r.frame_size);
    usize::try_from(at).ok()
}

/// Whether ring `r`'s settings are what a kernel takes (and crest maps).
pub fn sane(r: &PacketRing) -> bool {
    r.block_size > 0
        && r.frame_size >= 32
        && r.frame_nr > 0
        && r.frame_nr <= MAX_FRAMES
        && len(r) <= MAX_RING
        && r.block_size >= r.frame_size
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
}

/// Where the kernel stands in an RX ring of TPACKET_V1/V2 whose frames'
/// first 32 bytes are `heads` (one after another): the frame it writes
/// next, 0 for a ring it never wrote.
///
/// It writes the frames in ring order, so their times rise from that
/// frame round to the one before it: the next frame is where the time
/// drops, or where a written frame is followed by one never written.
/// Frames of the same time (a burst within the clock's tick) are no drop.
/// Where there is no drop (every frame of one time) it is 0; where the
/// task has rewritten headers and there are several, the frame after the
/// latest is taken.
pub fn rx_next_frame(version: u32, heads: &[u8]) -> u32 {
    // (V1: status is a long, then len, snaplen, mac, net, sec, usec;
    // V2: status, len, snaplen, mac, net, sec, nsec)
    let (snap, sec, sub) = if version == 0 {
        (12, 20, 24)
    } else {
        (8, 16, 20)
    };
    let when: Vec<Option<(u32, u32)>> = heads
        .chunks_exact(32)
        .map(|h| {
            (u32_at(h, snap) != 0 || u32_at(h, sec) != 0).then(|| (u32_at(h, sec), u32_at(h, sub)))
        })
        .collect();
    let n = when.len();
    let drops: Vec<usize> = (0..n)
        .filter(|&i| {
            let before = when[(i + n - 1) % n];
            before.is_some() && (when[i].is_none() || when[i] < before)
        })
        .collect();
    let next = match drops.as_slice() {
        [] => 0,
        [one] => *one,
        _ => {
            let latest = (0..n)
                .filter(|&i| when[i].is_some())
                .max_by_key(|&i| (when[i], i));
            latest.map_or(0, |l| (l + 1) % n)
        }
    };
    next as u32
}

/// The block of a TPACKET_V3 RX ring whose block headers (48 bytes each)
/// are `heads` that the kernel opened last (the highest sequence number),
/// its status and how many packets it holds.
pub fn rx_last_block(heads: &[u8]) -> (u32, u32, u32) {
    let mut best = (0u64, 0u32, 0u32, 0u32);
    for (i, h) in heads.chunks_exact(48).enumerate() {
        let seq = u64::from(u32_at(h, 24)) | u64::from(u32_at(h, 28)) << 32;
        if seq > best.0 {
            best = (seq, i as u32, u32_at(h, 8), u32_at(h, 12));
        }
    }
    (best.1, best.2, best.3)
}

/// How far the kernel has moved in a TPACKET_V3 RX ring of `n` blocks
/// whose last opened block is `last` (`closed` or not, and how many
/// `packets` it holds): the blocks a new ring must close, the kernel then
/// waiting on the next (or None while that block is open with packets in
/// it).
///   - last open and empty: it closed the blocks before it;
///   - last closed: it waits on the one after (the task holds it, or the
///     next packet or timer opens it); going round to block 0 is closing
///     all `n`.
pub fn v3_advance(n: u32, (last, closed, packets): (u32, bool, u32)) -> Option<u32> {
    if !closed {
        return (packets == 0).then_some(last);
    }
    let next = (last + 1) % n.max(1);
    Some(if next == 0 { n } else { next })
}

/// Whether TPACKET_V3 block `b` (its bytes), holding `packets`, was
/// closed by the kernel: its status is the task's, or (the task gave it
/// back) its last packet leads to no next one, which the kernel writes
/// only when it closes a block.
pub fn v3_closed(b: &[u8], packets: u32) -> bool {
    if u32_at(b, 8) & TP_STATUS_USER != 0 {
        return true;
    }
    let mut at = u32_at(b, 16) as usize;
    for _ in 1..packets {
        match u32_at(b, at) {
            0 => return true,
            next => at = at.saturating_add(next as usize),
        }
        if at >= b.len() {
            return false;
        }
    }
    packets > 0 && u32_at(b, at) == 0
}

/// Where the kernel stands in the rings of packet socket `copy` (crest's;
/// `version` its TPACKET version): the frames (TPACKET_V1/V2) or blocks
/// (TPACKET_V3) it moved on in the RX ring, which the restore moves a
/// new ring on by; or why it cannot be made again there.
///
/// A TPACKET_V3 block open with packets in it is closed by the kernel's
/// timer even while the task is frozen, so crest waits for that (twice
/// the timer's period, at most 2 s) rather than make it again half full.
pub fn position(
    copy: &OwnedFd,
    version: u32,
    (rx, tx): (Option<&PacketRing>, Option<&PacketRing>),
) -> std::io::Result<Result<u32, String>> {
    for r in rx.iter().chain(tx.iter()) {
        if !sane(r) {
            return Ok(Err(format!(
                "a packet ring of {} blocks of {} bytes, {} frames of {}",
                r.block_nr, r.block_size, r.frame_nr, r.frame_size
            )));
        }
    }
    let total = (rx.map_or(0, len) + tx.map_or(0, len)) as usize;
    if let Some(r) = tx {
        let base = rx.map_or(0, len) as usize;
        let offs: Vec<usize> = (0..r.frame_nr)
            .filter_map(|i| frame_at(r, i).map(|o| o + base))
            .collect();
        let heads = crest_sys::misc::read_socket_map(copy, total, &offs, 32)?;
        if heads.iter().any(|b| *b != 0) {
            return Ok(Err(
                "a packet socket whose TX ring was used (the kernel's next frame to send \
                 cannot be seen; a ring made again starts at frame 0)"
                    .into(),
            ));
        }
    }
    let Some(r) = rx else { return Ok(Ok(0)) };
    if version != TPACKET_V3 {
        let offs: Vec<usize> = (0..r.frame_nr).filter_map(|i| frame_at(r, i)).collect();
        let heads = crest_sys::misc::read_socket_map(copy, total, &offs, 32)?;
        return Ok(Ok(rx_next_frame(version, &heads)));
    }
    let offs: Vec<usize> = (0..r.block_nr)
        .map(|b| b as usize * r.block_size as usize)
        .collect();
    let wait = std::time::Duration::from_millis((u64::from(r.retire_tmo) * 2 + 20).min(2000));
    let until = std::time::Instant::now() + wait;
    loop {
        let heads = crest_sys::misc::read_socket_map(copy, total, &offs, 48)?;
        let (last, status, packets) = rx_last_block(&heads);
        let closed = status & TP_STATUS_USER != 0
            || (packets > 0 && {
                let at = last as usize * r.block_size as usize;
                let b =
                    crest_sys::misc::read_socket_map(copy, total, &[at], r.block_size as usize)?;
                v3_closed(&b, packets)
            });
        if let Some(a) = v3_advance(r.block_nr, (last, closed, packets)) {
            return Ok(Ok(a));
        }
        if std::time::Instant::now() >= until {
            return Ok(Err(format!(
                "a packet socket whose RX ring (TPACKET_V3) has block {} open with {} packets \
                 that its timer did not close in {} ms (packets keep arriving)",
                last,
                packets,
                wait.as_millis()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// The ethertype of the frames crest sends to a new ring to move the
/// kernel on (an unassigned one; packet sockets of every protocol in the
/// namespace see them too).
pub const FILL_ETHERTYPE: u16 = 0xc2e5;
const PACKET_STATISTICS: i32 = 6;
const TP_STATUS_USER: u32 = 1;

/// Moves the kernel on by `advance` frames (TPACKET_V1/V2) or blocks
/// (TPACKET_V3) in the new RX ring `r` of crest's packet socket `c`,
/// bound for now to lo for [`FILL_ETHERTYPE`] only, with frames `sender`
/// (a packet socket of the same namespace) sends on lo (`lo`, its index).
/// The frames' contents do not matter: the task's memory, filled later,
/// puts back every frame and status of the ring. The statistics the
/// frames counted are read away.
///
/// TPACKET_V3: the block after the last to close is marked the task's
/// first, so the kernel stops there (frozen, as one that went round the
/// ring and found its next block still held); where the task's memory
/// says it is free, the next packet or the timer opens it.
pub fn advance(
    c: &OwnedFd,
    sender: &OwnedFd,
    lo: u32,
    (version, r, total): (u32, &PacketRing, usize),
    advance: u32,
) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    let map = crest_sys::misc::SharedMap::new(c, 0, total, true)?;
    let mut to = (libc::AF_PACKET as u16).to_ne_bytes().to_vec();
    to.extend_from_slice(&FILL_ETHERTYPE.to_be_bytes());
    to.extend_from_slice(&lo.to_ne_bytes());
    to.extend_from_slice(&[0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0]);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let late = || {
        Error::new(
            ErrorKind::TimedOut,
            "the kernel did not take crest's frames on lo",
        )
    };
    if version != TPACKET_V3 {
        if advance >= r.frame_nr {
            return Err(Error::from(ErrorKind::InvalidInput));
        }
        let status = |i: u32| frame_at(r, i).and_then(|o| map.u32_at(o)).unwrap_or(0);
        for _ in 0..advance {
            crest_sys::net::sendto(sender, b"crest moves a ring", 0, &to)?;
        }
        while advance > 0 && status(advance - 1) & TP_STATUS_USER == 0 {
            if std::time::Instant::now() >= until {
                return Err(late());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let taken = (0..r.frame_nr).filter(|&i| status(i) != 0).count();
        if taken != advance as usize {
            return Err(Error::other(format!(
                "{taken} frames reached the ring where crest sent {advance}"
            )));
        }
    } else {
        let n = r.block_nr;
        if advance > n {
            return Err(Error::from(ErrorKind::InvalidInput));
        }
        let block = |b: u32| b as usize * r.block_size as usize;
        let status = |b: u32| map.u32_at(block(b) + 8).unwrap_or(0);
        if advance > 0 && advance < n {
            map.set_u32(block(advance) + 8, TP_STATUS_USER);
        }
        let mut big = vec![0u8; (r.block_size as usize / 2).clamp(64, 32 << 10)];
        for b in 0..advance {
            while status(b) & TP_STATUS_USER == 0 {
                if std::time::Instant::now() >= until {
                    return Err(late());
                }
                match crest_sys::net::sendto(sender, &big, 0, &to) {
                    Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) && big.len() > 64 => {
                        big.truncate(big.len() / 2)
                    }
                    r => drop(r?),
                }
            }
        }
    }
    crest_sys::net::getsockopt_bytes(c, SOL_PACKET, PACKET_STATISTICS, 12)?;
    Ok(())
}

/// Sets ring `r` on crest's packet socket `c` (its version set already):
/// `tpacket_req3` for TPACKET_V3, `tpacket_req` before.
pub fn set(c: &OwnedFd, version: u32, r: &PacketRing, tx: bool) -> std::io::Result<()> {
    let mut req: Vec<u8> = [r.block_size, r.block_nr, r.frame_size, r.frame_nr]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    if version == TPACKET_V3 {
        req.extend(
            [r.retire_tmo, r.sizeof_priv, r.features]
                .iter()
                .flat_map(|w| w.to_ne_bytes()),
        );
    }
    let opt = if tx { PACKET_TX_RING } else { PACKET_RX_RING };
    crest_sys::net::setsockopt_bytes(c, SOL_PACKET, opt, &req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_head(snap: u32, sec: u32, nsec: u32) -> Vec<u8> {
        let mut h = vec![0u8; 32];
        h[8..12].copy_from_slice(&snap.to_ne_bytes());
        h[16..20].copy_from_slice(&sec.to_ne_bytes());
        h[20..24].copy_from_slice(&nsec.to_ne_bytes());
        h
    }

    #[test]
    fn next_frame_follows_the_latest() {
        // frames written at (sec, nsec), (0, 0) never written
        let ring = |t: &[(u32, u32)]| -> Vec<u8> {
            t.iter()
                .flat_map(|&(s, n)| v2_head(if s == 0 { 0 } else { 60 }, s, n))
                .collect()
        };
        assert_eq!(rx_next_frame(1, &ring(&[(0, 0); 4])), 0);
        assert_eq!(
            rx_next_frame(1, &ring(&[(10, 5), (10, 7), (0, 0), (0, 0)])),
            2
        );
        // wrapped: frame 3 then 0 again, 0 the latest
        assert_eq!(
            rx_next_frame(1, &ring(&[(11, 1), (10, 7), (10, 8), (10, 9)])),
            1
        );
        // the whole ring written, the last frame the latest: back at 0
        assert_eq!(rx_next_frame(1, &ring(&[(10, 1), (10, 2)])), 0);
        // a burst within one tick, gone round: frames 0 and 1 as late as 3
        assert_eq!(
            rx_next_frame(1, &ring(&[(10, 9), (10, 9), (10, 8), (10, 9)])),
            2
        );
        // a burst within one tick, not gone round
        assert_eq!(rx_next_frame(1, &ring(&[(10, 9), (10, 9), (0, 0)])), 2);
    }

    #[test]
    fn last_block_has_the_highest_number() {
        let mut heads = vec![0u8; 48 * 3];
        heads[24] = 1; // block 0: seq 1
        assert_eq!(rx_last_block(&heads), (0, 0, 0));
        heads[48 + 24] = 2; // block 1: seq 2, 3 packets
        heads[48 + 12] = 3;
        assert_eq!(rx_last_block(&heads), (1, 0, 3));
        heads[48 + 8] = 1; // closed
        assert_eq!(rx_last_block(&heads), (1, 1, 3));
    }

    #[test]
    fn v3_advance_closes_the_blocks_before_the_kernel() {
        // fresh: block 0 open, empty
        assert_eq!(v3_advance(4, (0, false, 0)), Some(0));
        // block 2 open, empty: 0 and 1 closed
        assert_eq!(v3_advance(4, (2, false, 0)), Some(2));
        // block 2 open with packets: wait for the timer
        assert_eq!(v3_advance(4, (2, false, 5)), None);
        // block 2 closed: the kernel waits on 3
        assert_eq!(v3_advance(4, (2, true, 5)), Some(3));
        // the last block closed: round to block 0, all 4 closed
        assert_eq!(v3_advance(4, (3, true, 5)), Some(4));
    }

    #[test]
    fn a_closed_block_ends_its_packets() {
        // header 48 bytes, then packets of 64 and 80 bytes
        let mut b = vec![0u8; 4096];
        b[16..20].copy_from_slice(&48u32.to_ne_bytes());
        b[48..52].copy_from_slice(&64u32.to_ne_bytes());
        b[112..116].copy_from_slice(&80u32.to_ne_bytes());
        // open: the last packet leads on
        assert!(!v3_closed(&b, 2));
        // closed (and given back): the last leads nowhere
        b[112..116].copy_from_slice(&0u32.to_ne_bytes());
        assert!(v3_closed(&b, 2));
        // the task's: closed
        b[8] = 1;
        assert!(v3_closed(&b, 2));
        // a chain that leaves the block: not closed
        b[8] = 0;
        b[48..52].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(!v3_closed(&b, 2));
    }

    #[test]
    fn frames_do_not_cross_blocks() {
        let r = entry([4096 * 4, 4, 3000, 20, 0, 0, 0]);
        // 5 frames per block of 16 KiB
        assert_eq!(frame_at(&r, 4), Some(4 * 3000));
        assert_eq!(frame_at(&r, 5), Some(4096 * 4));
        assert!(sane(&r));
        assert!(!sane(&entry([0, 4, 3000, 20, 0, 0, 0])));
    }
}
