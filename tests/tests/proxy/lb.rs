//! The proxy under test, in-process on loopback.

use std::{net::SocketAddr, sync::Arc};

use xlb::{
    config::http::HttpOptions,
    plan::{BackendView, ServiceView},
    proxy::{CollectFailures, Proxy},
};

pub struct Lb {
    // Dropped before the runtime.
    pub proxy: Proxy,
    pub failures: Arc<CollectFailures>,
    pub rt: tokio::runtime::Runtime,
}

pub const LISTEN: &str = "127.0.0.1:0";

impl Lb {
    pub fn new() -> Lb {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let failures = Arc::new(CollectFailures::default());
        let proxy = {
            let _g = rt.enter();
            Proxy::new(failures.clone())
        };
        Lb { proxy, failures, rt }
    }

    pub fn update(&self, services: Vec<ServiceView>) {
        let _g = self.rt.enter();
        self.proxy.update(services).unwrap();
    }

    pub fn addr(&self) -> SocketAddr {
        self.proxy.local_addr(LISTEN.parse().unwrap()).expect("listening")
    }

    pub fn failures(&self) -> Vec<xlb::proxy::Failure> {
        self.failures.0.lock().unwrap().clone()
    }

    /// One service on LISTEN.
    pub fn one(options: &str, backends: Vec<BackendView>) -> Lb {
        let lb = Lb::new();
        lb.update(vec![svc("web", options, backends)]);
        lb
    }
}

pub fn svc(name: &str, options: &str, backends: Vec<BackendView>) -> ServiceView {
    let options = if options.trim().is_empty() { HttpOptions::default() } else { HttpOptions::from_yaml(options).unwrap_or_else(|e| panic!("{e}")) };
    ServiceView { name: name.into(), listen: LISTEN.parse().unwrap(), tls: false, redirect: None, options, backends }
}
