//! Facts about the machine and the tools, stated in the report next to the numbers, and per-process
//! CPU and memory readings from `/proc`.

use std::process::Command;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineFacts {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub envoy_version: String,
    pub wrk_version: String,
    pub wasm_opt_version: String,
    pub load_average_before: String,
    pub load_average_after: String,
    pub date_utc: String,
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let text =
                format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default().to_owned()
        })
        .unwrap_or_else(|e| format!("unavailable ({e})"))
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl MachineFacts {
    pub fn collect(envoy: &std::path::Path) -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let envoy_version = command_line(&envoy.display().to_string(), &["--version"]);
        Self {
            nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu_model,
            kernel: command_line("uname", &["-sr"]),
            envoy_version: envoy_version
                .split("version:")
                .nth(1)
                .map(|v| v.trim().to_owned())
                .unwrap_or(envoy_version),
            wrk_version: command_line("wrk", &["--version"])
                .split(" Copyright")
                .next()
                .unwrap_or_default()
                .to_owned(),
            wasm_opt_version: command_line("wasm-opt", &["--version"]),
            load_average_before: load_average(),
            load_average_after: String::new(),
            date_utc: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        }
    }
}

/// Clock ticks per second for `/proc/<pid>/stat` CPU times.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU time of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Pins every thread of `pid` to `cpus` (`taskset -a -p -c`).
pub fn pin(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let out = Command::new("taskset").args(["-a", "-p", "-c", cpus, &pid.to_string()]).output()?;
    anyhow::ensure!(out.status.success(), "taskset failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_memory() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(cpu_ticks(pid).is_some());
    }
}
