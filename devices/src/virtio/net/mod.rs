//! virtio-net (device type 1) over a user-mode network backend.

pub mod frame;
