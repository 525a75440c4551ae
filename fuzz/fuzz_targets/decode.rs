//! Message decoder: any byte string must decode or fail cleanly, and what
//! decodes must re-encode to something that decodes to the same message.
#![no_main]
use berth_bgp::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(h) = data.get(..codec::HEADER_LEN) {
        let mut hdr = [0u8; codec::HEADER_LEN];
        hdr.copy_from_slice(h);
        let _ = codec::frame_len(&hdr);
    }
    if let Ok(m) = codec::decode(data) {
        let again = m.to_bytes();
        if again.len() <= codec::MAX_MESSAGE_LEN {
            let m2 = codec::decode(&again).expect("re-encoded message must decode");
            assert_eq!(m, m2);
        }
        if let codec::Message::Update(u) = m {
            for four_octet in [false, true] {
                let ctx = berth_bgp::attributes::Context {
                    four_octet,
                    ibgp: false,
                    peer_as: Some(64512),
                };
                let _ = berth_bgp::attributes::parse(&u.attributes, !u.nlri.is_empty(), ctx);
            }
        }
    }
});
