//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the same entry points the
//! cargo-fuzz targets use, so every input the fuzzer kept is checked on every CI run.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("read input");
        run(&data);
        n += 1;
    }
    assert!(n >= 10, "{target}: only {n} corpus inputs");
}

#[test]
fn id_extraction_corpus() {
    replay("id_extraction", ramp::fuzzing::id_extraction);
}

#[test]
fn admin_command_corpus() {
    replay("admin_command", ramp::fuzzing::admin_command);
}

#[test]
fn config_loader_corpus() {
    replay("config_loader", ramp::fuzzing::config_loader);
}
