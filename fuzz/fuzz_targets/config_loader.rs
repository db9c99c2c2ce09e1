#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ramp::fuzzing::config_loader(data));
