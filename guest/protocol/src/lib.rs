//! Host-guest agent wire format.
