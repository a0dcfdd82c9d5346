//! `make demo` works as a new user runs it: the demo binary checks each step of its transcript and exits
//! non-zero when the mesh misbehaves, so running it is the test.

use std::process::Command;

fn run_demo(registry: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshwasm-demo"))
        .args(["--registry", registry])
        .output()
        .expect("the demo binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo with the {registry} registry failed\n{stdout}\n{stderr}");
    for expected in
        ["-> 401", "200 from instance A", "200 from instance B", "200 from instance C", "200 from instance D"]
    {
        assert!(stdout.contains(expected), "demo transcript lacks `{expected}`:\n{stdout}");
    }
}

#[test]
fn demo_with_the_default_file_registry() {
    run_demo("file");
}

#[test]
fn demo_with_etcd() {
    run_demo("etcd");
}
