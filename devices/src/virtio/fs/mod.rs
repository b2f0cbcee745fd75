//! virtio-fs: host directories served to the guest's virtiofs driver with
//! FUSE over virtqueues, in the VMM process (no external daemon).
//!
//! [`request`] decodes a FUSE request, [`server`] calls the [`Filesystem`]
//! backend and encodes the reply.

pub mod abi;
pub mod filesystem;
#[cfg(target_os = "linux")]
pub mod passthrough;
pub mod request;
pub mod server;

pub use filesystem::Filesystem;
pub use server::Server;
