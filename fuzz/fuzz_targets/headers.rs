//! Header rewriting for the backend (`request::headers::upstream`): whatever the client
//! sends, no hop-by-hop field and nothing its `Connection` names reaches the backend
//! (except the forwarding fields xlb sets), and from an untrusted peer `X-Forwarded-For`
//! is the peer alone and `X-Forwarded-Proto` says whether it came over TLS.
#![no_main]

use hyper::{
    HeaderMap,
    header::{self, HeaderName, HeaderValue},
};
use libfuzzer_sys::fuzz_target;
use xlb::{
    config::http::Cidr,
    proxy::{
        hop_by_hop::{HOP_BY_HOP, connection_tokens},
        listen::guard::shared::ConnShared,
        request::{client::Client, headers::upstream},
    },
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut h = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(line[colon + 1..].trim_ascii())) {
            h.append(n, v);
        }
    }
    let trusted: Vec<Cidr> = if flags & 1 != 0 { vec!["10.0.0.0/8".parse().unwrap()] } else { Vec::new() };
    let client = Client::identify(&h, &ConnShared::new("10.1.2.3:4000".parse().unwrap(), None), &trusted);
    let raw_host = if flags & 2 != 0 { h.get(header::HOST).filter(|v| v.to_str().is_ok()).cloned() } else { None };
    let (upgrade, buffered, tls) = (flags & 4 != 0, flags & 8 != 0, flags & 16 != 0);
    let out = upstream(h.clone(), raw_host.as_ref(), upgrade, &client, buffered, tls);
    for hop in &HOP_BY_HOP {
        if upgrade && (hop == header::CONNECTION || hop == header::UPGRADE) {
            continue;
        }
        assert!(!out.contains_key(hop), "hop-by-hop {hop} forwarded");
    }
    let xff = HeaderName::from_static("x-forwarded-for");
    for named in connection_tokens(&h) {
        let forwarding = ["x-forwarded-for", "x-real-ip", "x-forwarded-host", "x-forwarded-proto", "forwarded"].contains(&named.as_str());
        let set_by_upgrade = upgrade && (named == header::CONNECTION || named == header::UPGRADE);
        let host_from_uri = raw_host.is_some() && named == header::HOST;
        assert!(forwarding || set_by_upgrade || host_from_uri || !out.contains_key(&named), "{named} named in Connection but forwarded");
    }
    if flags & 1 == 0 {
        let got: Vec<&HeaderValue> = out.get_all(&xff).iter().collect();
        assert_eq!(got, [&HeaderValue::from_static("10.1.2.3")], "X-Forwarded-For from an untrusted peer");
        let proto: Vec<&HeaderValue> = out.get_all("x-forwarded-proto").iter().collect();
        assert_eq!(proto, [&HeaderValue::from_static(if tls { "https" } else { "http" })], "X-Forwarded-Proto from an untrusted peer");
    }
    if buffered {
        assert!(!out.contains_key(header::EXPECT));
    }
});
