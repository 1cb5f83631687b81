//! What the benchmarks read of a process from `/proc` (its memory and CPU
//! time), the quantile of a sorted sample, and the runtime they run on.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Error;

fn proc_file(pid: u32, file: &str) -> Result<String, Error> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::read_to_string(&path).map_err(|e| Error::io(std::path::Path::new(&path), e))
}

/// A `VmRSS:`-style line of `/proc/<pid>/status`, in KiB.
pub fn rss_kib(pid: u32, field: &str) -> Result<u64, Error> {
    let status = proc_file(pid, "status")?;
    let fields: BTreeMap<&str, &str> = status
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .collect();
    fields
        .get(field)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Check(format!("no {field} in /proc/{pid}/status")))
}

/// User plus system CPU time of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64, Error> {
    let stat = proc_file(pid, "stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    let tick = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    match (tick(14), tick(15)) {
        (Some(u), Some(s)) => Ok(u + s),
        _ => Err(Error::Check(format!("no utime/stime in /proc/{pid}/stat"))),
    }
}

/// Clock ticks per second, for [`cpu_ticks`].
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf with a valid name has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The `q` quantile (0-1) of `sorted`, by rank: with 100 samples, p99 is
/// the second-slowest.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The benchmarks' runtime: two workers (the machine's cores, shared with
/// what they measure) and the open-file limit raised for their many
/// connections and watches.
pub fn bench_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
