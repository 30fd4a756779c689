//! Logical mode's pending changes, in memory: the replication slot is the
//! durable queue, this is the bounded window of it that the bridge holds.
//!
//! The consumer adds each change of the stream as it arrives, coalesced
//! per record (the latest image wins; unchanged-TOAST columns keep the
//! value of an earlier image of the record in the window). Delivery takes
//! due records oldest first and gives each back with its outcome.
//!
//! Invariant: [`Window::confirmable`] is the end LSN of a transaction only
//! when every change of it and of every transaction before it is resolved
//! (acknowledged by Go.Data or written to `dead_letter`). Each record
//! remembers the oldest transaction it covers; a transaction older than
//! every unresolved record's oldest is resolved.
//!
//! A TRUNCATE (with `capture.truncate = "delete"`) is a barrier: records
//! after it are not taken until everything before it is resolved and the
//! deletes it causes are delivered, and records are never coalesced across
//! it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::capture::pgoutput::Lsn;
use crate::deliver::{Change, Image, Op, Outcome};

/// How much the window holds before the consumer stops reading the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Records pending or in flight.
    pub records: usize,
    /// Approximate bytes of row images.
    pub bytes: usize,
    /// Transactions received and not yet confirmed.
    pub transactions: usize,
}

/// A taken record's handle: what [`Window::finish`] needs to account for it.
#[derive(Debug, Clone)]
pub struct Taken {
    generation: u64,
    epoch: u64,
    first_seq: u64,
    /// The xid8 of the last transaction coalesced into the record.
    pub xid: u64,
    bytes: usize,
}

#[derive(Debug)]
struct Entry {
    op: Op,
    image: Image,
    first_seq: u64,
    xid: u64,
    captured: f64,
    /// Commit time of the latest change coalesced into it.
    changed: f64,
    attempts: i32,
    due: Option<Instant>,
    bytes: usize,
}

/// What the consumer hands in for one row change.
#[derive(Debug)]
pub struct RowChange {
    pub table: String,
    pub key: Value,
    pub op: Op,
    /// The new row (upserts); columns in `missing` are unchanged TOAST.
    pub row: Map<String, Value>,
    pub missing: Vec<String>,
    pub bytes: usize,
}

#[derive(Debug)]
struct Txn {
    seq: u64,
    xid: u64,
    /// Commit time, epoch seconds.
    at: f64,
    /// Known once the Commit message arrived.
    end: Option<Lsn>,
}

/// A TRUNCATE waiting for its turn (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Barrier {
    pub seq: u64,
    pub table: String,
    /// The deletes were enqueued; the barrier lifts when they are settled.
    pub enqueued: bool,
}

/// What `status` and `/metrics` show of the window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    pub pending: usize,
    pub in_flight: usize,
    pub deferred: usize,
    /// Commit time (epoch seconds) of the oldest unresolved change.
    pub oldest: Option<f64>,
    pub bytes: usize,
}

/// A record's place in the window: (epoch, table, key text).
type Key = (u64, String, String);

#[derive(Debug)]
pub struct Window {
    limits: Limits,
    generation: u64,
    next_seq: u64,
    txns: VecDeque<Txn>,
    records: HashMap<Key, (Value, Entry)>,
    /// Pending records that may go now, in the order they go: epoch, then
    /// oldest transaction first.
    ready: BTreeSet<(u64, u64, Key)>,
    /// Deferred records by due time.
    waiting: BTreeSet<(Instant, Key)>,
    /// Pending records per epoch.
    per_epoch: BTreeMap<u64, usize>,
    /// The oldest transaction of every unresolved record, pending or in
    /// flight (a multiset): what [`Window::confirmable`] must not pass.
    open: BTreeMap<u64, usize>,
    /// first_seq → (count, oldest capture) of taken records.
    in_flight: BTreeMap<u64, (usize, f64)>,
    in_flight_n: usize,
    /// Keys of taken records (table, key text) → key, with a count.
    in_flight_keys: HashMap<(String, String), (Value, usize)>,
    barriers: VecDeque<Barrier>,
    /// Epoch of changes being added: one more per barrier.
    epoch: u64,
    bytes: usize,
}

fn count_up(m: &mut BTreeMap<u64, usize>, k: u64) {
    *m.entry(k).or_default() += 1;
}

fn count_down(m: &mut BTreeMap<u64, usize>, k: u64) {
    if let Some(n) = m.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            m.remove(&k);
        }
    }
}

impl Window {
    pub fn new(limits: Limits) -> Window {
        Window {
            limits,
            generation: 0,
            next_seq: 0,
            txns: VecDeque::new(),
            records: HashMap::new(),
            ready: BTreeSet::new(),
            waiting: BTreeSet::new(),
            per_epoch: BTreeMap::new(),
            open: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            in_flight_n: 0,
            in_flight_keys: HashMap::new(),
            barriers: VecDeque::new(),
            epoch: 0,
            bytes: 0,
        }
    }

    /// Forgets everything (the stream restarts at the slot's confirmed
    /// position and sends it all again). Records in flight are ignored
    /// when they come back.
    pub fn reset(&mut self) {
        *self = Window {
            generation: self.generation + 1,
            ..Window::new(self.limits)
        };
    }

    /// The consumer stops reading the stream while this holds.
    pub fn is_full(&self) -> bool {
        self.records.len() + self.in_flight_n >= self.limits.records
            || self.bytes >= self.limits.bytes
            || self.txns.len() >= self.limits.transactions
    }

    /// A transaction begins; returns its sequence number.
    pub fn begin(&mut self, xid: u64, at: f64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.txns.push_back(Txn {
            seq,
            xid,
            at,
            end: None,
        });
        seq
    }

    /// The transaction `seq` ended at `end`.
    pub fn commit(&mut self, seq: u64, end: Lsn) {
        if let Some(t) = self.txns.iter_mut().rev().find(|t| t.seq == seq) {
            t.end = Some(end);
        }
    }

    /// Files a pending entry in the indexes.
    fn file(&mut self, k: Key, key: Value, e: Entry) {
        match e.due {
            Some(due) => {
                self.waiting.insert((due, k.clone()));
            }
            None => {
                self.ready.insert((k.0, e.first_seq, k.clone()));
            }
        }
        count_up(&mut self.per_epoch, k.0);
        self.records.insert(k, (key, e));
    }

    /// Takes a pending entry out of the indexes.
    fn unfile(&mut self, k: &Key) -> Option<(Value, Entry)> {
        let (key, e) = self.records.remove(k)?;
        match e.due {
            Some(due) => {
                self.waiting.remove(&(due, k.clone()));
            }
            None => {
                self.ready.remove(&(k.0, e.first_seq, k.clone()));
            }
        }
        count_down(&mut self.per_epoch, k.0);
        Some((key, e))
    }

    /// Adds a change of transaction `seq`, coalescing it with the
    /// record's pending entry.
    pub fn add(&mut self, seq: u64, c: RowChange) {
        let txn = self.txns.iter().rev().find(|t| t.seq == seq);
        let (xid, at) = txn.map(|t| (t.xid, t.at)).unwrap_or((0, 0.0));
        let k = (self.epoch, c.table, c.key.to_string());
        let image = match c.op {
            Op::Delete => Image::Read,
            Op::Upsert if c.missing.is_empty() => Image::Row(Value::Object(c.row)),
            Op::Upsert => Image::Partial {
                row: c.row,
                missing: c.missing,
            },
        };
        match self.records.get_mut(&k) {
            Some((_, e)) => {
                // Unchanged TOAST: the value from the earlier image.
                let image = fill(image, &e.image);
                self.bytes = self.bytes - e.bytes + c.bytes;
                e.op = c.op;
                e.image = image;
                e.xid = xid;
                e.changed = e.changed.max(at);
                e.bytes = c.bytes;
            }
            None => {
                self.bytes += c.bytes;
                count_up(&mut self.open, seq);
                self.file(
                    k,
                    c.key,
                    Entry {
                        op: c.op,
                        image,
                        first_seq: seq,
                        xid,
                        captured: at,
                        changed: at,
                        attempts: 0,
                        due: None,
                        bytes: c.bytes,
                    },
                );
            }
        }
    }

    /// A TRUNCATE of `table` in transaction `seq`: a barrier.
    pub fn truncate(&mut self, seq: u64, table: String) {
        self.barriers.push_back(Barrier {
            seq,
            table,
            enqueued: false,
        });
        count_up(&mut self.open, seq);
        self.epoch += 1;
    }

    /// The epoch whose records may go now: before the first barrier.
    fn open_epoch(&self) -> u64 {
        self.epoch - self.barriers.len() as u64
    }

    /// Up to `max` due records, oldest first.
    pub fn take(&mut self, now: Instant, max: usize) -> Vec<Change<Taken>> {
        while let Some((due, _)) = self.waiting.first() {
            if *due > now {
                break;
            }
            let (_, k) = self.waiting.pop_first().expect("first");
            if let Some((_, e)) = self.records.get_mut(&k) {
                e.due = None;
                self.ready.insert((k.0, e.first_seq, k));
            }
        }
        let open = self.open_epoch();
        let mut out = vec![];
        while out.len() < max {
            match self.ready.first() {
                Some((epoch, _, _)) if *epoch == open => {}
                _ => break,
            }
            let (_, _, k) = self.ready.first().cloned().expect("first");
            let (key, e) = self.unfile(&k).expect("filed");
            let slot = self.in_flight.entry(e.first_seq).or_insert((0, f64::MAX));
            slot.0 += 1;
            slot.1 = slot.1.min(e.captured);
            self.in_flight_n += 1;
            self.in_flight_keys
                .entry((k.1.clone(), k.2.clone()))
                .or_insert((key.clone(), 0))
                .1 += 1;
            out.push(Change {
                table: k.1,
                key,
                op: e.op,
                image: e.image,
                attempts: e.attempts,
                captured: e.captured,
                changed: e.changed,
                tag: Taken {
                    generation: self.generation,
                    epoch: k.0,
                    first_seq: e.first_seq,
                    xid: e.xid,
                    bytes: e.bytes,
                },
            });
        }
        out
    }

    /// Takes back delivered records: resolved ones are done; deferred
    /// ones wait their delay; `untouched` ones are due again at once. A
    /// record that changed meanwhile keeps its newer image and the older
    /// transaction (it still covers it).
    pub fn finish(
        &mut self,
        now: Instant,
        outcomes: Vec<(Change<Taken>, Outcome)>,
        untouched: Vec<Change<Taken>>,
    ) {
        let back = outcomes
            .into_iter()
            .map(|(c, o)| match o {
                Outcome::Deferred { delay, .. } => (c, Some(Some(delay))),
                _ => (c, None),
            })
            .chain(untouched.into_iter().map(|c| (c, Some(None))));
        for (c, again) in back {
            if c.tag.generation != self.generation {
                continue;
            }
            if let Some(slot) = self.in_flight.get_mut(&c.tag.first_seq) {
                slot.0 -= 1;
                if slot.0 == 0 {
                    self.in_flight.remove(&c.tag.first_seq);
                }
                self.in_flight_n -= 1;
            }
            let fk = (c.table.clone(), c.key.to_string());
            if let Some(n) = self.in_flight_keys.get_mut(&fk) {
                n.1 -= 1;
                if n.1 == 0 {
                    self.in_flight_keys.remove(&fk);
                }
            }
            let Some(delay) = again else {
                self.bytes -= c.tag.bytes;
                count_down(&mut self.open, c.tag.first_seq);
                continue;
            };
            let attempts = c.attempts + i32::from(delay.is_some());
            let due = delay.map(|d| now + d);
            let k = (c.tag.epoch, c.table, c.key.to_string());
            match self.unfile(&k) {
                Some((key, mut newer)) => {
                    // The newer change replaces this one's content; the two
                    // become one unresolved record covering both.
                    self.bytes -= c.tag.bytes;
                    count_down(&mut self.open, c.tag.first_seq);
                    if c.tag.first_seq < newer.first_seq {
                        count_down(&mut self.open, newer.first_seq);
                        count_up(&mut self.open, c.tag.first_seq);
                        newer.first_seq = c.tag.first_seq;
                    }
                    newer.captured = newer.captured.min(c.captured);
                    newer.changed = newer.changed.max(c.changed);
                    newer.attempts = newer.attempts.max(attempts);
                    newer.due = match (newer.due, due) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                    newer.image = fill(newer.image, &c.image);
                    self.file(k, key, newer);
                }
                None => {
                    self.file(
                        k,
                        c.key,
                        Entry {
                            op: c.op,
                            image: c.image,
                            first_seq: c.tag.first_seq,
                            xid: c.tag.xid,
                            captured: c.captured,
                            changed: c.changed,
                            attempts,
                            due,
                            bytes: c.tag.bytes,
                        },
                    );
                }
            }
        }
    }

    /// The oldest barrier, when everything before it is resolved.
    pub fn barrier_ready(&self) -> Option<&Barrier> {
        let b = self.barriers.front()?;
        let before = self.per_epoch.contains_key(&self.open_epoch()) || self.in_flight_n > 0;
        (!before).then_some(b)
    }

    /// The oldest barrier's deletes are enqueued.
    pub fn barrier_enqueued(&mut self) {
        if let Some(b) = self.barriers.front_mut() {
            b.enqueued = true;
        }
    }

    /// The oldest barrier's deletes are delivered: lift it.
    pub fn lift_barrier(&mut self) {
        if let Some(b) = self.barriers.pop_front() {
            count_down(&mut self.open, b.seq);
        }
    }

    /// When the earliest deferred record comes due.
    pub fn next_due(&self, now: Instant) -> Option<Duration> {
        self.waiting
            .first()
            .map(|(d, _)| d.saturating_duration_since(now))
    }

    /// Pops every transaction that is resolved and ended; returns the end
    /// LSN of the last one popped.
    pub fn confirmable(&mut self) -> Option<Lsn> {
        let oldest_open = self.open.keys().next().copied().unwrap_or(u64::MAX);
        let mut end = None;
        while let Some(t) = self.txns.front() {
            match t.end {
                Some(e) if t.seq < oldest_open => {
                    end = Some(e);
                    self.txns.pop_front();
                }
                _ => break,
            }
        }
        end
    }

    /// Nothing received is unconfirmed.
    pub fn is_idle(&self) -> bool {
        self.txns.is_empty() && self.records.is_empty() && self.in_flight_n == 0
    }

    pub fn stats(&self) -> Stats {
        let oldest = self
            .records
            .values()
            .map(|(_, e)| e.captured)
            .chain(self.in_flight.values().map(|(_, c)| *c))
            .fold(None, |m: Option<f64>, c| Some(m.map_or(c, |m| m.min(c))));
        Stats {
            pending: self.records.len(),
            in_flight: self.in_flight_n,
            deferred: self.waiting.len(),
            oldest,
            bytes: self.bytes,
        }
    }

    /// Keys of `table` with a change not yet resolved, pending or in
    /// flight (the write-back must not overwrite them with older Go.Data
    /// state).
    pub fn pending_keys(&self, table: &str) -> Vec<Value> {
        self.records
            .iter()
            .filter(|(k, _)| k.1 == table)
            .map(|(_, (key, _))| key.clone())
            .chain(
                self.in_flight_keys
                    .iter()
                    .filter(|(k, _)| k.0 == table)
                    .map(|(_, (key, _))| key.clone()),
            )
            .collect()
    }
}

/// `image` with its unchanged-TOAST columns taken from `earlier`, an
/// older image of the same record, where that one has them.
fn fill(image: Image, earlier: &Image) -> Image {
    let Image::Partial { mut row, missing } = image else {
        return image;
    };
    let (prev, prev_missing): (&Map<String, Value>, &[String]) = match earlier {
        Image::Row(Value::Object(prev)) => (prev, &[]),
        Image::Partial { row, missing } => (row, missing),
        Image::Row(_) | Image::Read => return Image::Partial { row, missing },
    };
    let mut still = vec![];
    for col in missing {
        if prev_missing.contains(&col) {
            still.push(col);
        } else {
            let v = prev.get(&col).cloned().unwrap_or(Value::Null);
            row.insert(col, v);
        }
    }
    if still.is_empty() {
        Image::Row(Value::Object(row))
    } else {
        Image::Partial {
            row,
            missing: still,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::Acked;
    use serde_json::json;

    const LIMITS: Limits = Limits {
        records: 3,
        bytes: 1 << 20,
        transactions: 100,
    };

    fn row(key: &str, op: Op, cols: Value, missing: &[&str]) -> RowChange {
        RowChange {
            table: "hmis.cases".into(),
            key: json!({ "case_id": key }),
            op,
            row: cols.as_object().cloned().unwrap_or_default(),
            missing: missing.iter().map(|s| s.to_string()).collect(),
            bytes: 10,
        }
    }

    fn txn(w: &mut Window, xid: u64, end: Lsn, changes: Vec<RowChange>) -> u64 {
        let seq = w.begin(xid, 1.0);
        for c in changes {
            w.add(seq, c);
        }
        w.commit(seq, end);
        seq
    }

    fn acked() -> Outcome {
        Outcome::Acked(Acked::Unchanged)
    }

    fn deferred() -> Outcome {
        Outcome::Deferred {
            delay: Duration::from_secs(5),
            error: "503".into(),
        }
    }

    #[test]
    fn a_transaction_is_confirmed_only_when_its_records_and_all_before_are_resolved() {
        let mut w = Window::new(LIMITS);
        let now = Instant::now();
        txn(
            &mut w,
            10,
            100,
            vec![row("A", Op::Upsert, json!({"n": 1}), &[])],
        );
        txn(
            &mut w,
            11,
            200,
            vec![row("B", Op::Upsert, json!({"n": 1}), &[])],
        );
        assert_eq!(w.confirmable(), None, "nothing resolved");
        let mut taken = w.take(now, 10);
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].key, json!({"case_id": "A"}), "oldest first");
        let b = taken.pop().unwrap();
        let a = taken.pop().unwrap();
        w.finish(now, vec![(b, acked())], vec![]);
        assert_eq!(w.confirmable(), None, "B resolved, A (older) in flight");
        w.finish(now, vec![(a, acked())], vec![]);
        assert_eq!(w.confirmable(), Some(200));
        assert!(w.is_idle());
    }

    #[test]
    fn changes_of_a_record_coalesce_and_keep_the_oldest_transaction() {
        let mut w = Window::new(LIMITS);
        let now = Instant::now();
        txn(
            &mut w,
            10,
            100,
            vec![row("A", Op::Upsert, json!({"n": 1, "big": "x"}), &[])],
        );
        txn(
            &mut w,
            11,
            200,
            vec![row("A", Op::Upsert, json!({"n": 2}), &["big"])],
        );
        let taken = w.take(now, 10);
        assert_eq!(taken.len(), 1);
        assert_eq!(
            taken[0].image,
            Image::Row(json!({"n": 2, "big": "x"})),
            "the unchanged TOAST value comes from the earlier image"
        );
        assert_eq!(taken[0].tag.xid, 11);
        w.finish(
            now,
            taken.into_iter().map(|c| (c, acked())).collect(),
            vec![],
        );
        assert_eq!(w.confirmable(), Some(200));
    }

    #[test]
    fn a_change_during_delivery_waits_and_a_deferred_record_keeps_the_newer_image() {
        let mut w = Window::new(LIMITS);
        let now = Instant::now();
        txn(
            &mut w,
            10,
            100,
            vec![row("A", Op::Upsert, json!({"n": 1}), &[])],
        );
        let taken = w.take(now, 10);
        txn(
            &mut w,
            11,
            200,
            vec![row("A", Op::Upsert, json!({"n": 2}), &[])],
        );
        // The in-flight one comes back deferred: the newer entry absorbs it.
        w.finish(
            now,
            taken.into_iter().map(|c| (c, deferred())).collect(),
            vec![],
        );
        assert!(w.take(now, 10).is_empty(), "not due yet");
        assert!(w.next_due(now).is_some_and(|d| d > Duration::from_secs(4)));
        let later = w.take(now + Duration::from_secs(6), 10);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].image, Image::Row(json!({"n": 2})));
        assert_eq!(later[0].attempts, 1);
        assert_eq!(w.confirmable(), None, "still covers transaction 10");
        w.finish(
            now,
            later.into_iter().map(|c| (c, acked())).collect(),
            vec![],
        );
        assert_eq!(w.confirmable(), Some(200));
    }

    #[test]
    fn pending_keys_cover_records_in_flight() {
        let mut w = Window::new(LIMITS);
        let now = Instant::now();
        txn(&mut w, 10, 100, vec![row("A", Op::Upsert, json!({}), &[])]);
        txn(&mut w, 11, 200, vec![row("B", Op::Upsert, json!({}), &[])]);
        let t = w.take(now, 1);
        let mut keys: Vec<String> = w
            .pending_keys("hmis.cases")
            .iter()
            .map(|k| k.to_string())
            .collect();
        keys.sort();
        assert_eq!(keys, [r#"{"case_id":"A"}"#, r#"{"case_id":"B"}"#]);
        w.finish(now, t.into_iter().map(|c| (c, acked())).collect(), vec![]);
        assert_eq!(w.pending_keys("hmis.cases").len(), 1);
        assert!(w.pending_keys("hmis.contacts").is_empty());
    }

    #[test]
    fn the_window_fills_and_empties() {
        let mut w = Window::new(LIMITS);
        let now = Instant::now();
        for (i, k) in ["A", "B", "C"].iter().enumerate() {
            txn(
                &mut w,
                10 + i as u64,
                100 * (i as u64 + 1),
                vec![row(k, Op::Upsert, json!({}), &[])],
            );
        }
        assert!(w.is_full());
        let t = w.take(now, 2);
        assert!(w.is_full(), "in flight still counts");
        w.finish(now, t.into_iter().map(|c| (c, acked())).collect(), vec![]);
        assert!(!w.is_full());
        assert_eq!(w.confirmable(), Some(200));
        assert_eq!(w.stats().pending, 1);
    }

    #[test]
    fn a_truncate_is_a_barrier() {
        let mut w = Window::new(LIMITS);
        let now = Instant::now();
        txn(
            &mut w,
            10,
            100,
            vec![row("A", Op::Upsert, json!({"n": 1}), &[])],
        );
        let seq = w.begin(11, 1.0);
        w.truncate(seq, "hmis.cases".into());
        w.commit(seq, 200);
        txn(
            &mut w,
            12,
            300,
            vec![row("A", Op::Upsert, json!({"n": 2}), &[])],
        );
        assert!(
            w.barrier_ready().is_none(),
            "A before the barrier is pending"
        );
        let t = w.take(now, 10);
        assert_eq!(t.len(), 1, "only the record before the barrier");
        assert_eq!(
            t[0].image,
            Image::Row(json!({"n": 1})),
            "not coalesced across"
        );
        w.finish(now, t.into_iter().map(|c| (c, acked())).collect(), vec![]);
        assert_eq!(w.confirmable(), Some(100));
        assert_eq!(
            w.barrier_ready().map(|b| b.table.as_str()),
            Some("hmis.cases")
        );
        w.barrier_enqueued();
        assert!(w.take(now, 10).is_empty(), "held until the barrier lifts");
        w.lift_barrier();
        assert_eq!(w.confirmable(), Some(200));
        let t = w.take(now, 10);
        assert_eq!(t.len(), 1);
        w.finish(now, t.into_iter().map(|c| (c, acked())).collect(), vec![]);
        assert_eq!(w.confirmable(), Some(300));
    }

    #[test]
    fn a_reset_ignores_what_comes_back_from_before() {
        let mut w = Window::new(LIMITS);
        let now = Instant::now();
        txn(&mut w, 10, 100, vec![row("A", Op::Upsert, json!({}), &[])]);
        let t = w.take(now, 10);
        w.reset();
        txn(&mut w, 10, 100, vec![row("A", Op::Upsert, json!({}), &[])]);
        w.finish(now, t.into_iter().map(|c| (c, acked())).collect(), vec![]);
        assert_eq!(w.stats().pending, 1, "the replayed change is still pending");
        assert_eq!(w.confirmable(), None);
    }
}
