//! Operating xlb in the namespace topology (see `xlb_tests::topology`: client -> LB (xlb on
//! `lc`) -> backends b1..bN running xlb-testd), the way an operator does:
//!
//! 1. (`observe`) `status_and_metrics_count_real_traffic`: exactly N new connections through
//!    the VIP; `xlb status --json`, `xlb status` and `GET /metrics` (read inside the LB
//!    namespace) count exactly N flows, split over the backends as the client saw them, and
//!    per-second rates that show the traffic and fall back to 0; `drops_are_counted_by_reason`:
//!    SYNs to a VIP without an active backend are counted as `no_backend` drops in status and
//!    `/metrics`; `metrics_count_http_requests_by_code_with_a_latency_histogram`: N requests
//!    through the HTTP proxy (200s and 404s) are read back from `/metrics` by backend and
//!    status code, with a latency histogram per backend whose count is N in all;
//!    `logs_are_json_on_request_with_kernel_records_at_the_level_asked`: `--log-format json`
//!    gives JSON lines only, `--kernel-log debug` adds the kernel's per-flow records, the
//!    default `info` keeps them out (in the kernel);
//!    `status_names_containers_and_metrics_count_discovery_events` (real Docker): backends
//!    named by container name with origin `docker:bridge`; `xlb_discovery_events_total` counts
//!    a container start;
//! 2. (`reload`) `sighup_reload_under_load_adds_and_removes_a_backend`: the config file is
//!    rewritten (b3 removed, b4 added) and xlb gets SIGHUP while steady load runs: zero failed
//!    requests, b4 serves, b3 gets no request started after the reload was applied. The file
//!    keeps its size and mtime, so only the SIGHUP can have triggered the reload;
//!    `reload_keeps_the_connections_of_unchanged_services`: a reload that changes and adds
//!    other services leaves an unchanged one alone: its long connection runs on without a gap
//!    and it counts no new flow (its connection entries were kept);
//! 3. (`rejected`) `bad_reload_keeps_serving_then_the_watcher_applies_a_good_file`: broken
//!    files (an unknown key, a bad value: SIGHUP; a bad address: the file watcher) are rejected
//!    with FILE:LINE:COLUMN in the log while the old config serves with zero failed requests; a
//!    good file is then applied by the file watcher alone (no SIGHUP) within 3 s;
//! 4. (`check`) `check_reports_file_line_column`, `check_accepts_the_example`: `xlb check` on
//!    broken files prints FILE:LINE:COLUMN (of the offending key or value) and exits non-zero;
//!    on `xlb.example.yaml` it exits 0, and `the_example_sets_every_key` (every field of the
//!    config structs, read from their source). `check_positions_of_errors_found_after_parsing`:
//!    errors found once a service was read (port 0, a backend twice, a backend of the wrong
//!    family) or across services (a name or VIP:port twice) point at the offending service.
//!
//! Figures are printed on lines starting with `OPERATE-FIGURE` (run with `--nocapture`).
//! Needs root and `XLB_BIN` (the `check_*` tests only `XLB_BIN`; the discovery test Docker);
//! run with
//! `XLB_BIN=$PWD/target/debug/xlb cargo test -p xlb-tests --test operate -- --test-threads=1 --nocapture`.
//!
//! What the scenarios share is in `common`; a new group of scenarios goes in a file of its own,
//! declared below.

#[macro_use]
mod common;

mod check;
mod observe;
mod rejected;
mod reload;
