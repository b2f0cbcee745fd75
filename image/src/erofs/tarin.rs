//! Reading the tar layer: each entry becomes a tree change, its data is
//! streamed to the data area. PAX (`path`, `linkpath`, `uid`, `gid`,
//! `mtime`, `SCHILY.xattr.*`) and GNU long names are honoured; OCI
//! whiteouts become overlayfs whiteouts and opaque marks.

use std::io::{Read, Seek, Write};

use tar::EntryType;

use super::data::DataWriter;
use super::format::{self, BLK, BLK_USIZE, EXTENDED_SIZE};
use super::tree::{Inode, Kind, OPAQUE, Tree, Xattrs, join, normalize};
use super::{ConvertError, Limits, Stats};

/// The metadata of one entry.
struct Meta {
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
    xattrs: Xattrs,
}

fn tar_err(e: std::io::Error) -> ConvertError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ConvertError::Truncated
    } else {
        ConvertError::Tar(e.to_string())
    }
}

/// Parses a PAX time (`123`, `-5`, `1700000000.123456789`).
fn pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let mut nsec: u32 = digits.parse().ok()?;
    let mut secs = secs;
    // "-1.5" is 1.5 s before the epoch: -2 s + 0.5 s.
    if int.starts_with('-') && nsec > 0 {
        secs = secs.checked_sub(1)?;
        nsec = 1_000_000_000 - nsec;
    }
    Some((secs, nsec))
}

fn pax_u32(v: &[u8], what: &str, path: &str) -> Result<u32, ConvertError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            ConvertError::BadPax(format!(
                "{path}: bad {what} {:?}",
                String::from_utf8_lossy(v)
            ))
        })
}

fn read_meta<R: Read>(
    e: &mut tar::Entry<'_, R>,
    shown: &str,
    limits: &Limits,
    stats: &mut Stats,
) -> Result<Meta, ConvertError> {
    let h = e.header();
    let big = |what: &str| ConvertError::BadPax(format!("{shown}: {what} does not fit 32 bits"));
    let mut m = Meta {
        perm: (h.mode().map_err(tar_err)? & 0o7777) as u16,
        uid: u32::try_from(h.uid().map_err(tar_err)?).map_err(|_| big("uid"))?,
        gid: u32::try_from(h.gid().map_err(tar_err)?).map_err(|_| big("gid"))?,
        mtime: i64::try_from(h.mtime().map_err(tar_err)?).unwrap_or(i64::MAX),
        mtime_nsec: 0,
        xattrs: Xattrs::new(),
    };
    let Some(pax) = e.pax_extensions().map_err(tar_err)? else {
        return Ok(m);
    };
    for ext in pax {
        let ext = ext.map_err(tar_err)?;
        let (k, v) = (ext.key_bytes(), ext.value_bytes());
        match k {
            b"uid" => m.uid = pax_u32(v, "uid", shown)?,
            b"gid" => m.gid = pax_u32(v, "gid", shown)?,
            b"mtime" => {
                (m.mtime, m.mtime_nsec) = pax_time(v).ok_or_else(|| {
                    ConvertError::BadPax(format!(
                        "{shown}: bad mtime {:?}",
                        String::from_utf8_lossy(v)
                    ))
                })?;
            }
            _ if k.starts_with(b"GNU.sparse.") => {
                return Err(ConvertError::Unsupported {
                    path: shown.to_string(),
                    what: "PAX-format sparse file (GNU.sparse.*)".into(),
                });
            }
            _ => {
                let Some(name) = k.strip_prefix(b"SCHILY.xattr.") else {
                    continue;
                };
                match format::xattr_split(name) {
                    Some((idx, suffix)) if suffix.len() <= 255 && v.len() <= 0xffff => {
                        m.xattrs.insert((idx, suffix.to_vec()), v.to_vec());
                    }
                    Some(_) => {
                        return Err(ConvertError::XattrTooLarge {
                            path: shown.to_string(),
                            max: limits.max_xattr_bytes,
                        });
                    }
                    None => {
                        stats.xattrs_skipped += 1;
                        log::debug!(
                            "{shown}: xattr {} has no EROFS prefix; skipped",
                            String::from_utf8_lossy(name)
                        );
                    }
                }
            }
        }
    }
    let size = format::xattr_body_size(
        m.xattrs
            .iter()
            .map(|((_, k), v)| (k.as_slice(), v.as_slice())),
    );
    if size > limits.max_xattr_bytes.min(MAX_XATTR_BODY) {
        return Err(ConvertError::XattrTooLarge {
            path: shown.to_string(),
            max: limits.max_xattr_bytes,
        });
    }
    Ok(m)
}

/// The largest in-inode xattr body `i_xattr_icount` (16 bits) can describe.
const MAX_XATTR_BODY: usize = 12 + 0xfffe * 4;

fn node(m: Meta, kind: Kind) -> Inode {
    Inode {
        perm: m.perm,
        uid: m.uid,
        gid: m.gid,
        mtime: m.mtime,
        mtime_nsec: m.mtime_nsec,
        xattrs: m.xattrs,
        kind,
    }
}

/// Reads the whole tar into `tree`, streaming file data into `data`.
pub(crate) fn read_layer<R: Read, W: Write + Seek>(
    tar: R,
    tree: &mut Tree,
    data: &mut DataWriter<W>,
    limits: &Limits,
    stats: &mut Stats,
) -> Result<(), ConvertError> {
    let mut ar = tar::Archive::new(tar);
    // Metadata held in memory until the end, as image bytes: checked
    // against the size limit as it grows, so xattrs and names of a hostile
    // layer cannot take more memory than the image may take disk.
    let mut meta = 0u64;
    for e in ar.entries().map_err(tar_err)? {
        let mut e = e.map_err(tar_err)?;
        stats.entries += 1;
        // Implicit parent directories count as entries too.
        if stats.entries > limits.max_entries || tree.inodes.len() as u64 > limits.max_entries + 1 {
            return Err(ConvertError::TooManyEntries(limits.max_entries));
        }
        let ty = e.header().entry_type();
        if ty == EntryType::XGlobalHeader {
            continue;
        }
        let path = normalize(&e.path_bytes(), limits.max_path)?;
        let shown = join(&path);
        let m = read_meta(&mut e, &shown, limits, stats)?;
        let xattr_bytes: usize = m
            .xattrs
            .iter()
            .map(|((_, k), v)| 8 + k.len() + v.len())
            .sum();
        meta += (EXTENDED_SIZE + 16 + path.last().map_or(0, Vec::len) + xattr_bytes) as u64;
        data.reserve(meta.div_ceil(BLK))?;
        if let Some((name, parent)) = path.split_last() {
            if name == b".wh..wh..opq" {
                let dir = tree.ensure_dir(parent)?;
                tree.set_xattr(dir, OPAQUE.0, OPAQUE.1, b"y");
                stats.whiteouts += 1;
                continue;
            }
            if let Some(hidden) = name.strip_prefix(b".wh.") {
                if hidden.starts_with(b".wh.") {
                    // Other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): not files.
                    continue;
                }
                if hidden.is_empty() {
                    return Err(ConvertError::BadName(shown));
                }
                let mut target = parent.to_vec();
                target.push(hidden.to_vec());
                let m = Meta {
                    perm: 0,
                    xattrs: Xattrs::new(),
                    ..m
                };
                tree.insert(&target, node(m, Kind::Char(0)))?;
                stats.whiteouts += 1;
                continue;
            }
        }
        let kind = match ty {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let size = e.size();
                let xs = format::xattr_body_size(
                    m.xattrs
                        .iter()
                        .map(|((_, k), v)| (k.as_slice(), v.as_slice())),
                );
                let room = BLK_USIZE.saturating_sub(EXTENDED_SIZE + xs);
                let d = data.write_file(&mut e, size, room)?;
                Kind::File { size, data: d }
            }
            EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| ConvertError::BadName(shown.clone()))?;
                let target = normalize(&target, limits.max_path)?;
                if target != path {
                    tree.link(&path, &target)?;
                }
                continue;
            }
            EntryType::Symlink => {
                let t = e
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if t.is_empty() || t.contains(&0) {
                    return Err(ConvertError::BadName(format!("{shown} (symlink target)")));
                }
                if t.len() > limits.max_path {
                    return Err(ConvertError::PathTooLong {
                        path: shown,
                        max: limits.max_path,
                    });
                }
                Kind::Symlink(t)
            }
            EntryType::Char | EntryType::Block => {
                let h = e.header();
                let major = h.device_major().map_err(tar_err)?.unwrap_or(0);
                let minor = h.device_minor().map_err(tar_err)?.unwrap_or(0);
                let rdev = format::encode_dev(major, minor)
                    .ok_or_else(|| ConvertError::BadDevice(format!("{shown}: {major}:{minor}")))?;
                if ty == EntryType::Char {
                    Kind::Char(rdev)
                } else {
                    Kind::Block(rdev)
                }
            }
            EntryType::Fifo => Kind::Fifo,
            EntryType::Directory => Kind::Dir(Default::default()),
            other => {
                return Err(ConvertError::Unsupported {
                    path: shown,
                    what: format!("tar entry type {:?}", other.as_byte() as char),
                });
            }
        };
        tree.insert(&path, node(m, kind))?;
    }
    if tree.inodes.len() as u64 > limits.max_entries + 1 {
        return Err(ConvertError::TooManyEntries(limits.max_entries));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::pax_time;

    #[test]
    fn pax_times_parse() {
        assert_eq!(pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            pax_time(b"1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(pax_time(b"1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(pax_time(b"x"), None);
        assert_eq!(pax_time(b"1.x"), None);
    }
}
