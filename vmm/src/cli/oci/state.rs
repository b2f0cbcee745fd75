//! Per-container state under `--root`: `ROOT/ID/state.json` (written
//! whole and renamed into place), the monitor's control socket
//! `ROOT/ID/ctl.sock`, and `ROOT/ID/lock`, which `create` and `delete`
//! hold (flock) so concurrent invocations cannot interleave.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The runtime-spec version `state` reports.
pub const OCI_VERSION: &str = "1.2.0";

/// State-file errors.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No such container.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// `create` of an ID in use.
    #[error("container {0} already exists")]
    Exists(String),
    /// The ID is unusable as a directory name.
    #[error("invalid container id {0:?}")]
    BadId(String),
    /// Reading or writing the state failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// state.json is unreadable.
    #[error("corrupt state file {0}")]
    Corrupt(String),
}

/// Container status, as the runtime spec names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Prepared, not started.
    Created,
    /// The process runs.
    Running,
    /// The process ended (or the monitor is gone).
    Stopped,
}

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Container ID.
    pub id: String,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// The monitor's pid (the container's pid for the engine).
    pub pid: u32,
    /// Status as the monitor last recorded it.
    pub status: Status,
    /// Exit status once stopped.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Creation time (RFC 3339).
    pub created: String,
    /// From config.json.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

/// The JSON `krypton state` prints.
#[derive(Debug, Serialize)]
pub struct SpecState<'a> {
    #[serde(rename = "ociVersion")]
    oci_version: &'static str,
    id: &'a str,
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    bundle: &'a Path,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    annotations: &'a HashMap<String, String>,
    created: &'a str,
}

impl State {
    /// The status with the monitor's liveness taken into account: a dead
    /// monitor means stopped whatever the file says.
    pub fn live_status(&self) -> Status {
        if self.status != Status::Stopped && !pid_alive(self.pid) {
            Status::Stopped
        } else {
            self.status
        }
    }

    /// The runtime-spec view (no pid once stopped).
    pub fn spec_view(&self) -> SpecState<'_> {
        let status = self.live_status();
        SpecState {
            oci_version: OCI_VERSION,
            id: &self.id,
            status,
            pid: (status != Status::Stopped).then_some(self.pid),
            bundle: &self.bundle,
            annotations: &self.annotations,
            created: &self.created,
        }
    }
}

/// Whether `pid` exists (signal 0).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // A zombie still answers kill(0): treat it as gone.
    if let Ok(s) = fs::read_to_string(format!("/proc/{pid}/stat"))
        && let Some(rest) = s.rsplit_once(") ")
        && rest.1.starts_with('Z')
    {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// The state directory `--root` names.
#[derive(Debug, Clone)]
pub struct Root(pub PathBuf);

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// Checks an ID: a plain file name of at most 1024 bytes.
pub fn check_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && !id.contains(['/', '\0', '\n']);
    if ok {
        Ok(())
    } else {
        Err(StateError::BadId(id.to_owned()))
    }
}

impl Root {
    /// `ROOT/ID`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.0.join(id)
    }

    /// The monitor's control socket.
    pub fn socket(&self, id: &str) -> PathBuf {
        self.dir(id).join("ctl.sock")
    }

    /// Makes `ROOT/ID` (failing if it exists) and returns its lock, held.
    pub fn create(&self, id: &str) -> Result<File, StateError> {
        check_id(id)?;
        fs::create_dir_all(&self.0).map_err(io_err("cannot create", &self.0))?;
        let dir = self.dir(id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(id.to_owned()));
            }
            Err(e) => return Err(io_err("cannot create", &dir)(e)),
        }
        self.lock(id)
    }

    /// Takes `ROOT/ID/lock` (blocking).
    pub fn lock(&self, id: &str) -> Result<File, StateError> {
        check_id(id)?;
        let dir = self.dir(id);
        if !dir.is_dir() {
            return Err(StateError::NotFound(id.to_owned()));
        }
        let path = dir.join("lock");
        let f = File::create(&path).map_err(io_err("cannot open", &path))?;
        f.lock().map_err(io_err("cannot lock", &path))?;
        Ok(f)
    }

    /// Reads `state.json`.
    pub fn load(&self, id: &str) -> Result<State, StateError> {
        check_id(id)?;
        let path = self.dir(id).join("state.json");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_owned()));
            }
            Err(e) => return Err(io_err("cannot read", &path)(e)),
        };
        serde_json::from_str(&text).map_err(|_| StateError::Corrupt(path.display().to_string()))
    }

    /// Writes `state.json` atomically.
    pub fn save(&self, s: &State) -> Result<(), StateError> {
        let dir = self.dir(&s.id);
        let tmp = dir.join("state.json.tmp");
        let text = serde_json::to_string(s).map_err(|_| StateError::Corrupt(s.id.clone()))?;
        fs::write(&tmp, text).map_err(io_err("cannot write", &tmp))?;
        let path = dir.join("state.json");
        fs::rename(&tmp, &path).map_err(io_err("cannot write", &path))
    }

    /// Removes `ROOT/ID` and everything in it.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        check_id(id)?;
        let dir = self.dir(id);
        fs::remove_dir_all(&dir).map_err(io_err("cannot remove", &dir))
    }

    /// IDs with a state directory.
    pub fn list(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(&self.0) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("state.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        ids
    }
}

/// Now as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_root(name: &str) -> Root {
        let d = std::env::temp_dir().join(format!("krypton-oci-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        Root(d)
    }

    fn sample(id: &str, pid: u32) -> State {
        State {
            id: id.into(),
            bundle: "/b".into(),
            pid,
            status: Status::Created,
            exit_code: None,
            created: now_rfc3339(),
            annotations: HashMap::from([("a".into(), "b".into())]),
        }
    }

    #[test]
    fn create_save_load_remove() {
        let root = tmp_root("state");
        let lock = root.create("c1").expect("create");
        assert!(matches!(root.create("c1"), Err(StateError::Exists(_))));
        drop(lock);
        let s = sample("c1", std::process::id());
        root.save(&s).expect("save");
        assert_eq!(root.load("c1").expect("load"), s);
        assert_eq!(root.list(), vec!["c1".to_string()]);
        // Our own pid is alive: the recorded status stands.
        assert_eq!(s.live_status(), Status::Created);
        let v = serde_json::to_value(s.spec_view()).expect("json");
        assert_eq!(v["ociVersion"], OCI_VERSION);
        assert_eq!(v["status"], "created");
        assert_eq!(v["pid"], std::process::id());
        assert_eq!(v["annotations"]["a"], "b");
        root.remove("c1").expect("remove");
        assert!(matches!(root.load("c1"), Err(StateError::NotFound(_))));
        assert!(matches!(root.lock("c1"), Err(StateError::NotFound(_))));
        let _ = fs::remove_dir_all(&root.0);
    }

    #[test]
    fn dead_monitor_means_stopped_without_pid() {
        // A child that has exited and been reaped: its pid is free.
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        let s = State {
            status: Status::Running,
            ..sample("c2", pid)
        };
        assert_eq!(s.live_status(), Status::Stopped);
        let v = serde_json::to_value(s.spec_view()).expect("json");
        assert_eq!(v["status"], "stopped");
        assert!(v.get("pid").is_none());
    }

    #[test]
    fn bad_ids_and_corrupt_files() {
        for id in ["", ".", "..", "a/b", "x\0"] {
            assert!(matches!(check_id(id), Err(StateError::BadId(_))), "{id:?}");
        }
        let root = tmp_root("corrupt");
        drop(root.create("c3").expect("create"));
        fs::write(root.dir("c3").join("state.json"), "{not json").expect("write");
        assert!(matches!(root.load("c3"), Err(StateError::Corrupt(_))));
        let _ = fs::remove_dir_all(&root.0);
    }

    #[test]
    fn rfc3339_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), "2026-01-01T00:00:00.000000000Z".len(), "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
