//! `meshwasm-host check` against real artifacts and small WAT modules: one clear error line and a
//! non-zero exit for each way a module can fail to load in Envoy.

use crate::cli_common::*;

/// Runs `check`, returns (exit code, stdout, stderr).
fn check(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let out = run(&all);
    let (stdout, stderr) = text(&out);
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// The single error line a failing check ends with.
fn error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line expected in:\n{stderr}");
    lines[0]
}

#[test]
fn noop_filter_loads() {
    let noop = required_artifact("meshwasm_noop.wasm", "meshwasm-noop");
    let (code, stdout, stderr) = check(&[noop.to_str().unwrap()]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("abi: 0.2.1"), "{stdout}");
    assert!(stdout.contains("imports the host does not provide: none"), "{stdout}");
    assert!(stdout.contains("proxy_on_memory_allocate") && stdout.contains("proxy_on_configure"), "{stdout}");
    assert!(stdout.contains("result: OK"), "{stdout}");
    assert!(!stderr.contains("error:"), "{stderr}");
}

#[test]
fn garbage_bytes_are_rejected() {
    let dir = scratch_dir("garbage");
    let path = dir.join("garbage.wasm");
    std::fs::write(&path, b"\x7fELF this is not wasm \x00\x01\x02").unwrap();
    let (code, _, stderr) = check(&[path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    let line = error_line(&stderr);
    assert!(line.contains(path.to_str().unwrap()) && line.contains("malformed"), "{line}");
}

#[test]
fn truncated_wasm_is_rejected() {
    let dir = scratch_dir("truncated");
    let bytes = wat::parse_str(wat_local_reply()).unwrap();
    let path = dir.join("truncated.wasm");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let (code, _, stderr) = check(&[path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    let line = error_line(&stderr);
    assert!(line.contains("truncated.wasm") && line.contains("malformed"), "{line}");
}

#[test]
fn a_wasm_module_that_is_not_proxy_wasm_is_rejected() {
    let dir = scratch_dir("not-proxy-wasm");
    let path = wasm_file(&dir, "add.wasm", WAT_NOT_PROXY_WASM);
    let (code, stdout, stderr) = check(&[path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.contains("abi: none"), "{stdout}");
    let line = error_line(&stderr);
    assert!(line.contains("add.wasm") && line.contains("not a proxy-wasm module"), "{line}");
}

#[test]
fn an_unsupported_abi_is_rejected() {
    let dir = scratch_dir("old-abi");
    let path = wasm_file(&dir, "old.wasm", &wat_old_abi());
    let (code, stdout, stderr) = check(&[path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.contains("abi: 0.1.0 (unsupported)"), "{stdout}");
    let line = error_line(&stderr);
    assert!(line.contains("old.wasm") && line.contains("unsupported proxy-wasm ABI 0.1.0"), "{line}");
}

#[test]
fn imports_the_host_lacks_are_named() {
    let dir = scratch_dir("unknown-import");
    let path = wasm_file(&dir, "teleport.wasm", &wat_unknown_import());
    let (code, stdout, stderr) = check(&[path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.contains("imports the host does not provide: env::proxy_teleport"), "{stdout}");
    let line = error_line(&stderr);
    assert!(line.contains("teleport.wasm") && line.contains("env::proxy_teleport"), "{line}");
}

#[test]
fn missing_required_exports_are_named() {
    let dir = scratch_dir("no-alloc");
    // A proxy-wasm ABI export but no allocator: Envoy cannot pass it any data.
    let path = wasm_file(
        &dir,
        "noalloc.wasm",
        r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
             (func (export "proxy_on_context_create") (param i32 i32)))"#,
    );
    let (code, _, stderr) = check(&[path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    let line = error_line(&stderr);
    assert!(line.contains("noalloc.wasm") && line.contains("proxy_on_memory_allocate"), "{line}");
}

#[test]
fn a_rejected_configuration_fails_with_the_filters_reason() {
    let dir = scratch_dir("config-rejected");
    let path = wasm_file(&dir, "strict.wasm", &wat_config_rejecting());
    let module = path.to_str().unwrap();

    // The same module loads with an empty configuration …
    let (code, stdout, stderr) = check(&[module]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");

    // … and is rejected with one: the line names the module and carries the filter's own reason.
    let config = dir.join("plugin.json");
    std::fs::write(&config, br#"{"mode": "x"}"#).unwrap();
    let (code, stdout, stderr) = check(&[module, "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.contains("configuration: 13 bytes"), "{stdout}");
    let line = error_line(&stderr);
    assert!(line.contains("strict.wasm"), "{line}");
    assert!(line.contains("on_configure") && line.contains("configuration: must be empty"), "{line}");
}

#[test]
fn a_trap_in_vm_start_is_reported() {
    let dir = scratch_dir("trap");
    let path = wasm_file(&dir, "trap.wasm", &wat_trapping_vm_start());
    let (code, _, stderr) = check(&[path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    let line = error_line(&stderr);
    assert!(line.contains("trap.wasm") && line.contains("proxy_on_vm_start"), "{line}");
    assert!(line.to_lowercase().contains("unreachable"), "{line}");
}

#[test]
fn a_missing_file_is_one_error_line() {
    let (code, _, stderr) = check(&["/nonexistent/filter.wasm"]);
    assert_eq!(code, 1, "{stderr}");
    let line = error_line(&stderr);
    assert!(line.contains("/nonexistent/filter.wasm") && line.contains("cannot read"), "{line}");
}

#[test]
fn help_describes_both_commands() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let (stdout, _) = text(&out);
    assert!(stdout.contains("check") && stdout.contains("serve"), "{stdout}");
    let out = run(&["check", "--help"]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("--config") && stdout.contains("--root-id") && stdout.contains("Exit status"),
        "{stdout}"
    );
    let out = run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_guest_looping_forever_in_configure_is_stopped() {
    let dir = scratch_dir("loop");
    let path = wasm_file(&dir, "loop.wasm", &wat_looping_configure());
    let (code, _, stderr) = check(&[path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    let line = error_line(&stderr);
    assert!(line.contains("loop.wasm") && line.contains("proxy_on_configure"), "{line}");
}

/// A real Rust filter (the probe) rejecting a typo in its configuration: the line carries its reason.
#[test]
fn the_probe_rejects_a_typo_in_its_configuration() {
    let probe = required_artifact("meshwasm_probe.wasm", "meshwasm-probe");
    let dir = scratch_dir("probe-typo");
    let config = dir.join("probe.json");
    std::fs::write(&config, br#"{"nme": "p"}"#).unwrap();
    let (code, stdout, stderr) = check(&[probe.to_str().unwrap(), "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let line = error_line(&stderr);
    assert!(line.contains("meshwasm_probe.wasm") && line.contains("unknown field `nme`"), "{line}");

    std::fs::write(&config, br#"{"name": "p"}"#).unwrap();
    let (code, stdout, stderr) = check(&[probe.to_str().unwrap(), "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // The filter's own log lines from vm_start and configure are shown.
    assert!(stdout.contains("log: [info]") && stdout.contains(r#""cb":"configure""#), "{stdout}");
}
