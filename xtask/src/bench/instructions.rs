//! User-space instructions per request, counted by callgrind: the part of
//! a proxy's CPU per request that is its own code (and its libraries'),
//! without the kernel's share and without the machine's noise. The CPU
//! time ratios at 2,000 req/s move by ±15-30 % from round to round, most
//! of it the kernel's wake-ups that every proxy pays alike; this count is
//! the same from run to run to within about 2 %, so a change to the
//! proxy's request path shows in it where the CPU time cannot tell.
//!
//! Each proxy runs twice under `valgrind --tool=callgrind`, one worker,
//! on CPU 0: once serving a warm-up only, once serving the warm-up and
//! then [`REQUESTS`] more at [`RATE`] req/s. The difference of the two
//! runs' totals over the requests the second served is the count per
//! request: start-up, shutdown and warm-up cancel out, and what a proxy
//! does while idle between requests at that rate is counted, as its CPU
//! time is. (`rep movs`/`rep stos` count once per byte they move.)

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{Proc, pinned, rate, spawn, wait_url_within};

/// Requests counted per proxy, after the warm-up.
const REQUESTS: u64 = 2_000;
/// Their rate: well within what each proxy serves under callgrind (about
/// 50 times slower than natively).
const RATE: u32 = 200;
/// Under callgrind a proxy starts (and Pingora stops) slowly.
const START_WITHIN: Duration = Duration::from_secs(90);
const STOP_WITHIN: Duration = Duration::from_secs(90);

/// A proxy to count: what runs it (natively) and where it listens.
pub struct Subject {
    /// The row's name.
    pub name: &'static str,
    /// Its plaintext HTTP/1.1 port.
    pub port: u16,
    /// Program and arguments.
    pub command: Vec<String>,
}

/// One proxy's count.
#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    /// The row's name.
    pub name: &'static str,
    /// User-space instructions per request.
    pub per_request: f64,
}

/// Counts each of `subjects` in turn (the backend is up).
pub fn measure(subjects: &[Subject], dir: &Path, bench: &Path) -> Result<Vec<Counted>> {
    let out = dir.join("callgrind");
    std::fs::create_dir_all(&out)?;
    subjects
        .iter()
        .map(|s| {
            eprintln!("    {}: instructions per request (callgrind)", s.name);
            let idle = run_once(s, &out, bench, false)?;
            let served = run_once(s, &out, bench, true)?;
            Ok(Counted {
                name: s.name,
                per_request: per_request(idle, served)?,
            })
        })
        .collect()
}

/// What one run under callgrind counted, and the requests it served past
/// the warm-up.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    instructions: u64,
    requests: u64,
}

/// Instructions per request from a run without the counted requests and a
/// run with them.
fn per_request(idle: Run, served: Run) -> Result<f64> {
    if served.requests == 0 {
        bail!("no request was answered in the counted run");
    }
    let extra = served
        .instructions
        .checked_sub(idle.instructions)
        .with_context(|| {
            format!(
                "the run with requests counted fewer instructions ({}) than the one without ({})",
                served.instructions, idle.instructions
            )
        })?;
    Ok(extra as f64 / served.requests as f64)
}

/// Runs `s` under callgrind, warms it up, serves the counted requests when
/// `serve`, stops it and reads the count.
fn run_once(s: &Subject, out: &Path, bench: &Path, serve: bool) -> Result<Run> {
    let slug: String = s
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let file = out.join(format!(
        "{slug}-{}.out",
        if serve { "served" } else { "idle" }
    ));
    let _ = std::fs::remove_file(&file);
    let mut c = pinned("0", "valgrind");
    c.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", file.display()))
        .args(&s.command)
        .env("RUST_LOG", "warn");
    let mut proc = spawn(s.name, c, &out.join(format!("{slug}.log")))?;
    let target = vec!["--addr".to_owned(), format!("127.0.0.1:{}", s.port)];
    wait_url_within(
        &format!("http://127.0.0.1:{}/", s.port),
        &mut proc,
        START_WITHIN,
    )?;
    rate(bench, &target, RATE, 1)?;
    let requests = if serve {
        rate(bench, &target, RATE, REQUESTS / u64::from(RATE))?.answered
    } else {
        0
    };
    stop(proc)?;
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("reading {} (did {} exit cleanly?)", file.display(), s.name))?;
    let instructions = totals(&text).with_context(|| format!("no totals in {}", file.display()))?;
    Ok(Run {
        instructions,
        requests,
    })
}

/// Stops `proc` with SIGINT (a fast stop for nginx, HAProxy and Pingora,
/// the same as SIGTERM for sluice-proxy) and waits for it, so that
/// callgrind writes its counts; a kill would lose them. SIGTERM follows if
/// SIGINT was not enough (HAProxy once sat out 90 s of it under
/// callgrind): callgrind writes its counts on either.
fn stop(mut proc: Proc) -> Result<()> {
    if proc.stop("-INT", STOP_WITHIN) {
        return Ok(());
    }
    eprintln!(
        "    {} did not stop within {STOP_WITHIN:?} of SIGINT: SIGTERM",
        proc.name
    );
    if !proc.stop("-TERM", STOP_WITHIN) {
        bail!(
            "{} did not stop within {STOP_WITHIN:?} of SIGINT, nor of SIGTERM after",
            proc.name
        );
    }
    Ok(())
}

/// The total instruction count of a callgrind output file.
fn totals(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The table of counts, with `sluice`'s ratio to each other row.
pub fn table(counted: &[Counted], sluice: &str) -> String {
    let ours = counted
        .iter()
        .find(|c| c.name == sluice)
        .map(|c| c.per_request);
    let mut s = format!(
        "User-space instructions per request (callgrind; {REQUESTS} requests at {RATE} req/s, less a run without them; the kernel's share is not counted):\n\n"
    );
    s.push_str(&format!(
        "| | instructions per request | {sluice} against it |\n"
    ));
    s.push_str("|---|---:|---:|\n");
    for c in counted {
        let against = match ours {
            Some(ours) if c.name != sluice && c.per_request > 0.0 => {
                format!("{:.2}x", ours / c.per_request)
            }
            _ => "-".to_owned(),
        };
        s.push_str(&format!(
            "| {} | {:.0} | {against} |\n",
            c.name, c.per_request
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run that counted `instructions` and served `requests`.
    fn run(instructions: u64, requests: u64) -> Run {
        Run {
            instructions,
            requests,
        }
    }

    #[test]
    fn the_count_per_request_is_the_difference_of_the_two_runs_over_the_requests() {
        let n = per_request(run(10_000_000, 0), run(61_000_000, 2_200)).expect("counted");
        assert!((n - 23_181.8).abs() < 0.1, "{n}");
    }

    #[test]
    fn a_served_run_that_counted_less_than_the_idle_one_is_an_error_not_a_negative_count() {
        assert!(per_request(run(10, 0), run(9, 5)).is_err());
        assert!(per_request(run(10, 0), run(20, 0)).is_err());
    }

    #[test]
    fn totals_are_read_from_either_line_callgrind_writes() {
        assert_eq!(totals("events: Ir\nsummary: 1262514\n"), Some(1_262_514));
        assert_eq!(totals("events: Ir\ntotals: 98621077\n"), Some(98_621_077));
        assert_eq!(totals("events: Ir\n"), None);
    }

    #[test]
    fn the_table_gives_sluices_ratio_to_each_other_row() {
        let rows = [
            Counted {
                name: "nginx",
                per_request: 20_000.0,
            },
            Counted {
                name: "sluice-proxy",
                per_request: 25_000.0,
            },
        ];
        let t = table(&rows, "sluice-proxy");
        assert!(t.contains("| nginx | 20000 | 1.25x |"), "{t}");
        assert!(t.contains("| sluice-proxy | 25000 | - |"), "{t}");
    }
}
