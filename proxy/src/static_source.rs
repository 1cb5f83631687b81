//! Static mode: the configuration comes from a YAML file, reloaded on SIGHUP
//! and whenever the file changes. A file that does not validate is refused
//! with a message naming the field and line, and the running config stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

use crate::config::{self, Config, ConfigError};
use crate::state::Proxy;

/// How often the file is checked for changes.
const POLL: Duration = Duration::from_millis(500);

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// It could not be read.
    #[error("reading {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// It did not validate.
    #[error("{path}: {error}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with field and line.
        error: ConfigError,
    },
}

/// Reads and validates `path`.
pub fn load(path: &Path) -> Result<(Config, Vec<u8>), LoadError> {
    let bytes = std::fs::read(path).map_err(|error| LoadError::Read {
        path: path.to_owned(),
        error,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let config = config::from_yaml(&text).map_err(|error| LoadError::Invalid {
        path: path.to_owned(),
        error,
    })?;
    Ok((config, bytes))
}

/// Watches `path` (SIGHUP or a content change) and applies each valid
/// version; `applied` is the content currently running.
pub async fn watch(proxy: Arc<Proxy>, path: PathBuf, mut applied: Vec<u8>) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            error!("cannot listen for SIGHUP: {e}");
            None
        }
    };
    let mut tick = tokio::time::interval(POLL);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
        };
        let Ok(current) = std::fs::read(&path) else {
            continue;
        };
        if !forced && current == applied {
            continue;
        }
        match load(&path) {
            Ok((config, bytes)) => {
                proxy.apply(config, None);
                applied = bytes;
                info!(path = %path.display(), version = %proxy.current().version, "configuration reloaded");
            }
            Err(e) => {
                // Remember the refused content so that it is reported once.
                applied = current;
                proxy.refused();
                error!("refusing new configuration, keeping the running one: {e}");
            }
        }
    }
}
