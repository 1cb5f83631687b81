//! Starting a container's process: inside the pod's network namespace, in a
//! private mount namespace holding the pod's volumes at their mount paths,
//! with the resolved environment, in a process group of its own.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::volumes::Mount;

/// Everything needed to start one process in a pod.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The whole environment (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// The pod's network namespace; `None` for `hostNetwork` pods.
    pub netns: Option<PathBuf>,
    /// Bind mounts applied in the process's own mount namespace.
    pub mounts: Vec<Mount>,
    /// Working directory, entered after the mounts.
    pub working_dir: Option<PathBuf>,
}

fn cstring(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| format!("path {} has a NUL byte", p.display()))
}

/// Makes sure a bind-mount target exists: a directory for a directory
/// source, an empty file for a file source.
fn ensure_target(m: &Mount) -> Result<(), String> {
    if m.source.is_dir() {
        std::fs::create_dir_all(&m.target)
            .map_err(|e| format!("mount target {}: {e}", m.target.display()))
    } else if m.target.exists() {
        Ok(())
    } else {
        if let Some(parent) = m.target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("mount target {}: {e}", parent.display()))?;
        }
        File::create(&m.target)
            .map(|_| ())
            .map_err(|e| format!("mount target {}: {e}", m.target.display()))
    }
}

impl ProcessSpec {
    /// Builds the command; stdout and stderr go to `stdout`/`stderr`.
    pub fn command(&self, stdout: Stdio, stderr: Stdio) -> Result<tokio::process::Command, String> {
        for m in &self.mounts {
            if !m.source.exists() {
                return Err(format!(
                    "mount source {} does not exist",
                    m.source.display()
                ));
            }
            ensure_target(m)?;
        }
        let netns = match &self.netns {
            Some(p) => {
                Some(File::open(p).map_err(|e| format!("network namespace {}: {e}", p.display()))?)
            }
            None => None,
        };
        let mounts: Vec<(CString, CString, bool)> = self
            .mounts
            .iter()
            .map(|m| Ok((cstring(&m.source)?, cstring(&m.target)?, m.read_only)))
            .collect::<Result<_, String>>()?;
        let workdir = self.working_dir.as_deref().map(cstring).transpose()?;
        let root = CString::new("/").map_err(|e| e.to_string())?;

        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: the closure only makes raw syscalls on data prepared above;
        // it allocates nothing and takes no lock, as a forked child must.
        unsafe {
            cmd.pre_exec(move || {
                let check = |rc: libc::c_int| {
                    if rc == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                };
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
                // The closure owns the namespace file, so it is open until the
                // command is dropped; O_CLOEXEC closes it in the child.
                if let Some(f) = &netns {
                    check(libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET))?;
                }
                check(libc::unshare(libc::CLONE_NEWNS))?;
                // Mounts made below must not leak back to the host.
                check(libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for (src, dst, ro) in &mounts {
                    check(libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ))?;
                    if *ro {
                        check(libc::mount(
                            std::ptr::null(),
                            dst.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                            std::ptr::null(),
                        ))?;
                    }
                }
                if let Some(dir) = &workdir {
                    check(libc::chdir(dir.as_ptr()))?;
                }
                Ok(())
            });
        }
        Ok(cmd)
    }
}

/// Sends `signal` to the process group led by `pid`.
pub fn signal_group(pid: u32, signal: libc::c_int) {
    // SAFETY: a plain syscall; a stale pid group at worst yields ESRCH.
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}
