//! `dataplane.socket_lb`: socket-level balancing for local callers (containers and host
//! processes), by cgroup hooks on the connect(), sendmsg(), recvmsg() and getpeername()
//! of the processes in one cgroup v2 (see `dataplane::socket`).

use std::{fmt, path::PathBuf, str::FromStr};

use serde::{Deserialize, Deserializer, de};

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketLb {
    pub enabled: Switch,
    /// The cgroup v2 directory whose processes (and their descendants') are balanced at the
    /// socket; default: the root of the unified hierarchy, mounted if the host has none.
    pub cgroup: Option<PathBuf>,
}

/// `auto` (the default): on when the kernel has the hooks, else a message and the packet
/// path only; `true`: on, and a kernel without them fails the start; `false`: off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Switch {
    #[default]
    Auto,
    On,
    Off,
}

impl FromStr for Switch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "true" | "on" | "yes" => Ok(Self::On),
            "false" | "off" | "no" => Ok(Self::Off),
            _ => Err(format!("{s:?}: expected auto, true or false")),
        }
    }
}

impl fmt::Display for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::On => "true",
            Self::Off => "false",
        })
    }
}

/// YAML's `true` and `false` are booleans, `auto` a string: both are taken.
impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Switch;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("auto, true or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Switch, E> {
                Ok(if v { Switch::On } else { Switch::Off })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Switch, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    #[test]
    fn socket_lb_parses_and_bad_values_are_positioned() {
        let c = |t: &str| Config::parse(t, Path::new("x.yaml"));
        assert_eq!(Config::default().dataplane.socket_lb.enabled, Switch::Auto);
        let on = c("dataplane:\n  socket_lb: { enabled: true, cgroup: /sys/fs/cgroup/unified/app }\n").unwrap();
        assert_eq!(on.dataplane.socket_lb, SocketLb { enabled: Switch::On, cgroup: Some("/sys/fs/cgroup/unified/app".into()) });
        assert_eq!(c("dataplane:\n  socket_lb: { enabled: auto }\n").unwrap().dataplane.socket_lb.enabled, Switch::Auto);
        assert_eq!(c("dataplane:\n  socket_lb: { enabled: false }\n").unwrap().dataplane.socket_lb.enabled, Switch::Off);
        let e = c("dataplane:\n  socket_lb: { enabled: maybe }\n").unwrap_err().to_string();
        assert!(e.starts_with("x.yaml:2:25: dataplane.socket_lb.enabled: \"maybe\": expected auto, true or false"), "{e}");
        let e = c("dataplane:\n  socket_lb: { cgroups: /x }\n").unwrap_err().to_string();
        assert!(e.starts_with("x.yaml:2:16: dataplane.socket_lb: unknown field `cgroups`"), "{e}");
        let svc = c("services:\n  - { name: a, port: 80, socket_lb: false }\n  - { name: b, port: 81 }\n").unwrap();
        assert!(!svc.services[0].socket_lb && svc.services[1].socket_lb);
    }
}
