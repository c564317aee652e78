//! The enrollment ticket's payload: what both ends read from a ticket.
//!
//! A ticket is `pikett1.<payload>.<mac>` (base64url without padding). The collector
//! makes and checks the MAC (`pikett_collector::services::pki`); a new agent can only read
//! the payload ([`Ticket::peek`]): the host id it is for, and the fingerprint of the CA
//! the collector's certificate must chain to.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

pub const TICKET_PREFIX: &str = "pikett1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("not an enrollment ticket (they start with \"pikett1.\")")]
    Malformed,
    #[error("unknown ticket: it was not issued by this collector's CA")]
    Unknown,
    #[error("the ticket for host {host} expired at {expired}; ask for a new one")]
    Expired { host: String, expired: String },
}

/// What a ticket says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    #[serde(rename = "h")]
    pub host: String,
    #[serde(rename = "c")]
    pub customer: String,
    /// Expiry, Unix milliseconds.
    #[serde(rename = "e")]
    pub expires_ms: i64,
    #[serde(rename = "n")]
    pub nonce: String,
    /// SHA-256 of the CA certificate (DER), hex.
    #[serde(rename = "ca")]
    pub ca_sha256: String,
}

impl Ticket {
    /// Reads a ticket's payload without checking its MAC.
    pub fn peek(ticket: &str) -> Result<Ticket, TicketError> {
        let mut parts = ticket.trim().split('.');
        let (Some(TICKET_PREFIX), Some(payload), Some(_mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TicketError::Malformed);
        };
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TicketError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| TicketError::Malformed)
    }

    /// The signed part of a ticket (`pikett1.<payload>`), without its MAC.
    pub fn encode_payload(&self) -> String {
        let json = serde_json::to_vec(self).expect("a ticket serializes");
        format!("{TICKET_PREFIX}.{}", URL_SAFE_NO_PAD.encode(json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_reads_back_and_garbage_is_malformed() {
        let t = Ticket {
            host: "web-01".into(),
            customer: "acme".into(),
            expires_ms: 5,
            nonce: "n".into(),
            ca_sha256: "ab".into(),
        };
        let ticket = format!("{}.mac", t.encode_payload());
        assert_eq!(Ticket::peek(&ticket).unwrap(), t);
        for bad in ["", "pikett1", "pikett1.x.y", "other.e30.x", "pikett1.e30.x.y"] {
            assert_eq!(Ticket::peek(bad), Err(TicketError::Malformed), "{bad}");
        }
    }
}
