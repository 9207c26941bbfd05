//! Cgroup settings (CRIU's cgroup properties, `--manage-cgroups`).
//!
//! A dump records, in CRIU's `cgroup.img` (`cgroup_entry.controllers`),
//! each hierarchy the tree's root is in below the hierarchy's root: the
//! root's cgroup directory, every directory below it, and for each the
//! settings of its controllers with their owners and modes. The settings
//! are CRIU's built-in list for cgroup v1 (`cpu.shares`,
//! `memory.limit_in_bytes`, `pids.max`, `devices.list`, ...; changed with
//! `--cgroup-props` / `--cgroup-props-file` in CRIU's format, and limited
//! to some controllers with `--cgroup-dump-controller`), and crest's list
//! for cgroup v2 (CRIU names none): `cgroup.max.descendants`,
//! `cgroup.max.depth`, `cgroup.subtree_control`, and the limits of each
//! controller the directory has (`memory.max`, `cpu.max`, `pids.max`,
//! ...).
//!
//! A restore writes them back as the mode says, before the root moves in
//! (a cpuset without cpus takes no task): `soft` (the default) into the
//! directories crest makes, `full` and `props` into every one, `strict`
//! into directories that must not exist yet; `none` and `props` need the
//! directories to exist. A value already in place is not written again; a
//! value the kernel refuses fails the restore naming the file.

mod dump;
mod image;
mod restore;

pub use dump::{dump, Hierarchy};
pub use image::{read, write};
pub use restore::prepare;

use crate::error::{DumpError, RestoreCtx, RestoreError};
use crate::opts::{CgMode, Refused};
use crest_images::names;
use crest_images::pb::{
    CgControllerEntry, CgroupDirEntry, CgroupEntry, CgroupPerms, CgroupPropEntry,
};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// CRIU's built-in properties of v1 controllers, in the order they are
/// set (`memory.limit_in_bytes` before `memory.memsw.limit_in_bytes`).
const V1: &[(&str, &[&str])] = &[
    (
        "cpu",
        &[
            "cpu.shares",
            "cpu.cfs_period_us",
            "cpu.cfs_quota_us",
            "cpu.rt_period_us",
            "cpu.rt_runtime_us",
        ],
    ),
    (
        "memory",
        &[
            "memory.limit_in_bytes",
            "memory.memsw.limit_in_bytes",
            "memory.swappiness",
            "memory.soft_limit_in_bytes",
            "memory.move_charge_at_immigrate",
            "memory.oom_control",
            "memory.use_hierarchy",
            "memory.kmem.limit_in_bytes",
            "memory.kmem.tcp.limit_in_bytes",
        ],
    ),
    (
        "cpuset",
        &[
            "cpuset.cpus",
            "cpuset.mems",
            "cpuset.memory_migrate",
            "cpuset.cpu_exclusive",
            "cpuset.mem_exclusive",
            "cpuset.mem_hardwall",
            "cpuset.memory_spread_page",
            "cpuset.memory_spread_slab",
            "cpuset.sched_load_balance",
            "cpuset.sched_relax_domain_level",
        ],
    ),
    ("blkio", &["blkio.weight"]),
    ("freezer", &[]),
    ("perf_event", &[]),
    ("net_cls", &["net_cls.classid"]),
    ("net_prio", &["net_prio.ifpriomap"]),
    ("pids", &["pids.max"]),
    ("devices", &["devices.list"]),
];

/// Of every v1 directory, whatever its controllers.
const V1_GLOBAL: &[&str] = &["cgroup.clone_children", "notify_on_release"];

/// Of every cgroup v2 directory (`cgroup.subtree_control` is set last,
/// before the directories below are).
const V2_GLOBAL: &[&str] = &["cgroup.max.descendants", "cgroup.max.depth"];

/// Of the v2 controllers a directory has (its `cgroup.controllers`).
const V2: &[(&str, &[&str])] = &[
    ("cpu", &["cpu.weight", "cpu.max", "cpu.idle"]),
    (
        "memory",
        &[
            "memory.min",
            "memory.low",
            "memory.high",
            "memory.max",
            "memory.swap.high",
            "memory.swap.max",
            "memory.oom.group",
        ],
    ),
    ("pids", &["pids.max"]),
    ("io", &["io.weight"]),
    ("cpuset", &["cpuset.cpus", "cpuset.mems"]),
];

const SUBTREE: &str = "cgroup.subtree_control";

/// Directories a dump records at most (below the root's, all hierarchies).
const MAX_DIRS: usize = 4096;
/// How deep below the root's directory.
const MAX_DEPTH: usize = 32;
/// Bytes of one value.
const MAX_VALUE: usize = 64 << 10;
/// Bytes of a `--cgroup-props-file`.
const MAX_PROPS_FILE: u64 = 1 << 20;

/// Which v1 properties are carried, per controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropList(Vec<(String, Vec<String>)>);

impl PropList {
    /// CRIU's built-in list.
    pub fn builtin() -> PropList {
        PropList(
            V1.iter()
                .map(|(c, p)| (c.to_string(), p.iter().map(|s| s.to_string()).collect()))
                .collect(),
        )
    }

    /// The built-in list changed by `--cgroup-props` (a text in CRIU's
    /// format) and then `--cgroup-props-file`.
    pub fn with(stream: Option<&str>, file: Option<&str>) -> Result<PropList, Refused> {
        let mut list = PropList::builtin();
        if let Some(s) = stream {
            list.apply(s).map_err(|why| Refused {
                option: "--cgroup-props".into(),
                why: why.to_string(),
            })?;
        }
        if let Some(f) = file {
            let refused = |why: String| Refused {
                option: "--cgroup-props-file".into(),
                why: format!("{f}: {why}"),
            };
            let meta = std::fs::metadata(f).map_err(|e| refused(e.to_string()))?;
            if meta.len() > MAX_PROPS_FILE {
                return Err(refused(format!("larger than {MAX_PROPS_FILE} bytes")));
            }
            let text = std::fs::read_to_string(f).map_err(|e| refused(e.to_string()))?;
            list.apply(&text).map_err(|e| refused(e.to_string()))?;
        }
        Ok(list)
    }

    /// The properties of controller `name`.
    pub fn of(&self, name: &str) -> &[String] {
        self.0
            .iter()
            .find(|(c, _)| c == name)
            .map_or(&[], |(_, p)| p.as_slice())
    }

    /// Applies a text in CRIU's format:
    ///
    /// ```text
    /// "memory":
    ///  - "strategy": "merge"
    ///  - "properties": ["memory.high", "memory.max"]
    /// ```
    ///
    /// `replace` gives the controller these properties only, `merge` adds
    /// them to those it has.
    pub fn apply(&mut self, text: &str) -> Result<(), PropsError> {
        let toks = tokens(text)?;
        let mut it = toks.iter().peekable();
        while it.peek().is_some() {
            let ctrl = expect_str(&mut it, "a controller name")?;
            expect(&mut it, &Tok::Colon, "':' after the controller's name")?;
            expect(&mut it, &Tok::Dash, "'- \"strategy\"'")?;
            expect_word(&mut it, "strategy")?;
            expect(&mut it, &Tok::Colon, "':' after \"strategy\"")?;
            let strategy = expect_str(&mut it, "a strategy")?;
            expect(&mut it, &Tok::Dash, "'- \"properties\"'")?;
            expect_word(&mut it, "properties")?;
            expect(&mut it, &Tok::Colon, "':' after \"properties\"")?;
            expect(&mut it, &Tok::Open, "'['")?;
            let mut props = Vec::new();
            loop {
                match it.next() {
                    Some(Tok::Close) => break,
                    Some(Tok::Str(p)) => {
                        check_name(p)?;
                        props.push(p.clone());
                        match it.next() {
                            Some(Tok::Comma) => {}
                            Some(Tok::Close) => break,
                            _ => {
                                return Err(PropsError::Expected(format!("',' or ']' after {p:?}")))
                            }
                        }
                    }
                    _ => {
                        return Err(PropsError::Expected(format!(
                            "a property of {ctrl:?} or ']'"
                        )))
                    }
                }
            }
            let slot = match self.0.iter().position(|(c, _)| *c == ctrl) {
                Some(k) => k,
                None => {
                    self.0.push((ctrl.clone(), Vec::new()));
                    self.0.len() - 1
                }
            };
            match strategy.as_str() {
                "replace" => self.0[slot].1 = props,
                "merge" => self.0[slot].1.extend(props),
                other => {
                    return Err(PropsError::Strategy {
                        strategy: other.to_string(),
                        ctrl,
                    })
                }
            }
        }
        Ok(())
    }
}

/// A `--cgroup-props` text, or a recorded tree of cgroup directories,
/// crest cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropsError {
    #[error("expected {0}")]
    Expected(String),
    #[error("a quoted name is not closed")]
    Unclosed,
    #[error("an empty quoted name")]
    EmptyName,
    #[error("unexpected {0:?}")]
    Unexpected(char),
    #[error("{0:?} is not a file name")]
    NotAName(String),
    #[error("unknown strategy {strategy:?} for {ctrl:?}")]
    Strategy { strategy: String, ctrl: String },
    #[error("more than {dirs} cgroup directories or {depth} levels")]
    TooMany { dirs: usize, depth: usize },
    #[error("cgroup path {0:?}")]
    Path(String),
    #[error("a value of {len} bytes for {name}")]
    Value { len: usize, name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Str(String),
    Colon,
    Dash,
    Open,
    Close,
    Comma,
}

fn tokens(text: &str) -> Result<Vec<Tok>, PropsError> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\n') | None => return Err(PropsError::Unclosed),
                        Some(ch) => s.push(ch),
                    }
                }
                if s.is_empty() {
                    return Err(PropsError::EmptyName);
                }
                out.push(Tok::Str(s));
            }
            ':' => out.push(Tok::Colon),
            '-' => out.push(Tok::Dash),
            '[' => out.push(Tok::Open),
            ']' => out.push(Tok::Close),
            ',' => out.push(Tok::Comma),
            c if c.is_whitespace() => {}
            c => return Err(PropsError::Unexpected(c)),
        }
    }
    Ok(out)
}

type Toks<'a> = std::iter::Peekable<std::slice::Iter<'a, Tok>>;

fn expect(it: &mut Toks, want: &Tok, what: &str) -> Result<(), PropsError> {
    match it.next() {
        Some(t) if t == want => Ok(()),
        _ => Err(PropsError::Expected(what.to_string())),
    }
}

fn expect_str(it: &mut Toks, what: &str) -> Result<String, PropsError> {
    match it.next() {
        Some(Tok::Str(s)) => Ok(s.clone()),
        _ => Err(PropsError::Expected(what.to_string())),
    }
}

fn expect_word(it: &mut Toks, word: &str) -> Result<(), PropsError> {
    match it.next() {
        Some(Tok::Str(s)) if s == word => Ok(()),
        _ => Err(PropsError::Expected(format!("\"{word}\""))),
    }
}

/// A property or directory name: one plain path component.
fn check_name(name: &str) -> Result<(), PropsError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(PropsError::NotAName(name.to_string()));
    }
    Ok(())
}

fn names_of(ctrls: &str) -> Vec<String> {
    let mut v: Vec<String> = ctrls
        .split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::image::*;
    use super::restore::*;
    use super::*;

    #[test]
    fn props_text_merges_and_replaces() {
        let mut l = PropList::builtin();
        l.apply(
            "\"memory\":\n - \"strategy\": \"merge\"\n - \"properties\": [\"memory.high\", \"memory.max\"]\n\
             \"cpu\":\n - \"strategy\": \"replace\"\n - \"properties\": [\"cpu.shares\"]\n\
             \"hugetlb\":\n - \"strategy\": \"replace\"\n - \"properties\": [ ]\n",
        )
        .unwrap();
        assert_eq!(l.of("cpu"), ["cpu.shares"]);
        let mem = l.of("memory");
        assert_eq!(mem[0], "memory.limit_in_bytes");
        assert_eq!(&mem[mem.len() - 2..], ["memory.high", "memory.max"]);
        assert!(l.of("hugetlb").is_empty());
        assert_eq!(l.of("pids"), ["pids.max"]);
    }

    #[test]
    fn props_text_errors() {
        for bad in [
            "\"cpu\" - \"strategy\": \"merge\"",
            "\"cpu\":\n - \"strategy\": \"mix\"\n - \"properties\": []",
            "\"cpu\":\n - \"strategy\": \"merge\"\n - \"properties\": [\"../x\"]",
            "\"cpu\":\n - \"strategy\": \"merge\"\n - \"properties\": [\"a\" \"b\"]",
            "\"cpu",
            "cpu:",
        ] {
            assert!(PropList::builtin().apply(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn modes() {
        assert!(applies(CgMode::Default, false));
        assert!(!applies(CgMode::Default, true));
        assert!(applies(CgMode::Full, true));
        assert!(applies(CgMode::Props, true));
        assert!(!applies(CgMode::None, false));
    }

    #[test]
    fn recorded_trees_are_checked() {
        let mut d = CgroupDirEntry {
            dir_name: "/a".into(),
            ..CgroupDirEntry::default()
        };
        assert!(check_dir(&d, 0, &mut 0, true).is_ok());
        d.children.push(CgroupDirEntry {
            dir_name: "..".into(),
            ..CgroupDirEntry::default()
        });
        assert!(check_dir(&d, 0, &mut 0, true).is_err());
        d.children[0].dir_name = "b".into();
        d.properties.push(CgroupPropEntry {
            name: "../../etc/passwd".into(),
            value: String::new(),
            perms: None,
        });
        assert!(check_dir(&d, 0, &mut 0, true).is_err());
        d.dir_name = "/a/../..".into();
        d.properties.clear();
        assert!(check_dir(&d, 0, &mut 0, true).is_err());
    }
}
