//! Tests of `criu_args`.

use super::*;

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn parsed(s: &str) -> Parsed {
    parse(&args(&format!("--no-default-config {s}"))).unwrap()
}

#[test]
fn spellings_of_criu_users() {
    let p = parsed("dump --tree 42 --images-dir /d -o dump.log -v4 --shell-job --leave-running");
    assert_eq!(p.words, ["dump"]);
    assert_eq!(p.opts.pid, 42);
    assert_eq!(p.opts.dir, PathBuf::from("/d"));
    assert_eq!(p.opts.log_file, Some(PathBuf::from("dump.log")));
    assert_eq!(p.opts.verbosity, 4);
    assert!(p.opts.shell_job && p.opts.leave_running);
    let p = parsed("-t42 -D/d restore -d --pidfile=/p -vvvv --verbosity=3");
    assert_eq!(p.words, ["restore"]);
    assert_eq!(p.opts.pid, 42);
    assert_eq!(p.opts.dir, PathBuf::from("/d"));
    assert_eq!(p.opts.verbosity, 3);
    // CRIU's own suite writes `-verbosity=0`: -v with "erbosity=0"
    let quiet = parsed("check -verbosity=0 --feature userns");
    assert_eq!(quiet.opts.verbosity, 0);
    assert!(p.opts.detached);
    let p = parsed("restore -vvvv");
    assert_eq!(p.opts.verbosity, 2 + 4);
    let p = parsed("restore -v -v");
    assert_eq!(p.opts.verbosity, 4);
    let p = parsed("dump -jR -t 7");
    assert!(p.opts.shell_job && p.opts.leave_running);
    assert_eq!(p.opts.pid, 7);
}

#[test]
fn criu_option_forms() {
    let p = parsed(
        "restore --manage-cgroups=full --cgroup-root cpu:/a --cgroup-root /b --ext-mount-map /x:y \
         --veth-pair eth0=veth9 --inherit-fd fd[3]:pipe:[12] --empty-ns net --no-tcp-established \
         --ghost-limit 2M --timeout 5 --network-lock skip --no-ghost-fiemap --join-ns net:/run/n,x",
    );
    let o = &p.opts;
    assert_eq!(o.manage_cgroups, CgMode::Full);
    assert_eq!(
        o.cgroup_roots,
        [(Some("cpu".into()), "/a".into()), (None, "/b".into())]
    );
    assert_eq!(o.external, ["mnt[/x]:y", "veth[eth0]:veth9"]);
    assert_eq!(o.inherit_fd, [(3, "pipe:[12]".to_string())]);
    assert_eq!(o.empty_ns, libc::CLONE_NEWNET as u32);
    assert_eq!(o.ghost_limit, 2 << 20);
    assert_eq!(o.timeout, 5);
    assert_eq!(o.network_lock, Some(NetworkLock::Skip));
    assert_eq!(o.ghost_fiemap, Some(false));
    assert_eq!(o.join_ns[0].extra.as_deref(), Some("x"));
    assert_eq!(
        parsed("dump --manage-cgroups").opts.manage_cgroups,
        CgMode::Soft
    );
    let x = parsed("dump --ext-unix-sk=12,34 -t 1");
    assert!(x.opts.ext_unix_sk);
    assert_eq!(x.opts.ext_unix_sk_ids, [12, 34]);
    assert!(parsed("dump -x -t 1").opts.ext_unix_sk_ids.is_empty());
    // unique prefixes, as getopt_long takes them
    assert_eq!(parsed("dump --tre 3").opts.pid, 3);
    assert!(parsed("restore --restore-det").opts.detached);
    assert!(parsed("-- dump").words == ["dump"]);
}

#[test]
fn bad_command_lines_are_named() {
    for (line, what) in [
        ("dump --frobnicate", "--frobnicate"),
        ("dump --tree", "--tree"),
        ("dump --tree x", "--tree"),
        ("dump -q", "'q'"),
        ("dump --re", "ambiguous"),
        ("dump --leave-running=1", "argument"),
        ("restore --empty-ns pid", "pid"),
        ("restore --network-lock bogus", "bogus"),
    ] {
        let e = parse(&args(&format!("--no-default-config {line}"))).unwrap_err();
        assert!(e.to_string().contains(what), "{line}: {e}");
    }
}

#[test]
fn config_files_come_before_the_command_line() {
    let dir = std::env::temp_dir().join(format!("crest-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("c.conf");
    std::fs::write(
        &f,
        "# a comment\ntcp-established\nlog-file \"my log.txt\" # trailing\n  timeout 3\nexternal mnt[/a]:b\n",
    )
    .unwrap();
    let p = parse(&args(&format!(
        "dump --config {} -t 5 --timeout 4",
        f.display()
    )))
    .unwrap();
    assert!(p.opts.tcp_established);
    assert_eq!(p.opts.log_file, Some(PathBuf::from("my log.txt")));
    assert_eq!(p.opts.timeout, 4);
    assert_eq!(p.opts.external, ["mnt[/a]:b"]);
    std::fs::write(&f, "tcp-established\nsoft\n").unwrap();
    let e = parse(&args(&format!("dump --config={}", f.display()))).unwrap_err();
    assert!(e.to_string().contains("soft"), "{e}");
    let e = parse(&args("dump --config /nonexistent/criu.conf")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/criu.conf"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_lines() {
    assert_eq!(config_line("a b c"), ["--a", "b", "c"]);
    assert_eq!(config_line("  # x"), Vec::<String>::new());
    assert_eq!(config_line(r#"a "b \" c" d"#), ["--a", "b \" c", "d"]);
    assert_eq!(config_line(r#"a """#), ["--a", ""]);
}
