//! Random choice spreads new flows over every backend.

use xlb::config::Method;

use crate::{
    harness::Fixture,
    net::{Host, TRIO},
    services::{even, web_flows},
};

/// Random choice spreads 600 new flows over three equal backends, 20%..50% each (expected
/// 33.3%, standard deviation 1.9 points: the bounds are > 6 sigma).
#[test]
fn random_spreads_over_all_backends() {
    let mut fx = Fixture::new(&[even(Method::Random, &TRIO)]);
    let n = 600;
    let seq: Vec<&Host> = web_flows(n).iter().map(|p| fx.send("random: new flow", p, &TRIO)).collect();
    let counts: Vec<usize> = TRIO.iter().map(|h| seq.iter().filter(|s| s.ip == h.ip).count()).collect();
    println!("random: {n} flows -> {counts:?}");
    for (h, c) in TRIO.iter().zip(&counts) {
        let share = *c as f64 / n as f64;
        assert!((0.2..=0.5).contains(&share), "{} got {c} of {n} flows ({:.1}%), want 20%..50%: {counts:?}", h.ip, share * 100.0);
    }
}
