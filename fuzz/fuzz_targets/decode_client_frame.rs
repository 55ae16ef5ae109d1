//! Any bytes through the server's frame decoder: never a panic, never a huge allocation
//! (run with `-malloc_limit_mb=64`), and what decodes re-encodes to a decodable frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yrs::updates::encoder::Encode;

fuzz_target!(|data: &[u8]| {
    if let Ok(messages) = wedsync::protocol::decode_client_frame(data) {
        let mut again = Vec::new();
        for m in &messages {
            again.extend(m.encode_v1());
        }
        let round = wedsync::protocol::decode_client_frame(&again);
        assert!(round.is_ok(), "re-encoded frame must decode: {round:?}");
    }
});
