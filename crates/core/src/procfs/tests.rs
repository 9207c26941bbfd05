//! Readers against this test process, and a no-panic check of every parser
//! on cut and corrupted fixtures.

use super::*;

fn me() -> i32 {
    std::process::id() as i32
}

#[test]
fn readers_on_self() {
    let pid = me();
    let st = read_status(pid).unwrap();
    assert_eq!(st.pid, pid);
    assert_eq!(st.tgid, pid);
    let stat = read_stat(pid).unwrap();
    assert_eq!(stat.pid, pid);
    assert_eq!(stat.ppid, st.ppid);
    let tids = list_tids(pid).unwrap();
    assert!(tids.contains(&pid));
    assert!(tids.windows(2).all(|w| w[0] < w[1]));
    let t = read_task_status(pid, pid).unwrap();
    assert_eq!(t.pid, pid);
    assert_eq!(read_task_stat(pid, pid).unwrap().pid, pid);
    let comm = read_comm(pid).unwrap();
    assert!(!comm.is_empty() && !comm.ends_with('\n'));
    assert_eq!(read_personality(pid).unwrap(), 0);
    let maps = read_maps(pid).unwrap();
    let smaps = read_smaps(pid).unwrap();
    assert!(!maps.is_empty() && !smaps.is_empty());
    assert!(maps.iter().any(|m| m.path == "[stack]"));
    let auxv = read_auxv(pid).unwrap();
    assert_eq!(auxv.last(), Some(&(0, 0)));
    // A child is listed under the thread that forked it.
    let tid: i32 = std::fs::read_link("/proc/thread-self")
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut child = std::process::Command::new("sleep")
        .arg("5")
        .spawn()
        .unwrap();
    let listed = read_children(pid, tid);
    let _ = child.kill();
    let _ = child.wait();
    match listed {
        Ok(kids) => assert!(kids.contains(&(child.id() as i32)), "{kids:?}"),
        Err(e) if e.is_not_found() => eprintln!("skipped children: no CONFIG_PROC_CHILDREN"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn fds_on_self() {
    let pid = me();
    let f = std::fs::File::open("/proc/self/maps").unwrap();
    let fds = list_fds(pid).unwrap();
    assert!(fds.windows(2).all(|w| w[0].0 < w[1].0));
    let (fd, target) = fds.iter().find(|(_, t)| t.ends_with("/maps")).unwrap();
    assert!(target.starts_with("/proc/"));
    let info = read_fdinfo(pid, *fd).unwrap();
    assert_eq!(info.flags & libc::O_ACCMODE as u32, libc::O_RDONLY as u32);
    assert_ne!(info.flags & libc::O_CLOEXEC as u32, 0);
    drop(f);
}

#[test]
fn missing_process_is_io_with_path() {
    let e = read_status(-1).unwrap_err();
    assert!(e.is_not_found());
    assert!(e.to_string().starts_with("/proc/-1/status: "), "{e}");
    assert!(matches!(read_maps(-1), Err(ProcError::Io { path, .. }) if path == "/proc/-1/maps"));
    assert!(list_fds(-1).unwrap_err().is_not_found());
    assert!(list_tids(-1).unwrap_err().is_not_found());
    assert!(read_link("/proc/-1/exe").unwrap_err().is_not_found());
}

#[test]
fn small_parsers() {
    assert_eq!(parse_children("c", "12 34 \n").unwrap(), [12, 34]);
    assert_eq!(parse_children("c", "").unwrap(), []);
    let e = parse_children("/proc/1/task/1/children", "12 x").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/proc/1/task/1/children line 1: bad pid \"x\""
    );
    assert_eq!(parse_personality("p", "00400000\n").unwrap(), 0x400000);
    assert!(parse_personality("p", "zz\n").is_err());
    assert!(parse_personality("p", "").is_err());
    assert!(parse_personality("p", "0 1").is_err());
}

const TEXT_FIXTURES: [&str; 21] = [
    include_str!("fixtures/maps.txt"),
    include_str!("fixtures/maps_python.txt"),
    include_str!("fixtures/smaps.txt"),
    include_str!("fixtures/status.txt"),
    include_str!("fixtures/status_pidns.txt"),
    include_str!("fixtures/status_groups.txt"),
    include_str!("fixtures/status_paren_comm.txt"),
    include_str!("fixtures/stat.txt"),
    include_str!("fixtures/stat_paren_comm.txt"),
    include_str!("fixtures/fdinfo_reg.txt"),
    include_str!("fixtures/fdinfo_pipe.txt"),
    include_str!("fixtures/fdinfo_epoll.txt"),
    include_str!("fixtures/fdinfo_eventfd.txt"),
    include_str!("fixtures/fdinfo_inotify.txt"),
    include_str!("fixtures/fdinfo_signalfd.txt"),
    include_str!("fixtures/fdinfo_socket.txt"),
    include_str!("fixtures/fdinfo_timerfd.txt"),
    include_str!("fixtures/uid_map_init.txt"),
    include_str!("fixtures/uid_map_userns.txt"),
    include_str!("fixtures/gid_map_userns.txt"),
    "allow\n",
];

/// Runs every parser on `bytes`; only panics matter.
fn feed_all(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let _ = parse_maps("f", &text);
    let _ = parse_smaps("f", &text);
    let _ = parse_status("f", &text);
    let _ = parse_stat("f", &text);
    let _ = parse_fdinfo("f", &text);
    let _ = parse_id_map("f", &text);
    let _ = parse_setgroups("f", &text);
    let _ = parse_children("f", &text);
    let _ = parse_personality("f", &text);
    let _ = parse_auxv(bytes);
}

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn parsers_never_panic() {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let auxv: &[u8] = include_bytes!("fixtures/auxv.bin");
    let inputs = TEXT_FIXTURES.iter().map(|t| t.as_bytes()).chain([auxv]);
    for input in inputs {
        // Every prefix (stepping through big files).
        let step = (input.len() / 400).max(1);
        for end in (0..=input.len()).step_by(step) {
            feed_all(&input[..end]);
        }
        for _ in 0..200 {
            // A random slice.
            let a = rng.below(input.len());
            let b = a + rng.below(input.len() - a + 1);
            feed_all(&input[a..b]);
            // Random bytes replaced by characters parsers care about.
            let mut m = input.to_vec();
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(m.len());
                let pick = b"-:() \t\n0fxz\xff/[]";
                m[i] = pick[rng.below(pick.len())];
            }
            feed_all(&m);
        }
    }
}

#[test]
fn limits_fixture() {
    let l = parse_limits("limits", include_str!("fixtures/limits")).unwrap();
    assert_eq!(l.len(), 16);
    assert_eq!(l[0], (u64::MAX, u64::MAX));
    assert_eq!(l[3], (8_388_608, u64::MAX));
    assert_eq!(l[7], (20_000, 20_000));
    assert!(parse_limits("l", "garbage").is_err());
    assert!(parse_limits(
        "l",
        include_str!("fixtures/limits")
            .replace("20000", "2x000")
            .as_str()
    )
    .is_err());
}
