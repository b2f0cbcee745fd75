//! Container images for Krypton.
//!
//! Each OCI layer (a tar stream) is converted once, on the host and with
//! no external tool, into a read-only filesystem image ([`erofs`]). The
//! guest agent attaches the layers read-only and stacks them with overlayfs
//! under a writable upper layer.
//!
//! [`store`] keeps blobs, references and converted layers; [`registry`]
//! pulls from OCI distribution registries; [`load`] imports `docker save`
//! archives and OCI layouts.

pub mod digest;
pub mod erofs;
pub mod ext2;
pub mod load;
pub mod manifest;
pub mod reference;
pub mod registry;
pub mod store;
