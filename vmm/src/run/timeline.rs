//! Named instants of one `krypton run`, for `--timings` and the info log:
//! VMM start, kernel entry, /init, agent ready, exec, exit.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Marks shared by the CLI, the console watcher and the session.
#[derive(Debug, Clone)]
pub struct Timeline {
    start: Instant,
    marks: Arc<Mutex<Vec<(&'static str, Instant)>>>,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline::starting_at(Instant::now())
    }
}

impl Timeline {
    /// A timeline whose zero is `start` (the process start, ideally).
    pub fn starting_at(start: Instant) -> Self {
        Timeline {
            start,
            marks: Arc::default(),
        }
    }

    /// Records `what` now.
    pub fn mark(&self, what: &'static str) {
        log::info!(
            "timing: {what} at {:.3} s",
            self.start.elapsed().as_secs_f64()
        );
        self.lock().push((what, Instant::now()));
    }

    /// Records `what` now unless it was recorded before.
    pub fn mark_once(&self, what: &'static str) {
        if self.get(what).is_none() {
            self.mark(what);
        }
    }

    /// When `what` was first recorded.
    pub fn get(&self, what: &str) -> Option<Instant> {
        self.lock().iter().find(|(w, _)| *w == what).map(|m| m.1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(&'static str, Instant)>> {
        self.marks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A table: each mark, its time since the start and since the previous
    /// mark, in milliseconds.
    pub fn report(&self) -> String {
        let mut marks = self.lock().clone();
        marks.sort_by_key(|m| m.1);
        let mut out = String::from("krypton timings (ms):    since start    step\n");
        let mut prev = self.start;
        for (what, at) in marks {
            let total = at.duration_since(self.start).as_secs_f64() * 1e3;
            let step = at.duration_since(prev).as_secs_f64() * 1e3;
            out.push_str(&format!("  {what:<20} {total:>12.1} {step:>10.1}\n"));
            prev = at;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_ordered_and_once_means_once() {
        let t = Timeline::default();
        t.mark("b");
        t.mark_once("a");
        let first_a = t.get("a").expect("a");
        t.mark_once("a");
        assert_eq!(t.get("a"), Some(first_a));
        let r = t.report();
        let b = r.find("  b ").expect("b in report");
        let a = r.find("  a ").expect("a in report");
        assert!(b < a, "{r}");
        assert_eq!(r.lines().count(), 3, "{r}");
    }
}
