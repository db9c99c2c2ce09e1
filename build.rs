//! Build-time facts for the tests, so a test that cannot run here is marked ignored with its
//! reason instead of passing without checking anything: whether they are built by root (the
//! admin socket's uid checks become a second user) and whether a Chromium is installed (the
//! status page is tested in a real browser; `.ci/run` installs Debian's `chromium`), and whether
//! etcd is (the fleet is tested against a real one; `.ci/run` installs `etcd-server`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ramp_tests_as_root)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=USER");
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if root {
        println!("cargo::rustc-cfg=ramp_tests_as_root");
    }
    println!("cargo::rustc-check-cfg=cfg(ramp_tests_with_browser)");
    println!("cargo::rustc-check-cfg=cfg(ramp_tests_with_etcd)");
    println!("cargo::rerun-if-changed=/usr/bin/etcd");
    if std::path::Path::new("/usr/bin/etcd").exists() {
        println!("cargo::rustc-cfg=ramp_tests_with_etcd");
    }
    println!("cargo::rerun-if-changed=/usr/bin/chromium");
    if std::path::Path::new("/usr/bin/chromium").exists() {
        println!("cargo::rustc-cfg=ramp_tests_with_browser");
    }
}
