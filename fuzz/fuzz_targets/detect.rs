//! Protocol detection from a connection's first bytes: never panics, decides the same for
//! every longer input once it decided (except TLS, which waits for a whole record), and
//! says HTTP/2 only for the exact preface.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_proxy::detect::{classify, Detected, H2_PREFACE};

fuzz_target!(|data: &[u8]| {
    let whole = classify(data);
    if let Some(Detected::Http2) = whole {
        assert!(data.starts_with(H2_PREFACE));
    }
    if let Some(Detected::Tls(hello)) = &whole {
        assert!(data.starts_with(&hello.record));
    }
    // Deciding on a prefix never contradicts the whole, for HTTP.
    for n in 0..data.len().min(64) {
        if let Some(d @ (Detected::Http1 | Detected::Http2)) = classify(&data[..n]) {
            assert_eq!(Some(d), whole, "prefix of {n} bytes");
        }
    }
});
