//! Krypton as an OCI runtime, driven by the real client: Debian's podman
//! (with conmon) as root, `--runtime` a wrapper that execs krypton, images
//! `podman import`ed from a busybox tree, `--network none`. Plus the runc
//! contract directly (`krypton create/start/state/exec/kill/delete`) on a
//! hand-made bundle, which also makes the VM template the podman cases
//! restore (podman gives `create` four minutes; a cold boot here can take
//! longer under load).
//!
//! Own harness (libtest-mimic): cases that cannot run here (no podman, no
//! KVM, not root) are reported as ignored with the reason.

mod cases;
mod support;

use libtest_mimic::{Arguments, Trial};

type Case = fn(&support::Env) -> anyhow::Result<()>;

/// In order: the direct lifecycle first (it makes the template).
const CASES: &[(&str, Case)] = &[
    ("bad_input_gives_runc_like_errors", cases::bad_input),
    ("runc_contract_lifecycle", cases::lifecycle),
    ("podman_run_echo_and_exit_codes", cases::run_and_exit_codes),
    ("podman_env_workdir_user_readonly_volume", cases::options),
    ("podman_detach_logs_exec_two_at_once_stop", cases::detached),
    ("podman_rm_force_running", cases::rm_force),
    ("podman_run_it_through_script", cases::interactive_tty),
];

fn main() {
    let mut args = Arguments::from_args();
    // One at a time, in order: the lifecycle case makes the template the
    // podman cases restore, and each case starts VMs of its own.
    args.test_threads = Some(1);
    let why = support::unsupported();
    if let Some(w) = &why {
        eprintln!("oci: every VM case is IGNORED here: {w}");
    }
    let env = std::sync::Arc::new(std::sync::OnceLock::new());
    let trials = CASES
        .iter()
        .map(|&(name, case)| {
            let env = env.clone();
            // Bad input needs no VM and no podman.
            let needs_vm = name != "bad_input_gives_runc_like_errors";
            Trial::test(name, move || {
                let env = env
                    .get_or_init(support::Env::prepare)
                    .as_ref()
                    .map_err(|e| format!("set-up failed: {e:#}"))?;
                case(env).map_err(|e| format!("{e:#}").into())
            })
            .with_ignored_flag(needs_vm && why.is_some())
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // The shared scratch dir lives in a static: clean it before exiting.
    if let Some(Ok(e)) = env.get() {
        e.clean_up();
    }
    conclusion.exit();
}
