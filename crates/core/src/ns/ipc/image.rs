//! The ipc images (CRIU's `ipcns-var`, `ipcns-shm`, `ipcns-sem`,
//! `ipcns-msg`, crest's POSIX queues), written and read with bounds.

use super::*;
use crate::error::RoomError;
use crate::ns::error::NsError;

/// Writes the four images of ipc namespace `id`; the POSIX message queues
/// ride in `ipc_var_entry.crest_pmqs`.
pub fn write(dir: &Path, id: u32, d: &IpcDump) -> Result<(), DumpError> {
    let var = IpcVarEntry {
        crest_pmqs: d.pmqs.clone(),
        ..d.var.clone()
    };
    crest_images::write_image(dir, &names::ipcns_var(id), magic::IPC_VAR, &[var])?;
    let mut w = ImageWriter::create(dir, &names::ipcns_shm(id), magic::IPCNS_SHM)?;
    for (e, data) in &d.shms {
        w.write_entry(e)?;
        w.write_payload(data)?;
        w.write_payload(&vec![0u8; pad(data.len(), 4)])?;
    }
    w.finish()?;
    let mut w = ImageWriter::create(dir, &names::ipcns_sem(id), magic::IPCNS_SEM)?;
    for (e, vals) in &d.sems {
        w.write_entry(e)?;
        let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_payload(&raw)?;
        w.write_payload(&vec![0u8; pad(raw.len(), 8)])?;
    }
    w.finish()?;
    let mut w = ImageWriter::create(dir, &names::ipcns_msg(id), magic::IPCNS_MSG)?;
    for (e, msgs) in &d.msgs {
        w.write_entry(e)?;
        for (mtype, data) in msgs {
            w.write_entry(&IpcMsg {
                mtype: *mtype,
                msize: data.len() as u32,
            })?;
            w.write_payload(data)?;
            w.write_payload(&vec![0u8; pad(data.len(), 8)])?;
        }
    }
    w.finish()?;
    Ok(())
}

/// Reads the images of ipc namespace `id` back, bounding every count and
/// size.
pub fn read(dir: &Path, id: u32) -> Result<IpcDump, RestoreError> {
    let bad = |file: String, what: String| NsError::BadImage { file, what }.in_tree_restore();
    let mut var: IpcVarEntry = crest_images::read_one(dir, &names::ipcns_var(id), magic::IPC_VAR)?;
    let pmqs = std::mem::take(&mut var.crest_pmqs);
    if var.sem_ctls.len() != 4 {
        return Err(bad(
            names::ipcns_var(id),
            format!("{} semaphore limits (4 expected)", var.sem_ctls.len()),
        ));
    }
    let mut d = IpcDump {
        var,
        ..IpcDump::default()
    };
    read_shms(dir, id, &mut d)?;
    read_sems(dir, id, &mut d)?;
    read_msgs(dir, id, &mut d)?;
    d.pmqs = read_pmqs(dir, id, pmqs)?;
    Ok(d)
}

/// The SysV shared memory segments with their data (`ipcns-shm-ID.img`).
fn read_shms(dir: &Path, id: u32, d: &mut IpcDump) -> Result<(), RestoreError> {
    let bad = |file: String, what: String| NsError::BadImage { file, what }.in_tree_restore();
    let name = names::ipcns_shm(id);
    let mut r = ImageReader::open(dir, &name, magic::IPCNS_SHM)?;
    while let Some(e) = r.next_entry::<IpcShmEntry>()? {
        // (huge pages: a power of two from 64 KiB to 16 GiB)
        let huge_ok = e
            .crest_huge_page_kb
            .is_none_or(|kb| kb.is_power_of_two() && (64..=1 << 24).contains(&kb));
        if e.size > MAX_SHM
            || e.in_pagemaps == Some(true)
            || d.shms.len() >= MAX_OBJECTS
            || !huge_ok
        {
            return Err(bad(
                name,
                format!(
                    "segment {} of {} bytes (or in pagemaps, or too many, or of odd huge pages)",
                    e.desc.id, e.size
                ),
            ));
        }
        let data = r.read_payload(e.size)?;
        r.read_payload(pad(e.size as usize, 4) as u64)?;
        d.shms.push((e, data));
    }
    Ok(())
}

/// The SysV semaphore sets with their values (`ipcns-sem-ID.img`).
fn read_sems(dir: &Path, id: u32, d: &mut IpcDump) -> Result<(), RestoreError> {
    let bad = |file: String, what: String| NsError::BadImage { file, what }.in_tree_restore();
    let name = names::ipcns_sem(id);
    let mut r = ImageReader::open(dir, &name, magic::IPCNS_SEM)?;
    while let Some(e) = r.next_entry::<IpcSemEntry>()? {
        if e.nsems > 65536 || d.sems.len() >= MAX_OBJECTS {
            return Err(bad(
                name,
                format!("semaphore set {} of {} semaphores", e.desc.id, e.nsems),
            ));
        }
        let len = e.nsems as usize * 2;
        let raw = r.read_payload(len as u64)?;
        r.read_payload(pad(len, 8) as u64)?;
        let vals = raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        d.sems.push((e, vals));
    }
    Ok(())
}

/// The SysV message queues with their messages (`ipcns-msg-ID.img`).
fn read_msgs(dir: &Path, id: u32, d: &mut IpcDump) -> Result<(), RestoreError> {
    let bad = |file: String, what: String| NsError::BadImage { file, what }.in_tree_restore();
    let name = names::ipcns_msg(id);
    let mut r = ImageReader::open(dir, &name, magic::IPCNS_MSG)?;
    while let Some(e) = r.next_entry::<IpcMsgEntry>()? {
        if d.msgs.len() >= MAX_OBJECTS {
            return Err(bad(name, "too many message queues".into()));
        }
        let mut total = 0u64;
        let mut msgs = Vec::new();
        for _ in 0..e.qnum {
            let m: IpcMsg = r.next_entry()?.ok_or_else(|| {
                bad(
                    name.clone(),
                    format!("queue {} ends before its {} messages", e.desc.id, e.qnum),
                )
            })?;
            total += u64::from(m.msize);
            if total > MAX_QUEUE_BYTES {
                return Err(bad(
                    name,
                    format!("queue {} holds over {MAX_QUEUE_BYTES} bytes", e.desc.id),
                ));
            }
            let data = r.read_payload(u64::from(m.msize))?;
            r.read_payload(pad(m.msize as usize, 8) as u64)?;
            msgs.push((m.mtype, data));
        }
        d.msgs.push((e, msgs));
    }
    Ok(())
}

/// The POSIX message queues: `pmqs` from `ipcns-var-ID.img`, or an older
/// crest's file of its own.
fn read_pmqs(
    dir: &Path,
    id: u32,
    mut pmqs: Vec<CrestPmqEntry>,
) -> Result<Vec<CrestPmqEntry>, RestoreError> {
    let bad = |file: String, what: String| NsError::BadImage { file, what }.in_tree_restore();
    let mut pmq_file = names::ipcns_var(id);
    if pmqs.is_empty() && dir.join(names::crest_pmq(id)).exists() {
        // an older crest's file of its own
        pmq_file = names::crest_pmq(id);
        pmqs = crest_images::read_image(dir, &pmq_file, magic::CREST_PMQ)?;
    }
    for q in &pmqs {
        let bytes: u64 = q.messages.iter().map(|m| m.data.len() as u64).sum();
        let bad_name = q.name.is_empty() || q.name.contains('/') || q.name == "." || q.name == "..";
        if pmqs.len() > MAX_PMQS || bytes > MAX_PMQ_BYTES || bad_name {
            return Err(bad(
                pmq_file,
                format!("POSIX queue {:?} ({bytes} bytes)", q.name),
            ));
        }
    }
    Ok(pmqs)
}
