//! What tells that a watched file changed: its modification time and size.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::config::Config;

/// What tells that a file changed: its modification time and size.
pub fn stamp(path: Option<&Path>) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path?).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The stamps of every certificate and key file, and of the certificate directory
/// (a pair added or removed changes its modification time).
pub fn cert_stamps(config: &Config) -> Vec<Option<(SystemTime, u64)>> {
    let (files, dirs) = (config.certificate_files(), config.certificate_dirs());
    let paths = files.iter().flat_map(|f| [f.cert.as_path(), f.key.as_path()]).chain(dirs.iter().map(PathBuf::as_path));
    paths.map(|p| stamp(Some(p))).collect()
}
