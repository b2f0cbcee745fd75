//! How much of a restored VM's guest RAM is resident, and how much of that
//! is the VM's own (copied on write) rather than page cache shared with
//! every other VM restored from the same snapshot.

use std::path::Path;

/// Resident guest RAM mapped from a snapshot file, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RamUsage {
    /// Resident pages of the mapping.
    pub rss_kib: u64,
    /// Of those, pages this VM wrote (private anonymous copies).
    pub private_kib: u64,
}

impl RamUsage {
    /// Resident pages still backed by the file: shareable page cache.
    pub fn shared_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.private_kib)
    }
}

/// Sums this process's mappings of `file` in `/proc/self/smaps`.
pub fn ram_usage(file: &Path) -> Option<RamUsage> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let file = std::fs::canonicalize(file).ok()?;
    Some(parse_smaps(&smaps, &file.to_string_lossy()))
}

fn parse_smaps(smaps: &str, file: &str) -> RamUsage {
    let mut usage = RamUsage::default();
    let mut inside = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
            // A mapping header: range perms offset dev inode [path].
            inside = line.split_whitespace().nth(5) == Some(file);
            continue;
        }
        if !inside {
            continue;
        }
        let kib = || {
            words
                .clone()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match first {
            "Rss:" => usage.rss_kib += kib(),
            "Anonymous:" => usage.private_kib += kib(),
            _ => {}
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_only_the_snapshot_mappings() {
        let smaps = "\
7f0000000000-7f0010000000 rw-p 00001000 fd:01 1234 /c/run-1.snap
Size:             262144 kB
Rss:                8192 kB
Anonymous:          1024 kB
7f0010000000-7f0010001000 rw-p 00000000 00:00 0 
Rss:                   4 kB
Anonymous:             4 kB
7f0020000000-7f0020100000 rw-p 10001000 fd:01 1234 /c/run-1.snap
Rss:                 100 kB
Anonymous:            10 kB
";
        let u = parse_smaps(smaps, "/c/run-1.snap");
        assert_eq!(
            u,
            RamUsage {
                rss_kib: 8292,
                private_kib: 1034
            }
        );
        assert_eq!(u.shared_kib(), 7258);
    }
}
