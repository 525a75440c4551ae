//! Path-attribute parser (RFC 7606 rules) on arbitrary attribute blocks.
#![no_main]
use berth_bgp::attributes::{parse, Context};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let ctx = Context {
        four_octet: flags & 1 != 0,
        ibgp: flags & 2 != 0,
        peer_as: if flags & 4 != 0 { Some(64512) } else { None },
    };
    let _ = parse(rest, flags & 8 != 0, ctx);
});
