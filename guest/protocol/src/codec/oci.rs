//! Encoding of [`OciSettings`]: a presence byte, then the fields in order.

use super::{Reader, Writer};
use crate::ProtocolError;
use crate::oci::{
    Bind, Capabilities, GuestMount, MAX_BINDS, MAX_GROUPS, MAX_GUEST_MOUNTS, MAX_RLIMITS,
    OciSettings, Rlimit,
};

pub(super) fn encode(w: &mut Writer, oci: Option<&OciSettings>) -> Result<(), ProtocolError> {
    let Some(o) = oci else {
        w.u8(0);
        return Ok(());
    };
    o.check().map_err(|_| ProtocolError::TooLarge)?;
    w.u8(1);
    w.str(&o.root_tag)?;
    w.u8(u8::from(o.root_readonly));
    // Counts bounded by check() above.
    w.u32(o.additional_gids.len() as u32);
    o.additional_gids.iter().for_each(|g| w.u32(*g));
    w.u32(o.binds.len() as u32);
    for b in &o.binds {
        w.str(&b.tag)?;
        w.str(&b.source)?;
        w.str(&b.target)?;
        w.u8(u8::from(b.read_only));
    }
    w.u32(o.guest_mounts.len() as u32);
    for m in &o.guest_mounts {
        w.str(&m.fstype)?;
        w.str(&m.target)?;
        w.str(&m.data)?;
        w.u64(m.flags);
    }
    w.u32(o.rlimits.len() as u32);
    for r in &o.rlimits {
        w.u32(r.resource);
        w.u64(r.soft);
        w.u64(r.hard);
    }
    w.u8(u8::from(o.no_new_privileges));
    match &o.caps {
        None => w.u8(0),
        Some(c) => {
            w.u8(1);
            for v in [
                c.bounding,
                c.effective,
                c.permitted,
                c.inheritable,
                c.ambient,
            ] {
                w.u64(v);
            }
        }
    }
    w.u32(o.join);
    Ok(())
}

fn flag(r: &mut Reader<'_>, field: &'static str) -> Result<bool, ProtocolError> {
    match r.u8(field)? {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(ProtocolError::BadTag { field, value }),
    }
}

fn count(r: &mut Reader<'_>, max: usize, field: &'static str) -> Result<usize, ProtocolError> {
    let n = r.u32(field)? as usize;
    // Every item is at least 4 bytes: this also bounds allocations.
    if n > max || n > r.0.len() / 4 {
        return Err(ProtocolError::OutOfBounds {
            field,
            value: n as u64,
        });
    }
    Ok(n)
}

pub(super) fn decode(r: &mut Reader<'_>) -> Result<Option<Box<OciSettings>>, ProtocolError> {
    if !flag(r, "oci")? {
        return Ok(None);
    }
    let root_tag = r.str("root tag")?;
    let root_readonly = flag(r, "root ro")?;
    let n = count(r, MAX_GROUPS, "groups")?;
    let additional_gids = (0..n).map(|_| r.u32("gid")).collect::<Result<_, _>>()?;
    let n = count(r, MAX_BINDS, "binds")?;
    let mut binds = Vec::with_capacity(n);
    for _ in 0..n {
        binds.push(Bind {
            tag: r.str("bind tag")?,
            source: r.str("bind source")?,
            target: r.str("bind target")?,
            read_only: flag(r, "bind ro")?,
        });
    }
    let n = count(r, MAX_GUEST_MOUNTS, "guest mounts")?;
    let mut guest_mounts = Vec::with_capacity(n);
    for _ in 0..n {
        guest_mounts.push(GuestMount {
            fstype: r.str("fstype")?,
            target: r.str("guest mount target")?,
            data: r.str("guest mount data")?,
            flags: r.u64("guest mount flags")?,
        });
    }
    let n = count(r, MAX_RLIMITS, "rlimits")?;
    let mut rlimits = Vec::with_capacity(n);
    for _ in 0..n {
        rlimits.push(Rlimit {
            resource: r.u32("rlimit")?,
            soft: r.u64("rlimit soft")?,
            hard: r.u64("rlimit hard")?,
        });
    }
    let no_new_privileges = flag(r, "nnp")?;
    let caps = if flag(r, "caps")? {
        Some(Capabilities {
            bounding: r.u64("caps")?,
            effective: r.u64("caps")?,
            permitted: r.u64("caps")?,
            inheritable: r.u64("caps")?,
            ambient: r.u64("caps")?,
        })
    } else {
        None
    };
    let join = r.u32("join")?;
    let o = OciSettings {
        root_tag,
        root_readonly,
        additional_gids,
        binds,
        guest_mounts,
        rlimits,
        no_new_privileges,
        caps,
        join,
    };
    o.check()?;
    Ok(Some(Box::new(o)))
}
