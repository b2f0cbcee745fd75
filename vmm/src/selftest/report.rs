//! The selftest result table.

use std::fmt;
use std::time::Duration;

/// How one case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Every check passed.
    Pass,
    /// A check failed; the text says which and what was seen.
    Fail(String),
    /// The case cannot run on this host; the text says why.
    Skip(String),
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// Case name, `<what>-<mode>` (for example `pio-long`).
    pub name: String,
    /// Pass, fail or skip with the reason.
    pub status: Status,
    /// Wall time including VM creation.
    pub duration: Duration,
}

/// The results of [`run_all`](super::run_all).
#[derive(Debug, Clone)]
pub struct SelftestReport {
    /// Hypervisor backend name.
    pub backend: &'static str,
    /// One entry per case run, in order.
    pub cases: Vec<CaseReport>,
    /// Wall time of the whole run.
    pub total: Duration,
}

impl SelftestReport {
    fn count(&self, f: impl Fn(&Status) -> bool) -> usize {
        self.cases.iter().filter(|c| f(&c.status)).count()
    }
    /// Cases that passed.
    pub fn passed(&self) -> usize {
        self.count(|s| matches!(s, Status::Pass))
    }
    /// Cases that failed.
    pub fn failed(&self) -> usize {
        self.count(|s| matches!(s, Status::Fail(_)))
    }
    /// Cases skipped.
    pub fn skipped(&self) -> usize {
        self.count(|s| matches!(s, Status::Skip(_)))
    }
    /// True if no case failed (the CLI's exit status).
    pub fn ok(&self) -> bool {
        self.failed() == 0
    }
    /// The result of the case called `name`, if it ran.
    pub fn case(&self, name: &str) -> Option<&CaseReport> {
        self.cases.iter().find(|c| c.name == name)
    }
}

impl fmt::Display for SelftestReport {
    /// One line per case (`PASS name  12.3 ms  reason`), a line with the
    /// backend and total time, then `N passed, M failed, K skipped`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.cases.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.cases {
            let (tag, why) = match &c.status {
                Status::Pass => ("PASS", ""),
                Status::Fail(w) => ("FAIL", w.as_str()),
                Status::Skip(w) => ("SKIP", w.as_str()),
            };
            let ms = c.duration.as_secs_f64() * 1000.0;
            let line = format!("{tag}  {:width$}  {ms:8.1} ms  {why}", c.name);
            writeln!(f, "{}", line.trim_end())?;
        }
        writeln!(
            f,
            "selftest on {}: {:.2} s",
            self.backend,
            self.total.as_secs_f64()
        )?;
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed(),
            self.failed(),
            self.skipped()
        )
    }
}
