//! `sluice-pause`: the pod sandbox process. It holds a pod's namespaces,
//! reaps the children it inherits when the pod shares one process
//! namespace, and exits at once on SIGTERM or SIGINT. The curl image runs it
//! as its idle command for the same reason: a plain `sleep` as PID 1 ignores
//! SIGTERM and keeps a deleted pod for its whole grace period.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

fn main() {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        signals.add(s);
    }
    // Blocked, so that they queue for `wait` instead of running handlers.
    if let Err(e) = signals.thread_block() {
        eprintln!("sluice-pause: blocking signals: {e}");
        std::process::exit(1);
    }
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(_) => std::process::exit(0),
            Err(e) => {
                eprintln!("sluice-pause: waiting for signals: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Collects every exited child.
fn reap() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}
