//! The ClientHello reader TLS passthrough routes by: any bytes give "more", a name or
//! "not TLS", never a panic; a name is a plain DNS name, and reading a prefix of the
//! input never finds a name the whole input does not have.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlb::proxy::tls::hello::{Hello, read};

fuzz_target!(|data: &[u8]| {
    let whole = read(data);
    if let Hello::Name(Some(name)) = &whole {
        assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'), "{name:?}");
    }
    for n in [data.len() / 2, data.len().saturating_sub(1)] {
        match read(&data[..n]) {
            Hello::Partial => {}
            prefix => assert_eq!(prefix, whole, "{n} of {} bytes decided otherwise", data.len()),
        }
    }
});
