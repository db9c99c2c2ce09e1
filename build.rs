//! Build-time facts for the tests, so a test that cannot run here is marked ignored with its
//! reason instead of passing without checking anything: whether they are built by root (the
//! admin socket's uid checks become a second user) and whether a Chromium is installed (the
//! status page is tested in a real browser; `.ci/run` installs Debian's `chromium`), whether
//! etcd is (the fleet is tested against a real one; `.ci/run` installs `etcd-server`), and whether
//! a filesystem can be mounted on a loop device and frozen (a disk that stops answering).

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
    // A filesystem the tests can mount and freeze (a disk that stops answering): root, loop
    // devices, mkfs.ext4 and fsfreeze.
    println!("cargo::rustc-check-cfg=cfg(ramp_tests_can_freeze)");
    println!("cargo::rerun-if-changed=/dev/loop-control");
    let tools = [
        "/dev/loop-control",
        "/usr/sbin/mkfs.ext4",
        "/usr/sbin/fsfreeze",
    ];
    if root && tools.iter().all(|t| std::path::Path::new(t).exists()) {
        println!("cargo::rustc-cfg=ramp_tests_can_freeze");
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
