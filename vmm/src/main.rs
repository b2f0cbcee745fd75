//! `krypton`: the command-line entry point.

fn main() {
    let _ = krypton::hv::new(krypton::hv::Backend::host_default());
}
