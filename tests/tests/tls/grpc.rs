//! HTTP/2 to backends and gRPC through it: a real gRPC client (grpcio) speaks h2 to xlb
//! over TLS, and xlb speaks h2c (prior knowledge) to one gRPC server and h2 over TLS
//! (ALPN) to another, checked against the test CA. Unary and server-streaming calls
//! answer, and a failed call's status (the `grpc-status` trailer) reaches the client.

use crate::{
    LB, Setup,
    upstream::{spawn_peer, start_with},
};

const H2C_PORT: u16 = 50051;
const H2_PORT: u16 = 50052;

#[test]
fn grpc_over_h2c_and_h2_backends() {
    let s = Setup::new();
    let d = s.dir.path().display();
    s.ca.leaf(s.dir.path(), "backend", "backend", &["backend.internal"], false);
    let mut h2c = spawn_peer(&s, "grpc_peer.py", H2C_PORT, &["server", "PORT"]);
    let mut h2s = spawn_peer(&s, "grpc_peer.py", H2_PORT, &["server", "PORT", &format!("{d}/backend.crt"), &format!("{d}/backend.key")]);
    let h2 = format!("{{ protocol: h2, tls: {{ ca: {d}/ca.pem, server_name: backend.internal }} }}");
    let mut xlb = start_with(&s, &[("grpc", H2C_PORT, "{ protocol: h2c }"), ("grpcs", H2_PORT, &h2)]);

    let script = format!("{}/tests/tls/grpc_peer.py", env!("CARGO_MANIFEST_DIR"));
    for host in ["grpc.test", "grpcs.test"] {
        let out = s
            .sh(&format!("timeout 30 {} {script} client {LB}:443 {ca} {host}", xlb_tests::tls::PYTHON, ca = s.path("ca.pem").display()))
            .unwrap_or_else(|e| panic!("gRPC client to {host}: {e}\n{}", xlb.log()));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            ["unary:hello", "part0:s,part1:s,part2:s", "NOT_FOUND no such thing: x"],
            "{host}: unary, server streaming, and a failed call's status from its trailers\n{}",
            xlb.log()
        );
    }
    xlb.assert_running();
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
    h2c.kill();
    h2s.kill();
}
