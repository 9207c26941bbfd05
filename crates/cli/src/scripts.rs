//! `--action-script`: CRIU's notifications on the command line. Each
//! script runs at every hook with CRIU's environment
//! (`CRTOOLS_SCRIPT_ACTION`, `CRTOOLS_IMAGE_DIR`, `CRTOOLS_INIT_PID`); a
//! script that fails aborts the action, as with CRIU.

use crest_core::notify::{Notify, NotifyError};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::process::Command;

pub struct Scripts {
    pub scripts: Vec<String>,
    pub images_dir: PathBuf,
}

impl Notify for Scripts {
    fn notify(
        &mut self,
        hook: &str,
        pid: Option<i32>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), NotifyError> {
        for s in &self.scripts {
            let mut cmd = Command::new(s);
            cmd.env("CRTOOLS_SCRIPT_ACTION", hook)
                .env("CRTOOLS_IMAGE_DIR", &self.images_dir);
            if let Some(pid) = pid {
                cmd.env("CRTOOLS_INIT_PID", pid.to_string());
            }
            if let Some(fd) = fd {
                cmd.env("CRTOOLS_PTY_MASTER_FD", fd.as_raw_fd().to_string());
            }
            crest_core::debug!("running action script {s} for {hook}");
            let st = cmd.status().map_err(|source| NotifyError::Spawn {
                script: s.clone(),
                source,
            })?;
            if !st.success() {
                return Err(NotifyError::Script {
                    script: s.clone(),
                    hook: hook.to_string(),
                    status: st,
                });
            }
        }
        Ok(())
    }
}
