//! End to end: `krypton run` boots a real VM (guest kernel, agent
//! initramfs, busybox rootfs) and runs containers in it, checked as a user
//! sees them: exit statuses, stdio, TTY, limits, signals, timeouts, the
//! overlay, a guest panic and a dying agent.
//!
//! Cases start their VMs from `krypton run`'s template snapshot, made by
//! whichever case comes first (the others wait for it); the panic, dead
//! agent and fresh-restore cases also boot cold. On kvm_pvm hosts a boot is
//! about a minute (the guest kernel is emulated), so each case checks as
//! much as it can.
//! Own harness (libtest-mimic): a case that cannot run here is reported as
//! ignored with the reason, never as passed.

mod cases;
mod fs_cases;
mod image_cases;
mod net_cases;
mod net_host;
mod support;

use libtest_mimic::{Arguments, Failed, Trial};

type Case = fn() -> anyhow::Result<()>;

const CASES: &[(&str, Case)] = &[
    (
        "stdio_is_byte_exact_and_separate",
        cases::stdio_is_byte_exact_and_separate,
    ),
    (
        "tty_env_workdir_user_hostname",
        cases::tty_env_workdir_user_hostname,
    ),
    (
        "memory_limit_kills_with_137",
        cases::memory_limit_kills_with_137,
    ),
    ("timeout_gives_124", cases::timeout_gives_124),
    (
        "signals_reach_the_container",
        cases::signals_reach_the_container,
    ),
    (
        "overlay_writes_and_mmio_check",
        cases::overlay_writes_and_mmio_check,
    ),
    ("not_found_gives_127", cases::not_found_gives_127),
    ("not_executable_gives_126", cases::not_executable_gives_126),
    ("guest_panic_gives_120", cases::guest_panic_gives_120),
    ("agent_death_gives_125", cases::agent_death_gives_125),
    (
        "restores_are_fresh_and_cold_boot_works",
        cases::restores_are_fresh_and_cold_boot_works,
    ),
    (
        "image_crafted_layers_run_with_their_config",
        image_cases::crafted_image_runs_with_its_config,
    ),
    (
        "image_debian_minbase_pulled_runs_apt",
        image_cases::debian_minbase_pulled_runs_apt,
    ),
    (
        "fs_share_data_metadata_ro_escapes_harness",
        fs_cases::share_data_metadata_ro_escapes_harness,
    ),
];

/// Need passt on the host; KRYPTON_E2E_NET=0 leaves them out.
const NET_CASES: &[(&str, Case)] = &[
    (
        "net_passt_outbound_and_published_port",
        net_cases::passt_outbound_and_published_port,
    ),
    ("net_passt_udp_and_dns", net_cases::passt_udp_and_dns),
    ("net_passt_bulk_transfers", net_cases::passt_bulk_transfers),
    ("net_none_has_only_lo", net_cases::none_has_only_lo),
];

fn main() {
    let args = Arguments::from_args();
    let why = support::unsupported();
    if let Some(w) = &why {
        eprintln!("e2e: every case is IGNORED here: {w}");
    }
    let mut prepared: Option<Result<(), String>> = None;
    let net_why = net_cases::unavailable();
    if why.is_none()
        && let Some(w) = &net_why
    {
        eprintln!("e2e: the network cases are IGNORED here: {w}");
    }
    let net = net_why.is_none();
    let bulk_why = net_cases::bulk_unavailable();
    if why.is_none()
        && net
        && let Some(w) = &bulk_why
    {
        eprintln!("e2e: net_passt_bulk_transfers is IGNORED: {w}");
    }
    let trials = CASES
        .iter()
        .map(|&(name, case)| (name, case, why.is_some()))
        .chain(NET_CASES.iter().map(|&(name, case)| {
            let bulk_off = name == "net_passt_bulk_transfers" && bulk_why.is_some();
            (name, case, why.is_some() || !net || bulk_off)
        }))
        .map(|(name, case, ignored)| {
            Trial::test(name, move || {
                case().map_err(|e| Failed::from(format!("{e:#}")))
            })
            .with_ignored_flag(ignored)
        })
        .collect::<Vec<_>>();
    // Build the default guest once, before the cases run in parallel.
    if why.is_none() && !args.list {
        prepared = Some(support::prepare_default_guest().map_err(|e| format!("{e:#}")));
    }
    if let Some(Err(e)) = &prepared {
        eprintln!("e2e: cannot prepare the default guest: {e}");
        std::process::exit(101);
    }
    libtest_mimic::run(&args, trials).exit();
}
