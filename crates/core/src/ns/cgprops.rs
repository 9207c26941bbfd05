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
                why,
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
            list.apply(&text).map_err(refused)?;
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
    pub fn apply(&mut self, text: &str) -> Result<(), String> {
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
                            _ => return Err(format!("expected ',' or ']' after {p:?}")),
                        }
                    }
                    _ => return Err(format!("expected a property of {ctrl:?} or ']'")),
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
                other => return Err(format!("unknown strategy {other:?} for {ctrl:?}")),
            }
        }
        Ok(())
    }
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

fn tokens(text: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\n') | None => return Err("a quoted name is not closed".into()),
                        Some(ch) => s.push(ch),
                    }
                }
                if s.is_empty() {
                    return Err("an empty quoted name".into());
                }
                out.push(Tok::Str(s));
            }
            ':' => out.push(Tok::Colon),
            '-' => out.push(Tok::Dash),
            '[' => out.push(Tok::Open),
            ']' => out.push(Tok::Close),
            ',' => out.push(Tok::Comma),
            c if c.is_whitespace() => {}
            c => return Err(format!("unexpected {c:?}")),
        }
    }
    Ok(out)
}

type Toks<'a> = std::iter::Peekable<std::slice::Iter<'a, Tok>>;

fn expect(it: &mut Toks, want: &Tok, what: &str) -> Result<(), String> {
    match it.next() {
        Some(t) if t == want => Ok(()),
        _ => Err(format!("expected {what}")),
    }
}

fn expect_str(it: &mut Toks, what: &str) -> Result<String, String> {
    match it.next() {
        Some(Tok::Str(s)) => Ok(s.clone()),
        _ => Err(format!("expected {what}")),
    }
}

fn expect_word(it: &mut Toks, word: &str) -> Result<(), String> {
    match it.next() {
        Some(Tok::Str(s)) if s == word => Ok(()),
        _ => Err(format!("expected \"{word}\"")),
    }
}

/// A property or directory name: one plain path component.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(format!("{name:?} is not a file name"));
    }
    Ok(())
}

/// One hierarchy of the tree's root, as crest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Its controllers as `/proc/PID/cgroup` names them ("" for v2).
    pub ctrls: String,
    /// The root's cgroup in it.
    pub path: String,
    /// That cgroup's directory where crest has the hierarchy mounted.
    pub dir: PathBuf,
}

impl Hierarchy {
    fn names(&self) -> Vec<String> {
        names_of(&self.ctrls)
    }
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

/// Records the settings of the root's cgroups (below each hierarchy's
/// root; the root cgroup of a hierarchy is the machine's and is left
/// out). `only`: `--cgroup-dump-controller` (empty: every controller).
pub fn dump(
    pid: i32,
    hierarchies: &[Hierarchy],
    list: &PropList,
    only: &[String],
) -> Result<CgroupEntry, DumpError> {
    let mut out = CgroupEntry::default();
    let mut count = 0;
    for h in hierarchies {
        let names = h.names();
        if h.path == "/" {
            continue;
        }
        if !only.is_empty() && !names.iter().any(|n| only.contains(n)) {
            continue;
        }
        // one entry per hierarchy; a cgroup below one recorded is in it
        let k = match out.controllers.iter().position(|c| c.cnames == names) {
            Some(k) => k,
            None => {
                out.controllers.push(CgControllerEntry {
                    cnames: names.clone(),
                    dirs: Vec::new(),
                    is_threaded: None,
                });
                out.controllers.len() - 1
            }
        };
        let below =
            |top: &str| top == h.path || top == "/" || h.path.starts_with(&format!("{top}/"));
        if out.controllers[k].dirs.iter().any(|d| below(&d.dir_name)) {
            continue;
        }
        let mut dir = dump_dir(pid, &h.dir, &h.path, &names, list, 0, &mut count)?;
        dir.dir_name = h.path.clone();
        let within = |d: &CgroupDirEntry| d.dir_name.starts_with(&format!("{}/", h.path));
        out.controllers[k].dirs.retain(|d| !within(d));
        out.controllers[k].dirs.push(dir);
    }
    Ok(out)
}

fn io_err(pid: i32, path: &Path, step: &'static str) -> impl FnOnce(std::io::Error) -> DumpError {
    let path = path.display().to_string();
    move |e| DumpError::Io {
        pid,
        step,
        source: std::io::Error::new(e.kind(), format!("{path}: {e}")),
    }
}

fn perms_of(meta: &std::fs::Metadata) -> CgroupPerms {
    CgroupPerms {
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    }
}

/// The properties a directory has for `names` (v1 controllers, or none
/// for v2, whose controllers the directory itself lists).
fn props_for(dir: &Path, names: &[String], list: &PropList) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if names.is_empty() {
        out.extend(V2_GLOBAL.iter().map(|s| s.to_string()));
        let ctrls = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        for c in ctrls.split_whitespace() {
            if let Some((_, p)) = V2.iter().find(|(n, _)| *n == c) {
                out.extend(p.iter().map(|s| s.to_string()));
            }
        }
        out.push(SUBTREE.to_string());
    } else {
        for n in names {
            out.extend(list.of(n).iter().cloned());
        }
        out.extend(V1_GLOBAL.iter().map(|s| s.to_string()));
    }
    out
}

fn dump_dir(
    pid: i32,
    dir: &Path,
    name: &str,
    names: &[String],
    list: &PropList,
    depth: usize,
    count: &mut usize,
) -> Result<CgroupDirEntry, DumpError> {
    *count += 1;
    if *count > MAX_DIRS || depth > MAX_DEPTH {
        return Err(DumpError::Unsupported {
            pid,
            what: format!(
                "a cgroup tree of more than {MAX_DIRS} directories or {MAX_DEPTH} levels \
                 ({}; dump with --manage-cgroups=ignore to not carry it)",
                dir.display()
            ),
        });
    }
    let meta = std::fs::metadata(dir).map_err(io_err(pid, dir, "read cgroup"))?;
    let mut entry = CgroupDirEntry {
        dir_name: name.to_string(),
        dir_perms: Some(perms_of(&meta)),
        ..CgroupDirEntry::default()
    };
    for prop in props_for(dir, names, list) {
        let path = dir.join(&prop);
        let Ok(meta) = std::fs::metadata(&path) else {
            // (not every kernel has every file: memsw without swap
            // accounting, kmem limits since 6.x)
            continue;
        };
        let value = match std::fs::read_to_string(&path) {
            Ok(v) => v,
            Err(e) => {
                crate::info!("cgroup property {} not read: {e}", path.display());
                continue;
            }
        };
        if value.len() > MAX_VALUE {
            return Err(DumpError::Unsupported {
                pid,
                what: format!(
                    "a cgroup property of {} bytes ({})",
                    value.len(),
                    path.display()
                ),
            });
        }
        entry.properties.push(CgroupPropEntry {
            name: prop,
            value: value.trim_end_matches('\n').to_string(),
            perms: Some(perms_of(&meta)),
        });
    }
    let mut subdirs: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_err(pid, dir, "list cgroup"))?
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_type().ok()?.is_dir().then_some(())?;
            e.file_name().into_string().ok()
        })
        .collect();
    subdirs.sort();
    for sub in subdirs {
        let child = dump_dir(pid, &dir.join(&sub), &sub, names, list, depth + 1, count)?;
        entry.children.push(child);
    }
    Ok(entry)
}

/// Writes `cgroup.img`.
pub fn write(dir: &Path, entry: &CgroupEntry) -> Result<(), DumpError> {
    crest_images::write_image(
        dir,
        names::CGROUP,
        crest_images::magic::CGROUP,
        std::slice::from_ref(entry),
    )?;
    Ok(())
}

/// Reads `cgroup.img` (none when absent).
pub fn read(dir: &Path) -> Result<Option<CgroupEntry>, RestoreError> {
    if !dir.join(names::CGROUP).exists() {
        return Ok(None);
    }
    let mut all: Vec<CgroupEntry> =
        crest_images::read_image(dir, names::CGROUP, crest_images::magic::CGROUP)?;
    let bad = |what: String| RestoreError::BadImage {
        pid: 0,
        file: names::CGROUP.into(),
        what,
    };
    if all.len() > 1 {
        return Err(bad(format!("{} entries", all.len())));
    }
    let Some(entry) = all.pop() else {
        return Ok(None);
    };
    let mut count = 0;
    for c in &entry.controllers {
        for d in &c.dirs {
            check_dir(d, 0, &mut count, true).map_err(&bad)?;
        }
    }
    Ok(Some(entry))
}

/// Bounds and names of a recorded directory tree.
fn check_dir(d: &CgroupDirEntry, depth: usize, count: &mut usize, top: bool) -> Result<(), String> {
    *count += 1;
    if *count > MAX_DIRS || depth > MAX_DEPTH {
        return Err(format!(
            "more than {MAX_DIRS} cgroup directories or {MAX_DEPTH} levels"
        ));
    }
    if top {
        if !d.dir_name.starts_with('/') || d.dir_name.split('/').any(|c| c == "..") {
            return Err(format!("cgroup path {:?}", d.dir_name));
        }
    } else {
        check_name(&d.dir_name)?;
    }
    for p in &d.properties {
        check_name(&p.name)?;
        if p.value.len() > MAX_VALUE {
            return Err(format!("a value of {} bytes for {}", p.value.len(), p.name));
        }
    }
    for c in &d.children {
        check_dir(c, depth + 1, count, false)?;
    }
    Ok(())
}

/// Makes the cgroup directory `dir` of a hierarchy (`ctrls`, dumped as
/// `dumped`) ready for the restored root, as `mode` says, with the
/// settings `saved` recorded: `moves` is false for a hierarchy crest is in
/// already (the root stays where crest is).
pub fn prepare(
    dir: &Path,
    ctrls: &str,
    dumped: &str,
    moves: bool,
    saved: Option<&CgroupEntry>,
    mode: CgMode,
) -> Result<(), RestoreError> {
    let existed = dir.is_dir();
    let shown = dir.display();
    let refuse = |kind: std::io::ErrorKind, what: String| RestoreError::Io {
        pid: 0,
        step: format!("--manage-cgroups={}", mode_name(mode)),
        source: std::io::Error::new(kind, what),
    };
    match mode {
        CgMode::Strict if existed && moves => {
            return Err(refuse(
                std::io::ErrorKind::AlreadyExists,
                format!("cgroup {shown} exists (strict makes every cgroup afresh)"),
            ))
        }
        CgMode::None | CgMode::Props if !existed => {
            return Err(refuse(
                std::io::ErrorKind::NotFound,
                format!("cgroup {shown} does not exist (this mode needs it made already)"),
            ))
        }
        _ => {}
    }
    if !existed {
        std::fs::create_dir_all(dir).rat(0, format!("make cgroup {shown}"))?;
    }
    let names = names_of(ctrls);
    let Some(entry) = saved.and_then(|s| {
        s.controllers
            .iter()
            .filter(|c| {
                let mut n = c.cnames.clone();
                n.sort();
                n == names
            })
            .flat_map(|c| c.dirs.iter())
            .find(|d| d.dir_name == dumped)
    }) else {
        return Ok(());
    };
    restore_dir(dir, entry, existed, mode)
}

fn mode_name(mode: CgMode) -> &'static str {
    match mode {
        CgMode::Ignore => "ignore",
        CgMode::None => "none",
        CgMode::Props => "props",
        CgMode::Soft | CgMode::Default => "soft",
        CgMode::Full => "full",
        CgMode::Strict => "strict",
    }
}

/// Whether `mode` writes the settings of a directory that `existed`.
fn applies(mode: CgMode, existed: bool) -> bool {
    match mode {
        CgMode::Full | CgMode::Strict | CgMode::Props => true,
        CgMode::Soft | CgMode::Default => !existed,
        CgMode::None | CgMode::Ignore => false,
    }
}

fn restore_dir(
    dir: &Path,
    entry: &CgroupDirEntry,
    existed: bool,
    mode: CgMode,
) -> Result<(), RestoreError> {
    let apply = applies(mode, existed);
    if apply {
        if let Some(p) = &entry.dir_perms {
            set_perms(dir, p)?;
        }
        // the subtree's controllers once the directory's own are set
        let (subtree, own): (Vec<_>, Vec<_>) =
            entry.properties.iter().partition(|p| p.name == SUBTREE);
        for p in own.into_iter().chain(subtree) {
            write_prop(dir, p)?;
        }
    }
    if matches!(mode, CgMode::None | CgMode::Props) {
        // (they make nothing: the directories below are the caller's)
        for c in &entry.children {
            let sub = dir.join(&c.dir_name);
            if sub.is_dir() {
                restore_dir(&sub, c, true, mode)?;
            }
        }
        return Ok(());
    }
    for c in &entry.children {
        let sub = dir.join(&c.dir_name);
        let there = sub.is_dir();
        if !there {
            std::fs::create_dir(&sub).rat(0, format!("make cgroup {}", sub.display()))?;
        }
        restore_dir(&sub, c, there, mode)?;
    }
    Ok(())
}

fn set_perms(path: &Path, p: &CgroupPerms) -> Result<(), RestoreError> {
    let meta = std::fs::metadata(path).rat(0, format!("read {}", path.display()))?;
    if meta.uid() != p.uid || meta.gid() != p.gid {
        std::os::unix::fs::chown(path, Some(p.uid), Some(p.gid))
            .rat(0, format!("give {} its owner", path.display()))?;
    }
    if meta.mode() & 0o7777 != p.mode & 0o7777 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(p.mode & 0o7777))
            .rat(0, format!("give {} its mode", path.display()))?;
    }
    Ok(())
}

/// Writes one setting back, unless it is in place already.
fn write_prop(dir: &Path, p: &CgroupPropEntry) -> Result<(), RestoreError> {
    if p.name == "cgroup.procs" || p.name == "tasks" {
        return Ok(());
    }
    let path = dir.join(&p.name);
    if !path.exists() {
        return Err(RestoreError::Unsupported {
            pid: 0,
            what: format!(
                "the cgroup setting {} (no such file here; {} was {:?} at dump)",
                path.display(),
                p.name,
                p.value
            ),
        });
    }
    if let Some(perms) = &p.perms {
        set_perms(&path, perms)?;
    }
    let now = std::fs::read_to_string(&path).rat(0, format!("read {}", path.display()))?;
    let now = now.trim_end_matches('\n');
    if now == p.value {
        return Ok(());
    }
    let put = |file: &Path, v: &str| {
        std::fs::write(file, v).rat(0, format!("write {v:?} to {}", file.display()))
    };
    match p.name.as_str() {
        "devices.list" => {
            put(&dir.join("devices.deny"), "a")?;
            for l in p.value.lines().filter(|l| !l.trim().is_empty()) {
                put(&dir.join("devices.allow"), l)?;
            }
        }
        "memory.oom_control" => {
            let want = p
                .value
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill_disable "))
                .unwrap_or("0");
            let have = now
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill_disable "))
                .unwrap_or("0");
            if want != have {
                put(&path, want)?;
            }
        }
        "net_prio.ifpriomap" => {
            for l in p.value.lines().filter(|l| !now.lines().any(|n| n == *l)) {
                let ifname = l.split_whitespace().next().unwrap_or("");
                if !now
                    .lines()
                    .any(|n| n.split_whitespace().next() == Some(ifname))
                {
                    crate::warn!(
                        "{}: interface {ifname} is not here: its priority is not set",
                        path.display()
                    );
                    continue;
                }
                put(&path, l)?;
            }
        }
        SUBTREE => {
            for c in p.value.split_whitespace() {
                if !now.split_whitespace().any(|n| n == c) {
                    put(&path, &format!("+{c}"))?;
                }
            }
        }
        _ => put(&path, &p.value)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
