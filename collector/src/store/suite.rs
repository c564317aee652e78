//! The contract of [`Storage`] and [`Tree`] as one test suite, run on every engine.
//!
//! An engine's tests call [`storage_suite!`] with an async constructor of an [`Engine`]: a
//! handle that opens the same store (directory, database) as often as a test asks, so
//! durability is tested by reopening. Each suite function is a plain async function, so a
//! failure names the contract clause in the test's name.
//!
//! What engines may differ in is stated, not hidden: [`Engine::UNFLUSHED_ON_DROP`].

use std::sync::Arc;

use super::{Storage, Tree, WriteBatch};

/// What a store dropped without a flush (a clean drop, not a crash) leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnflushedOnDrop {
    /// The writes are on disk at the next open (sled flushes when its last handle drops;
    /// a crash gives no such promise).
    Kept,
    /// The writes are gone: they lived in memory only (PostgreSQL's write-behind journal).
    Lost,
}

/// An engine under test: opens one and the same store again and again.
pub(crate) trait Engine {
    const UNFLUSHED_ON_DROP: UnflushedOnDrop;
    /// Opens the store. A test drops every handle of an earlier open (storage and trees)
    /// before opening again, as a restarted process would.
    async fn open(&self) -> Arc<dyn Storage>;
}

/// Generates one `#[tokio::test]` per contract clause in a module `storage_suite`, each on a
/// fresh store from `$make().await` (an [`Engine`]).
macro_rules! storage_suite {
    ($make:ident) => {
        mod storage_suite {
            use $crate::store::suite;

            macro_rules! clause {
                ($name:ident) => {
                    #[tokio::test]
                    async fn $name() {
                        let engine = super::$make().await;
                        suite::$name(&engine).await;
                    }
                };
            }

            clause!(writes_are_visible_at_once);
            clause!(apply_is_ordered);
            clause!(apply_is_atomic_to_readers);
            clause!(scan_prefix_is_in_key_order);
            clause!(writes_while_scanning_do_not_block);
            clause!(count_and_iter_see_every_entry);
            clause!(flushed_writes_survive_reopening);
            clause!(unflushed_writes_on_a_dropped_store);
            clause!(trees_are_independent);
        }
    };
}
pub(crate) use storage_suite;

fn entries(tree: &dyn Tree, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    tree.scan_prefix(prefix).map(|e| e.expect("scan")).collect()
}

fn keys(tree: &dyn Tree, prefix: &[u8]) -> Vec<Vec<u8>> {
    entries(tree, prefix).into_iter().map(|(k, _)| k).collect()
}

pub(crate) async fn writes_are_visible_at_once(engine: &impl Engine) {
    let s = engine.open().await;
    let t = s.tree("t").unwrap();
    assert_eq!(t.get(b"k").unwrap(), None);
    assert!(!t.contains_key(b"k").unwrap());
    t.insert(b"k", b"one".to_vec()).unwrap();
    assert_eq!(t.get(b"k").unwrap(), Some(b"one".to_vec()));
    assert!(t.contains_key(b"k").unwrap());
    t.insert(b"k", b"two".to_vec()).unwrap();
    assert_eq!(t.get(b"k").unwrap(), Some(b"two".to_vec()));
    assert_eq!(t.remove(b"k").unwrap(), Some(b"two".to_vec()), "remove returns the old value");
    assert_eq!(t.remove(b"k").unwrap(), None, "removing a missing key returns nothing");
    assert_eq!(t.get(b"k").unwrap(), None);
    // An empty value is a value, not an absence.
    t.insert(b"e", Vec::new()).unwrap();
    assert_eq!(t.get(b"e").unwrap(), Some(Vec::new()));
}

pub(crate) async fn apply_is_ordered(engine: &impl Engine) {
    let s = engine.open().await;
    let t = s.tree("t").unwrap();
    t.insert(b"old", b"x".to_vec()).unwrap();
    let mut b = WriteBatch::default();
    b.insert(b"a".to_vec(), b"1".to_vec());
    b.remove(b"a".to_vec());
    b.remove(b"b".to_vec());
    b.insert(b"b".to_vec(), b"2".to_vec());
    b.insert(b"c".to_vec(), b"3".to_vec());
    b.insert(b"c".to_vec(), b"4".to_vec());
    b.remove(b"old".to_vec());
    t.apply(b).unwrap();
    assert_eq!(entries(&*t, b""), vec![(b"b".to_vec(), b"2".to_vec()), (b"c".to_vec(), b"4".to_vec())]);
    t.apply(WriteBatch::default()).unwrap();
    assert_eq!(t.count().unwrap(), 2, "an empty batch changes nothing");
}

/// A reader never sees half a batch: a writer sets `x/1` and `x/2` to the same growing
/// number in one batch each time; a reader that reads `x/1` first must find `x/2` at least
/// as new (a non-atomic write of `x/1` then `x/2` would show `x/2` older).
pub(crate) async fn apply_is_atomic_to_readers(engine: &impl Engine) {
    let s = engine.open().await;
    let t = s.tree("t").unwrap();
    let writer = {
        let t = t.clone();
        std::thread::spawn(move || {
            for n in 0u32..3000 {
                let mut b = WriteBatch::default();
                b.insert(b"x/1".to_vec(), n.to_be_bytes().to_vec());
                b.insert(b"x/2".to_vec(), n.to_be_bytes().to_vec());
                t.apply(b).unwrap();
            }
        })
    };
    let read = |k: &[u8]| t.get(k).unwrap().map(|v| u32::from_be_bytes(v.try_into().unwrap()));
    let mut seen = 0;
    while !writer.is_finished() || seen < 3 {
        let first = read(b"x/1");
        let second = read(b"x/2");
        if let Some(first) = first {
            let second = second.expect("x/2 is written with x/1");
            assert!(second >= first, "read x/1 = {first}, then x/2 = {second}: half a batch");
        }
        seen += 1;
    }
    writer.join().unwrap();
    assert_eq!(read(b"x/2"), Some(2999));
}

/// Keys at the edges of byte order: the empty prefix, 0x00 and 0xFF bytes (a prefix scan
/// computing "the next prefix" by adding one to the last byte gets these wrong).
pub(crate) async fn scan_prefix_is_in_key_order(engine: &impl Engine) {
    let s = engine.open().await;
    let t = s.tree("t").unwrap();
    let all: Vec<&[u8]> =
        vec![b"\x00", b"a", b"a\x00", b"ab", b"a\xff", b"a\xff\x00", b"a\xff\xff", b"b", b"\xff", b"\xff\xff\x01"];
    for k in all.iter().rev() {
        t.insert(k, k.to_vec()).unwrap();
    }
    let owned = |ks: &[&[u8]]| ks.iter().map(|k| k.to_vec()).collect::<Vec<_>>();
    assert_eq!(keys(&*t, b""), owned(&all), "the empty prefix is everything, in order");
    assert_eq!(keys(&*t, b"a"), owned(&all[1..7]));
    assert_eq!(keys(&*t, b"a\xff"), owned(&[b"a\xff", b"a\xff\x00", b"a\xff\xff"]));
    assert_eq!(keys(&*t, b"a\xff\xff"), owned(&[b"a\xff\xff"]));
    assert_eq!(keys(&*t, b"\xff"), owned(&[b"\xff", b"\xff\xff\x01"]));
    assert_eq!(keys(&*t, b"\xff\xff"), owned(&[b"\xff\xff\x01"]));
    assert_eq!(keys(&*t, b"\x00"), owned(&[b"\x00"]));
    assert!(keys(&*t, b"c").is_empty());
    assert!(keys(&*t, b"a\x01").is_empty());
    // Values come with their keys.
    assert!(entries(&*t, b"").iter().all(|(k, v)| k == v));
}

/// Services remove what they scan (retention): writing while an iterator is alive must
/// neither deadlock nor break the scan.
pub(crate) async fn writes_while_scanning_do_not_block(engine: &impl Engine) {
    let s = engine.open().await;
    let t = s.tree("t").unwrap();
    for i in 0u32..1000 {
        t.insert(&i.to_be_bytes(), b"v".to_vec()).unwrap();
    }
    let mut removed = 0;
    for item in t.scan_prefix(b"") {
        let (k, _) = item.unwrap();
        if k.as_slice() == b"\xffafter" {
            break; // written during the scan: an engine may or may not show it
        }
        assert_eq!(t.remove(&k).unwrap(), Some(b"v".to_vec()));
        t.insert(b"\xffafter", b"w".to_vec()).unwrap();
        removed += 1;
    }
    assert_eq!(removed, 1000, "the scan saw every entry that was there before it");
    assert_eq!(t.count().unwrap(), 1);
}

pub(crate) async fn count_and_iter_see_every_entry(engine: &impl Engine) {
    let s = engine.open().await;
    let t = s.tree("t").unwrap();
    assert_eq!(t.count().unwrap(), 0);
    assert_eq!(t.iter().count(), 0);
    // More than an engine is likely to read at a time, in a scrambled order.
    let n = 2500u32;
    for i in 0..n {
        let k = (i * 7919 % n).to_be_bytes();
        t.insert(&k, k.to_vec()).unwrap();
    }
    assert_eq!(t.count().unwrap(), n as usize);
    let got: Vec<u32> = t.iter().map(|e| u32::from_be_bytes(e.unwrap().0.try_into().unwrap())).collect();
    assert_eq!(got, (0..n).collect::<Vec<_>>());
}

pub(crate) async fn flushed_writes_survive_reopening(engine: &impl Engine) {
    {
        let s = engine.open().await;
        let t = s.tree("t").unwrap();
        let u = s.tree("u").unwrap();
        t.insert(b"a/1", b"one".to_vec()).unwrap();
        u.insert(b"u", b"in u".to_vec()).unwrap();
        let mut b = WriteBatch::default();
        b.insert(b"a/2".to_vec(), b"two".to_vec());
        b.insert(b"b/1".to_vec(), b"x".to_vec());
        b.remove(b"a/1".to_vec());
        t.apply(b).unwrap();
        s.flush().await.unwrap();
        // A flush with nothing new, then the blocking flush from a blocking thread.
        s.flush().await.unwrap();
        t.insert(b"c", vec![0xff; 10_000]).unwrap();
        assert_eq!(t.remove(b"b/1").unwrap(), Some(b"x".to_vec()));
        let s2 = s.clone();
        tokio::task::spawn_blocking(move || s2.flush_blocking()).await.unwrap().unwrap();
    }
    let s = engine.open().await;
    let t = s.tree("t").unwrap();
    assert_eq!(t.get(b"a/1").unwrap(), None);
    assert_eq!(entries(&*t, b"a/"), vec![(b"a/2".to_vec(), b"two".to_vec())]);
    assert_eq!(t.get(b"b/1").unwrap(), None, "a removal is durable too");
    assert_eq!(t.get(b"c").unwrap(), Some(vec![0xff; 10_000]));
    assert_eq!(t.count().unwrap(), 2);
    assert_eq!(s.tree("u").unwrap().get(b"u").unwrap(), Some(b"in u".to_vec()));
    assert!(s.size_on_disk().unwrap() > 0);
}

pub(crate) async fn unflushed_writes_on_a_dropped_store<E: Engine>(engine: &E) {
    {
        let s = engine.open().await;
        let t = s.tree("t").unwrap();
        t.insert(b"flushed", b"1".to_vec()).unwrap();
        t.insert(b"overwritten", b"old".to_vec()).unwrap();
        s.flush().await.unwrap();
        t.insert(b"unflushed", b"2".to_vec()).unwrap();
        t.insert(b"overwritten", b"new".to_vec()).unwrap();
        t.remove(b"flushed").unwrap();
    }
    let s = engine.open().await;
    let t = s.tree("t").unwrap();
    let got = entries(&*t, b"");
    let kv = |k: &[u8], v: &[u8]| (k.to_vec(), v.to_vec());
    match E::UNFLUSHED_ON_DROP {
        UnflushedOnDrop::Kept => assert_eq!(got, vec![kv(b"overwritten", b"new"), kv(b"unflushed", b"2")]),
        UnflushedOnDrop::Lost => assert_eq!(got, vec![kv(b"flushed", b"1"), kv(b"overwritten", b"old")]),
    }
}

pub(crate) async fn trees_are_independent(engine: &impl Engine) {
    let s = engine.open().await;
    let names = ["a", "b", "a/b", "A", "with space"];
    for (i, name) in names.iter().enumerate() {
        let t = s.tree(name).unwrap();
        t.insert(b"same key", vec![i as u8]).unwrap();
        t.insert(name.as_bytes(), b"own".to_vec()).unwrap();
    }
    let a = s.tree("a").unwrap();
    assert_eq!(a.remove(b"same key").unwrap(), Some(vec![0]));
    assert_eq!(keys(&*a, b""), vec![b"a".to_vec()], "tree a sees only its own keys");
    // A second handle on a tree is the same tree.
    s.tree("a").unwrap().insert(b"via second handle", Vec::new()).unwrap();
    assert!(a.contains_key(b"via second handle").unwrap());
    s.flush().await.unwrap();
    drop(a);
    drop(s);
    let s = engine.open().await;
    for (i, name) in names.iter().enumerate().skip(1) {
        let t = s.tree(name).unwrap();
        assert_eq!(t.get(b"same key").unwrap(), Some(vec![i as u8]), "tree {name}");
        assert_eq!(t.count().unwrap(), 2, "tree {name}");
    }
    assert_eq!(s.tree("a").unwrap().count().unwrap(), 2);
    assert_eq!(s.tree("never written").unwrap().count().unwrap(), 0);
}
