//! Docker's `--user NAME|UID[:GROUP|GID]`, resolved inside the container
//! root through its own /etc/passwd and /etc/group, as runc does: a name
//! must exist; a numeric uid need not (then gid 0 and HOME=/); the
//! supplementary groups are the groups that list the user by name.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Largest passwd or group file read.
const MAX_FILE: u64 = 4 << 20;

/// Who the workload runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Home directory (for HOME when the environment has none).
    pub home: String,
}

struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = Passwd<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(Passwd {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// (name, gid, members)
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

fn read_small(root: &Path, rel: &str) -> Result<String> {
    use std::io::Read;
    let path = root.join(rel);
    match std::fs::File::open(&path) {
        Ok(f) => {
            let mut s = String::new();
            f.take(MAX_FILE)
                .read_to_string(&mut s)
                .with_context(|| format!("read {}", path.display()))?;
            Ok(s)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("open {}", path.display())),
    }
}

/// Resolves `spec` against `root`'s /etc/passwd and /etc/group.
pub fn resolve(root: &Path, spec: &str) -> Result<Identity> {
    let passwd = read_small(root, "etc/passwd")?;
    let group = read_small(root, "etc/group")?;
    resolve_in(&passwd, &group, spec)
}

/// [`resolve`] on the files' contents.
pub fn resolve_in(passwd: &str, group: &str, spec: &str) -> Result<Identity> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        bail!("invalid user '{spec}'");
    }
    let found = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|p| p.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|p| p.name == user)
                .with_context(|| {
                    format!("unable to find user {user}: no matching entries in passwd file")
                })?,
        ),
    };
    let uid = match &found {
        Some(p) => p.uid,
        None => user.parse::<u32>().context("uid")?,
    };
    let mut gid = found.as_ref().map_or(0, |p| p.gid);
    let home = found
        .as_ref()
        .map_or("/", |p| if p.home.is_empty() { "/" } else { p.home })
        .to_owned();
    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) if g.is_empty() => bail!("invalid group in user '{spec}'"),
            Err(_) => {
                group_entries(group)
                    .find(|(name, _, _)| *name == g)
                    .with_context(|| {
                        format!("unable to find group {g}: no matching entries in group file")
                    })?
                    .1
            }
        };
    }
    let mut groups: Vec<u32> = Vec::new();
    if let Some(p) = &found {
        for (_, id, members) in group_entries(group) {
            if members.contains(&p.name) && !groups.contains(&id) {
                groups.push(id);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        broken line\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:root,app\nstaff:x:50:app\napp:x:1000:\n";

    fn id(spec: &str) -> Result<Identity> {
        resolve_in(PASSWD, GROUP, spec)
    }

    #[test]
    fn names_and_numbers() {
        let app = id("app").expect("app");
        assert_eq!(
            (app.uid, app.gid, app.home.as_str()),
            (1000, 1000, "/home/app")
        );
        assert_eq!(app.groups, vec![10, 50]);
        assert_eq!(
            id("1000").expect("1000"),
            app,
            "a known uid is the named user"
        );
        let g = id("app:staff").expect("app:staff");
        assert_eq!((g.uid, g.gid), (1000, 50));
        assert_eq!(id("app:7").expect("app:7").gid, 7);
        let anon = id("4242").expect("unknown uid");
        assert_eq!((anon.uid, anon.gid, anon.home.as_str()), (4242, 0, "/"));
        assert!(anon.groups.is_empty());
        assert_eq!(id("4242:4243").expect("uid:gid").gid, 4243);
        assert_eq!(id("root").expect("root").groups, vec![10]);
    }

    #[test]
    fn bad_users() {
        for bad in ["nobody", "app:nogroup", ":0", "", "app:"] {
            assert!(id(bad).is_err(), "{bad:?}");
        }
        let e = id("nobody").expect_err("nobody");
        assert!(
            format!("{e:#}").contains("no matching entries in passwd"),
            "{e:#}"
        );
    }

    #[test]
    fn missing_files_mean_numeric_only() {
        assert_eq!(resolve_in("", "", "5:6").expect("numeric").uid, 5);
        assert!(resolve_in("", "", "app").is_err());
    }
}
