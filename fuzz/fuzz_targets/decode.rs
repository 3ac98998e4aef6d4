//! Every decoder a peer's bytes reach (frame splitter, method parser, content
//! header and properties scanner, field tables) on arbitrary input: no panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warren::protocol::decode_all(data);
});
