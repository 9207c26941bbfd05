//! The rings of a packet socket (`PACKET_RX_RING`, `PACKET_TX_RING`,
//! `PACKET_MMAP`), in CRIU's `packet_ring` of `packet_sock_entry`. Their
//! settings come from sock_diag; their frames are the memory of the
//! task's mapping of the socket (`mm`, `vma_entry.crest_map_fd`), saved
//! and filled back like any memory.
//!
//! A ring made again starts where a new one does: the kernel's next frame
//! (TPACKET_V1/V2) or block (TPACKET_V3) is the first, and nothing can
//! move it. So a ring is carried where the kernel stood there at the dump:
//! an RX ring it never wrote a frame into (or one whose next frame is the
//! first again), a TPACKET_V3 RX ring whose open block is the first and
//! empty (the blocks it opens later are numbered again from 2), a TX ring
//! never used. Any other is refused, naming where the kernel stood:
//! made again, it would write frames where the task does not look.

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
/// first 32 bytes are `heads` (one after another): the frame after the
/// last it wrote (by the time it wrote it), 0 for a ring it never wrote.
pub fn rx_next_frame(version: u32, heads: &[u8]) -> u32 {
    // (V1: status is a long, then len, snaplen, mac, net, sec, usec;
    // V2: status, len, snaplen, mac, net, sec, nsec)
    let (snap, sec, sub) = if version == 0 {
        (12, 20, 24)
    } else {
        (8, 16, 20)
    };
    let mut last: Option<(u32, u32, u32)> = None;
    for (i, h) in heads.chunks_exact(32).enumerate() {
        if u32_at(h, snap) == 0 && u32_at(h, sec) == 0 {
            continue;
        }
        let when = (u32_at(h, sec), u32_at(h, sub), i as u32);
        if last.is_none_or(|l| (when.0, when.1) >= (l.0, l.1)) {
            last = Some(when);
        }
    }
    let n = (heads.len() / 32) as u32;
    last.map_or(0, |l| (l.2 + 1) % n.max(1))
}

/// The open block of a TPACKET_V3 RX ring whose block headers (48 bytes
/// each) are `heads`: the one with the highest sequence number, and how
/// many packets it holds.
pub fn rx_open_block(heads: &[u8]) -> (u32, u32) {
    let mut best = (0u64, 0u32, 0u32);
    for (i, h) in heads.chunks_exact(48).enumerate() {
        let seq = u64::from(u32_at(h, 24)) | u64::from(u32_at(h, 28)) << 32;
        if seq > best.0 {
            best = (seq, i as u32, u32_at(h, 12));
        }
    }
    (best.1, best.2)
}

/// Why the rings of packet socket `copy` (crest's; `version` its
/// TPACKET version) cannot be made again where the kernel stood, or None.
pub fn refusal(
    copy: &OwnedFd,
    version: u32,
    (rx, tx): (Option<&PacketRing>, Option<&PacketRing>),
) -> std::io::Result<Option<String>> {
    for r in rx.iter().chain(tx.iter()) {
        if !sane(r) {
            return Ok(Some(format!(
                "a packet ring of {} blocks of {} bytes, {} frames of {}",
                r.block_nr, r.block_size, r.frame_nr, r.frame_size
            )));
        }
    }
    let total = (rx.map_or(0, len) + tx.map_or(0, len)) as usize;
    if let Some(r) = rx {
        if version == TPACKET_V3 {
            let offs: Vec<usize> = (0..r.block_nr)
                .map(|b| b as usize * r.block_size as usize)
                .collect();
            let heads = crest_sys::misc::read_socket_map(copy, total, &offs, 48)?;
            let (open, pkts) = rx_open_block(&heads);
            if open != 0 || pkts != 0 {
                return Ok(Some(format!(
                    "a packet socket whose RX ring (TPACKET_V3) has block {open} open with \
                     {pkts} packets (a ring made again opens block 0, empty)"
                )));
            }
        } else {
            let offs: Vec<usize> = (0..r.frame_nr).filter_map(|i| frame_at(r, i)).collect();
            let heads = crest_sys::misc::read_socket_map(copy, total, &offs, 32)?;
            let next = rx_next_frame(version, &heads);
            if next != 0 {
                return Ok(Some(format!(
                    "a packet socket whose RX ring the kernel writes into at frame {next} next \
                     (a ring made again starts at frame 0)"
                )));
            }
        }
    }
    if let Some(r) = tx {
        let base = rx.map_or(0, len) as usize;
        let offs: Vec<usize> = (0..r.frame_nr)
            .filter_map(|i| frame_at(r, i).map(|o| o + base))
            .collect();
        let heads = crest_sys::misc::read_socket_map(copy, total, &offs, 32)?;
        if heads.iter().any(|b| *b != 0) {
            return Ok(Some(
                "a packet socket whose TX ring was used (the kernel's next frame to send \
                 cannot be seen; a ring made again starts at frame 0)"
                    .into(),
            ));
        }
    }
    Ok(None)
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
        let blank = v2_head(0, 0, 0);
        assert_eq!(rx_next_frame(1, &blank.repeat(4)), 0);
        let mut ring = [v2_head(60, 10, 5), v2_head(60, 10, 7), blank.clone(), blank].concat();
        assert_eq!(rx_next_frame(1, &ring), 2);
        // wrapped: frame 3 then 0 again, 0 the latest
        ring = [
            v2_head(60, 11, 1),
            v2_head(60, 10, 7),
            v2_head(60, 10, 8),
            v2_head(60, 10, 9),
        ]
        .concat();
        assert_eq!(rx_next_frame(1, &ring), 1);
        // the whole ring written, the last frame the latest: back at 0
        ring = [v2_head(60, 10, 1), v2_head(60, 10, 2)].concat();
        assert_eq!(rx_next_frame(1, &ring), 0);
    }

    #[test]
    fn open_block_has_the_highest_number() {
        let mut heads = vec![0u8; 48 * 3];
        heads[24] = 1; // block 0: seq 1
        assert_eq!(rx_open_block(&heads), (0, 0));
        heads[48 + 24] = 2; // block 1: seq 2, 3 packets
        heads[48 + 12] = 3;
        assert_eq!(rx_open_block(&heads), (1, 3));
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
