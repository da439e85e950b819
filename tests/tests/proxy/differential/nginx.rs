//! A test-owned nginx (Debian's package, never the system service): one process, a
//! generated config in a temporary directory, a loopback port, proxying to one address.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use xlb_tests::util::{Proc, TempDir, have, wait_for};

pub struct Nginx {
    pub addr: SocketAddr,
    pub version: String,
    _proc: Proc,
    _dir: TempDir,
}

/// nginx's binary: `$XLB_NGINX`, else `nginx` on PATH (Debian: /usr/sbin/nginx).
fn binary() -> String {
    let bin = std::env::var("XLB_NGINX").unwrap_or_else(|_| "nginx".into());
    assert!(have(&bin) || have("/usr/sbin/nginx"), "nginx not found (the differential test runs real nginx): `apt-get install -y nginx`, or set XLB_NGINX");
    if have(&bin) { bin } else { "/usr/sbin/nginx".into() }
}

impl Nginx {
    /// nginx in front of `upstream`, in the configuration a proxy commonly runs with
    /// (`proxy_http_version 1.1`, the client's `Host`, request buffering on).
    pub fn start(upstream: SocketAddr) -> Nginx {
        let bin = binary();
        // `nginx -v` prints to stderr.
        let out = Command::new(&bin).arg("-v").output().unwrap_or_else(|e| panic!("{bin} -v: {e}"));
        let version = String::from_utf8_lossy(&out.stderr).trim().trim_start_matches("nginx version: ").to_string();
        let dir = TempDir::new();
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://{upstream}; proxy_http_version 1.1; proxy_set_header Host $host; }}\n  }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let mut c = Command::new(&bin);
        c.arg("-p").arg(dir.path()).arg("-c").arg(&path).arg("-e").arg(dir.path().join("error.log"));
        let proc = Proc::spawn("nginx", c);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        wait_for(Duration::from_secs(10), Duration::from_millis(20), || TcpStream::connect(addr).ok())
            .unwrap_or_else(|| panic!("nginx did not listen on {addr}; log:\n{}", proc.log().text()));
        Nginx { addr, version, _proc: proc, _dir: dir }
    }
}
