//! `krypton`: the command-line entry point.

fn main() -> std::process::ExitCode {
    krypton::cli::main()
}
