//! Policy routing rules and permanent neighbour entries of a namespace:
//! what `ip rule` and `ip neigh ... nud permanent` added. Saved as the
//! kernel reports them (`RTM_NEWRULE`, `RTM_NEWNEIGH` payloads) in files
//! laid out like `ip rule save` output — IPv4 rules in CRIU's
//! `rule-<id>.img`, IPv6 rules and neighbours in crest's own files — and
//! sent back as they are, less what only the kernel reports.

use super::rtnl::{attr_u32, attrs, find, ip_text, put, Malformed};
use std::fmt::Write;

pub const RTM_NEWNEIGH: u16 = 28;
pub const RTM_GETNEIGH: u16 = 30;
pub const RTM_NEWRULE: u16 = 32;
pub const RTM_GETRULE: u16 = 34;
/// `ip rule save` writes this word before the messages.
pub const RULE_SAVE_MAGIC: u32 = 0x7170_6986;
/// crest's neighbour file starts with this word (crest's "CRS" range).
pub const NEIGH_SAVE_MAGIC: u32 = 0x4352_5322;

const FRA_PRIORITY: u16 = 6;
const FRA_TABLE: u16 = 15;
const FRA_PROTOCOL: u16 = 21;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NDA_CACHEINFO: u16 = 3;
const NDA_PROBES: u16 = 4;
const NUD_PERMANENT: u16 = 0x80;
const RTPROT_KERNEL: u8 = 2;
/// `struct fib_rule_hdr` and `struct ndmsg`.
const HDR_LEN: usize = 12;

/// What crest needs to know of an `RTM_NEWRULE` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub family: u8,
    pub priority: u32,
    pub table: u32,
    pub protocol: Option<u8>,
    pub action: u8,
}

pub fn parse_rule(p: &[u8]) -> Result<Rule, Malformed> {
    if p.len() < HDR_LEN {
        return Err(Malformed::Short {
            what: "a rule",
            len: p.len(),
        });
    }
    let list = attrs(&p[HDR_LEN..])?;
    Ok(Rule {
        family: p[0],
        priority: attr_u32(&list, FRA_PRIORITY).unwrap_or(0),
        table: attr_u32(&list, FRA_TABLE).unwrap_or(u32::from(p[4])),
        protocol: find(&list, FRA_PROTOCOL).and_then(|d| d.first().copied()),
        action: p[7],
    })
}

impl Rule {
    /// A rule someone added: the kernel's own (`lookup local/main/default`)
    /// say so in their protocol; on a kernel that does not report it they
    /// are known by priority and table.
    pub fn kept(&self) -> bool {
        match self.protocol {
            Some(p) => p != RTPROT_KERNEL,
            None => ![(0, 255), (32766, 254), (32767, 253)].contains(&(self.priority, self.table)),
        }
    }

    pub fn text(&self) -> String {
        format!(
            "rule{} prio {} table {} action {}",
            if self.family == libc::AF_INET6 as u8 {
                "6"
            } else {
                "4"
            },
            self.priority,
            self.table,
            self.action
        )
    }
}

/// What crest needs to know of an `RTM_NEWNEIGH` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neigh {
    pub family: u8,
    pub ifindex: u32,
    pub state: u16,
    pub dst: Option<Vec<u8>>,
    pub lladdr: Option<Vec<u8>>,
}

pub fn parse_neigh(p: &[u8]) -> Result<Neigh, Malformed> {
    if p.len() < HDR_LEN {
        return Err(Malformed::Short {
            what: "a neighbour",
            len: p.len(),
        });
    }
    let list = attrs(&p[HDR_LEN..])?;
    Ok(Neigh {
        family: p[0],
        ifindex: u32::from_ne_bytes([p[4], p[5], p[6], p[7]]),
        state: u16::from_ne_bytes([p[8], p[9]]),
        dst: find(&list, NDA_DST).map(<[u8]>::to_vec),
        lladdr: find(&list, NDA_LLADDR).map(<[u8]>::to_vec),
    })
}

impl Neigh {
    /// A permanent entry someone added (the kernel learns the others).
    pub fn kept(&self) -> bool {
        self.state & NUD_PERMANENT != 0 && self.dst.is_some()
    }

    pub fn text(&self, dev: impl Fn(u32) -> String) -> String {
        let mut s = format!(
            "neigh {} dev {}",
            self.dst
                .as_deref()
                .map_or("?".into(), |d| ip_text(self.family, d)),
            dev(self.ifindex)
        );
        if let Some(l) = &self.lladdr {
            let mac: Vec<String> = l.iter().map(|b| format!("{b:02x}")).collect();
            let _ = write!(s, " lladdr {}", mac.join(":"));
        }
        s
    }
}

/// The payload that adds a saved neighbour again: the header as it was,
/// without what only the kernel reports (cache times, probes).
pub fn replay_neigh(p: &[u8]) -> Result<Vec<u8>, Malformed> {
    if p.len() < HDR_LEN {
        return Err(Malformed::Short {
            what: "a neighbour",
            len: p.len(),
        });
    }
    let mut out = p[..HDR_LEN].to_vec();
    for at in attrs(&p[HDR_LEN..])? {
        if at.ty != NDA_CACHEINFO && at.ty != NDA_PROBES {
            put(&mut out, at.ty, at.data);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(family: u8, prio: u32, table: u32, proto: Option<u8>) -> Vec<u8> {
        let mut p = vec![family, 0, 0, 0, table.min(252) as u8, 0, 0, 1, 0, 0, 0, 0];
        put(&mut p, FRA_PRIORITY, &prio.to_ne_bytes());
        put(&mut p, FRA_TABLE, &table.to_ne_bytes());
        if let Some(x) = proto {
            put(&mut p, FRA_PROTOCOL, &[x]);
        }
        p
    }

    #[test]
    fn rules_the_kernel_makes_are_left() {
        let main = parse_rule(&rule(2, 32766, 254, Some(RTPROT_KERNEL))).unwrap();
        assert!(!main.kept());
        let mine = parse_rule(&rule(2, 100, 100, Some(4))).unwrap();
        assert!(mine.kept());
        assert_eq!(mine.text(), "rule4 prio 100 table 100 action 1");
        // without FRA_PROTOCOL: by priority and table
        assert!(!parse_rule(&rule(10, 0, 255, None)).unwrap().kept());
        assert!(parse_rule(&rule(10, 5, 255, None)).unwrap().kept());
        assert!(parse_rule(&[0; 4]).is_err());
    }

    #[test]
    fn permanent_neighbours_are_kept() {
        let mut p = vec![2, 0, 0, 0, 3, 0, 0, 0];
        p.extend(NUD_PERMANENT.to_ne_bytes());
        p.extend([0, 1]);
        put(&mut p, NDA_DST, &[10, 9, 0, 9]);
        put(&mut p, NDA_LLADDR, &[2, 0, 0, 0, 0, 9]);
        put(&mut p, NDA_CACHEINFO, &[0; 16]);
        let n = parse_neigh(&p).unwrap();
        assert!(n.kept());
        assert_eq!(
            n.text(|i| format!("if{i}")),
            "neigh 10.9.0.9 dev if3 lladdr 02:00:00:00:00:09"
        );
        let again = parse_neigh(&replay_neigh(&p).unwrap()).unwrap();
        assert_eq!(again, n);
        assert!(replay_neigh(&p).unwrap().len() < p.len());
        p[8..10].copy_from_slice(&0x02u16.to_ne_bytes()); // NUD_REACHABLE
        assert!(!parse_neigh(&p).unwrap().kept());
    }
}
