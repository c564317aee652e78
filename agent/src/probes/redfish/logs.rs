//! Log cursors: which entries of a Redfish log collection are new since the last poll; pure functions.
//!
//! The functions take entries newest first; logs that list oldest first (Lenovo,
//! Supermicro; see [`oldest_first`]) are read from their end and reversed by the probe.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::readings::text;

/// Where a log was read up to, persisted in the agent's state store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// `Id` of the newest entry seen.
    pub id: String,
    /// Its `Created` time, to resynchronise when ids reset.
    pub created: Option<String>,
}

/// One log entry, reduced to what an Event needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: String,
    pub created: Option<String>,
    pub severity: String,
    pub message_id: String,
    pub message: String,
}

impl Entry {
    pub fn from_json(v: &Value) -> Option<Entry> {
        let id = text(v.get("Id"))?;
        Some(Entry {
            id,
            created: text(v.get("Created")),
            severity: text(v.get("Severity")).unwrap_or_else(|| "OK".into()),
            // Lenovo's platform log has no MessageId: its documented event ids are
            // `Oem.Lenovo.CommonEventID` (FQXSPIO0000I), then the raw `EventId`.
            message_id: text(v.get("MessageId"))
                .or_else(|| text(v.pointer("/Oem/Lenovo/CommonEventID")))
                .or_else(|| text(v.get("EventId")))
                .or_else(|| text(v.get("OemLogEntryCode")))
                .unwrap_or_default(),
            message: text(v.get("Message")).unwrap_or_default(),
        })
    }

    pub fn time(&self) -> Option<Timestamp> {
        self.created.as_deref().and_then(|c| c.parse::<Timestamp>().ok())
    }

    pub fn cursor(&self) -> Cursor {
        Cursor { id: self.id.clone(), created: self.created.clone() }
    }
}

/// How the entries on hand relate to the cursor.
#[derive(Debug, Clone, PartialEq)]
pub enum Scan {
    /// No cursor yet (first poll after install): remember the newest, report nothing.
    Baseline,
    /// New entries, newest first; `reached_cursor` false means older new ones may be on the next page.
    New { entries: Vec<Entry>, reached_cursor: bool },
    /// The newest entry is older than the cursor (log cleared or ids reset):
    /// entries created after the cursor's time, newest first.
    Resync { entries: Vec<Entry> },
}

fn numeric(id: &str) -> Option<u64> {
    id.parse().ok()
}

/// True when `e` is at or before the cursor.
fn is_old(e: &Entry, c: &Cursor) -> bool {
    if e.id == c.id {
        return true;
    }
    if let (Some(a), Some(b)) = (numeric(&e.id), numeric(&c.id)) {
        return a <= b;
    }
    match (e.time(), c.created.as_deref().and_then(|t| t.parse::<Timestamp>().ok())) {
        (Some(a), Some(b)) => a < b,
        _ => false,
    }
}

/// True when a page lists its entries oldest first (Lenovo, Supermicro), judged by the
/// ids of its first and last entry when they are numbers, else by their times.
pub fn oldest_first(entries: &[Entry]) -> bool {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return false;
    };
    if let (Some(a), Some(b)) = (numeric(&first.id), numeric(&last.id))
        && a != b
    {
        return a < b;
    }
    matches!((first.time(), last.time()), (Some(a), Some(b)) if a < b)
}

/// How many entries lie between the cursor and the oldest entry read, when both ids are
/// numbers (Dell, Lenovo and Supermicro number their entries); `None` when that cannot
/// be known.
pub fn skipped_between(cursor: Option<&Cursor>, oldest_read: Option<&Entry>) -> Option<u64> {
    let from: u64 = cursor?.id.parse().ok()?;
    let to: u64 = oldest_read?.id.parse().ok()?;
    to.checked_sub(from)?.checked_sub(1)
}

/// Compares a newest-first page of entries with the cursor.
pub fn scan(entries: &[Entry], cursor: Option<&Cursor>) -> Scan {
    let Some(c) = cursor else {
        return Scan::Baseline;
    };
    let Some(newest) = entries.first() else {
        return Scan::New { entries: vec![], reached_cursor: true };
    };
    let went_back = match (numeric(&newest.id), numeric(&c.id)) {
        (Some(a), Some(b)) => a < b,
        _ => false,
    };
    if went_back {
        let since = c.created.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
        let entries = entries
            .iter()
            .filter(|e| match (e.time(), since) {
                (Some(a), Some(b)) => a > b,
                // Without times, everything in a cleared log is new.
                _ => true,
            })
            .cloned()
            .collect();
        return Scan::Resync { entries };
    }
    let mut new = Vec::new();
    for e in entries {
        if is_old(e, c) {
            return Scan::New { entries: new, reached_cursor: true };
        }
        new.push(e.clone());
    }
    Scan::New { entries: new, reached_cursor: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: u64, created: &str) -> Entry {
        Entry {
            id: id.to_string(),
            created: Some(created.into()),
            severity: "OK".into(),
            message_id: format!("M{id}"),
            message: format!("entry {id}"),
        }
    }

    #[test]
    fn first_poll_is_a_baseline() {
        assert_eq!(scan(&[e(5, "2024-01-01T00:00:00Z")], None), Scan::Baseline);
    }

    #[test]
    fn entries_newer_than_cursor_are_new() {
        let page = [e(7, "2024-01-03T00:00:00Z"), e(6, "2024-01-02T00:00:00Z"), e(5, "2024-01-01T00:00:00Z")];
        let c = Cursor { id: "5".into(), created: Some("2024-01-01T00:00:00Z".into()) };
        match scan(&page, Some(&c)) {
            Scan::New { entries, reached_cursor } => {
                assert!(reached_cursor);
                assert_eq!(entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["7", "6"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn skipped_entries_are_counted_from_numeric_ids() {
        let c = Cursor { id: "100".into(), created: None };
        let named = |id: &str| Entry { id: id.into(), ..e(0, "2024-01-01T00:00:00Z") };
        assert_eq!(skipped_between(Some(&c), Some(&named("151"))), Some(50));
        assert_eq!(skipped_between(Some(&c), Some(&named("101"))), Some(0));
        assert_eq!(skipped_between(Some(&c), Some(&named("abc"))), None);
        assert_eq!(skipped_between(None, Some(&named("151"))), None);
    }

    #[test]
    fn page_without_cursor_asks_for_more() {
        let page = [e(9, "2024-01-03T00:00:00Z"), e(8, "2024-01-02T00:00:00Z")];
        let c = Cursor { id: "5".into(), created: None };
        assert!(matches!(scan(&page, Some(&c)), Scan::New { reached_cursor: false, .. }));
    }

    #[test]
    fn ids_going_backwards_resync_by_time() {
        let page = [e(2, "2024-02-01T00:00:10Z"), e(1, "2024-02-01T00:00:00Z")];
        let c = Cursor { id: "900".into(), created: Some("2024-02-01T00:00:05Z".into()) };
        match scan(&page, Some(&c)) {
            Scan::Resync { entries } => assert_eq!(entries.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_order_of_a_page_is_read_from_ids_or_times() {
        let newest_first = [e(9, "2024-01-03T00:00:00Z"), e(8, "2024-01-02T00:00:00Z")];
        assert!(!oldest_first(&newest_first));
        let oldest = [e(1, "2024-01-01T00:00:00Z"), e(2, "2024-01-02T00:00:00Z")];
        assert!(oldest_first(&oldest));
        let by_time = |id: &str, t: &str| Entry { id: id.into(), ..e(0, t) };
        assert!(oldest_first(&[by_time("a", "2024-01-01T00:00:00Z"), by_time("b", "2024-01-02T00:00:00Z")]));
        assert!(!oldest_first(&[e(1, "2024-01-01T00:00:00Z")]));
        let lenovo: Value = serde_json::json!({"Id":"1","EventId":"0x806f001b1f02ffff","Severity":"OK",
            "Oem":{"Lenovo":{"CommonEventID":"FQXSPIO0000I"}},"Message":"The connector Front USB Detect has been detected as present or connected."});
        assert_eq!(Entry::from_json(&lenovo).unwrap().message_id, "FQXSPIO0000I");
    }

    #[test]
    fn offsets_in_created_times_parse() {
        assert!(e(1, "2024-06-11T00:13:00-05:00").time().is_some());
    }
}
