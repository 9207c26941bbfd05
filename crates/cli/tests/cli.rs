//! The crest binary's command line (and a guarantee that `cargo test`
//! builds the binary the end-to-end suite drives).

use std::process::Command;

fn crest() -> Command {
    Command::new(env!("CARGO_BIN_EXE_crest"))
}

#[test]
fn version_prints_the_package_version() {
    let out = crest().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
}

#[test]
fn dump_of_a_missing_pid_names_it() {
    let dir = std::env::temp_dir().join(format!("crest-cli-test-{}", std::process::id()));
    let out = crest()
        .args(["dump", "-t", "32767", "-D"])
        .arg(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    if std::path::Path::new("/proc/32767").exists() {
        eprintln!("skipped: pid 32767 exists on this machine");
        return;
    }
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("32767"), "{err}");
}

#[test]
fn restore_of_an_empty_dir_names_the_file() {
    let dir = std::env::temp_dir().join(format!("crest-cli-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = crest().args(["restore", "-D"]).arg(&dir).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inventory.img"), "{err}");
}
