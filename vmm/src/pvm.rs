//! Hosts whose `/dev/kvm` is kvm_pvm (software virtualization, no VT-x or
//! AMD-V). Every instruction of a non-PVM guest kernel is emulated there, so
//! `krypton run` uses the `pvm-test` kernel variant with the switches and
//! CPUID hides it needs (`guest/kernel/pvm-test.{cmdline,cpuid}`, built into
//! this binary so they always match the code that reads them).

use std::path::Path;

/// `guest/kernel/pvm-test.cmdline`, as written.
const CMDLINE_FILE: &str = include_str!("../../guest/kernel/pvm-test.cmdline");
/// `guest/kernel/pvm-test.cpuid`, as written.
const CPUID_FILE: &str = include_str!("../../guest/kernel/pvm-test.cpuid");

/// Whether this host's `/dev/kvm` is kvm_pvm: its module is loaded, or the
/// CPU has neither VT-x nor AMD-V (on Windows: never).
pub fn host_is_pvm() -> bool {
    if cfg!(not(target_os = "linux")) {
        return false;
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return true;
    }
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| !cpu_has_hw_virt(&c))
}

/// Whether a `/proc/cpuinfo` text lists `vmx` or `svm`.
fn cpu_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// The kernel switches the pvm-test variant needs, joined by spaces.
pub fn cmdline() -> String {
    CMDLINE_FILE
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The CPUID bits to hide as `(leaf, subleaf, register, bit)`, register
/// 0..=3 for eax, ebx, ecx, edx (the `--hide-cpuid` form).
pub fn cpuid_hides() -> Vec<(u32, u32, u8, u8)> {
    parse_cpuid(CPUID_FILE)
}

fn parse_cpuid(text: &str) -> Vec<(u32, u32, u8, u8)> {
    let num = |s: &str| match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let reg = ["eax", "ebx", "ecx", "edx"]
                .iter()
                .position(|r| f.get(2) == Some(r))?;
            let bit = f.get(3)?.parse::<u8>().ok().filter(|b| *b < 32)?;
            Some((num(f.first()?)?, num(f.get(1)?)?, reg as u8, bit))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_files_parse_completely() {
        let lines = CPUID_FILE
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .count();
        let hides = cpuid_hides();
        assert_eq!(hides.len(), lines, "every cpuid line parses");
        assert!(hides.contains(&(1, 0, 2, 13)), "CX16 hidden: {hides:?}");
        assert!(hides.contains(&(0x4000_0001, 0, 0, 11)), "PV_SEND_IPI");
        let c = cmdline();
        assert!(c.contains("noxsave") && c.contains("clearcpuid="), "{c}");
        assert!(!c.contains('#') && !c.contains('\n'), "{c}");
    }

    #[test]
    fn parser_rejects_malformed_lines() {
        assert_eq!(
            parse_cpuid("0x1 0 ecx 13 X\n7 0 edx 29 Y"),
            vec![(1, 0, 2, 13), (7, 0, 3, 29)]
        );
        assert!(parse_cpuid("0x1 0 exx 13 X\n0x1 0 ecx 40 X\nzz 0 ecx 1 X").is_empty());
    }

    #[test]
    fn cpuinfo_flags() {
        assert!(cpu_has_hw_virt("flags\t\t: fpu vme vmx sse\n"));
        assert!(cpu_has_hw_virt("flags\t\t: fpu svm\n"));
        assert!(!cpu_has_hw_virt("flags\t\t: fpu vme sse vmxnope\n"));
    }
}
