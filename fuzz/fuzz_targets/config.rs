//! The config file parser (YAML text to a checked `Config`), the CLI SPEC parser and the
//! `http:` block: any text gives a value or an error, never a panic or a hang.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xlb::config::{Config, Spec, http::HttpOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, Path::new("fuzz.yaml")) {
        // Errors carry a position: `FILE:LINE:COLUMN` or the file alone.
        Err(e) => assert!(format!("{e:#}").starts_with("fuzz.yaml"), "{e:#}"),
        Ok(c) => drop(c.with_specs(&[])),
    }
    let specs: Vec<Spec> = text.lines().take(8).filter_map(|l| l.parse().ok()).collect();
    if let Ok(c) = Config::parse("services: []\n", Path::new("empty.yaml")) {
        drop(c.with_specs(&specs));
    }
    drop(HttpOptions::from_yaml(text));
});
