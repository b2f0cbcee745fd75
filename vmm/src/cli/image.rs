//! `krypton pull`, `load`, `images`, `rmi` and `prune`: the image store in
//! `$KRYPTON_HOME` (see `krypton_image::store`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use krypton_image::registry::{self, PullOptions};
use krypton_image::store::{self, Store};

use super::{fail, one_line, status};

/// `krypton pull` options.
#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// Image reference (`busybox`, `host:port/repo:tag`, `repo@sha256:...`).
    reference: String,
    /// Seconds to wait for a registry to connect or send anything
    /// (default 30, or $KRYPTON_REGISTRY_TIMEOUT).
    #[arg(long)]
    timeout: Option<f64>,
    /// Never show a progress line.
    #[arg(long, short)]
    quiet: bool,
}

/// `krypton load` options.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// A `docker save` archive, or an OCI image layout (tarball or directory).
    #[arg(long, short)]
    input: PathBuf,
}

/// `krypton rmi` options.
#[derive(clap::Args, Debug)]
pub struct RmiArgs {
    /// References, digests or (short) image ids.
    #[arg(required = true)]
    references: Vec<String>,
}

fn open() -> Result<Store, String> {
    let home = store::default_home().ok_or_else(|| one_line(&store::StoreError::NoHome))?;
    Store::open(&home).map_err(|e| one_line(&e))
}

fn timeout(arg: Option<f64>) -> Result<Duration, String> {
    let secs = match arg {
        Some(s) => s,
        None => match std::env::var("KRYPTON_REGISTRY_TIMEOUT") {
            Ok(v) => v.trim().parse().map_err(|_| {
                format!("KRYPTON_REGISTRY_TIMEOUT={v:?} is not a number of seconds")
            })?,
            Err(_) => 30.0,
        },
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("timeout {secs} out of range (0 to 86400 seconds)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn out(text: &str) -> ExitCode {
    let mut so = std::io::stdout().lock();
    if so
        .write_all(text.as_bytes())
        .and_then(|()| so.flush())
        .is_err()
    {
        return ExitCode::from(status::VMM_ERROR);
    }
    ExitCode::from(status::OK)
}

/// `krypton pull REF`.
pub fn pull(args: PullArgs) -> ExitCode {
    let t = match timeout(args.timeout) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let st = match open() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let opts = PullOptions {
        timeout: t,
        progress: !args.quiet && std::io::stderr().is_terminal(),
        ..PullOptions::default()
    };
    match registry::pull(&st, &args.reference, &opts) {
        Ok(r) => out(&format!("{}\nDigest: {}\n", r.reference, r.manifest_digest)),
        Err(e) => fail(&format!("pull {}: {}", args.reference, one_line(&e))),
    }
}

/// `krypton load -i FILE`.
pub fn load(args: LoadArgs) -> ExitCode {
    let st = match open() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    match krypton_image::load::load(&st, &args.input) {
        Ok(images) => {
            let mut text = String::new();
            for i in images {
                for r in i.references {
                    text.push_str(&format!("Loaded image: {r}\n"));
                }
            }
            out(&text)
        }
        Err(e) => fail(&format!("load {}: {}", args.input.display(), one_line(&e))),
    }
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2}GB", n as f64 / 1e9),
        n if n >= 1 << 20 => format!("{:.1}MB", n as f64 / 1e6),
        n if n >= 1 << 10 => format!("{:.1}kB", n as f64 / 1e3),
        n => format!("{n}B"),
    }
}

/// `krypton images`.
pub fn images() -> ExitCode {
    let list = match open().and_then(|s| s.list().map_err(|e| one_line(&e))) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let mut rows = vec![[
        "REFERENCE".to_string(),
        "IMAGE ID".into(),
        "CREATED".into(),
        "SIZE".into(),
    ]];
    for i in list {
        let reference = if i.reference.starts_with("sha256:") {
            "<none>".to_string()
        } else {
            i.reference
        };
        let created = i.created.map_or_else(
            || "-".to_string(),
            |c| c.chars().take(19).collect::<String>().replace('T', " "),
        );
        rows.push([reference, i.id.short().to_string(), created, human(i.size)]);
    }
    let w: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for r in rows {
        text.push_str(&format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}\n",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        ));
    }
    out(&text)
}

/// `krypton rmi REF...`.
pub fn rmi(args: RmiArgs) -> ExitCode {
    let st = match open() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let mut text = String::new();
    for r in &args.references {
        match st.remove(r) {
            Ok(keys) => keys
                .iter()
                .for_each(|k| text.push_str(&format!("Untagged: {k}\n"))),
            Err(e) => {
                let _ = out(&text);
                return fail(&format!("rmi {r}: {}", one_line(&e)));
            }
        }
    }
    out(&text)
}

/// `krypton prune`.
pub fn prune() -> ExitCode {
    match open().and_then(|s| s.prune().map_err(|e| one_line(&e))) {
        Ok(r) => out(&format!(
            "Removed {} blobs and {} converted layers, {} reclaimed\n",
            r.blobs,
            r.layers,
            human(r.bytes)
        )),
        Err(e) => fail(&e),
    }
}
