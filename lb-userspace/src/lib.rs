//! xlb's control plane and HTTP proxy. Each folder is one role, and imports run one
//! way: `config` <- `discovery` <- `plan` -> `dataplane` / `proxy`; `health` feeds the
//! plan; `acme` keeps certificates (it reads the config and the plan; the proxy answers
//! its HTTP-01 tokens); `access_log` writes the proxy's and the kernel's access log lines;
//! `observe` only reads; `run` wires them together; `import` writes configs from other
//! balancers'; `x509` reads certificates for the TLS store and ACME; `announce` writes the
//! VIP routes a routing daemon exports (checked by `cargo xtask layers`).
pub mod access_log;
pub mod acme;
pub mod announce;
pub mod config;
pub mod dataplane;
pub mod discovery;
pub mod health;
pub mod import;
pub mod netdev;
pub mod observe;
pub mod plan;
pub mod proxy;
pub mod run;
pub mod x509;
