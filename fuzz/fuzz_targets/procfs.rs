//! crest's /proc parsers, from bytes: the first byte picks the parser.
#![no_main]

use crest_core::procfs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(body);
    let p = "/proc/1/x";
    match pick % 11 {
        0 => drop(procfs::parse_maps(p, &text)),
        1 => drop(procfs::parse_smaps(p, &text)),
        2 => drop(procfs::parse_stat(p, &text)),
        3 => drop(procfs::parse_status(p, &text)),
        4 => drop(procfs::parse_fdinfo(p, &text)),
        5 => drop(procfs::parse_id_map(p, &text)),
        6 => drop(procfs::parse_setgroups(p, &text)),
        7 => drop(procfs::parse_limits(p, &text)),
        8 => drop(procfs::parse_children(p, &text)),
        9 => drop(procfs::parse_personality(p, &text)),
        _ => drop(procfs::parse_auxv(body)),
    }
});
