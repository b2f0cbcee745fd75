//! What the pvm-test guest kernel needs from both VMMs a benchmark compares:
//! the switches of `guest/kernel/pvm-test.cmdline` and the CPUID bits of
//! `guest/kernel/pvm-test.cpuid`, in Krypton's and in QEMU's spelling.

use anyhow::{Context, Result, bail};

/// The pvm-test kernel's extra switches and CPUID hides.
pub struct Switches {
    /// Extra kernel command-line words, joined by spaces.
    pub cmdline: String,
    /// `LEAF:SUBLEAF:REG:BIT`, one per `krypton --hide-cpuid`.
    pub hides: Vec<String>,
    /// QEMU's `-cpu host,-flag,...` naming the same bits.
    pub qemu_cpu: String,
}

/// The non-comment lines of `guest/kernel/<file>`.
fn lines(file: &str) -> Result<Vec<String>> {
    let path = crate::cache::workspace_root()
        .join("guest/kernel")
        .join(file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// The switches when the guest runs the pvm-test kernel; none otherwise.
pub fn switches(pvm: bool) -> Result<Switches> {
    let mut s = Switches {
        cmdline: String::new(),
        hides: Vec::new(),
        qemu_cpu: String::from("host"),
    };
    if !pvm {
        return Ok(s);
    }
    s.cmdline = lines("pvm-test.cmdline")?.join(" ");
    for line in lines("pvm-test.cpuid")? {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [leaf, sub, reg, bit, name] = f.as_slice() else {
            bail!("pvm-test.cpuid: bad line {line:?}");
        };
        s.hides.push(format!("{leaf}:{sub}:{reg}:{bit}"));
        let flag = match *name {
            "CX16" => "cx16",
            "ARCH_CAPABILITIES" => "arch-capabilities",
            "KVM_FEATURE_PV_UNHALT" => "kvm-pv-unhalt",
            "KVM_FEATURE_PV_SEND_IPI" => "kvm-pv-ipi",
            "KVM_FEATURE_PV_SCHED_YIELD" => "kvm-pv-sched-yield",
            other => bail!("pvm-test.cpuid: no QEMU name known for {other}"),
        };
        s.qemu_cpu.push_str(",-");
        s.qemu_cpu.push_str(flag);
    }
    Ok(s)
}
