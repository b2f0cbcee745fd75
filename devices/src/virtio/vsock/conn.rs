//! One vsock stream connection as the device sees it: state, credit and the
//! control packets it owes the guest.

use std::sync::Arc;
use std::time::Instant;

use super::host::Reply;
use super::host::io::{CONN_BUF, HostIo, IoState};
use super::packet::{Hdr, TYPE_STREAM};

/// Connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent (or owed), waiting for the guest.
    LocalInit,
    /// Guest-initiated: connecting to the host peer.
    PeerInit,
    /// Data flows.
    Established,
}

/// Control packets a connection owes the guest (bit set).
pub mod pending {
    /// VSOCK_OP_REQUEST.
    pub const REQUEST: u8 = 1;
    /// VSOCK_OP_RESPONSE.
    pub const RESPONSE: u8 = 2;
    /// VSOCK_OP_CREDIT_UPDATE.
    pub const CREDIT: u8 = 4;
    /// VSOCK_OP_SHUTDOWN with the SEND flag (host EOF).
    pub const SHUTDOWN: u8 = 8;
}

/// Below this much guest-visible free space the device sends a credit
/// update as soon as the host has consumed more data.
pub const CREDIT_THRESHOLD: u32 = (CONN_BUF / 2) as u32;

/// A connection between a host port (`local`) and a guest port (`peer`).
#[derive(Debug)]
pub struct Conn {
    /// Current state.
    pub state: State,
    /// The host side's buffers.
    pub io: Arc<HostIo>,
    /// How to tell the host program that the guest accepted (LocalInit).
    pub reply: Option<Reply>,
    /// When a LocalInit connection gives up.
    pub deadline: Option<Instant>,
    /// Guest's receive buffer size.
    pub peer_buf_alloc: u32,
    /// Bytes the guest has consumed.
    pub peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    pub rx_cnt: u32,
    /// Bytes received from the guest.
    pub tx_cnt: u32,
    /// The `fwd_cnt` last told to the guest.
    pub last_fwd_sent: u32,
    /// Owed control packets ([`pending`] bits).
    pub pending: u8,
    /// SHUTDOWN flags received from the guest.
    pub guest_shut: u32,
    /// Whether SHUTDOWN(SEND) was sent to the guest.
    pub shutdown_sent: bool,
    /// Whether the connection sits in the muxer's ready list.
    pub queued: bool,
}

impl Conn {
    /// A connection in `state` over `io`.
    pub fn new(state: State, io: Arc<HostIo>) -> Self {
        Self {
            state,
            io,
            reply: None,
            deadline: None,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            tx_cnt: 0,
            last_fwd_sent: 0,
            pending: 0,
            guest_shut: 0,
            shutdown_sent: false,
            queued: false,
        }
    }

    /// Records the guest's credit from any packet it sent.
    pub fn update_peer_credit(&mut self, hdr: &Hdr) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
    }

    /// Bytes the guest can still receive.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the connection has a packet to send now.
    pub fn wants_rx(&self, st: &IoState) -> bool {
        self.pending != 0 || self.data_ready(st) > 0
    }

    /// Host bytes that may be sent to the guest now.
    pub fn data_ready(&self, st: &IoState) -> usize {
        if self.state != State::Established || self.guest_shut & super::packet::SHUTDOWN_RCV != 0 {
            return 0;
        }
        st.to_guest.len().min(self.peer_credit() as usize)
    }

    /// Updates owed packets after the host side changed.
    pub fn refresh(&mut self, st: &IoState) {
        if self.state != State::Established {
            return;
        }
        let guest_view_free =
            (CONN_BUF as u32).saturating_sub(self.tx_cnt.wrapping_sub(self.last_fwd_sent));
        if st.delivered != self.last_fwd_sent && guest_view_free < CREDIT_THRESHOLD {
            self.pending |= pending::CREDIT;
        }
        let drained = st.to_guest.is_empty() || self.guest_shut & super::packet::SHUTDOWN_RCV != 0;
        if st.host_eof && drained && !self.shutdown_sent {
            self.pending |= pending::SHUTDOWN;
        }
    }

    /// Whether both directions are finished and the connection can be reset.
    pub fn finished(&self, st: &IoState) -> bool {
        let guest_done =
            self.guest_shut & super::packet::SHUTDOWN_SEND != 0 && st.to_host.is_empty();
        let host_done = self.shutdown_sent || self.guest_shut & super::packet::SHUTDOWN_RCV != 0;
        self.state == State::Established && guest_done && host_done
    }

    /// A header from this connection to the guest, with current credit.
    pub fn header(&mut self, key: (u32, u32), guest_cid: u64, op: u16, st: &IoState) -> Hdr {
        self.last_fwd_sent = st.delivered;
        Hdr {
            src_cid: super::HOST_CID,
            dst_cid: guest_cid,
            src_port: key.0,
            dst_port: key.1,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF as u32,
            fwd_cnt: st.delivered,
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(Reply::Notify(tx)) = self.reply.take() {
            let _ = tx.send(false);
        }
        self.io.close();
    }
}
