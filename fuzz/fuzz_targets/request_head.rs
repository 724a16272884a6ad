//! The strict HTTP/1 request reader: never panics, hands over exactly the bytes it was
//! given (a prefix of them, unchanged), and decides the same however the bytes are split
//! into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_proxy::http::gate::Gate;

fn feed(data: &[u8], step: usize) -> (Vec<u8>, Option<String>) {
    let mut gate = Gate::new(4096, 32);
    let mut out = Vec::new();
    for piece in data.chunks(step.max(1)) {
        let r = gate.push(piece);
        out.append(gate.ready());
        if let Err(v) = r {
            return (out, Some(v.to_string()));
        }
    }
    (out, None)
}

fuzz_target!(|input: &[u8]| {
    let Some((&step, data)) = input.split_first() else {
        return;
    };
    let (whole, verdict) = feed(data, data.len());
    assert!(data.starts_with(&whole), "the gate changed the bytes");
    let (split, split_verdict) = feed(data, usize::from(step % 17) + 1);
    assert_eq!(
        verdict,
        split_verdict,
        "split in pieces of {}",
        step % 17 + 1
    );
    // Split reads may hand over less before a refusal (the refused piece is held), never more.
    if verdict.is_none() {
        assert_eq!(whole, split);
    } else {
        assert!(whole.starts_with(&split) || split.starts_with(&whole));
    }
});
