#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| domain_fuzz::mediator_events(data));
