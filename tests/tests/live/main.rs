//! Live backends: xlb follows the Docker engine by itself (no reload, no SIGHUP) while a client
//! outside the host sends steady load through the VIP, and the backends change under it:
//!
//! - (`testd`) `testd_lame_duck_as_pid1_in_a_scratch_container`: what the backend does for a
//!   zero-failure stop (SIGTERM → keeps serving for the lame-duck period, then exits 0), as
//!   PID 1 of a `FROM scratch` container;
//! - a. (`compose`) `compose_scale_up_and_down`: a compose service `api` (not published)
//!   scaled 1 → 5 → 1; every new replica serves within 2 s of its container start;
//! - b. (`lifecycle`) `docker_stop_one_backend`;
//! - c. (`lifecycle`) `docker_restart_every_backend`, one at a time;
//! - d. (`health`) `health_fail_then_recover` (xlb's HTTP probe on `/health`, flipped
//!   with `POST /health/fail|ok` sent straight to the container): no new requests while
//!   failing (after `fall` probes), served again after `rise`;
//! - d2. (`health`) `docker_healthcheck_fail_then_recover`: the same with Docker's own HEALTHCHECK
//!   (`xlb-testd check` in the image) as the only signal: drained once xlb applied Docker's
//!   `health_status: unhealthy`, served again after `healthy`;
//! - e. (`lifecycle`) `docker_kill_one_backend`: no request started after `docker kill` returned
//!   is answered by, or sent to, the killed container;
//! - f. (`reuse`) `reused_source_port_does_not_reach_a_draining_backend`: a new connection from a
//!   source port used before never reaches a draining backend;
//! - g. (`daemon`) `docker_daemon_restart`: the machine's dockerd stopped (live restore on) and
//!   started again under the load; a container killed while it was away leaves xlb's set at the
//!   resynchronisation, and xlb follows the new daemon's events;
//! - g2. (`daemon`) `docker_daemon_restart_under_wrk`: the same restart under a bounded wrk
//!   load, a new connection per request (issue 17's fault under load);
//! - h. (`swarm`) `swarm_service_scaled_and_updated`: a Docker Swarm service's tasks (on a
//!   swarm-scoped bridge network, `xlb.service` set on the service) scaled 2 → 3 → 1 → 2 and
//!   updated (start-first, stop-first); the engine enters swarm mode for it and leaves after.
//!
//! Each scenario counts the client's failed requests and asserts that there are none (in e,
//! none among the requests started after `docker kill` returned; the ones in flight when the
//! container was killed are counted and printed separately). Measured figures are printed on
//! lines starting with `LIVE-FIGURE` (run with `--nocapture`).
//!
//! ```text
//!  client ns  eth0 10.200.251.2 ---- xt<id>h 10.200.251.1 (root ns: xlb --iface, VIP :80)
//!                                    docker0 / br-<compose network> ---- containers :8080
//! ```
//!
//! Needs root, Docker, docker-compose (a) and `XLB_BIN`.
//!
//! What the scenarios share is in `common`; a new scenario goes in the file of its kind, or a
//! file of its own declared below.

#[macro_use]
mod common;

mod compose;
mod daemon;
mod health;
mod lifecycle;
mod reuse;
mod swarm;
mod testd;
