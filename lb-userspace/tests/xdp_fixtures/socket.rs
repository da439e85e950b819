//! The socket-level programs (cgroup sock_addr hooks) pass the verifier of the kernel under
//! test. `BPF_PROG_TEST_RUN` does not run them; tests/tests/eastwest.rs does, on real sockets.

use crate::harness::Fixture;

#[test]
fn socket_programs_load() {
    let mut fx = Fixture::new(&[]);
    fx.dp.load_socket_programs().expect("verifying the socket programs");
}
