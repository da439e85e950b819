//! `access_log`: a line per HTTP request and per L4 connection. Absent: no access log
//! (a load balancer's own log stays readable at any rate); `access_log: {}` turns it on
//! with nginx's defaults (the `combined` format on standard output).

use std::{fmt, path::PathBuf};

use serde::{Deserialize, Deserializer, de};

use super::units::Checked;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLog {
    /// The file lines are appended to (reopened on SIGUSR1, as logrotate expects);
    /// absent or `-`: standard output.
    #[serde(deserialize_with = "path")]
    pub path: Option<PathBuf>,
    pub format: Format,
    /// One L4 connection in this many gets a line (chosen by a hash of its addresses);
    /// 0: none.
    pub l4_sample: u32,
    /// Lines waiting for the writer; beyond it lines are dropped (and counted), never
    /// waited for by the proxy.
    #[serde(deserialize_with = "buffer")]
    pub buffer: usize,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self { path: None, format: Format::Combined, l4_sample: 1, buffer: 16_384 }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// nginx's `combined`: `$remote_addr - $remote_user [$time_local] "$request" $status
    /// $body_bytes_sent "$http_referer" "$http_user_agent"`, unchanged so that its
    /// parsers read it.
    #[default]
    Combined,
    /// One JSON object a line, with every field (upstream, durations, tries, ...).
    Json,
}

/// Checked inside the visitor, where serde_yaml still knows the value's line and column.
fn path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = Option<PathBuf>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a file path, or - for standard output")
        }
        fn visit_str<E: de::Error>(self, p: &str) -> Result<Self::Value, E> {
            match p {
                "-" => Ok(None),
                p if p.trim().is_empty() => Err(E::custom("an empty path: `-` or leave it out for standard output")),
                p => Ok(Some(PathBuf::from(p))),
            }
        }
    }
    d.deserialize_str(V)
}

fn buffer<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    d.deserialize_u32(Checked(|n: u32| match n {
        1..=1_048_576 => Ok(n as usize),
        n => Err(format!("buffer {n}: expected 1 to 1048576 lines")),
    }))
}
