//! The guest console as `krypton run` keeps it: a bounded tail to explain a
//! failed boot, the time of the last output (boot progress), and the times
//! the agent's start-up lines appeared (the timing breakdown).

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::run::Timeline;

/// Console bytes kept to explain a failed boot.
const TAIL: usize = 4096;
/// Longest partial line kept while looking for markers.
const LINE: usize = 512;

/// Lines the agent prints at start-up, and the timeline mark each gives.
const MARKERS: &[(&str, &str)] = &[
    ("krypton-agent[1] INFO: started", "/init started"),
    ("krypton-agent[1] INFO: listening", "agent listening"),
];

#[derive(Debug)]
struct State {
    tail: Vec<u8>,
    line: Vec<u8>,
    last_output: Instant,
}

/// A `Write` sink for the serial console; clones share one state.
#[derive(Clone, Debug)]
pub struct ConsoleTail {
    state: Arc<Mutex<State>>,
    echo: bool,
    timeline: Timeline,
}

impl ConsoleTail {
    /// A console that also copies the guest's output to stderr with `echo`.
    pub fn new(echo: bool, timeline: Timeline) -> Self {
        ConsoleTail {
            state: Arc::new(Mutex::new(State {
                tail: Vec::new(),
                line: Vec::new(),
                last_output: Instant::now(),
            })),
            echo,
            timeline,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the guest last wrote to its console (or when this was made).
    pub fn last_output(&self) -> Instant {
        self.lock().last_output
    }

    /// The last kept line containing `needle`.
    pub fn last_line_with(&self, needle: &str) -> Option<String> {
        let s = self.lock();
        let text = String::from_utf8_lossy(&s.tail);
        text.lines()
            .rev()
            .find(|l| l.contains(needle))
            .map(|l| l.trim().to_string())
    }

    /// The last non-empty console line, trimmed.
    pub fn last_line(&self) -> String {
        let tail = self.tail_text();
        let last = tail.lines().rev().find(|l| !l.trim().is_empty());
        last.unwrap_or("").trim().to_string()
    }

    /// The kept tail, for error reports.
    pub fn tail_text(&self) -> String {
        String::from_utf8_lossy(&self.lock().tail).into_owned()
    }

    fn scan_line(&self, line: &[u8]) {
        for (needle, mark) in MARKERS {
            if line.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                self.timeline.mark_once(mark);
            }
        }
    }
}

impl Write for ConsoleTail {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.echo {
            let _ = std::io::stderr().write_all(data);
        }
        let mut done_lines = Vec::new();
        {
            let mut s = self.lock();
            s.last_output = Instant::now();
            s.tail.extend_from_slice(data);
            if s.tail.len() > TAIL {
                let cut = s.tail.len() - TAIL;
                s.tail.drain(..cut);
            }
            for &b in data {
                if b == b'\n' {
                    done_lines.push(std::mem::take(&mut s.line));
                } else if s.line.len() < LINE {
                    s.line.push(b);
                }
            }
        }
        for l in done_lines {
            self.scan_line(&l);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_is_bounded_and_markers_are_seen_across_writes() {
        let tl = Timeline::default();
        let mut c = ConsoleTail::new(false, tl.clone());
        c.write_all(&vec![b'x'; 10_000]).expect("write");
        c.write_all(b"\nkrypton-agent[1] INFO: sta").expect("write");
        c.write_all(b"rted (uptime 1.0 s)\nKernel panic - not syncing: x\n")
            .expect("write");
        assert!(c.tail_text().len() <= TAIL);
        assert_eq!(
            c.last_line_with("Kernel panic").as_deref(),
            Some("Kernel panic - not syncing: x")
        );
        assert!(tl.get("/init started").is_some());
        assert!(tl.get("agent listening").is_none());
    }
}
