//! A container's labels (`KEY=VALUE` a line): what `parse_labels` keeps is always in
//! range, trimmed, lowercased and without repeats, whatever the values, and each label is
//! reported at most once.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use xlb::discovery::docker::parse_labels;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let labels: HashMap<String, String> = text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    let (l, problems) = parse_labels(&labels);
    assert_ne!(l.port, Some(0));
    assert!(l.weight.is_none_or(|w| (1..=1000).contains(&w)));
    for names in [&l.hosts, &l.names] {
        for (i, n) in names.iter().enumerate() {
            assert!(!n.is_empty() && n.trim() == n && n.to_ascii_lowercase() == *n && !n.contains(','), "{n:?}");
            assert!(!names[..i].contains(n), "{n:?} twice");
        }
    }
    assert!(l.network.as_deref().is_none_or(|n| !n.is_empty() && n.trim() == n));
    // At most one problem per label xlb checks (a bad xlb.tls is ignored, so it cannot
    // also lack its xlb.host).
    let keys: Vec<&str> = problems.iter().map(|p| p.split('=').next().unwrap_or_default()).collect();
    for (i, k) in keys.iter().enumerate() {
        assert!(!keys[..i].contains(k), "{k} reported twice: {problems:?}");
    }
});
