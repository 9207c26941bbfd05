//! Compiles the C workloads in `workloads/` with gcc into `OUT_DIR/workloads`
//! and copies the interpreter scripts beside them; the directory is exposed
//! to the crate as `CREST_WORKLOADS_DIR`.

use std::fs;
use std::path::Path;
use std::process::Command;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let out = std::env::var("OUT_DIR").unwrap_or_else(|_| fail("OUT_DIR is not set".into()));
    let src = Path::new(&manifest).join("workloads");
    let dst = Path::new(&out).join("workloads");
    if let Err(e) = fs::create_dir_all(&dst) {
        fail(format!("create {}: {e}", dst.display()));
    }
    println!("cargo:rerun-if-changed={}", src.display());
    let header = src.join("wl.h");
    println!("cargo:rerun-if-changed={}", header.display());

    let entries = fs::read_dir(&src)
        .unwrap_or_else(|e| fail(format!("read {}: {e}", src.display())))
        .filter_map(Result::ok)
        .map(|e| e.path());
    let mut paths: Vec<_> = entries.collect();
    paths.sort();
    for path in paths {
        println!("cargo:rerun-if-changed={}", path.display());
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(stem) = name.strip_suffix(".c") {
            compile(&path, &dst.join(stem), &header);
        } else if name.ends_with(".py") || name.ends_with(".pl") {
            if let Err(e) = fs::copy(&path, dst.join(name)) {
                fail(format!("copy {}: {e}", path.display()));
            }
        }
    }
    println!("cargo:rustc-env=CREST_WORKLOADS_DIR={}", dst.display());
}

fn compile(src: &Path, out: &Path, header: &Path) {
    let include = header.parent().unwrap_or(Path::new("."));
    let status = Command::new("gcc")
        .args(["-O1", "-g", "-Wall", "-Werror", "-I"])
        .arg(include)
        .arg("-o")
        .arg(out)
        .arg(src)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail(format!("gcc failed on {} ({s})", src.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fail(format!(
            "gcc not found: the e2e workloads are C programs; install it (apt-get install gcc) \
             to build crest-tests ({})",
            src.display()
        )),
        Err(e) => fail(format!("cannot run gcc for {}: {e}", src.display())),
    }
}

fn fail(msg: String) -> ! {
    eprintln!("error: crest-tests build: {msg}");
    std::process::exit(1);
}
