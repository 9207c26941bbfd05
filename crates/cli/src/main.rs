//! `crest`: checkpoint/restore for Linux process trees, with CRIU's
//! command-line options so tools written for CRIU can call it.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

mod demo;

#[derive(Parser)]
#[command(
    name = "crest",
    version,
    about = "Checkpoint and restore Linux process trees"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Directory of the image files.
    #[arg(short = 'D', long = "images-dir", default_value = ".")]
    images_dir: PathBuf,
    /// Log file; a relative path goes into the images directory.
    #[arg(short = 'o', long = "log-file")]
    log_file: Option<PathBuf>,
    /// Log verbosity, 0 (errors) to 4 (debug).
    #[arg(short = 'v', long = "verbosity", default_value_t = 2, num_args = 0..=1, default_missing_value = "4")]
    verbosity: u32,
}

#[derive(Subcommand)]
enum Cmd {
    /// Checkpoint a process tree into image files.
    Dump {
        /// Root of the tree to dump.
        #[arg(short = 't', long = "tree")]
        tree: i32,
        #[command(flatten)]
        common: Common,
        /// Leave the tree running after the dump.
        #[arg(short = 'R', long = "leave-running")]
        leave_running: bool,
        /// Allow a tree attached to the shell's session and terminal.
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// Largest file deleted while open whose contents are saved
        /// (bytes, or with a K, M or G suffix).
        #[arg(long = "ghost-limit", value_parser = parse_size, default_value = "1M")]
        ghost_limit: u64,
        /// Dump established TCP connections (in repair mode, CRIU's way).
        #[arg(long = "tcp-established")]
        tcp_established: bool,
        /// An object outside the tree, CRIU's way: `veth[IFNAME]:OUTNAME`
        /// (a veth whose peer is outside; OUTNAME is the peer's name for
        /// the restore), `mnt[MOUNTPOINT]:KEY` (a mount from outside the
        /// tree's mount namespace, bound again at restore from what
        /// `--external mnt[KEY]:PATH` names). Repeatable.
        #[arg(long = "external", value_parser = parse_external)]
        external: Vec<String>,
        /// Dump the file locks the tree holds (POSIX, OFD and flock);
        /// without it a tree holding one is refused.
        #[arg(short = 'l', long = "file-locks")]
        file_locks: bool,
    },
    /// Restore a process tree from image files.
    Restore {
        #[command(flatten)]
        common: Common,
        /// Return as soon as the tree runs instead of waiting for it.
        #[arg(short = 'd', long = "restore-detached")]
        detached: bool,
        /// Write the pid of the restored root task to this file.
        #[arg(long = "pidfile")]
        pidfile: Option<PathBuf>,
        /// Restore a job of a shell into crest's own session.
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// Restore established TCP connections (accepted for CRIU's
        /// command line; the images say which connections there are).
        #[arg(long = "tcp-established")]
        _tcp_established: bool,
        /// An object outside the tree, CRIU's way: `veth[IFNAME]:OUTNAME`
        /// makes the peer of the restored veth IFNAME as OUTNAME in
        /// crest's network namespace; `mnt[KEY]:PATH` binds PATH where the
        /// mount dumped with that key was. Repeatable.
        #[arg(long = "external", value_parser = parse_external)]
        external: Vec<String>,
        /// The root directory of a tree that pivot_root'ed into its own
        /// root (CRIU's --root).
        #[arg(long = "root")]
        root: Option<PathBuf>,
        /// `fd[N]:pipe:[INODE]`: crest's fd N stands for the dumped pipe
        /// whose other end was outside the tree (CRIU's --inherit-fd, as
        /// runtimes give a container's stdio pipes). Repeatable.
        #[arg(long = "inherit-fd", value_parser = parse_inherit_fd)]
        inherit_fd: Vec<(i32, String)>,
        /// Restore file locks (accepted for CRIU's command line; the images
        /// say which locks there are, and they are always taken again).
        #[arg(short = 'l', long = "file-locks")]
        _file_locks: bool,
    },
    /// Print what an images directory holds.
    Show {
        /// The images directory.
        #[arg(required_unless_present = "tree")]
        dir: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Print the namespace graph: user namespaces with their maps,
        /// owners and setgroups, and which tasks live where.
        #[arg(long)]
        ns: bool,
        /// With --ns: read the graph from the live tree rooted at PID
        /// instead of from images, to compare the two.
        #[arg(short = 't', long = "tree", requires = "ns")]
        tree: Option<i32>,
    },
    /// Print the kernel features crest relies on.
    Check,
    /// Start a counting workload, checkpoint it, kill it, restore it and
    /// watch it count on.
    Demo {
        /// Where to put the images (a new temporary directory by default).
        #[arg(short = 'D', long = "images-dir")]
        images_dir: Option<PathBuf>,
    },
    /// The demo's counter workload.
    #[command(hide = true)]
    DemoCounter,
}

/// An `--external` entry of a kind crest handles (`veth[IFNAME]` with an
/// optional `:OUTNAME`, `mnt[A]:B`).
fn parse_external(s: &str) -> Result<String, String> {
    if crest_core::ns::mnt::mnt_externals(&[s.to_string()]).len() == 1 {
        return Ok(s.to_string());
    }
    match crest_core::ns::net::veth_externals(&[s.to_string()])[..] {
        [(ref inside, _)] if !inside.is_empty() => Ok(s.to_string()),
        _ => Err(format!(
            "{s:?}: crest takes external veth devices as veth[IFNAME]:OUTNAME and external mounts as mnt[MOUNTPOINT]:KEY (dump) / mnt[KEY]:PATH (restore)"
        )),
    }
}

/// CRIU's `--inherit-fd fd[N]:KEY`; crest takes pipes as keys
/// (`pipe:[INODE]`, as the link of /proc/PID/fd/N shows them).
fn parse_inherit_fd(s: &str) -> Result<(i32, String), String> {
    let bad = || format!("{s:?}: crest takes --inherit-fd as fd[N]:pipe:[INODE]");
    let (fd, key) = s
        .strip_prefix("fd[")
        .and_then(|r| r.split_once("]:"))
        .ok_or_else(bad)?;
    let fd: i32 = fd.parse().map_err(|_| bad())?;
    let ino = key
        .strip_prefix("pipe:[")
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|i| i.parse::<u32>().ok());
    if fd < 0 || ino.is_none() {
        return Err(bad());
    }
    Ok((fd, key.to_string()))
}

/// A size in bytes, with an optional K, M or G suffix (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (a number with an optional K, M or G)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn init_log(c: &Common, default_name: &str) -> Result<()> {
    let name = c
        .log_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(default_name));
    let path = if name.is_absolute() {
        name
    } else {
        c.images_dir.join(name)
    };
    if c.log_file.is_none() && !c.images_dir.exists() {
        return Ok(());
    }
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("open log file {}", path.display()))?;
    crest_core::log::init(Box::new(file), c.verbosity);
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg = message(&e);
            eprintln!("crest: {msg}");
            crest_core::log::line(0, format_args!("error: {msg}"));
            std::process::exit(1);
        }
    }
}

/// The error and its causes, leaving out a cause whose text the message
/// before it already includes (crest's errors embed their sources).
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Dump {
            tree,
            common,
            leave_running,
            shell_job,
            ghost_limit,
            tcp_established,
            external,
            file_locks,
        } => {
            std::fs::create_dir_all(&common.images_dir).with_context(|| {
                format!("create images directory {}", common.images_dir.display())
            })?;
            init_log(&common, "dump.log")?;
            let opts = crest_core::DumpOptions {
                pid: tree,
                dir: common.images_dir.clone(),
                leave_running,
                shell_job,
                ghost_limit,
                tcp_established,
                external,
                file_locks,
            };
            let s = crest_core::dump(&opts)?;
            crest_core::info!(
                "dump of {:?} done, {} bytes of pages",
                s.pids,
                s.pages_bytes
            );
            Ok(0)
        }
        Cmd::Restore {
            common,
            detached,
            pidfile,
            shell_job,
            external,
            root,
            inherit_fd,
            ..
        } => {
            init_log(&common, "restore.log")?;
            let opts = crest_core::restore::RestoreOptions {
                dir: common.images_dir.clone(),
                detached,
                shell_job,
                external,
                root,
                inherit_fd,
            };
            let restored = crest_core::restore::restore(&opts)?;
            if let Some(p) = pidfile {
                let p = if p.is_absolute() {
                    p
                } else {
                    common.images_dir.join(p)
                };
                std::fs::write(&p, format!("{}", restored.root_pid))
                    .with_context(|| format!("write pidfile {}", p.display()))?;
            }
            if detached {
                return Ok(0);
            }
            Ok(restored.wait()?)
        }
        Cmd::Show {
            dir,
            json,
            ns,
            tree,
        } => {
            if ns {
                let text = match (tree, dir) {
                    (Some(pid), _) => crest_core::show::ns_graph_of_tree(pid)?,
                    (None, Some(d)) => crest_core::show::ns_graph_of_images(&d)?,
                    (None, None) => bail!("show --ns needs an images directory or --tree PID"),
                };
                print!("{text}");
                return Ok(0);
            }
            match dir {
                Some(d) => show(&d, json),
                None => bail!("show needs an images directory"),
            }
        }
        Cmd::Check => {
            let feats = crest_core::features::probe();
            let mut missing = 0;
            for f in &feats {
                let state = match (f.ok, f.required) {
                    (true, _) => "ok",
                    (false, true) => {
                        missing += 1;
                        "MISSING"
                    }
                    (false, false) => "absent",
                };
                println!("{:<45} {:<8} {}", f.name, state, f.detail);
            }
            if missing > 0 {
                bail!("{missing} required feature(s) missing");
            }
            println!("Looks good.");
            Ok(0)
        }
        Cmd::Demo { images_dir } => demo::run(images_dir),
        Cmd::DemoCounter => demo::counter(),
    }
}

fn show(dir: &Path, json: bool) -> Result<i32> {
    let tasks = crest_core::show::summarize(dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&tasks)?);
    } else {
        print!("{}", crest_core::show::render(&tasks));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherit_fd_takes_pipes() {
        assert_eq!(
            parse_inherit_fd("fd[3]:pipe:[4711]"),
            Ok((3, "pipe:[4711]".to_string()))
        );
        for bad in [
            "fd[3]:tmp/file",
            "fd[x]:pipe:[1]",
            "3:pipe:[1]",
            "fd[-1]:pipe:[1]",
            "fd[3]:pipe:[1",
            "fd[3]:pipe:[-1]",
        ] {
            assert!(parse_inherit_fd(bad).is_err(), "{bad}");
        }
    }
}
