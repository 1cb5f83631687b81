//! What failed, read from `cargo test`'s output: each failed test's name
//! and the end of its message, repeated after the run's last line. A CI
//! report is often cut to its tail, and the messages themselves come
//! before a long run of other test binaries' output.

use std::collections::VecDeque;

/// Lines kept of each failure's message: its end, where the harness
/// repeats the cause.
const TAIL_LINES: usize = 24;
/// Characters kept of one line.
const LINE_CHARS: usize = 600;

/// Failed tests' messages, fed `cargo test`'s output line by line.
#[derive(Debug, Default)]
pub struct Failures {
    /// Inside a test binary's `failures:` section (messages), not its
    /// second one (names).
    in_section: bool,
    /// The failure whose message is being read.
    current: Option<usize>,
    /// The failures seen: name and the message's last lines.
    seen: Vec<(String, VecDeque<String>)>,
}

impl Failures {
    /// Reads one line of output.
    pub fn feed(&mut self, line: &str) {
        if line.starts_with("test result: ") {
            self.in_section = false;
            self.current = None;
            return;
        }
        if line == "failures:" {
            self.in_section = !self.in_section;
            self.current = None;
            return;
        }
        if !self.in_section {
            return;
        }
        if let Some(name) = header(line) {
            self.current = Some(self.seen.len());
            self.seen.push((name.to_owned(), VecDeque::new()));
            return;
        }
        let Some((_, tail)) = self.current.and_then(|i| self.seen.get_mut(i)) else {
            return;
        };
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.chars().take(LINE_CHARS).collect());
    }

    /// The failures, each its name and its message's last lines.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for (name, tail) in &self.seen {
            out.push_str(&format!("failed: {name}\n"));
            let end = tail.iter().rposition(|l| !l.trim().is_empty());
            for line in tail.iter().take(end.map_or(0, |e| e + 1)) {
                out.push_str(&format!("    {line}\n"));
            }
        }
        out
    }
}

/// The test named by a failure's header: `---- name ----` (libtest-mimic)
/// or `---- name stdout ----` (libtest).
fn header(line: &str) -> Option<&str> {
    let inner = line.strip_prefix("---- ")?.strip_suffix(" ----")?;
    Some(inner.strip_suffix(" stdout").unwrap_or(inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(output: &str) -> Failures {
        let mut f = Failures::default();
        for line in output.lines() {
            f.feed(line);
        }
        f
    }

    #[test]
    fn a_libtest_mimic_failure_is_named_with_the_end_of_its_message() {
        let f = fed(
            "test a ... FAILED\n\nfailures:\n\n---- a ----\nlogs\n--- the failure, again ---\nno route\n\n\nfailures:\n    a\n\ntest result: FAILED. 0 passed; 1 failed\n",
        );
        assert_eq!(
            f.report(),
            "failed: a\n    logs\n    --- the failure, again ---\n    no route\n"
        );
    }

    #[test]
    fn a_libtest_failure_is_named_without_its_stream() {
        let f = fed(
            "failures:\n\n---- m::t stdout ----\npanicked at x\n\nfailures:\n    m::t\n\ntest result: FAILED.",
        );
        assert_eq!(f.report(), "failed: m::t\n    panicked at x\n");
    }

    #[test]
    fn only_a_long_message_s_end_is_kept() {
        let body: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let f = fed(&format!(
            "failures:\n\n---- a ----\n{body}\nfailures:\n    a\n"
        ));
        let report = f.report();
        assert!(report.contains("line 99") && !report.contains("line 50\n"));
        assert_eq!(report.lines().count(), TAIL_LINES);
    }

    #[test]
    fn headers_outside_a_failures_section_are_output_not_failures() {
        let f = fed("---- a ----\ntext\ntest result: ok. 1 passed\n");
        assert_eq!(f.report(), "");
    }

    #[test]
    fn failures_of_two_binaries_are_all_reported() {
        let one = "failures:\n\n---- a ----\nwhy a\n\nfailures:\n    a\n\ntest result: FAILED.\n";
        let two = "failures:\n\n---- b ----\nwhy b\n\nfailures:\n    b\n\ntest result: FAILED.\n";
        let f = fed(&format!("{one}{two}"));
        assert_eq!(f.report(), "failed: a\n    why a\nfailed: b\n    why b\n");
    }
}
