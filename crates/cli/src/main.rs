//! `crest`: checkpoint/restore for Linux process trees, with CRIU's
//! command-line options so tools written for CRIU can call it.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use crest_core::Options;
use std::path::{Path, PathBuf};

mod check;
mod criu_args;
mod demo;
mod rpc;
mod scripts;

/// crest's own commands (CRIU's actions are read by [`criu_args`]).
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

#[derive(Subcommand)]
enum Cmd {
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
    /// Check every file of an images directory against the checksums the
    /// dump wrote (`crest-manifest`), without restoring anything.
    CheckImages {
        /// The images directory.
        dir: PathBuf,
    },
}

const USAGE: &str = "\
Usage:
  criu dump|pre-dump -t PID [<options>]
  criu restore [<options>]
  criu check [--feature FEAT] [--extra] [--all]
  criu swrk FD
  crest show DIR [--json] | crest show --ns (DIR | --tree PID)
  crest check-images DIR
  crest demo

crest takes CRIU's options (see criu(8)): -D/--images-dir, -W/--work-dir,
-o/--log-file, -v[N], -t/--tree, -R/--leave-running, -s/--leave-stopped,
-j/--shell-job, -l/--file-locks, --tcp-established, --ext-unix-sk,
--external, --ext-mount-map, --inherit-fd, --root, -d/--restore-detached,
-S/--restore-sibling, --pidfile, --action-script, --manage-cgroups,
--cgroup-root, --empty-ns net, --ghost-limit, --timeout, --display-stats,
--status-fd, --config FILE, --no-default-config and the rest of CRIU's;
an option crest cannot honour yet is refused naming it.
";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // the dump's guard (crest_core::guard)
    if let (Some(crest_core::guard::COMMAND), Some(fd)) = (
        args.get(1).map(String::as_str),
        args.get(2).and_then(|f| f.parse().ok()),
    ) {
        std::process::exit(crest_core::guard::run(fd));
    }
    // the keeper of memory tracking between dumps (crest_core::mm::keeper)
    if let (Some(crest_core::mm::keeper::COMMAND), Some(fd), Some(name)) = (
        args.get(1).map(String::as_str),
        args.get(2).and_then(|f| f.parse().ok()),
        args.get(3),
    ) {
        std::process::exit(crest_core::mm::keeper::run(fd, name));
    }
    // the holder of a lazy-pages daemon's userfaultfds
    // (crest_core::mm::lazy::holder)
    if let (Some(crest_core::mm::lazy::holder::COMMAND), Some(fd)) = (
        args.get(1).map(String::as_str),
        args.get(2).and_then(|f| f.parse().ok()),
    ) {
        std::process::exit(crest_core::mm::lazy::holder::run(fd));
    }
    // a helper that mounts a cgroup hierarchy (crest_core::ns::cgyard)
    if let (Some(crest_core::ns::cgyard::COMMAND), Some(ctrls)) =
        (args.get(1).map(String::as_str), args.get(2))
    {
        std::process::exit(crest_core::ns::cgyard::run(ctrls));
    }
    let own = matches!(
        args.get(1).map(String::as_str),
        Some("show" | "check-images" | "demo" | "demo-counter" | "help")
    );
    let code = if own {
        match run(Cli::parse()) {
            Ok(code) => code,
            Err(e) => fail(&e),
        }
    } else {
        criu_main(&args[1..])
    };
    std::process::exit(code);
}

/// Reports an error the way CRIU does (a line with `Error (`, which tools
/// that grep logs look for) on stderr and in the log; returns CRIU's exit
/// status for a failure.
fn fail(e: &anyhow::Error) -> i32 {
    let msg = message(e);
    eprintln!("Error (crest): {msg}");
    crest_core::log::line(0, format_args!("Error (crest): {msg}"));
    1
}

/// The error and its causes, leaving out a cause whose text the message
/// before it already includes (crest's errors embed their sources).
pub(crate) fn message(e: &anyhow::Error) -> String {
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

/// Points crest's log where the options say: `--log-file` (relative to
/// the work directory), or stderr (also with `--log-to-stderr`).
pub(crate) fn init_log(o: &Options) {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match &o.log_file {
        Some(f) if !o.log_to_stderr && f.as_os_str() != "-" => {
            let path = o.in_work_dir(f);
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
            {
                // (kept above the fds a caller names with --inherit-fd:
                // one it forgot to open must not turn out to be the log)
                Ok(file) => Some(
                    crest_sys::misc::dup_above(&file, 100)
                        .map(std::fs::File::from)
                        .unwrap_or(file),
                ),
                Err(e) => {
                    eprintln!(
                        "Warn (crest): log file {}: {e}; logging to stderr",
                        path.display()
                    );
                    None
                }
            }
        }
        _ => None,
    };
    match file {
        Some(f) => crest_core::log::init(Box::new(f), o.verbosity),
        None => crest_core::log::init(Box::new(std::io::stderr()), o.verbosity),
    }
}

/// What every front-end does once an action succeeded: `--display-stats`
/// and `--status-fd`.
pub(crate) fn after_action(o: &Options, stats: Option<String>) {
    if let (true, Some(s)) = (o.display_stats, stats) {
        print!("{s}");
    }
    if let Some(fd) = o.status_fd {
        if let Ok(f) = crest_sys::misc::own_fd(fd) {
            let mut f = std::fs::File::from(f);
            let _ = std::io::Write::write_all(&mut f, b"\0");
        }
    }
}

/// CRIU's command line: parse, then run the action.
fn criu_main(args: &[String]) -> i32 {
    let p = match criu_args::parse(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("Error (crest): {e}");
            eprint!("{USAGE}");
            return 1;
        }
    };
    if p.version {
        println!("Version: {}.{}", rpc::CRIU_MAJOR, rpc::CRIU_MINOR);
        println!("GitID: crest-{}", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    let Some(action) = p.words.first() else {
        if p.help {
            print!("{USAGE}");
            return 0;
        }
        eprintln!("Error (crest): no action given");
        eprint!("{USAGE}");
        return 1;
    };
    if p.help {
        print!("{USAGE}");
        return 0;
    }
    for &fd in &p.close {
        drop(crest_sys::misc::own_fd(fd));
    }
    if p.stream {
        return fail(&anyhow::anyhow!(
            "--stream: image streaming is not supported by crest"
        ));
    }
    let res = match action.as_str() {
        "dump" => dump(&p.opts),
        "restore" => restore(&p.opts),
        "check" => {
            init_log(&p.opts);
            return check::run(&p.opts);
        }
        "swrk" => return rpc::serve(p.words.get(1)),
        "pre-dump" => pre_dump(&p.opts),
        "service" => Err(anyhow::anyhow!(
            "service: crest serves CRIU's RPC as `swrk FD` (one caller, one socket) only"
        )),
        "page-server" => page_server(&p.opts),
        "lazy-pages" => lazy_pages(&p.opts),
        "dedup" | "cpuinfo" | "exec" | "image-streamer" => {
            Err(anyhow::anyhow!("{action}: not supported by crest yet"))
        }
        other => Err(anyhow::anyhow!("unknown action {other:?}")),
    };
    match res {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn dump(o: &Options) -> Result<i32> {
    std::fs::create_dir_all(&o.dir)
        .with_context(|| format!("create images directory {}", o.dir.display()))?;
    init_log(o);
    let mut n = scripts::Scripts {
        scripts: o.action_scripts.clone(),
        images_dir: o.dir.clone(),
    };
    // SIGINT, SIGTERM, SIGHUP: the dump fails at its next step and the
    // tree is released, as after any failure
    let stop = crest_sys::fault::catch_termination().context("catch SIGINT/SIGTERM/SIGHUP")?;
    let s = crest_core::dump::dump_notified(o, &mut n)?;
    drop(stop);
    crest_core::info!(
        "dump of {:?} done, {} bytes of pages",
        s.pids,
        s.pages_bytes
    );
    after_action(o, Some(s.stats.render()));
    Ok(0)
}

fn pre_dump(o: &Options) -> Result<i32> {
    std::fs::create_dir_all(&o.dir)
        .with_context(|| format!("create images directory {}", o.dir.display()))?;
    init_log(o);
    let stop = crest_sys::fault::catch_termination().context("catch SIGINT/SIGTERM/SIGHUP")?;
    let s = crest_core::dump::pre_dump(o)?;
    drop(stop);
    crest_core::info!(
        "pre-dump of {:?} done, {} bytes of pages",
        s.pids,
        s.pages_bytes
    );
    after_action(o, Some(s.stats.render()));
    Ok(0)
}

/// Runs this crest's command again in the background, without `-d`, handing
/// it `listener` through the environment variable `var`: its pid.
fn in_background(listener: &impl std::os::fd::AsRawFd, var: &str) -> Result<u32> {
    use std::os::fd::AsRawFd;
    let keep = crest_sys::misc::dup_inheritable(listener).context("pass the socket on")?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "-d" && a != "--daemon")
        .collect();
    let child = std::process::Command::new("/proc/self/exe")
        .args(&args)
        .env(var, keep.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("run in the background")?;
    Ok(child.id())
}

/// The environment variable that hands a daemonized page server its
/// listening socket.
const PS_LISTEN_FD: &str = "CREST_PS_LISTEN_FD";

/// `page-server`: listens on `--address` (every address without) and
/// `--port`, serves one dump's session into the images directory, and
/// exits; with `-d` a copy of it does so in the background once it
/// listens. `--status-fd` is told once it listens.
fn page_server(o: &Options) -> Result<i32> {
    std::fs::create_dir_all(&o.dir)
        .with_context(|| format!("create images directory {}", o.dir.display()))?;
    init_log(o);
    let inherited = std::env::var(PS_LISTEN_FD)
        .ok()
        .and_then(|f| f.parse().ok());
    let listener = match inherited {
        Some(fd) => std::net::TcpListener::from(
            crest_sys::misc::own_fd(fd).context("the page server's listening socket")?,
        ),
        None => {
            let port = o.port.context("page-server: --port is needed")?;
            let address = o.address.as_deref().unwrap_or("0.0.0.0");
            std::net::TcpListener::bind((address, port))
                .with_context(|| format!("page-server: listen on {address}:{port}"))?
        }
    };
    if o.detached && inherited.is_none() {
        let pid = in_background(&listener, PS_LISTEN_FD).context("start the page server")?;
        crest_core::info!("page server {pid} listens");
        after_action(o, None);
        return Ok(0);
    }
    if let Some(prev) = &o.prev_images_dir {
        let link = o.dir.join("parent");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(prev, &link)
            .with_context(|| format!("link {} to {}", link.display(), prev.display()))?;
    }
    // (listening: the caller may start the dump)
    after_action(o, None);
    let written = crest_core::mm::server::serve(&listener, &o.dir).context("page-server")?;
    crest_core::info!("page server: {} image files written", written.len());
    Ok(0)
}

/// The environment variable that hands a daemonized lazy-pages daemon
/// its listening socket.
const LP_LISTEN_FD: &str = "CREST_LP_LISTEN_FD";

/// `lazy-pages`: listens on `lazy-pages.socket` in the work directory,
/// fills one `restore --lazy-pages` from the images directory until every
/// page is in, and exits; with `-d` a copy of it does so in the
/// background once it listens. `--status-fd` is told once it listens.
fn lazy_pages(o: &Options) -> Result<i32> {
    init_log(o);
    if o.page_server || o.address.is_some() || o.port.is_some() || o.ps_socket.is_some() {
        anyhow::bail!(
            "lazy-pages: pages fetched from a page server (--page-server, --address, --port) are \
             not supported by crest yet: copy the images over and serve them from a directory"
        );
    }
    let path = o.work_dir().join(crest_core::mm::lazy::SOCKET);
    let inherited = std::env::var(LP_LISTEN_FD)
        .ok()
        .and_then(|f| f.parse().ok());
    let listener = match inherited {
        Some(fd) => crest_sys::misc::own_fd(fd).context("the lazy-pages daemon's socket")?,
        None => {
            let _ = std::fs::remove_file(&path);
            let sock = rustix::net::socket_with(
                rustix::net::AddressFamily::UNIX,
                rustix::net::SocketType::SEQPACKET,
                rustix::net::SocketFlags::CLOEXEC,
                None,
            )
            .context("lazy-pages: make a socket")?;
            let addr = rustix::net::SocketAddrUnix::new(&path)
                .with_context(|| format!("lazy-pages: the socket {}", path.display()))?;
            rustix::net::bind(&sock, &addr)
                .with_context(|| format!("lazy-pages: bind {}", path.display()))?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .with_context(|| format!("lazy-pages: chmod {}", path.display()))?;
            rustix::net::listen(&sock, 1).context("lazy-pages: listen")?;
            sock
        }
    };
    if o.detached && inherited.is_none() {
        let pid = in_background(&listener, LP_LISTEN_FD).context("start the lazy-pages daemon")?;
        crest_core::info!("lazy-pages daemon {pid} listens");
        if let Some(p) = &o.pidfile {
            let p = o.in_work_dir(p);
            std::fs::write(&p, pid.to_string())
                .with_context(|| format!("write pidfile {}", p.display()))?;
        }
        after_action(o, None);
        return Ok(0);
    }
    // (listening: the caller may start the restore)
    after_action(o, None);
    let served = crest_core::mm::lazy::daemon::serve(&listener, &o.dir);
    let _ = std::fs::remove_file(&path);
    let s = served.context("lazy-pages")?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    crest_core::info!(
        "lazy-pages: every page in {:.3} s after the tree ran: {} faults ({:.1} MiB, {} zero \
         pages), {:.1} MiB pushed",
        s.lazy_secs,
        s.faults,
        mib(s.bytes_on_fault),
        s.zero_pages,
        mib(s.bytes_pushed)
    );
    Ok(0)
}

fn restore(o: &Options) -> Result<i32> {
    init_log(o);
    let mut n = scripts::Scripts {
        scripts: o.action_scripts.clone(),
        images_dir: o.dir.clone(),
    };
    // SIGINT, SIGTERM, SIGHUP: the restore fails at its next step and
    // kills what it made, as after any failure
    let stop = crest_sys::fault::catch_termination().context("catch SIGINT/SIGTERM/SIGHUP")?;
    let restored = crest_core::restore::restore_notified(o, &mut n)?;
    drop(stop);
    if let Some(p) = &o.pidfile {
        let p = o.in_work_dir(p);
        std::fs::write(&p, format!("{}", restored.root_pid))
            .with_context(|| format!("write pidfile {}", p.display()))?;
    }
    after_action(o, Some(restored.stats.render()));
    if o.detached {
        return Ok(0);
    }
    Ok(restored.wait()?)
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
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
        Cmd::Demo { images_dir } => demo::run(images_dir),
        Cmd::CheckImages { dir } => match crest_images::manifest::verify(&dir)? {
            crest_images::manifest::Verified::Intact { files, bytes } => {
                println!(
                    "{}: {files} files, {bytes} bytes, all as the dump wrote them",
                    dir.display()
                );
                Ok(0)
            }
            crest_images::manifest::Verified::NoManifest => {
                eprintln!(
                    "{}: no {} (images of CRIU or of an older crest): nothing to check against",
                    dir.display(),
                    crest_images::manifest::MANIFEST
                );
                Ok(2)
            }
        },
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
