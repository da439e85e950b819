//! What an event of the daemon's stream asks of the source, and which events it asks for.
use std::{
    collections::HashMap,
    time::{SystemTime, UNIX_EPOCH},
};

use bollard::{
    models::{ContainerInspectResponse, EventMessage, EventMessageTypeEnum},
    query_parameters::EventsOptions,
};

/// Actions followed; anything else (create, exec_*, attach, ...) is filtered by the daemon.
/// `update` and `remove` are a swarm service's (its labels may have changed).
const EVENTS: &[&str] =
    &["start", "die", "stop", "kill", "destroy", "pause", "unpause", "health_status", "rename", "connect", "disconnect", "update", "remove"];

/// What an event asks of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Inspect this container again.
    Inspect(String),
    /// Inspect it again if it is being followed (network events name every container).
    InspectKnown(String),
    /// The container is gone.
    Forget(String),
    /// A signal was sent (`kill`, with its number when the event says) or the container
    /// was stopped (`stop`, `signal: None`).
    Stopping {
        id: String,
        signal: Option<i32>,
    },
    /// A swarm service was updated or removed: read its labels again.
    Service(String),
    Nothing,
}

/// Reads one event of the daemon's stream.
pub fn classify(ev: &EventMessage) -> Change {
    let action = ev.action.as_deref().unwrap_or_default();
    // `health_status: healthy`, `exec_start: sh`: the verb is before the colon.
    let verb = action.split(':').next().unwrap_or_default().trim();
    let actor = ev.actor.as_ref();
    let attr = |k: &str| actor.and_then(|a| a.attributes.as_ref()?.get(k).cloned());
    match ev.typ {
        Some(EventMessageTypeEnum::CONTAINER) => {
            let Some(id) = actor.and_then(|a| a.id.clone()) else {
                return Change::Nothing;
            };
            match verb {
                "die" | "destroy" => Change::Forget(id),
                "kill" => Change::Stopping { id, signal: attr("signal").as_deref().and_then(parse_signal) },
                "stop" => Change::Stopping { id, signal: None },
                "start" | "pause" | "unpause" | "health_status" | "rename" => Change::Inspect(id),
                _ => Change::Nothing,
            }
        }
        Some(EventMessageTypeEnum::NETWORK) if matches!(verb, "connect" | "disconnect") => attr("container").map_or(Change::Nothing, Change::InspectKnown),
        Some(EventMessageTypeEnum::SERVICE) if matches!(verb, "update" | "remove") => actor.and_then(|a| a.id.clone()).map_or(Change::Nothing, Change::Service),
        _ => Change::Nothing,
    }
}

/// A signal by number (`15`) or name (`SIGTERM`, `term`).
pub fn parse_signal(s: &str) -> Option<i32> {
    const NAMES: [&str; 31] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP",
        "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    let s = s.trim();
    if let Ok(n) = s.parse() {
        return Some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    NAMES.iter().position(|n| *n == name).map(|i| i as i32 + 1)
}

/// Whether a `kill` with `signal` stops the container: the usual stopping signals and the
/// container's own stop signal do; a reload signal (`docker kill -s HUP`) does not. An
/// unknown signal counts as stopping.
pub fn stops_container(signal: Option<i32>, c: &ContainerInspectResponse) -> bool {
    let Some(sig) = signal else { return true };
    let own = c.config.as_ref().and_then(|c| c.stop_signal.as_deref()).and_then(parse_signal);
    matches!(sig, 2 | 3 | 6 | 9 | 15) || own == Some(sig)
}

/// Asks for the followed actions, from `since` (to the nanosecond, as the daemon reads it).
pub fn events_options(since: SystemTime) -> EventsOptions {
    let since = since.duration_since(UNIX_EPOCH).unwrap_or_default();
    let filters = HashMap::from([
        ("type".to_owned(), ["container", "network", "service"].map(str::to_owned).to_vec()),
        ("event".to_owned(), EVENTS.iter().map(|e| e.to_string()).collect()),
    ]);
    EventsOptions { since: Some(format!("{}.{:09}", since.as_secs(), since.subsec_nanos())), until: None, filters: Some(filters) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::discovery::docker::testing::simple;

    fn event(v: Value) -> EventMessage {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn events_are_classified() {
        let c = |action: &str, attrs: Value| {
            classify(&event(json!({
                "Type": "container", "Action": action, "scope": "local", "time": 1, "timeNano": 1,
                "Actor": { "ID": "abc", "Attributes": attrs }
            })))
        };
        assert_eq!(c("die", json!({"exitCode": "137"})), Change::Forget("abc".into()));
        assert_eq!(c("destroy", json!({})), Change::Forget("abc".into()));
        assert_eq!(c("kill", json!({"signal": "9"})), Change::Stopping { id: "abc".into(), signal: Some(9) });
        assert_eq!(c("stop", json!({})), Change::Stopping { id: "abc".into(), signal: None });
        assert_eq!(c("health_status: unhealthy", json!({})), Change::Inspect("abc".into()));
        for a in ["start", "pause", "unpause", "rename"] {
            assert_eq!(c(a, json!({})), Change::Inspect("abc".into()), "{a}");
        }
        assert_eq!(c("exec_start: sh", json!({})), Change::Nothing);
        let n = classify(&event(json!({
            "Type": "network", "Action": "disconnect", "scope": "local", "time": 1, "timeNano": 1,
            "Actor": { "ID": "net", "Attributes": {"container": "abc", "name": "bridge", "type": "bridge"} }
        })));
        assert_eq!(n, Change::InspectKnown("abc".into()));
        let s = |action: &str| {
            classify(&event(json!({
                "Type": "service", "Action": action, "scope": "swarm", "time": 1, "timeNano": 1,
                "Actor": { "ID": "svc1", "Attributes": {"name": "web"} }
            })))
        };
        assert_eq!(s("update"), Change::Service("svc1".into()));
        assert_eq!(s("remove"), Change::Service("svc1".into()));
        assert_eq!(s("create"), Change::Nothing);
        assert_eq!(c("update", json!({})), Change::Nothing, "a container's resources changed");
    }

    #[test]
    fn reload_signals_do_not_drain() {
        let plain = simple("x", &[]);
        assert!(stops_container(Some(9), &plain));
        assert!(stops_container(Some(15), &plain));
        assert!(stops_container(None, &plain));
        assert!(!stops_container(Some(1), &plain), "HUP reloads");
        assert!(!stops_container(Some(parse_signal("USR1").unwrap()), &plain));
        let mut winch = plain.clone();
        winch.config.as_mut().unwrap().stop_signal = Some("SIGWINCH".into());
        assert!(stops_container(Some(28), &winch), "the container's own stop signal");
        assert_eq!(parse_signal("sigterm"), Some(15));
        assert_eq!(parse_signal("SIGSYS"), Some(31));
        assert_eq!(parse_signal("nope"), None);
    }

    #[test]
    fn since_is_seconds_and_nanoseconds() {
        let o = events_options(UNIX_EPOCH + Duration::new(1_700_000_000, 5));
        assert_eq!(o.since.as_deref(), Some("1700000000.000000005"));
        assert_eq!(o.filters.unwrap()["type"], ["container", "network", "service"]);
    }
}
