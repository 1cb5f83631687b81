//! The harness's error type.

use std::path::Path;

/// What can go wrong while building or running the test bed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A binary of the test bed is missing or could not be built.
    #[error("test-bed toolchain: {0}")]
    Toolchain(String),
    /// Preparing the environment (files, certificates, network) failed.
    #[error("setup: {0}")]
    Setup(String),
    /// A component of the control plane exited or never became ready.
    #[error("{component} failed: {reason}\n--- last lines of {component}'s log ---\n{log_tail}")]
    Component {
        /// etcd, kube-apiserver, ...
        component: String,
        /// What was observed.
        reason: String,
        /// The tail of its log.
        log_tail: String,
    },
    /// A wait ran out of time.
    #[error("timed out after {seconds:.1}s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        seconds: f64,
    },
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// An HTTP request of the harness failed.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// A check of a test failed.
    #[error("{0}")]
    Check(String),
    /// A command run by the harness failed.
    #[error("command `{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status and output.
        detail: String,
    },
}

/// Lets a test's own checks (anyhow) run inside [`crate::wait::poll`].
impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Error::Check(format!("{e:#}"))
    }
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
