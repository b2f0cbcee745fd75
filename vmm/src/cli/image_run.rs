//! `krypton run IMAGE`: the image's layers on the layer disk and its
//! config applied with docker's semantics.

use std::path::PathBuf;

use krypton_protocol::{ImageRoot, Layer};

/// What an image says about how to run it (docker's config fields).
pub use krypton_image::store::ImageConfig as ImageDefaults;

/// The command line's say, before the image's defaults.
#[derive(Debug, Default)]
pub struct Overrides<'a> {
    /// `--entrypoint` (`Some("")` clears the image's).
    pub entrypoint: Option<&'a str>,
    /// The command after `--` (empty: the image's Cmd).
    pub command: &'a [String],
    /// `-e` entries.
    pub env: &'a [String],
    /// `-w`.
    pub workdir: Option<&'a str>,
    /// `-u`.
    pub user: Option<&'a str>,
}

/// The process to start: argv, env, cwd, user.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Process {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// `NAME|UID[:GROUP|GID]`, resolved in the container (empty: root).
    pub user: String,
}

/// PATH when neither the image nor `-e` sets one (docker's default).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's rules: `--entrypoint` replaces the image's Entrypoint and
/// drops its Cmd; a command replaces Cmd; argv is Entrypoint then Cmd.
/// `-e` overrides the image's Env by key; `-w` and `-u` override.
pub fn process(image: &ImageDefaults, o: &Overrides<'_>) -> Result<Process, String> {
    let entrypoint: Vec<String> = match o.entrypoint {
        Some("") => Vec::new(),
        Some(e) => vec![e.to_owned()],
        None => image.entrypoint.clone().unwrap_or_default(),
    };
    let cmd: Vec<String> = if !o.command.is_empty() {
        o.command.to_vec()
    } else if o.entrypoint.is_some() {
        Vec::new()
    } else {
        image.cmd.clone().unwrap_or_default()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err("no command: the image has no Entrypoint or Cmd; give one after --".into());
    }
    let mut env: Vec<String> = Vec::with_capacity(image.env.len() + o.env.len() + 1);
    for e in image.env.iter().chain(o.env) {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        env.retain(|x: &String| x.split_once('=').map_or(x.as_str(), |(k, _)| k) != key);
        env.push(e.clone());
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    Ok(Process {
        argv,
        env,
        cwd: o.workdir.unwrap_or(&image.working_dir).to_owned(),
        user: o.user.unwrap_or(&image.user).to_owned(),
    })
}

/// Looks `reference` up in the image store (`$KRYPTON_HOME`) and returns
/// its layer images (converted once per layer) and its config.
pub fn from_store(reference: &str) -> Result<(Vec<PathBuf>, ImageDefaults), String> {
    use krypton_image::store::{Store, default_home};
    let home = default_home().ok_or("no image store directory (set KRYPTON_HOME)")?;
    let store = Store::open(&home).map_err(|e| super::one_line(&e))?;
    let img = store.resolve(reference).map_err(|e| super::one_line(&e))?;
    Ok((img.layers, img.config))
}

/// The guest's name of the `index`th virtio-blk disk (vda, vdb, ...).
pub fn guest_disk(index: usize) -> Result<String, String> {
    let letter = u8::try_from(index)
        .ok()
        .filter(|&i| i < 26)
        .ok_or("too many disks")?;
    Ok(format!("/dev/vd{}", char::from(b'a' + letter)))
}

/// Where each layer file lies on the layer disk, for the agent.
pub fn image_root(disk: String, layers: &[PathBuf]) -> Result<ImageRoot, String> {
    let mut lens = Vec::with_capacity(layers.len());
    for p in layers {
        let m = std::fs::metadata(p).map_err(|e| format!("layer {}: {e}", p.display()))?;
        lens.push(m.len());
    }
    let placed =
        krypton_devices::virtio::blk::layer_placements(&lens).map_err(|e| super::one_line(&e))?;
    let root = ImageRoot {
        disk,
        layers: placed
            .into_iter()
            .map(|(offset, size)| Layer { offset, size })
            .collect(),
        scratch: String::new(),
    };
    root.check()
        .map_err(|_| format!("an image has 1 to {} layers", krypton_protocol::MAX_LAYERS))?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    fn image() -> ImageDefaults {
        ImageDefaults {
            entrypoint: Some(v(&["/entry", "-x"])),
            cmd: Some(v(&["serve", "--port=80"])),
            env: v(&["PATH=/opt/bin:/bin", "A=1", "B=2"]),
            working_dir: "/srv".into(),
            user: "app".into(),
        }
    }

    #[test]
    fn docker_rules_for_argv() {
        let img = image();
        let run = |o: Overrides<'_>| process(&img, &o).map(|p| p.argv);
        assert_eq!(
            run(Overrides::default()),
            Ok(v(&["/entry", "-x", "serve", "--port=80"]))
        );
        let cmd = v(&["status"]);
        assert_eq!(
            run(Overrides {
                command: &cmd,
                ..Default::default()
            }),
            Ok(v(&["/entry", "-x", "status"]))
        );
        assert_eq!(
            run(Overrides {
                entrypoint: Some("/bin/sh"),
                ..Default::default()
            }),
            Ok(v(&["/bin/sh"])),
            "--entrypoint drops the image's Cmd"
        );
        let c = v(&["-c", "echo hi"]);
        assert_eq!(
            run(Overrides {
                entrypoint: Some("/bin/sh"),
                command: &c,
                ..Default::default()
            }),
            Ok(v(&["/bin/sh", "-c", "echo hi"]))
        );
        let c = v(&["ls", "/"]);
        assert_eq!(
            run(Overrides {
                entrypoint: Some(""),
                command: &c,
                ..Default::default()
            }),
            Ok(v(&["ls", "/"]))
        );
        assert!(
            run(Overrides {
                entrypoint: Some(""),
                ..Default::default()
            })
            .is_err()
        );
        assert!(process(&ImageDefaults::default(), &Overrides::default()).is_err());
    }

    #[test]
    fn env_workdir_user() {
        let img = image();
        let e = v(&["B=3", "C=4"]);
        let p = process(
            &img,
            &Overrides {
                env: &e,
                workdir: Some("/tmp"),
                user: Some("0:0"),
                ..Default::default()
            },
        )
        .expect("process");
        assert_eq!(p.env, v(&["PATH=/opt/bin:/bin", "A=1", "B=3", "C=4"]));
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/tmp", "0:0"));
        let bare = ImageDefaults {
            cmd: Some(v(&["sh"])),
            ..Default::default()
        };
        let p = process(&bare, &Overrides::default()).expect("process");
        assert_eq!(p.env, v(&[DEFAULT_PATH]));
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("", ""));
        let p = process(&img, &Overrides::default()).expect("process");
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/srv", "app"));
    }

    #[test]
    fn disk_names() {
        assert_eq!(guest_disk(0).as_deref(), Ok("/dev/vda"));
        assert_eq!(guest_disk(1).as_deref(), Ok("/dev/vdb"));
        assert!(guest_disk(26).is_err());
    }
}
