#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| domain_fuzz::participant_events(data));
