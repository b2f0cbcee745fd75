//! The cases: the runc contract directly, then podman scenarios.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail, ensure};

use crate::support::{Env, IMAGE, check, create_to_files, run, text};

/// A bundle at DIR/NAME whose root is the busybox tree, running `args`.
fn bundle(env: &Env, name: &str, args: &[&str], terminal: bool) -> Result<std::path::PathBuf> {
    let b = env.dir.join(name);
    std::fs::create_dir_all(&b)?;
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    let config = format!(
        r#"{{"ociVersion": "1.0.2",
  "process": {{"terminal": {terminal}, "user": {{"uid": 0, "gid": 0}}, "args": [{}],
    "env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"], "cwd": "/"}},
  "root": {{"path": "{}", "readonly": false}},
  "hostname": "{name}",
  "mounts": [
    {{"destination": "/proc", "type": "proc", "source": "proc"}},
    {{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}},
    {{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}}
  ],
  "annotations": {{"suite": "oci"}},
  "linux": {{"namespaces": [{{"type": "pid"}}, {{"type": "mount"}}, {{"type": "uts"}}]}}
}}"#,
        args.join(", "),
        env.rootfs.display()
    );
    std::fs::write(b.join("config.json"), config)?;
    Ok(b)
}

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn json_field(out: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\":");
    let rest = out.split_once(&key)?.1.trim_start();
    let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().trim_matches('"').to_string())
}

/// Unknown IDs, a bad bundle, bad signals: one line, status 1, no state.
pub fn bad_input(env: &Env) -> Result<()> {
    for args in [
        vec!["state", "nope"],
        vec!["start", "nope"],
        vec!["kill", "nope", "KILL"],
        vec!["delete", "nope"],
        vec!["exec", "nope", "true"],
    ] {
        let o = env.krypton(&args, 30)?;
        let err = text(&o.stderr);
        ensure!(code(&o) == 1, "{args:?}: status {}: {err}", code(&o));
        ensure!(err.contains("does not exist"), "{args:?}: {err}");
        ensure!(err.trim().lines().count() == 1, "{args:?}: {err}");
    }
    // delete --force of an unknown container succeeds, as with runc.
    check(&env.krypton(&["delete", "--force", "nope"], 30)?)?;
    let empty = env.dir.join("empty-bundle");
    std::fs::create_dir_all(&empty)?;
    let log = env.dir.join("bad.log");
    let o = env.krypton(
        &[
            "--log",
            &log.display().to_string(),
            "--log-format",
            "json",
            "create",
            "--bundle",
            &empty.display().to_string(),
            "bad1",
        ],
        30,
    )?;
    ensure!(code(&o) == 1, "bad bundle: {}", text(&o.stderr));
    ensure!(
        text(&o.stderr).contains("config.json"),
        "{}",
        text(&o.stderr)
    );
    let logged = std::fs::read_to_string(&log)?;
    ensure!(
        logged.contains("\"level\":\"error\"") && logged.contains("config.json"),
        "{logged}"
    );
    // Nothing left behind by the failed create.
    ensure!(!env.dir.join("root/bad1").exists(), "state left behind");
    let o = env.krypton(&["kill", "x", "SIGNOPE"], 30)?;
    ensure!(
        code(&o) == 1 && text(&o.stderr).contains("signal"),
        "{}",
        text(&o.stderr)
    );
    let o = env.krypton(&["create", "--bundle", "/", "a/b"], 30)?;
    ensure!(code(&o) == 1, "bad id accepted");
    Ok(())
}

/// create → created (pid alive) → double create refused → start →
/// running → exec → delete refused → kill → stopped with the status →
/// delete. Also makes the template the podman cases restore.
pub fn lifecycle(env: &Env) -> Result<()> {
    let r = lifecycle_steps(env);
    if r.is_err() {
        // Leave no VM behind.
        let _ = env.krypton(&["delete", "--force", "life"], 60);
    }
    r
}

fn lifecycle_steps(env: &Env) -> Result<()> {
    let b = bundle(
        env,
        "life",
        &["sh", "-c", "echo main-out; exec sleep 600"],
        false,
    )?;
    let bs = b.display().to_string();
    let pidf = b.join("pid");
    let (out, err) = (b.join("out"), b.join("err"));
    let pf = pidf.display().to_string();
    let args = ["create", "--bundle", &bs, "--pid-file", &pf, "life"];
    let st = create_to_files(env, &args, &out, &err)?;
    ensure!(st == 0, "create: {}", std::fs::read_to_string(&err)?);
    let pid: u32 = std::fs::read_to_string(&pidf)?.trim().parse()?;
    let st = text(&env.krypton(&["state", "life"], 30)?.stdout);
    ensure!(
        json_field(&st, "status").as_deref() == Some("created"),
        "{st}"
    );
    ensure!(json_field(&st, "pid") == Some(pid.to_string()), "{st}");
    ensure!(
        json_field(&st, "bundle").as_deref() == Some(bs.as_str()),
        "{st}"
    );
    ensure!(st.contains("\"suite\": \"oci\""), "annotations: {st}");
    let o = env.krypton(&["create", "--bundle", &bs, "life"], 60)?;
    ensure!(
        code(&o) == 1 && text(&o.stderr).contains("already exists"),
        "double create: {}",
        text(&o.stderr)
    );
    check(&env.krypton(&["start", "life"], 300)?)?;
    let st = text(&env.krypton(&["state", "life"], 30)?.stdout);
    ensure!(
        json_field(&st, "status").as_deref() == Some("running"),
        "{st}"
    );
    let o = env.krypton(
        &["exec", "life", "sh", "-c", "echo exec-$(hostname); exit 7"],
        300,
    )?;
    ensure!(
        code(&o) == 7,
        "exec status {}: {}",
        code(&o),
        text(&o.stderr)
    );
    ensure!(
        text(&o.stdout) == "exec-life\n",
        "exec out {:?}",
        text(&o.stdout)
    );
    let o = env.krypton(&["delete", "life"], 30)?;
    ensure!(
        code(&o) == 1 && text(&o.stderr).contains("not stopped"),
        "delete running: {}",
        text(&o.stderr)
    );
    check(&env.krypton(&["kill", "life", "TERM"], 30)?)?;
    wait_stopped(env, "life")?;
    let st = text(&env.krypton(&["state", "life"], 30)?.stdout);
    ensure!(
        json_field(&st, "status").as_deref() == Some("stopped"),
        "{st}"
    );
    ensure!(
        std::fs::read_to_string(&out)? == "main-out\n",
        "container stdout"
    );
    check(&env.krypton(&["delete", "life"], 30)?)?;
    ensure!(!env.dir.join("root/life").exists(), "state dir left");
    let o = env.krypton(&["state", "life"], 30)?;
    ensure!(code(&o) == 1, "state after delete");
    Ok(())
}

fn wait_stopped(env: &Env, id: &str) -> Result<()> {
    for _ in 0..600 {
        let st = text(&env.krypton(&["state", id], 30)?.stdout);
        if json_field(&st, "status").as_deref() == Some("stopped") {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    bail!("{id} did not stop")
}

const RUN: &[&str] = &["run", "--rm", "--network", "none"];

fn podman_run(env: &Env, extra: &[&str], cmd: &[&str]) -> Result<std::process::Output> {
    let mut args: Vec<&str> = RUN.to_vec();
    args.extend_from_slice(extra);
    args.push(IMAGE);
    args.extend_from_slice(cmd);
    env.podman(&args, 600)
}

/// `podman run --rm IMG echo hi`; statuses 0, 3 and 137.
pub fn run_and_exit_codes(env: &Env) -> Result<()> {
    let o = podman_run(env, &[], &["echo", "hi"])?;
    check(&o)?;
    ensure!(text(&o.stdout) == "hi\n", "stdout {:?}", text(&o.stdout));
    let o = podman_run(env, &[], &["sh", "-c", "echo out; echo err >&2; exit 3"])?;
    ensure!(code(&o) == 3, "status {}: {}", code(&o), text(&o.stderr));
    ensure!(text(&o.stdout) == "out\n", "stdout {:?}", text(&o.stdout));
    ensure!(
        text(&o.stderr).contains("err"),
        "stderr {:?}",
        text(&o.stderr)
    );
    let o = podman_run(env, &[], &["sh", "-c", "kill -9 $$"])?;
    ensure!(code(&o) == 137, "status {}: {}", code(&o), text(&o.stderr));
    Ok(())
}

/// -e, -w, -u, --read-only, -v (read-write and :ro).
pub fn options(env: &Env) -> Result<()> {
    let vol = env.dir.join("vol");
    let ro = env.dir.join("vol-ro");
    for d in [&vol, &ro] {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(vol.join("in"), "from-host\n")?;
    std::fs::write(ro.join("r"), "ro-file\n")?;
    // The uid 1000 process writes into the volume.
    Command::new("chmod").arg("777").arg(&vol).status()?;
    let v = format!("{}:/data", vol.display());
    let r = format!("{}:/ro:ro", ro.display());
    let script = "echo $FOO; pwd; id -u; id -g; cat /data/in; echo back > /data/out; hostname";
    let o = podman_run(
        env,
        &[
            "-e",
            "FOO=bar",
            "-w",
            "/tmp",
            "-u",
            "1000:1000",
            "-v",
            &v,
            "--hostname",
            "kbox",
        ],
        &["sh", "-c", script],
    )?;
    check(&o)?;
    let want = "bar\n/tmp\n1000\n1000\nfrom-host\nkbox\n";
    ensure!(text(&o.stdout) == want, "got {:?}", text(&o.stdout));
    // As root, so that only the read-only mounts can refuse the writes.
    let script = "touch /rootfile 2>/dev/null && echo root-rw || echo root-ro; \
                  touch /ro/x 2>/dev/null && echo vol-rw || echo vol-ro; cat /ro/r; \
                  touch /tmp/t && echo tmp-rw";
    let o = podman_run(env, &["--read-only", "-v", &r], &["sh", "-c", script])?;
    check(&o)?;
    let want = "root-ro\nvol-ro\nro-file\ntmp-rw\n";
    ensure!(text(&o.stdout) == want, "got {:?}", text(&o.stdout));
    ensure!(!ro.join("x").exists(), "write through a read-only volume");
    ensure!(
        std::fs::read_to_string(vol.join("out"))? == "back\n",
        "volume write not on the host"
    );
    Ok(())
}

/// `run -d`, `logs`, `exec`, a second container meanwhile, `stop`.
pub fn detached(env: &Env) -> Result<()> {
    let o = env.podman(
        &[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            "kdet",
            IMAGE,
            "sh",
            "-c",
            "echo started; trap 'echo got-term; exit 0' TERM; while :; do sleep 1; done",
        ],
        600,
    )?;
    check(&o)?;
    let logs = wait_for_log(env, "kdet", "started")?;
    ensure!(logs.contains("started"), "{logs}");
    let o = env.podman(
        &[
            "exec",
            "kdet",
            "sh",
            "-c",
            "echo in-exec $(hostname); exit 5",
        ],
        300,
    )?;
    ensure!(
        code(&o) == 5,
        "exec status {}: {}",
        code(&o),
        text(&o.stderr)
    );
    ensure!(
        text(&o.stdout).starts_with("in-exec "),
        "{}",
        text(&o.stdout)
    );
    // A second container while the first runs.
    let o = podman_run(env, &[], &["echo", "second"])?;
    check(&o)?;
    ensure!(text(&o.stdout) == "second\n", "{}", text(&o.stdout));
    // The trap runs once the loop's `sleep 1` child has ended; each exec
    // takes seconds in an emulated guest (kvm_pvm) and more on a loaded
    // machine, so the grace period before SIGKILL is generous: stop
    // returns as soon as the container has exited.
    let t = std::time::Instant::now();
    check(&env.podman(&["stop", "-t", "120", "kdet"], 300)?)?;
    eprintln!("oci: podman stop took {:.1} s", t.elapsed().as_secs_f64());
    let o = env.podman(&["inspect", "--format", "{{.State.ExitCode}}", "kdet"], 60)?;
    ensure!(
        text(&o.stdout).trim() == "0",
        "exit after TERM trap: {}",
        text(&o.stdout)
    );
    let logs = text(&env.podman(&["logs", "kdet"], 60)?.stdout);
    ensure!(logs.contains("got-term"), "{logs}");
    check(&env.podman(&["rm", "kdet"], 120)?)?;
    Ok(())
}

fn wait_for_log(env: &Env, name: &str, needle: &str) -> Result<String> {
    for _ in 0..300 {
        let logs = text(&env.podman(&["logs", name], 60)?.stdout);
        if logs.contains(needle) {
            return Ok(logs);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    bail!("{needle:?} never appeared in the logs of {name}")
}

/// `podman rm -f` of a running container.
pub fn rm_force(env: &Env) -> Result<()> {
    let o = env.podman(
        &[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            "krm",
            IMAGE,
            "sleep",
            "600",
        ],
        600,
    )?;
    check(&o)?;
    let id = text(&o.stdout).trim().to_string();
    check(&env.podman(&["rm", "-f", "-t", "0", "krm"], 300)?)?;
    let o = env.podman(&["ps", "-a", "--format", "{{.Names}}"], 60)?;
    ensure!(!text(&o.stdout).contains("krm"), "{}", text(&o.stdout));
    ensure!(
        !Path::new("/run/krypton").join(&id).exists(),
        "runtime state of {id} left behind"
    );
    Ok(())
}

/// `podman run -it` under a PTY made by `script`.
pub fn interactive_tty(env: &Env) -> Result<()> {
    let cmd = format!(
        "printf 'echo typed-$((6*7)); exit 4\\n' | podman {} run -it --rm --network none {IMAGE} sh",
        env.podman_globals().join(" ")
    );
    let o = run(
        Command::new("script").args(["-qefc", &cmd, "/dev/null"]),
        600,
    )?;
    let out = text(&o.stdout);
    ensure!(out.contains("typed-42"), "{out}");
    ensure!(code(&o) == 4, "status {}: {out}", code(&o));
    Ok(())
}
