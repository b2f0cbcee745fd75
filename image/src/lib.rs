//! Container images for Krypton.
//!
//! Each OCI layer (a tar stream) is converted once, on the host and with
//! no external tool, into a read-only filesystem image ([`erofs`]). The
//! guest agent attaches the layers read-only and stacks them with overlayfs
//! under a writable upper layer.

pub mod erofs;
