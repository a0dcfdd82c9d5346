//! Driving one load with `wrk` and reading its exact figures back.
//!
//! wrk's human output rounds; a Lua `done` hook prints the summary and latency percentiles (µs) as one
//! JSON line instead. For unique tokens a `request` hook cycles through a pre-minted token file, each
//! wrk thread starting at a different offset.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

const MARKER: &str = "MESHWASM-WRK ";

const DONE_HOOK: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'MESHWASM-WRK {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"mean_us":%.3f,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"#;

const TOKEN_HOOKS: &str = r#"
local tokens = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do
    if #line > 0 then tokens[#tokens + 1] = "Bearer " .. line end
  end
  -- Each thread starts elsewhere in the list so threads do not send the same token at once.
  local seed = os.time()
  local addr = tostring({}):match("0x(%x+)")
  if addr then seed = seed + tonumber(addr:sub(-6), 16) end
  math.randomseed(seed)
  i = math.random(#tokens)
end
request = function()
  i = i + 1
  if i > #tokens then i = 1 end
  wrk.headers["authorization"] = tokens[i]
  return wrk.format()
end
"#;

/// The fixed shape of every load.
#[derive(Debug, Clone, Serialize)]
pub struct LoadShape {
    pub threads: u32,
    pub connections: u32,
    /// CPU list for `taskset -c` (None: not pinned).
    pub cpus: Option<String>,
}

/// What a load sends besides `GET /`.
#[derive(Debug, Clone)]
pub enum Request {
    Plain,
    /// The same `authorization: Bearer <token>` on every request.
    BearerRepeated(String),
    /// A different token per request, cycling through this file (one token per line).
    BearerUnique(PathBuf),
}

/// One wrk run's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WrkResult {
    pub requests: u64,
    pub duration_us: u64,
    pub bytes: u64,
    pub connect_errors: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    /// Responses that were not 2xx/3xx.
    pub status_errors: u64,
    pub timeouts: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl WrkResult {
    pub fn rps(&self) -> f64 {
        if self.duration_us == 0 { 0.0 } else { self.requests as f64 * 1e6 / self.duration_us as f64 }
    }

    /// Any failed request makes the run unusable (a fast 401 would inflate requests/s).
    pub fn error_count(&self) -> u64 {
        self.connect_errors + self.read_errors + self.write_errors + self.status_errors + self.timeouts
    }
}

/// Writes the two Lua scripts into `dir`; returns (plain script, token-cycling script).
pub fn write_scripts(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let plain = dir.join("report.lua");
    let tokens = dir.join("unique-tokens.lua");
    std::fs::write(&plain, DONE_HOOK)?;
    std::fs::write(&tokens, format!("{TOKEN_HOOKS}\n{DONE_HOOK}"))?;
    Ok((plain, tokens))
}

/// Runs wrk against `url` for `duration` and parses its report.
pub fn run(
    shape: &LoadShape,
    scripts: &(PathBuf, PathBuf),
    url: &str,
    request: &Request,
    duration: Duration,
) -> Result<WrkResult> {
    let mut cmd = match &shape.cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg("wrk");
            c
        }
        None => Command::new("wrk"),
    };
    let secs = duration.as_secs_f64().ceil().max(1.0) as u64;
    cmd.arg("-t")
        .arg(shape.threads.to_string())
        .arg("-c")
        .arg(shape.connections.to_string())
        .arg("-d")
        .arg(format!("{secs}s"))
        .arg("--timeout")
        .arg("5s")
        .arg("--latency");
    match request {
        Request::Plain => {
            cmd.arg("-s").arg(&scripts.0).arg(url);
        }
        Request::BearerRepeated(token) => {
            cmd.arg("-s").arg(&scripts.0).arg("-H").arg(format!("authorization: Bearer {token}")).arg(url);
        }
        Request::BearerUnique(file) => {
            cmd.arg("-s").arg(&scripts.1).arg(url).arg("--").arg(file);
        }
    }
    let out = cmd.output().context("meshwasm bench: running wrk (is it installed? `make setup-system`)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "meshwasm bench: wrk failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&stdout).with_context(|| format!("meshwasm bench: no report in wrk output:\n{stdout}"))
}

fn parse(stdout: &str) -> Result<WrkResult> {
    let line = stdout.lines().find_map(|l| l.strip_prefix(MARKER)).context("marker line missing")?;
    Ok(serde_json::from_str(line)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_done_hook_line() {
        let out = "Running 1s test\nMESHWASM-WRK {\"requests\":1000,\"duration_us\":500000,\"bytes\":1,\
                   \"connect_errors\":0,\"read_errors\":0,\"write_errors\":0,\"status_errors\":2,\"timeouts\":0,\
                   \"mean_us\":12.5,\"p50_us\":10,\"p90_us\":20,\"p99_us\":30,\"p999_us\":40,\"max_us\":50}\n";
        let r = parse(out).unwrap();
        assert_eq!(r.rps(), 2000.0);
        assert_eq!(r.p99_us, 30);
        assert_eq!(r.error_count(), 2);
    }
}
