//! `xlb import nginx.conf` (or `haproxy.cfg`): an nginx load balancer's configuration
//! (upstreams and their balancing, servers, locations, host maps, header and cookie pinning by
//! `if`) or HAProxy's (frontends' binds, Host and path ACLs, backends' balance, servers,
//! cookies and checks) translated into xlb's YAML, with a note for every directive that was
//! not translated, and why.
//!
//! What is produced is checked by the config parser before it is printed: an import never
//! prints a file that `xlb check` would reject.

mod haproxy;
mod http;
mod nginx;
mod notes;
mod upstream;
mod yaml;

use std::{fmt, path::Path};

use anyhow::Context as _;

pub use self::notes::Note;
use self::notes::Notes;
use crate::config::Config;

/// The translation: the config's text and what was left out.
pub struct Imported {
    pub yaml: String,
    pub notes: Vec<Note>,
}

/// A report line: `FILE:LINE: directive: why`.
pub struct Report<'a>(pub &'a Path, pub &'a Note);

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: `{}`: {}", self.0.display(), self.1.line, self.1.directive, self.1.why)
    }
}

/// Reads and translates the configuration at `path`: HAProxy's when its name ends in
/// `.cfg` or contains `haproxy`, else nginx's.
pub fn file(path: &Path) -> anyhow::Result<Imported> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    translate(&text, path, name.ends_with(".cfg") || name.contains("haproxy"))
}

/// Translates an nginx (or, with `haproxy`, HAProxy) configuration; `path` names it in
/// errors and in the output.
pub fn translate(text: &str, path: &Path, haproxy: bool) -> anyhow::Result<Imported> {
    let mut notes = Notes::default();
    let services = if haproxy {
        haproxy::translate(text, &mut notes)
    } else {
        let tree = nginx::parse(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        http::translate(&tree, &mut notes)
    };
    if services.is_empty() {
        anyhow::bail!("{}: no proxied upstream or server found: nothing to balance", path.display());
    }
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let yaml = yaml::render(&name, &services);
    Config::parse(&yaml, Path::new("(imported)"))
        .with_context(|| format!("the translation of {} is not a valid xlb config (a bug of xlb import):\n{yaml}", path.display()))?;
    let mut notes = notes.0;
    // Upstreams and maps are read before the servers that use them: the report goes by line.
    notes.sort_by_key(|n| n.line);
    Ok(Imported { yaml, notes })
}
