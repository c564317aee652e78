//! A batch as the collector receives it: the bytes it came in, kept, with every field but
//! the samples decoded, and the samples read in place.
//!
//! A batch is mostly samples (a host sends about a hundred every interval), and decoding
//! them into `v1::Sample`s costs a `String` for every name, unit, label name and value, a map
//! per sample, and freeing all of it again: a quarter of the collector's CPU, while all it
//! does with a sample is look up its series in the latest-value table, test it against the
//! alert rules, and store it. [`ReceivedBatch`] keeps the received bytes (stored as they
//! are, not encoded again), and [`ReceivedBatch::samples`] hands out borrowed
//! [`SampleRef`]s. Every sample is checked while the batch is decoded (structure, wire
//! types, UTF-8), so a batch that decodes has samples that read.
//!
//! The wire format is `v1::Batch`'s: the server side of the ingest service is generated
//! with this type in place of `Batch` (see `build.rs`), and [`ReceivedBatch::to_batch`]
//! decodes the same bytes into the generated type.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, check_wire_type, decode_key, decode_varint, encode_key, skip_field};
use prost::{DecodeError, Message};

use crate::v1;

/// `Batch.samples`' field number.
const SAMPLES: u32 = 4;

/// A byte range in [`ReceivedBatch::raw`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Span {
    start: u32,
    end: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Label {
    key: Span,
    value: Span,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct SampleAt {
    name: Span,
    unit: Span,
    value: f64,
    time_unix_ms: i64,
    /// This sample's labels in [`ReceivedBatch::labels`], in key order, keys unique.
    labels: (u32, u32),
}

/// A `v1::Batch` as received: see the module doc.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReceivedBatch {
    /// Every field but `samples` (always empty here).
    head: v1::Batch,
    /// An encoding of the whole batch: the received bytes, field by field.
    raw: Vec<u8>,
    samples: Vec<SampleAt>,
    labels: Vec<Label>,
}

/// One sample of a [`ReceivedBatch`], borrowed from its bytes.
#[derive(Debug, Clone, Copy)]
pub struct SampleRef<'a> {
    pub name: &'a str,
    pub unit: &'a str,
    pub value: f64,
    pub time_unix_ms: i64,
    pub labels: Labels<'a>,
}

/// A sample's labels, in key order with unique keys (for a label sent twice, the last one
/// counts, as when decoding into a map).
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    raw: &'a [u8],
    labels: &'a [Label],
}

fn text(raw: &[u8], span: Span) -> &str {
    let bytes = &raw[span.start as usize..span.end as usize];
    // SAFETY: every span in `samples` and `labels` was checked to be UTF-8 by `string` when it
    // was read, and the bytes it covers never change after: `raw` is private and only appended
    // to while decoding, a failed field is cut off together with the spans read from it
    // (`merge_field`, `read_sample`; bytes left by a failed key or head field are covered by no
    // span), and every other change replaces the whole batch.
    // Checking again on every read cost about 8 % of the collector's CPU at 100 samples a batch.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

impl<'a> Labels<'a> {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// (name, value) in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&'a str, &'a str)> + 'a {
        let raw = self.raw;
        self.labels.iter().map(move |l| (text(raw, l.key), text(raw, l.value)))
    }

    /// The value of label `key`.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        let raw = self.raw;
        self.labels.iter().find(|l| text(raw, l.key) == key).map(|l| text(raw, l.value))
    }
}

impl ReceivedBatch {
    /// The batch `batch` encodes to, as if received.
    pub fn from_batch(batch: &v1::Batch) -> ReceivedBatch {
        // What the generated code encodes is a well-formed batch.
        ReceivedBatch::decode(batch.encode_to_vec().as_slice()).expect("an encoded batch decodes")
    }

    /// Every field but the samples.
    pub fn head(&self) -> &v1::Batch {
        &self.head
    }

    /// The batch's bytes (a valid `v1::Batch` encoding), to store.
    pub fn bytes(&self) -> &[u8] {
        &self.raw
    }

    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }

    /// The samples, in the order they came.
    pub fn samples(&self) -> impl ExactSizeIterator<Item = SampleRef<'_>> + '_ {
        let raw = self.raw.as_slice();
        self.samples.iter().map(move |s| SampleRef {
            name: text(raw, s.name),
            unit: text(raw, s.unit),
            value: s.value,
            time_unix_ms: s.time_unix_ms,
            labels: Labels { raw, labels: &self.labels[s.labels.0 as usize..s.labels.1 as usize] },
        })
    }

    /// The whole batch in the generated type (samples decoded).
    pub fn to_batch(&self) -> Result<v1::Batch, DecodeError> {
        v1::Batch::decode(self.raw.as_slice())
    }

    /// Keeps only the check results `keep` says yes to; returns how many went. The bytes are
    /// encoded again when one goes (rare: a result the collector refuses), so what is stored
    /// is what is evaluated.
    pub fn retain_checks(&mut self, keep: impl FnMut(&v1::CheckResult) -> bool) -> Result<usize, DecodeError> {
        let kept: Vec<bool> = self.head.checks.iter().map(keep).collect();
        let removed = kept.iter().filter(|k| !**k).count();
        if removed > 0 {
            let mut kept = kept.into_iter();
            self.modify(|b| b.checks.retain(|_| kept.next().unwrap_or(true)))?;
        }
        Ok(removed)
    }

    /// Changes the batch: decoded whole, changed, encoded again (for rare changes, and tests).
    pub fn modify(&mut self, change: impl FnOnce(&mut v1::Batch)) -> Result<(), DecodeError> {
        let mut batch = self.to_batch()?;
        change(&mut batch);
        *self = ReceivedBatch::from_batch(&batch);
        Ok(())
    }

    /// Reads the sample whose encoding is `raw[start..end]`. An unknown field of a sample or
    /// label that is a group (proto3 has none) is refused, where the generated decoder skips
    /// it: nested groups count against prost's recursion limit, which this reader cannot
    /// follow, and a batch this reader accepts must decode whole with the generated code.
    fn read_sample(&mut self, start: usize, end: usize) -> Result<(), DecodeError> {
        let first_label = self.labels.len();
        let read = self.read_sample_fields(start, end);
        if read.is_err() {
            // The caller cuts the field off `raw`: no span may point into it.
            self.labels.truncate(first_label);
        }
        read
    }

    fn read_sample_fields(&mut self, start: usize, end: usize) -> Result<(), DecodeError> {
        let mut buf = &self.raw[start..end];
        let at = |buf: &[u8]| end - buf.len();
        let first_label = self.labels.len();
        let mut sample =
            SampleAt { name: Span::default(), unit: Span::default(), value: 0.0, time_unix_ms: 0, labels: (0, 0) };
        while !buf.is_empty() {
            let (tag, wire_type) = decode_key(&mut buf)?;
            match tag {
                1 | 4 => {
                    check_wire_type(WireType::LengthDelimited, wire_type)?;
                    let span = string(&mut buf, at)?;
                    if tag == 1 { sample.name = span } else { sample.unit = span }
                }
                2 => {
                    check_wire_type(WireType::LengthDelimited, wire_type)?;
                    let len = length(&mut buf)?;
                    let (mut entry, rest) = buf.split_at(len);
                    buf = rest;
                    let entry_end = at(buf);
                    let at_entry = |e: &[u8]| entry_end - e.len();
                    let mut label = Label { key: Span::default(), value: Span::default() };
                    while !entry.is_empty() {
                        let (tag, wire_type) = decode_key(&mut entry)?;
                        match tag {
                            1 | 2 => {
                                check_wire_type(WireType::LengthDelimited, wire_type)?;
                                let span = string(&mut entry, at_entry)?;
                                if tag == 1 { label.key = span } else { label.value = span }
                            }
                            _ => skip_unknown(wire_type, tag, &mut entry)?,
                        }
                    }
                    self.labels.push(label);
                }
                3 => {
                    check_wire_type(WireType::SixtyFourBit, wire_type)?;
                    if buf.len() < 8 {
                        return Err(underflow());
                    }
                    sample.value = buf.get_f64_le();
                }
                5 => {
                    check_wire_type(WireType::Varint, wire_type)?;
                    sample.time_unix_ms = decode_varint(&mut buf)? as i64;
                }
                _ => skip_unknown(wire_type, tag, &mut buf)?,
            }
        }
        let raw = self.raw.as_slice();
        let labels = &mut self.labels[first_label..];
        let key = |l: &Label| &raw[l.key.start as usize..l.key.end as usize];
        if !labels.windows(2).all(|w| key(&w[0]) < key(&w[1])) {
            // Key order, and the last of a key sent twice (a stable sort keeps their order).
            labels.sort_by(|a, b| key(a).cmp(key(b)));
            let mut kept: Vec<Label> = Vec::with_capacity(labels.len());
            for l in labels.iter() {
                match kept.last_mut() {
                    Some(last) if key(last) == key(l) => *last = *l,
                    _ => kept.push(*l),
                }
            }
            self.labels.truncate(first_label);
            self.labels.extend(kept);
        }
        sample.labels = (first_label as u32, self.labels.len() as u32);
        self.samples.push(sample);
        Ok(())
    }
}

/// Skips an unknown field of a sample or label; refuses a group (see
/// [`ReceivedBatch::read_sample`]).
fn skip_unknown(wire_type: WireType, tag: u32, buf: &mut &[u8]) -> Result<(), DecodeError> {
    if matches!(wire_type, WireType::StartGroup | WireType::EndGroup) {
        return check_wire_type(WireType::LengthDelimited, wire_type);
    }
    skip_field(wire_type, tag, buf, DecodeContext::default())
}

/// Not enough bytes for what a field says it holds.
fn underflow() -> DecodeError {
    // prost's own error for it, from a length prefix longer than what follows.
    let mut short: &[u8] = &[1];
    skip_field(WireType::LengthDelimited, 1, &mut short, DecodeContext::default()).err().unwrap_or_else(|| {
        #[allow(deprecated)]
        DecodeError::new("buffer underflow")
    })
}

/// Reads a length prefix and checks that many bytes follow.
fn length(buf: &mut &[u8]) -> Result<usize, DecodeError> {
    let len = decode_varint(buf)?;
    if len > buf.len() as u64 {
        return Err(underflow());
    }
    Ok(len as usize)
}

/// Reads a length-delimited UTF-8 string; returns where it lies (`at` turns what is left of
/// the buffer into a position in the batch's bytes).
fn string(buf: &mut &[u8], at: impl Fn(&[u8]) -> usize) -> Result<Span, DecodeError> {
    let len = length(buf)?;
    let (s, rest) = buf.split_at(len);
    // Names and labels are almost always ASCII, which is checked a word at a time.
    if !s.is_ascii() && std::str::from_utf8(s).is_err() {
        // prost's own error for it.
        let mut field = Vec::with_capacity(len + 5);
        prost::encoding::encode_varint(len as u64, &mut field);
        field.extend_from_slice(s);
        let err = prost::encoding::string::merge(
            WireType::LengthDelimited,
            &mut String::new(),
            &mut field.as_slice(),
            DecodeContext::default(),
        )
        .err();
        return Err(err.unwrap_or_else(|| {
            #[allow(deprecated)]
            DecodeError::new("invalid string value: data is not UTF-8 encoded")
        }));
    }
    *buf = rest;
    let end = at(buf);
    Ok(Span { start: (end - len) as u32, end: end as u32 })
}

impl Message for ReceivedBatch {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.raw);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let field_start = self.raw.len();
        if field_start as u64 + buf.remaining() as u64 > u64::from(u32::MAX) {
            // Offsets are u32 (messages are limited to a few MiB long before this).
            return Err(underflow());
        }
        if field_start == 0 {
            // The first field: what follows is this batch (inside another message, at most
            // what is left of that one). Copied field by field, its bytes never outgrow what
            // came, so one allocation holds them (and this field's key, already read).
            self.raw.reserve(buf.remaining() + 10);
        }
        encode_key(tag, wire_type, &mut self.raw);
        let value_start = self.raw.len();
        // Copy the field's value as it came.
        match wire_type {
            WireType::Varint => {
                let v = decode_varint(buf)?;
                prost::encoding::encode_varint(v, &mut self.raw);
            }
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let n = if wire_type == WireType::SixtyFourBit { 8 } else { 4 };
                if buf.remaining() < n {
                    self.raw.truncate(field_start);
                    return Err(underflow());
                }
                self.raw.put((&mut *buf).take(n));
            }
            WireType::LengthDelimited => {
                let len = decode_varint(buf)?;
                if len > buf.remaining() as u64 {
                    self.raw.truncate(field_start);
                    return Err(underflow());
                }
                prost::encoding::encode_varint(len, &mut self.raw);
                let body_start = self.raw.len();
                self.raw.put((&mut *buf).take(len as usize));
                if tag == SAMPLES {
                    let end = self.raw.len();
                    self.read_sample(body_start, end).inspect_err(|_| self.raw.truncate(field_start))?;
                    if self.samples.len() == 1 {
                        // Room for as many more as would fit in what is left, if they were like
                        // the first (a host's samples are much alike): growing one at a time
                        // cost a quarter of the decode. Bounded by the bytes left, so a tiny
                        // first sample cannot make a message reserve many times its size.
                        let left = buf.remaining();
                        let more = (left / (end - field_start)).min(left / 32);
                        self.samples.reserve(more);
                        self.labels.reserve((more * self.labels.len()).min(left / 16));
                    }
                    return Ok(());
                }
            }
            WireType::StartGroup | WireType::EndGroup => {
                // Groups do not exist in proto3: as the generated decoder, refused for a field
                // the batch has, skipped (and not kept) for one it does not know.
                self.raw.truncate(field_start);
                if (1..=8).contains(&tag) {
                    return check_wire_type(WireType::LengthDelimited, wire_type);
                }
                return skip_field(wire_type, tag, buf, ctx);
            }
        }
        if tag == SAMPLES {
            // A sample that is not length-delimited: the generated decoder's error.
            self.raw.truncate(field_start);
            return check_wire_type(WireType::LengthDelimited, wire_type);
        }
        let mut value = &self.raw[value_start..];
        self.head.merge_field(tag, wire_type, &mut value, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.raw.len()
    }

    fn clear(&mut self) {
        *self = ReceivedBatch::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> v1::Sample {
        v1::Sample {
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            value,
            unit: "By".into(),
            time_unix_ms: 1_700_000_000_123,
        }
    }

    fn batch() -> v1::Batch {
        v1::Batch {
            seq: 42,
            created_unix_ms: 7,
            checks: vec![v1::CheckResult::new("host/disk:/".into(), v1::CheckStatus::Ok, "ok".into(), 5)],
            samples: vec![
                sample("node_cpu_seconds_total", &[("cpu", "0"), ("mode", "idle")], 12.5),
                sample("up", &[], -1.0),
                sample("temp", &[("sensor", "CPU1")], f64::INFINITY),
                // Not ASCII: read past the fast path (and, corrupted, refused by both).
                sample("temp", &[("sensor", "Température °C")], 21.0),
            ],
            events: vec![v1::Event { source: "services".into(), ..Default::default() }],
            inventory: Vec::new(),
            dropped_samples: 3,
            dropped_other: 4,
        }
    }

    fn owned(s: SampleRef<'_>) -> (String, BTreeMap<String, String>, u64, String, i64) {
        let labels = s.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        (s.name.to_string(), labels, s.value.to_bits(), s.unit.to_string(), s.time_unix_ms)
    }

    #[test]
    fn a_received_batch_reads_as_the_generated_type_and_keeps_its_bytes() {
        let b = batch();
        let bytes = b.encode_to_vec();
        let r = ReceivedBatch::decode(bytes.as_slice()).unwrap();
        assert_eq!(r.bytes(), bytes.as_slice(), "the bytes changed");
        let mut head = b.clone();
        head.samples.clear();
        assert_eq!(r.head(), &head);
        assert_eq!(r.sample_count(), 4);
        let got: Vec<_> = r.samples().map(owned).collect();
        let want: Vec<_> = b
            .samples
            .iter()
            .map(|s| (s.name.clone(), s.labels.clone(), s.value.to_bits(), s.unit.clone(), s.time_unix_ms))
            .collect();
        assert_eq!(got, want);
        assert_eq!(r.to_batch().unwrap(), b);
        assert_eq!(r.samples().next().unwrap().labels.get("mode"), Some("idle"));
        assert_eq!(r.samples().next().unwrap().labels.get("nope"), None);
    }

    #[test]
    fn inside_an_agent_message_and_through_the_generated_server_type() {
        let b = batch();
        let msg = v1::AgentMessage { body: Some(v1::agent_message::Body::Batch(b.clone())) };
        let rx = crate::rx::AgentMessage::decode(msg.encode_to_vec().as_slice()).unwrap();
        let Some(crate::rx::agent_message::Body::Batch(r)) = rx.body else { panic!("not a batch: {rx:?}") };
        assert_eq!(r.to_batch().unwrap(), b);
        // A received message encodes back to what the agent sent.
        assert_eq!(
            crate::rx::AgentMessage { body: Some(crate::rx::agent_message::Body::Batch(r)) }.encode_to_vec(),
            msg.encode_to_vec()
        );
    }

    #[test]
    fn labels_out_of_order_or_sent_twice_read_in_key_order_last_one_counting() {
        // Hand-encoded entries in the order b, a, b (another encoder than prost's map).
        let mut s = Vec::new();
        for (k, v) in [("b", "1"), ("a", "2"), ("b", "3")] {
            let mut entry = Vec::new();
            encode_key(1, WireType::LengthDelimited, &mut entry);
            prost::encoding::encode_varint(k.len() as u64, &mut entry);
            entry.extend_from_slice(k.as_bytes());
            encode_key(2, WireType::LengthDelimited, &mut entry);
            prost::encoding::encode_varint(v.len() as u64, &mut entry);
            entry.extend_from_slice(v.as_bytes());
            encode_key(2, WireType::LengthDelimited, &mut s);
            prost::encoding::encode_varint(entry.len() as u64, &mut s);
            s.extend_from_slice(&entry);
        }
        let mut raw = Vec::new();
        encode_key(SAMPLES, WireType::LengthDelimited, &mut raw);
        prost::encoding::encode_varint(s.len() as u64, &mut raw);
        raw.extend_from_slice(&s);
        let r = ReceivedBatch::decode(raw.as_slice()).unwrap();
        let labels: Vec<_> = r.samples().next().unwrap().labels.iter().collect();
        assert_eq!(labels, [("a", "2"), ("b", "3")]);
        // The generated type agrees.
        let generated = v1::Batch::decode(raw.as_slice()).unwrap();
        assert_eq!(
            generated.samples[0].labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>(),
            labels
        );
    }

    #[test]
    fn malformed_samples_are_refused_like_the_generated_decoder_refuses_them() {
        let good = batch().encode_to_vec();
        // Every truncation, and every single-byte corruption, is either refused by both or
        // accepted by both with the same batch.
        let mut cases: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
        for i in 0..good.len() {
            for x in [0x00, 0x07, 0x80, 0xff, 0x0a, 0x12] {
                let mut c = good.clone();
                c[i] = x;
                cases.push(c);
            }
        }
        for c in cases {
            let ours = ReceivedBatch::decode(c.as_slice());
            let theirs = v1::Batch::decode(c.as_slice());
            match (ours, theirs) {
                (Ok(r), Ok(b)) => assert_eq!(r.to_batch().unwrap().encode_to_vec(), b.encode_to_vec(), "{c:?}"),
                (Err(_), Err(_)) => {}
                (ours, theirs) => panic!("{c:?}: ours {ours:?}, generated {theirs:?}"),
            }
        }
    }

    #[test]
    fn a_group_inside_a_sample_is_refused_so_what_is_accepted_decodes_whole() {
        // A sample with an unknown field 9 of 100 nested groups: prost would skip it (within
        // its recursion limit), and could then fail to decode the stored batch whole.
        let mut s = Vec::new();
        for _ in 0..100 {
            encode_key(9, WireType::StartGroup, &mut s);
        }
        for _ in 0..100 {
            encode_key(9, WireType::EndGroup, &mut s);
        }
        let mut raw = Vec::new();
        encode_key(SAMPLES, WireType::LengthDelimited, &mut raw);
        prost::encoding::encode_varint(s.len() as u64, &mut raw);
        raw.extend_from_slice(&s);
        assert!(ReceivedBatch::decode(raw.as_slice()).is_err());
        // An unknown group outside the samples is skipped, as the generated decoder does.
        let mut outer = Vec::new();
        encode_key(20, WireType::StartGroup, &mut outer);
        encode_key(20, WireType::EndGroup, &mut outer);
        let r = ReceivedBatch::decode(outer.as_slice()).unwrap();
        assert_eq!(r.to_batch().unwrap(), v1::Batch::decode(outer.as_slice()).unwrap());
    }

    #[test]
    fn a_tiny_first_sample_cannot_make_a_batch_reserve_many_times_its_size() {
        // An empty sample (2 bytes), then 1 MiB of an unknown field.
        let mut raw = vec![0x22, 0x00];
        encode_key(99, WireType::LengthDelimited, &mut raw);
        prost::encoding::encode_varint(1 << 20, &mut raw);
        raw.resize(raw.len() + (1 << 20), b'x');
        let r = ReceivedBatch::decode(raw.as_slice()).unwrap();
        assert_eq!(r.sample_count(), 1);
        let reserved = r.samples.capacity() * std::mem::size_of::<SampleAt>()
            + r.labels.capacity() * std::mem::size_of::<Label>()
            + r.raw.capacity();
        assert!(reserved <= 5 * raw.len() / 2, "{reserved} bytes reserved for a message of {}", raw.len());
    }

    #[test]
    fn a_refused_check_is_gone_from_the_bytes_too() {
        let mut b = batch();
        b.checks.push(v1::CheckResult::new("".into(), v1::CheckStatus::Critical, "bad".into(), 5));
        let mut r = ReceivedBatch::from_batch(&b);
        assert_eq!(r.retain_checks(|c| !c.name.is_empty()).unwrap(), 1);
        b.checks.pop();
        assert_eq!(r.to_batch().unwrap(), b);
        assert_eq!(r.sample_count(), 4);
        assert_eq!(r.samples().nth(2).unwrap().labels.get("sensor"), Some("CPU1"));
        assert_eq!(r.retain_checks(|_| true).unwrap(), 0);
    }
}
