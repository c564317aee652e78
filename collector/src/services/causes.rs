//! Staff classification of outage causes (`pikett sla classify`), read by the live SLA report.
//!
//! Tree `sla_causes`: fault id (big-endian) → JSON [`CauseRecord`] (the classification of the
//! outages derived from that fault; `none` deletes it). Every change is flushed before it is
//! answered.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use jiff::Timestamp;
use pikett_core::sla::Cause;
use serde::{Deserialize, Serialize};

use crate::store::{Storage, StoreError, Tree};

#[derive(Debug, thiserror::Error)]
pub enum CausesError {
    #[error("sla_causes: {0}")]
    Store(#[from] StoreError),
    #[error("sla_causes record of fault {fault}: {source}")]
    Corrupt { fault: u64, source: serde_json::Error },
}

/// A staff classification of a fault's outages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CauseRecord {
    /// `force-majeure` or `customer`.
    pub cause: String,
    pub who: String,
    pub at: Timestamp,
}

pub fn cause_name(c: Cause) -> &'static str {
    match c {
        Cause::None => "none",
        Cause::ForceMajeure => "force-majeure",
        Cause::Customer => "customer",
    }
}

pub struct SlaCauses {
    storage: Arc<dyn Storage>,
    tree: Arc<dyn Tree>,
}

impl SlaCauses {
    pub fn open(storage: Arc<dyn Storage>) -> Result<SlaCauses, StoreError> {
        let tree = storage.tree("sla_causes")?;
        Ok(SlaCauses { storage, tree })
    }

    /// Every classification, by fault id.
    pub fn all(&self) -> Result<HashMap<u64, Cause>, CausesError> {
        let mut out = HashMap::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            let Ok(id) = <[u8; 8]>::try_from(k.as_slice()) else { continue };
            let fault = u64::from_be_bytes(id);
            let rec: CauseRecord =
                serde_json::from_slice(&v).map_err(|source| CausesError::Corrupt { fault, source })?;
            if let Ok(c) = Cause::from_str(&rec.cause) {
                out.insert(fault, c);
            }
        }
        Ok(out)
    }

    /// Classifies the outages of `fault` (`Cause::None` removes the classification), durably.
    pub async fn set(&self, fault: u64, cause: Cause, who: &str, at: Timestamp) -> Result<(), CausesError> {
        let key = fault.to_be_bytes();
        if cause == Cause::None {
            self.tree.remove(&key)?;
        } else {
            let rec = CauseRecord { cause: cause_name(cause).to_string(), who: who.to_string(), at };
            self.tree.insert(&key, serde_json::to_vec(&rec).expect("a CauseRecord serializes"))?;
        }
        self.storage.flush().await?;
        Ok(())
    }
}
