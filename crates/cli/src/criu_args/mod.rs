//! CRIU's command line and configuration files, read into crest's one
//! [`Options`]: getopt_long's rules (options anywhere, `--opt=value`,
//! `--opt value`, clustered short options, `-v4`/`-vvvv`, unique prefixes
//! of long options, `--no-` forms of CRIU's boolean options, `--` ends the
//! options) over CRIU's option table, and CRIU's configuration files (one
//! option per line without its dashes, words split on blanks, `"quoted"`
//! words, `#` comments) read in CRIU's order: /etc/criu/default.conf,
//! ~/.criu/default.conf, $CRIU_CONFIG_FILE, `--config FILE` (which turns the
//! default files off, as `--no-default-config` does), then the command line.

use crest_core::opts::{parse_size, CgMode, JoinNs, NetworkLock, Options};
use std::path::{Path, PathBuf};

/// Whether an option takes an argument.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Arg {
    No,
    Required,
    Optional,
}

/// One option of CRIU's table: its long name, its short letter, its
/// argument, and whether a `--no-NAME` form exists.
struct Spec {
    long: &'static str,
    short: Option<char>,
    arg: Arg,
    negatable: bool,
}

const fn spec(long: &'static str, short: Option<char>, arg: Arg, negatable: bool) -> Spec {
    Spec {
        long,
        short,
        arg,
        negatable,
    }
}

use Arg::{No, Optional, Required};

/// CRIU's options (criu/config.c, CRIU 4.x), every one crest reads.
const SPECS: &[Spec] = &[
    spec("tree", Some('t'), Required, false),
    spec("leave-stopped", Some('s'), No, false),
    spec("leave-running", Some('R'), No, false),
    spec("restore-detached", Some('d'), No, true),
    spec("restore-sibling", Some('S'), No, true),
    spec("daemon", None, No, true),
    spec("images-dir", Some('D'), Required, false),
    spec("work-dir", Some('W'), Required, false),
    spec("log-file", Some('o'), Required, false),
    spec("join-ns", Some('J'), Required, false),
    spec("root", Some('r'), Required, false),
    spec("ext-unix-sk", Some('x'), Optional, false),
    spec("help", Some('h'), No, false),
    spec("tcp-established", None, No, true),
    spec("close", None, Required, false),
    spec("log-pid", None, No, true),
    spec("version", Some('V'), No, false),
    spec("evasive-devices", None, No, true),
    spec("pidfile", None, Required, false),
    spec("veth-pair", None, Required, false),
    spec("action-script", None, Required, false),
    spec("link-remap", None, No, true),
    spec("shell-job", Some('j'), No, true),
    spec("file-locks", Some('l'), No, true),
    spec("page-server", None, No, true),
    spec("address", None, Required, false),
    spec("port", None, Required, false),
    spec("prev-images-dir", None, Required, false),
    spec("track-mem", None, No, true),
    spec("auto-dedup", None, No, true),
    spec("libdir", Some('L'), Required, false),
    spec("cpu-cap", None, Optional, false),
    spec("force-irmap", None, No, true),
    spec("ext-mount-map", Some('M'), Required, false),
    spec("exec-cmd", None, No, false),
    spec("manage-cgroups", None, Optional, false),
    spec("cgroup-root", None, Required, false),
    spec("inherit-fd", None, Required, false),
    spec("feature", None, Required, false),
    spec("skip-mnt", None, Required, false),
    spec("enable-fs", None, Required, false),
    spec("enable-external-sharing", None, No, false),
    spec("enable-external-masters", None, No, false),
    spec("freeze-cgroup", None, Required, false),
    spec("ghost-limit", None, Required, false),
    spec("irmap-scan-path", None, Required, false),
    spec("lsm-profile", None, Required, false),
    spec("lsm-mount-context", None, Required, false),
    spec("timeout", None, Required, false),
    spec("external", None, Required, false),
    spec("empty-ns", None, Required, false),
    spec("lazy-pages", None, No, false),
    spec("extra", None, No, true),
    spec("experimental", None, No, true),
    spec("all", None, No, false),
    spec("cgroup-props", None, Required, false),
    spec("cgroup-props-file", None, Required, false),
    spec("cgroup-dump-controller", None, Required, false),
    spec("cgroup-yard", None, Required, false),
    spec("skip-in-flight", None, No, true),
    spec("deprecated", None, No, true),
    spec("display-stats", None, No, true),
    spec("weak-sysctls", None, No, true),
    spec("status-fd", None, Required, false),
    spec("tcp-close", None, No, true),
    spec("verbosity", Some('v'), Optional, false),
    spec("ps-socket", None, Required, false),
    spec("remote", None, No, true),
    spec("relative-timestamps", None, No, true),
    spec("config", None, Required, false),
    spec("no-default-config", None, No, false),
    spec("tls-cacert", None, Required, false),
    spec("tls-cacrl", None, Required, false),
    spec("tls-cert", None, Required, false),
    spec("tls-key", None, Required, false),
    spec("tls", None, No, true),
    spec("tls-no-cn-verify", None, No, true),
    spec("pre-dump-mode", None, Required, false),
    spec("file-validation", None, Required, false),
    spec("network-lock", None, Required, false),
    spec("mntns-compat-mode", None, No, true),
    spec("skip-file-rwx-check", None, No, true),
    spec("unprivileged", None, No, true),
    spec("ghost-fiemap", None, No, true),
    spec("allow-uprobes", None, No, true),
    spec("log-to-stderr", None, No, true),
    spec("stream", None, No, true),
];

/// What a command line asks for.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The words that are not options, in order: the action first.
    pub words: Vec<String>,
    pub opts: Options,
    pub help: bool,
    pub version: bool,
    /// `--close N` descriptors (closed before the action, as CRIU does).
    pub close: Vec<i32>,
    /// `--stream`, `--remote`, `--deprecated`: taken, noted.
    pub stream: bool,
}

/// One option and its argument, as getopt would return it.
#[derive(Debug, PartialEq, Eq)]
struct Got {
    name: &'static str,
    /// For a `--no-NAME` form.
    negated: bool,
    value: Option<String>,
}

/// A command line or configuration file crest cannot read, in getopt's
/// and CRIU's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("option '--{0}' doesn't allow an argument")]
    NoArgumentAllowed(&'static str),
    #[error("option '--{0}' requires an argument")]
    ArgumentRequired(&'static str),
    #[error("invalid option -- '{0}'")]
    InvalidShort(char),
    #[error("option requires an argument -- '{0}'")]
    ShortArgumentRequired(char),
    #[error("unrecognized option '--{0}'")]
    Unrecognized(String),
    #[error("option '--{0}' is ambiguous")]
    Ambiguous(String),
    #[error("invalid argument for --{option}: {value}")]
    BadValue { option: &'static str, value: String },
    #[error("unsupported empty namespace: {0}")]
    EmptyNs(String),
    #[error("{0:?} is not an option")]
    NotAnOption(String),
    #[error("can't open configuration file {0}")]
    NoConfig(String),
    /// An error in the configuration file `path`.
    #[error("{}: {why}", path.display())]
    InConfig {
        path: PathBuf,
        #[source]
        why: Box<ArgError>,
    },
}

/// Splits `args` (without the program name) into options and words by
/// getopt_long's rules.
fn getopt(args: &[String]) -> Result<(Vec<Got>, Vec<String>), ArgError> {
    let mut got = Vec::new();
    let mut words = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            words.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let (s, negated) = find_long(name)?;
            let value = match (s.arg, inline) {
                (No, Some(_)) => return Err(ArgError::NoArgumentAllowed(s.long)),
                (No, None) => None,
                (Optional, v) => v,
                (Required, Some(v)) => Some(v),
                (Required, None) => {
                    let v = args.get(i).ok_or(ArgError::ArgumentRequired(s.long))?;
                    i += 1;
                    Some(v.clone())
                }
            };
            got.push(Got {
                name: s.long,
                negated,
                value,
            });
        } else if a.len() > 1 && a.starts_with('-') {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut k = 0;
            while k < chars.len() {
                let c = chars[k];
                k += 1;
                let s = SPECS
                    .iter()
                    .find(|s| s.short == Some(c))
                    .ok_or(ArgError::InvalidShort(c))?;
                let rest: String = chars[k..].iter().collect();
                let value = match s.arg {
                    No => None,
                    Optional => {
                        k = chars.len();
                        (!rest.is_empty()).then_some(rest)
                    }
                    Required => {
                        k = chars.len();
                        if rest.is_empty() {
                            let v = args.get(i).ok_or(ArgError::ShortArgumentRequired(c))?;
                            i += 1;
                            Some(v.clone())
                        } else {
                            Some(rest)
                        }
                    }
                };
                got.push(Got {
                    name: s.long,
                    negated: false,
                    value,
                });
            }
        } else {
            words.push(a.clone());
        }
    }
    Ok((got, words))
}

/// The option a long name (or a unique prefix of one, or a `no-` form)
/// names.
fn find_long(name: &str) -> Result<(&'static Spec, bool), ArgError> {
    let exact = |n: &str| SPECS.iter().find(|s| s.long == n);
    if let Some(s) = exact(name) {
        return Ok((s, false));
    }
    if let Some(s) = name.strip_prefix("no-").and_then(exact) {
        if s.negatable {
            return Ok((s, true));
        }
    }
    let mut hits: Vec<(&'static Spec, bool)> = SPECS
        .iter()
        .filter(|s| s.long.starts_with(name))
        .map(|s| (s, false))
        .collect();
    if let Some(rest) = name.strip_prefix("no-") {
        hits.extend(
            SPECS
                .iter()
                .filter(|s| s.negatable && s.long.starts_with(rest))
                .map(|s| (s, true)),
        );
    }
    match hits.len() {
        1 => Ok(hits[0]),
        0 => Err(ArgError::Unrecognized(name.to_string())),
        _ => Err(ArgError::Ambiguous(name.to_string())),
    }
}

/// Applies one option to `p`.
fn apply(p: &mut Parsed, g: Got) -> Result<(), ArgError> {
    match g.name {
        "help" => p.help = true,
        "version" => p.version = true,
        "stream" | "remote" => p.stream = !g.negated,
        "close" => {
            let v = g.value.clone().unwrap_or_default();
            let fd = v.trim().parse::<i32>().map_err(|_| ArgError::BadValue {
                option: "close",
                value: v.clone(),
            })?;
            p.close.push(fd);
        }
        _ => return apply_opt(&mut p.opts, g),
    }
    Ok(())
}

/// C's `atoi`: leading blanks, an optional sign, the digits that follow;
/// anything else is 0.
fn atoi(v: &str) -> u32 {
    let v = v.trim_start();
    let v = v.strip_prefix('+').unwrap_or(v);
    let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(0)
}

/// Applies one option of the action to `o`.
fn apply_opt(o: &mut Options, g: Got) -> Result<(), ArgError> {
    let on = !g.negated;
    let val = || g.value.clone().unwrap_or_default();
    let bad = |what: &str| ArgError::BadValue {
        option: g.name,
        value: what.to_string(),
    };
    let int = |v: &str| v.trim().parse::<i64>().map_err(|_| bad(v));
    match g.name {
        "tree" => {
            let n = int(&val())?;
            if n <= 0 || n > i32::MAX as i64 {
                return Err(bad(&val()));
            }
            o.pid = n as i32;
        }
        "leave-stopped" => o.leave_stopped = true,
        "leave-running" => o.leave_running = true,
        "restore-detached" | "daemon" => o.detached = on,
        "restore-sibling" => o.restore_sibling = on,
        "images-dir" => o.dir = PathBuf::from(val()),
        "work-dir" => o.work_dir = Some(PathBuf::from(val())),
        "log-file" => o.log_file = Some(PathBuf::from(val())),
        "join-ns" => {
            let v = val();
            let (ns, rest) = v.split_once(':').ok_or_else(|| bad(&v))?;
            let (file, extra) = match rest.split_once(',') {
                Some((f, e)) => (f.to_string(), Some(e.to_string())),
                None => (rest.to_string(), None),
            };
            o.join_ns.push(JoinNs {
                ns: ns.to_string(),
                file,
                extra,
            });
        }
        "root" => o.root = Some(PathBuf::from(val())),
        "ext-unix-sk" => {
            o.ext_unix_sk = true;
            // --ext-unix-sk=INO[,INO]: sockets the restore's caller gives
            if let Some(v) = g.value.as_deref().filter(|v| !v.is_empty()) {
                for ino in v.split(',') {
                    o.ext_unix_sk_ids
                        .push(ino.trim().parse().map_err(|_| bad(v))?);
                }
            }
        }
        "tcp-established" => o.tcp_established = on,
        "log-pid" => o.log_pid = on,
        "evasive-devices" => o.evasive_devices = on,
        "pidfile" => o.pidfile = Some(PathBuf::from(val())),
        "veth-pair" => {
            let v = val();
            let (inside, outside) = v.split_once('=').ok_or_else(|| bad(&v))?;
            o.external.push(format!("veth[{inside}]:{outside}"));
        }
        "action-script" => o.action_scripts.push(val()),
        "link-remap" => o.link_remap = on,
        "shell-job" => o.shell_job = on,
        "file-locks" => o.file_locks = on,
        "page-server" => o.page_server = on,
        "address" => o.address = Some(val()),
        "port" => {
            let n = int(&val())?;
            o.port = Some(
                u16::try_from(n)
                    .ok()
                    .filter(|&n| n != 0)
                    .ok_or_else(|| bad(&val()))?,
            );
        }
        "prev-images-dir" => o.prev_images_dir = Some(PathBuf::from(val())),
        "track-mem" => o.track_mem = on,
        "auto-dedup" => o.auto_dedup = on,
        "libdir" | "deprecated" | "relative-timestamps" => {}
        "cpu-cap" => o.cpu_cap = Some(g.value.clone().unwrap_or_else(|| "all".into())),
        "force-irmap" => o.force_irmap = on,
        "ext-mount-map" => {
            let v = val();
            if v == "auto" {
                o.auto_ext_mnt = true;
            } else {
                let (a, b) = v.split_once(':').ok_or_else(|| bad(&v))?;
                o.external.push(format!("mnt[{a}]:{b}"));
            }
        }
        "exec-cmd" => o.exec_cmd.push(String::new()),
        "manage-cgroups" => {
            o.manage_cgroups = match &g.value {
                None => CgMode::Soft,
                Some(v) => CgMode::parse(v).ok_or_else(|| bad(v))?,
            }
        }
        "cgroup-root" => {
            let v = val();
            o.cgroup_roots.push(match v.split_once(':') {
                Some((c, path)) => (Some(c.to_string()), path.to_string()),
                None => (None, v),
            });
        }
        "inherit-fd" => {
            let v = val();
            let (fd, key) = v
                .strip_prefix("fd[")
                .and_then(|r| r.split_once("]:"))
                .ok_or_else(|| bad(&v))?;
            let fd: i32 = fd.parse().map_err(|_| bad(&v))?;
            o.inherit_fd.push((fd, key.to_string()));
        }
        "feature" => o.features.push(val()),
        "skip-mnt" => o.skip_mnt.push(val()),
        "enable-fs" => o.enable_fs.push(val()),
        "enable-external-sharing" => o.ext_sharing = true,
        "enable-external-masters" => o.ext_masters = true,
        "freeze-cgroup" => o.freeze_cgroup = Some(PathBuf::from(val())),
        "ghost-limit" => o.ghost_limit = parse_size(&val()).ok_or_else(|| bad(&val()))?,
        "irmap-scan-path" => o.irmap_scan_paths.push(val()),
        "lsm-profile" => o.lsm_profile = Some(val()),
        "lsm-mount-context" => o.lsm_mount_context = Some(val()),
        "timeout" => o.timeout = u32::try_from(int(&val())?).map_err(|_| bad(&val()))?,
        "external" => o.external.push(val()),
        "empty-ns" => {
            if val() != "net" {
                return Err(ArgError::EmptyNs(val()));
            }
            o.empty_ns |= libc::CLONE_NEWNET as u32;
        }
        "lazy-pages" => o.lazy_pages = true,
        "extra" => o.check_extra = on,
        "experimental" => o.check_experimental = on,
        "all" => (o.check_extra, o.check_experimental) = (true, true),
        "cgroup-props" => o.cgroup_props = Some(val()),
        "cgroup-props-file" => o.cgroup_props_file = Some(val()),
        "cgroup-dump-controller" => o.cgroup_dump_controllers.push(val()),
        "cgroup-yard" => o.cgroup_yard = Some(val()),
        "skip-in-flight" => o.tcp_skip_in_flight = on,
        "display-stats" => o.display_stats = on,
        "weak-sysctls" => o.weak_sysctls = on,
        "status-fd" => o.status_fd = Some(int(&val())? as i32),
        "tcp-close" => o.tcp_close = on,
        "verbosity" => match &g.value {
            None => o.verbosity += 1,
            Some(v) if v.starts_with('v') => o.verbosity += v.len() as u32 + 1,
            // atoi, as CRIU reads it: `-verbosity=0` is -v with "erbosity=0",
            // which counts as 0
            Some(v) => o.verbosity = atoi(v),
        },
        "ps-socket" => o.ps_socket = Some(int(&val())? as i32),
        "config" | "no-default-config" => {}
        "tls-cacert" | "tls-cacrl" | "tls-cert" | "tls-key" | "tls-no-cn-verify" => o.tls |= on,
        "tls" => o.tls = on,
        "pre-dump-mode" => {
            let v = val();
            if v != "splice" && v != "read" {
                return Err(bad(&v));
            }
            o.pre_dump_mode = Some(v);
        }
        "file-validation" => {
            let v = val();
            if v != "filesize" && v != "buildid" {
                return Err(bad(&v));
            }
            o.file_validation = Some(v);
        }
        "network-lock" => {
            o.network_lock = Some(match val().as_str() {
                "iptables" => NetworkLock::Iptables,
                "nftables" => NetworkLock::Nftables,
                "skip" => NetworkLock::Skip,
                v => return Err(bad(v)),
            })
        }
        "mntns-compat-mode" => o.mntns_compat_mode = on,
        "skip-file-rwx-check" => o.skip_file_rwx_check = on,
        "unprivileged" => o.unprivileged = on,
        "ghost-fiemap" => o.ghost_fiemap = Some(on),
        "allow-uprobes" => o.allow_uprobes = on,
        "log-to-stderr" => o.log_to_stderr = on,
        other => return Err(ArgError::Unrecognized(other.to_string())),
    }
    Ok(())
}

/// Splits one line of a configuration file into words: the first becomes
/// `--WORD`; blanks separate words; `"..."` is one word (with `\"` inside);
/// `#` starts a comment.
pub fn config_line(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        if c == '#' {
            break;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' if chars.peek() == Some(&'"') => {
                        chars.next();
                        word.push('"');
                    }
                    '"' => break,
                    c => word.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        if out.is_empty() {
            word.insert_str(0, "--");
        }
        out.push(word);
    }
    out
}

/// The arguments a configuration file holds; None when it cannot be read
/// (a missing file is not an error, as with CRIU).
pub fn config_file(path: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.lines().flat_map(config_line).collect())
}

/// Applies a configuration file's options to `p`.
pub fn apply_config(p: &mut Parsed, path: &Path) -> Result<(), ArgError> {
    let Some(args) = config_file(path) else {
        return Ok(());
    };
    let in_file = |e: ArgError| ArgError::InConfig {
        path: path.to_path_buf(),
        why: Box::new(e),
    };
    let (got, words) = getopt(&args).map_err(in_file)?;
    if let Some(w) = words.first() {
        return Err(in_file(ArgError::NotAnOption(w.clone())));
    }
    for g in got {
        apply(p, g).map_err(in_file)?;
    }
    Ok(())
}

/// The default configuration files CRIU reads, in order.
pub fn default_configs() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/etc/criu/default.conf")];
    if let Some(home) = std::env::var_os("HOME") {
        v.push(Path::new(&home).join(".criu/default.conf"));
    }
    v
}

/// Reads a CRIU command line (`args` without the program name) with the
/// configuration files it implies.
pub fn parse(args: &[String]) -> Result<Parsed, ArgError> {
    let mut p = Parsed::default();
    let (got, words) = getopt(args)?;
    let mut cfg: Option<String> = None;
    let mut defaults = true;
    for g in &got {
        match g.name {
            "config" => {
                cfg = g.value.clone();
                defaults = false;
            }
            "no-default-config" => defaults = false,
            _ => {}
        }
    }
    if defaults {
        for f in default_configs() {
            apply_config(&mut p, &f)?;
        }
    }
    if let Some(env) = std::env::var_os("CRIU_CONFIG_FILE") {
        apply_config(&mut p, Path::new(&env))?;
    }
    if let Some(c) = &cfg {
        if config_file(Path::new(c)).is_none() {
            return Err(ArgError::NoConfig(c.clone()));
        }
        apply_config(&mut p, Path::new(c))?;
    }
    for g in got {
        apply(&mut p, g)?;
    }
    p.words = words;
    Ok(p)
}

#[cfg(test)]
mod tests;
