//! Shared helpers for Krypton integration tests.
