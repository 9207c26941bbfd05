//! Every image kind crest reads, from bytes: the first byte picks the file
//! name (and so the kind `decode_file` expects), the rest is the file. The
//! manifest parser takes the same bytes as text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

/// File names of every kind of image a dump writes (the name picks the
/// decoder, as a restore's reader does).
const NAMES: &[&str] = &[
    "inventory.img",
    "pstree.img",
    "core-1.img",
    "ids-1.img",
    "mm-1.img",
    "pagemap-1.img",
    "fdinfo-2.img",
    "files.img",
    "fs-1.img",
    "pipes-data.img",
    "fifo-data.img",
    "sk-queues.img",
    "tcp-stream-5.img",
    "filelocks.img",
    "userns-1.img",
    "utsns-1.img",
    "ipcns-var-1.img",
    "ipcns-shm-1.img",
    "ipcns-sem-1.img",
    "ipcns-msg-1.img",
    "mountpoints-1.img",
    "netdev-1.img",
    "netns-1.img",
    "ghost-file-3.img",
    "remap-fpath.img",
    "memfd.img",
    "tmpfs-dev-7.tar.gz.img",
    "crest-ns.img",
    "crest-cgroups.img",
    "crest-udp-queues.img",
    "seccomp.img",
    "timens-1.img",
    "cgroup.img",
    "unknown-name.img",
];

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("crest-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("fuzz scratch directory");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let name = NAMES[pick as usize % NAMES.len()];
    let path = dir().join(name);
    std::fs::write(&path, body).expect("write the fuzz input");
    if let Ok(img) = crest_images::decode_file(&path) {
        // what decodes must encode again
        let _ = img.encode();
    }
    let _ = crest_images::manifest::parse(&path, &String::from_utf8_lossy(body));
    let _ = std::fs::remove_file(&path);
});
