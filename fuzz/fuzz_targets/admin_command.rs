#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ramp::fuzzing::admin_command(data));
