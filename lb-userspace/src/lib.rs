//! xlb's control plane: config, selection tables, and the kernel data plane's maps.
pub mod admin;
pub mod config;
pub mod discovery;
pub mod dataplane;
pub mod fdlimit;
pub mod desired;
pub mod health;
pub mod maglev;
pub mod metrics;
pub mod netdev;
pub mod pin;
pub mod probe;
pub mod proxy;
pub mod run;
pub mod status;
