//! Benchmark machinery (used by `src/bin/bench.rs`): a closed-loop HTTP/1.1 load generator with a fixed request
//! count, Envoy's CPU time from /proc, and the statistics the report prints.

use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;

/// One request shape, sent over and over.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The statuses an answer may have (e.g. 200 from the upstream, 202 from a filter that answers itself).
    pub expect: Vec<u16>,
}

/// What one round of load measured.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub requests: u64,
    pub unexpected: u64,
    pub cpu_us_per_request: f64,
    pub requests_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Envoy's CPU time so far: the sum over its threads of /proc/<pid>/task/*/schedstat (nanoseconds on CPU,
/// finer than utime+stime's clock ticks).
pub fn cpu_time(pid: u32) -> Duration {
    let mut total = 0u64;
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let stat = fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            total += stat.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

/// Resident memory of a process in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Sends `requests` requests over `connections` keep-alive connections to `port`, measuring `pid`'s CPU.
pub async fn run_round(port: u16, pid: u32, spec: &RequestSpec, requests: u64, connections: usize) -> Round {
    let issued = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let issued = issued.clone();
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move { connection_loop(port, &spec, &issued, requests).await }));
    }
    let mut latencies = Vec::with_capacity(requests as usize);
    let mut unexpected = 0;
    for task in tasks {
        let (lat, bad) = task.await.unwrap_or_default();
        latencies.extend(lat);
        unexpected += bad;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time(pid).saturating_sub(cpu_before);
    latencies.sort_unstable();
    let done = latencies.len() as u64;
    Round {
        requests: done,
        unexpected,
        cpu_us_per_request: cpu.as_secs_f64() * 1e6 / done.max(1) as f64,
        requests_per_second: done as f64 / elapsed.as_secs_f64(),
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
    }
}

async fn connection_loop(port: u16, spec: &RequestSpec, issued: &AtomicU64, total: u64) -> (Vec<u32>, u64) {
    let mut latencies = Vec::new();
    let mut unexpected = 0;
    let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return (latencies, 1) };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, connection)) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await else {
        return (latencies, 1);
    };
    tokio::spawn(connection);
    let body = Bytes::from(spec.body.clone());
    while issued.fetch_add(1, Ordering::Relaxed) < total {
        let mut request = Request::builder().method(spec.method).uri(&spec.path).header("host", "bench");
        for (name, value) in &spec.headers {
            request = request.header(name, value);
        }
        let Ok(request) = request.body(Full::new(body.clone())) else { return (latencies, unexpected + 1) };
        let sent = Instant::now();
        match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                let _ = response.into_body().collect().await;
                latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                if !spec.expect.contains(&status) {
                    unexpected += 1;
                }
            }
            Err(_) => return (latencies, unexpected + 1),
        }
    }
    (latencies, unexpected)
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted[index.min(sorted.len() - 1)])
}

/// Median, minimum and maximum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => 0.0,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Spread { median, min: sorted.first().copied().unwrap_or(0.0), max: sorted.last().copied().unwrap_or(0.0) }
    }

    /// `12.3 (11.0–14.1)`.
    pub fn show(&self, decimals: usize) -> String {
        format!("{:.d$} ({:.d$}–{:.d$})", self.median, self.min, self.max, d = decimals)
    }

    /// The ranges of two spreads overlap: the difference between them is within the noise.
    pub fn overlaps(&self, other: &Spread) -> bool {
        self.min <= other.max && other.min <= self.max
    }
}

/// Where a process's CPU time went, from `perf` samples of one core: the filter's own code (what V8 compiled from
/// Wasm — anonymous executable memory: our filters, the SDK, their allocator and the calls' stubs — or our dynamic
/// module, `target/dynamic-module/lib<filter>.so`), Envoy's own binary (its host side of every call included), the
/// kernel, and other libraries (libc's malloc and memcpy).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSplit {
    pub filter_code: f64,
    pub envoy: f64,
    pub kernel: f64,
    pub libraries: f64,
}

impl CpuSplit {
    pub fn total(&self) -> f64 {
        self.filter_code + self.envoy + self.kernel + self.libraries
    }

    fn add(&mut self, dso: &str, amount: f64) {
        let file = dso.rsplit('/').next().unwrap_or(dso);
        if dso.contains("kernel") {
            self.kernel += amount;
        } else if file == "envoy" {
            self.envoy += amount;
        } else if (file.starts_with("perf-") && file.ends_with(".map"))
            || dso.contains("anon")
            || dso == "[unknown]"
            || dso.contains("/dynamic-module/lib")
        {
            self.filter_code += amount;
        } else {
            self.libraries += amount;
        }
    }

    pub fn scaled(&self, factor: f64) -> CpuSplit {
        CpuSplit {
            filter_code: self.filter_code * factor,
            envoy: self.envoy * factor,
            kernel: self.kernel * factor,
            libraries: self.libraries * factor,
        }
    }
}

/// Sample counts per process and place, from `perf script -F pid,ip,dso` output (`1234  55c443b15fa8 (/a/dso)`).
pub fn split_samples(script: &str) -> std::collections::HashMap<u32, CpuSplit> {
    let mut by_pid: std::collections::HashMap<u32, CpuSplit> = std::collections::HashMap::new();
    for line in script.lines() {
        let mut fields = line.split_whitespace();
        let (Some(pid), Some(dso)) = (fields.next().and_then(|p| p.parse::<u32>().ok()), fields.last()) else {
            continue;
        };
        let Some(dso) = dso.strip_prefix('(').and_then(|d| d.strip_suffix(')')) else { continue };
        by_pid.entry(pid).or_default().add(dso, 1.0);
    }
    by_pid
}

/// `perf record` of every process on one core, while it runs. `None` where perf is missing or not allowed.
pub struct CoreProfile {
    perf: std::process::Child,
    file: std::path::PathBuf,
}

/// Samples per second per core: enough for a per-request split over a few seconds of load, little overhead.
pub const PROFILE_HZ: u32 = 2999;

impl CoreProfile {
    pub fn start(core: u32) -> Option<CoreProfile> {
        let file = std::env::temp_dir().join(format!("bench-perf-{}-{core}.data", std::process::id()));
        let perf = std::process::Command::new("perf")
            .args(["record", "-q", "-F", &PROFILE_HZ.to_string(), "-C", &core.to_string(), "-o"])
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        // perf needs a moment before it samples; a failure to open its events ends it at once.
        std::thread::sleep(Duration::from_millis(300));
        let mut profile = CoreProfile { perf, file };
        match profile.perf.try_wait() {
            Ok(None) => Some(profile),
            _ => None,
        }
    }

    /// Stops recording; CPU seconds per process, split by place.
    pub fn stop(mut self) -> std::collections::HashMap<u32, CpuSplit> {
        let pid = self.perf.id().to_string();
        let _ = std::process::Command::new("kill").args(["-INT", &pid]).status();
        let _ = self.perf.wait();
        let script = std::process::Command::new("perf")
            .args(["script", "-F", "pid,ip,dso", "-i"])
            .arg(&self.file)
            .stderr(std::process::Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let _ = fs::remove_file(&self.file);
        let seconds_per_sample = 1.0 / f64::from(PROFILE_HZ);
        split_samples(&script).into_iter().map(|(pid, split)| (pid, split.scaled(seconds_per_sample))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!(s, Spread { median: 2.0, min: 1.0, max: 3.0 });
        assert_eq!(Spread::of(&[1.0, 2.0, 3.0, 10.0]).median, 2.5);
        assert_eq!(s.show(1), "2.0 (1.0–3.0)");
        assert!(s.overlaps(&Spread::of(&[2.5, 9.0])));
        assert!(!s.overlaps(&Spread::of(&[4.0, 9.0])));
    }

    #[test]
    fn perf_samples_split_by_place() {
        let script = "41  55c443b15fa8 (/usr/lib/envoy)\n41  2a1f (/tmp/perf-41.map)\n\
                      41  ffffffff8200e6d5 ([kernel.kallsyms])\n41  7f01 (/usr/lib/x86_64-linux-gnu/libc.so.6)\n\
                      41  2a2f (/tmp/perf-41.map)\n 7  0 ([unknown])\njunk\n\
                      41  1b2c (/src/x/target/dynamic-module/libratelimit.so)\n";
        let split = split_samples(script);
        assert_eq!(split[&41], CpuSplit { filter_code: 3.0, envoy: 1.0, kernel: 1.0, libraries: 1.0 });
        assert_eq!(split[&7].filter_code, 1.0);
        assert_eq!(split[&41].scaled(0.5).total(), 3.0);
    }

    #[test]
    fn percentiles() {
        let values: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.5), 51.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn process_figures_of_this_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid) > 0);
        let before = cpu_time(pid);
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_time(pid) > before);
    }
}
