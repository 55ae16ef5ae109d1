//! The update path of the room: decode a client's update and apply it into a document that
//! already holds some content, then encode the state. Never a panic; slow or huge inputs show
//! up with `-timeout=2 -malloc_limit_mb=64`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

fuzz_target!(|data: &[u8]| {
    // The server's path: the declared-count pre-check, then yrs' decoder.
    if wedsync::protocol::check_update(data).is_err() {
        return;
    }
    let Ok(update) = Update::decode_v1(data) else {
        return;
    };
    let doc = Doc::with_client_id(1);
    let text = doc.get_or_insert_text("t");
    text.push(&mut doc.transact_mut(), "base");
    {
        let mut txn = doc.transact_mut();
        let _ = txn.apply_update(update);
    }
    let txn = doc.transact();
    let state = txn.encode_state_as_update_v1(&StateVector::default());
    let _ = text.get_string(&txn);
    drop(txn);
    // What the server stores and relays must load again.
    let again = Update::decode_v1(&state).expect("the server's own encoding decodes");
    let copy = Doc::new();
    let _ = copy.transact_mut().apply_update(again);
});
