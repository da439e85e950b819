//! The HTTP/1 framing guard on arbitrary bytes: the verdict and what passes do not depend
//! on how reads split the bytes, what passes is never more than came in, and what passed
//! passes a fresh guard again unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlb::proxy::listen::guard::{framer::Framer, rules::HeadLimits};

const LIMITS: HeadLimits = HeadLimits { max_request_line: 256, max_head: 2048, max_headers: 16 };

/// Feeds `input` in pieces of `step` bytes; the verdict and what passed.
fn feed(input: &[u8], step: usize) -> (Framer, Result<(), xlb::proxy::listen::guard::rules::Reject>, Vec<u8>) {
    let (mut f, mut out) = (Framer::new(LIMITS, u64::MAX), Vec::new());
    for piece in input.chunks(step.max(1)) {
        if let Err(e) = f.feed(piece, &mut out) {
            return (f, Err(e), out);
        }
    }
    (f, Ok(()), out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let (mut whole, verdict, mut passed) = feed(input, input.len());
    let (_, in_pieces, passed_in_pieces) = feed(input, usize::from(split % 8) + 1);
    assert_eq!(verdict, in_pieces, "the verdict depends on how reads split");
    assert!(passed.len() <= input.len());
    if verdict.is_ok() {
        assert_eq!(passed, passed_in_pieces, "what passes depends on how reads split");
    }
    if verdict.is_ok() && !whole.is_passthrough() && !whole.awaiting_upgrade() {
        let (_, again, passed_again) = feed(&passed, passed.len());
        assert_eq!(again, Ok(()), "what passed fails a fresh guard");
        assert_eq!(passed_again, passed, "what passed changes in a fresh guard");
    }
    // The answer to an upgrade request, either way: what was held is checked or passed.
    if whole.awaiting_upgrade() {
        let before = passed.len();
        if whole.upgrade_outcome(split & 0x80 != 0, &mut passed).is_ok() {
            assert!(passed.len() - before <= input.len());
        }
    }
});
