//! Unit tests of the vsock packet engine.
