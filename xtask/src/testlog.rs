//! Runs `cargo test` with its output echoed as usual, and remembers the lines
//! that say what failed, so the run's summary (often the only part of a CI
//! log anyone sees) names the failed tests and their panic messages.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};

/// At most this many lines of failure detail go into the error.
const MAX_DETAIL: usize = 40;

/// Whether a line of `cargo test` output says what failed.
fn is_failure_line(line: &str) -> bool {
    let l = line.trim_end();
    (l.starts_with("test ") && l.ends_with("... FAILED"))
        || l.starts_with("error: test failed")
        || l.contains("panicked at")
        || (l.starts_with("---- ") && l.ends_with(" stdout ----"))
        || l.starts_with("test result: FAILED")
}

/// Copies `from` to our stderr line by line, keeping failure lines.
fn pump(from: impl Read, kept: &Arc<Mutex<Vec<String>>>) {
    let mut reader = BufReader::new(from);
    let mut buf = Vec::new();
    // The panic message follows its "panicked at" line.
    let mut keep_next = false;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let _ = std::io::stderr().write_all(&buf);
                let line = String::from_utf8_lossy(&buf);
                let failure = is_failure_line(&line);
                if (failure || keep_next)
                    && let Ok(mut k) = kept.lock()
                {
                    k.push(line.trim_end().to_string());
                }
                keep_next = line.contains("panicked at");
            }
        }
    }
}

/// Runs `cmd`; on failure the error lists the failure lines it printed.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("+ {shown}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    let kept = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().context("no stdout pipe")?;
    let err = child.stderr.take().context("no stderr pipe")?;
    let (k1, k2) = (kept.clone(), kept.clone());
    let t1 = std::thread::spawn(move || pump(out, &k1));
    let t2 = std::thread::spawn(move || pump(err, &k2));
    let status = child
        .wait()
        .with_context(|| format!("waiting for {shown}"))?;
    let _ = t1.join();
    let _ = t2.join();
    if status.success() {
        return Ok(());
    }
    let lines = kept.lock().map(|k| k.clone()).unwrap_or_default();
    let mut detail: Vec<&str> = lines.iter().map(String::as_str).take(MAX_DETAIL).collect();
    if lines.len() > MAX_DETAIL {
        detail.push("(more failure lines above)");
    }
    bail!(
        "{shown} failed: {status}\n      {}",
        detail.join("\n      ")
    );
}

#[cfg(test)]
mod tests {
    use super::is_failure_line;

    #[test]
    fn picks_out_failures() {
        assert!(is_failure_line("test net::passt ... FAILED\n"));
        assert!(is_failure_line(
            "thread 'x' (12) panicked at tests/tests/e2e/main.rs:10:5:"
        ));
        assert!(is_failure_line(
            "error: test failed, to rerun pass `-p krypton-tests --test e2e`"
        ));
        assert!(is_failure_line("---- image_case stdout ----"));
        assert!(!is_failure_line("test net::passt ... ok"));
        assert!(!is_failure_line("running 7 tests"));
    }
}
