//! Path normalisation: never panics, its result is in normal form (normalising it again
//! changes nothing) and holds no dot segment, no empty segment, no encoded separator.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::http::path::normalize;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(normal) = normalize(path) else {
        return;
    };
    if normal == "*" {
        return;
    }
    let again = normalize(&normal).expect("a normal path is accepted");
    assert_eq!(again, normal);
    assert!(normal.starts_with('/'));
    assert!(!normal.contains("//"), "{normal}");
    for seg in normal.split('/') {
        assert!(seg != "." && seg != "..", "{normal}");
    }
    let upper = normal.to_ascii_uppercase();
    assert!(
        !upper.contains("%2F") && !upper.contains("%5C") && !upper.contains("%2E"),
        "{normal}"
    );
});
