//! What the writer thread does inside one write transaction: the tables of
//! the batch, each operation applied in order ([`apply_batch`]), and the
//! in-memory accounts kept in step with the commits: the non-empty queues
//! ([`Depths`]) and the bytes queued per sender and in all ([`Usage`]).

use std::collections::HashMap;

use redb::{Database, ReadableDatabase, ReadableTable, Table, WriteTransaction};
use tandem_proto::DeviceId;

use super::{META, Op, QUEUE, ROUTES, backend};
use crate::store::{
    LIVE_ALLOWANCE_BYTES, MAX_EXPIRED_PER_SWEEP, MAX_PEERS, QueueDepth, QueueLimits, Queued,
    StoreError,
};

/// Frames and bytes waiting in each queue that holds any, kept by the
/// writer in step with its commits: the expiry sweep and
/// [`crate::store::Store::totals`] read this instead of every queue's metadata row (one
/// per device that ever received a frame), which would stall the writer on
/// a relay with many devices.
#[derive(Debug, Default)]
pub(super) struct Depths(HashMap<DeviceId, QueueDepth>);

impl Depths {
    pub(super) fn load(db: &Database) -> Result<Self, StoreError> {
        let txn = db.begin_read().map_err(backend)?;
        let mut map = HashMap::new();
        for item in txn.open_table(META).map_err(backend)?.iter().map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let m = Meta::decode(v.value());
            if m.frames > 0 {
                map.insert(id16(k.value(), 0), QueueDepth { frames: m.frames, bytes: m.bytes });
            }
        }
        Ok(Self(map))
    }

    /// After a commit: the queues it changed.
    pub(super) fn update(&mut self, changed: Vec<(DeviceId, Meta)>) {
        for (to, m) in changed {
            if m.frames > 0 {
                self.0.insert(to, QueueDepth { frames: m.frames, bytes: m.bytes });
            } else {
                self.0.remove(&to);
            }
        }
    }
}

/// Apply `batch` in order inside `txn`: one answer per op, and the error
/// that stopped it (every answer from there on is [`Answer::Pending`]; the
/// caller aborts the transaction).
/// The queues whose metadata a batch changed, as it left them.
/// Payload bytes queued per sender, per sender and recipient, and in all,
/// kept by the writer in step with its commits (rebuilt from the queue
/// table when the store opens): the sender shares and the total cap are
/// checked against this without reading the queues.
#[derive(Debug, Default)]
pub(super) struct Usage {
    total: u64,
    senders: HashMap<DeviceId, u64>,
    /// `(from, to)`.
    pairs: HashMap<(DeviceId, DeviceId), u64>,
}

impl Usage {
    pub(super) fn load(db: &Database) -> Result<Self, StoreError> {
        let txn = db.begin_read().map_err(backend)?;
        let mut u = Usage::default();
        for item in txn.open_table(QUEUE).map_err(backend)?.iter().map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let len = v.value().len().saturating_sub(24) as u64;
            let (from, to) = (id16(v.value(), 0), id16(k.value(), 0));
            u.total += len;
            *u.senders.entry(from).or_insert(0) += len;
            *u.pairs.entry((from, to)).or_insert(0) += len;
        }
        Ok(u)
    }

    /// After a commit: take the batch's values (`changed` holds every
    /// sender and pair the batch touched, as it left them, and the total).
    pub(super) fn update(&mut self, changed: Usage) {
        self.total = changed.total;
        for (k, v) in changed.senders {
            if v == 0 {
                self.senders.remove(&k);
            } else {
                self.senders.insert(k, v);
            }
        }
        for (k, v) in changed.pairs {
            if v == 0 {
                self.pairs.remove(&k);
            } else {
                self.pairs.insert(k, v);
            }
        }
    }
}

pub(super) type Changed = (Vec<(DeviceId, Meta)>, Usage);

pub(super) fn apply_batch(
    txn: &WriteTransaction,
    batch: &[Op],
    limits: &QueueLimits,
    depths: &Depths,
    usage: &Usage,
) -> (Vec<Answer>, Changed, Option<StoreError>) {
    let mut answers = Vec::with_capacity(batch.len());
    let none = || (Vec::new(), Usage::default());
    let mut tables = match Tables::open(txn, depths, usage) {
        Ok(t) => t,
        Err(e) => {
            answers.resize_with(batch.len(), || Answer::Pending);
            return (answers, none(), Some(e));
        }
    };
    for op in batch {
        match tables.apply(op, limits) {
            Ok(a) => answers.push(a),
            Err(e) => {
                answers.resize_with(batch.len(), || Answer::Pending);
                return (answers, none(), Some(e));
            }
        }
    }
    match tables.write_meta() {
        Ok(changed) => (answers, (changed, tables.touched), None),
        Err(e) => (answers, none(), Some(e)),
    }
}

/// An operation's outcome, held until the commit.
pub(super) enum Answer {
    U64(Result<u64, StoreError>),
    Unit(Result<(), StoreError>),
    Bool(bool),
    Queued(Vec<Queued>),
    Depth(QueueDepth),
    Ids(Vec<DeviceId>),
    Pending,
}

impl Answer {
    /// Whether this refused an enqueue for want of room.
    pub(super) fn is_full(&self) -> bool {
        matches!(
            self,
            Answer::U64(Err(StoreError::QueueFull(_)
                | StoreError::SenderShareFull
                | StoreError::StorageFull))
        )
    }

    pub(super) fn send(self, op: Op) {
        let e = || StoreError::Backend("internal: answer does not match operation".into());
        match (op, self) {
            (
                Op::Enqueue { reply, .. }
                | Op::Ack { reply, .. }
                | Op::Revoke { reply, .. }
                | Op::Expire { reply, .. },
                Answer::U64(r),
            ) => {
                let _ = reply.send(r);
            }
            (Op::Authorize { reply, .. }, Answer::Unit(r)) => drop(reply.send(r)),
            (Op::IsRoute { reply, .. }, Answer::Bool(b)) => drop(reply.send(Ok(b))),
            (Op::Fetch { reply, .. }, Answer::Queued(q)) => drop(reply.send(Ok(q))),
            (Op::Depth { reply, .. } | Op::Totals { reply }, Answer::Depth(d)) => {
                drop(reply.send(Ok(d)))
            }
            (Op::Peers { reply, .. }, Answer::Ids(ids)) => drop(reply.send(Ok(ids))),
            (op, _) => op.fail(e()),
        }
    }
}

pub(super) fn qkey(to: &DeviceId, id: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&to.0);
    k[16..].copy_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn rkey(by: &DeviceId, peer: &DeviceId) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&by.0);
    k[16..].copy_from_slice(&peer.0);
    k
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_be_bytes)
}

pub(super) fn id16(b: &[u8], at: usize) -> DeviceId {
    DeviceId(b.get(at..at + 16).and_then(|s| s.try_into().ok()).unwrap_or([0; 16]))
}

#[derive(Clone, Copy, Default)]
pub(super) struct Meta {
    pub(super) next_id: u64,
    pub(super) frames: u64,
    pub(super) bytes: u64,
}

impl Meta {
    pub(super) fn decode(v: &[u8]) -> Self {
        Meta { next_id: u64_at(v, 0), frames: u64_at(v, 8), bytes: u64_at(v, 16) }
    }

    pub(super) fn encode(&self) -> [u8; 24] {
        let mut v = [0u8; 24];
        v[..8].copy_from_slice(&self.next_id.to_be_bytes());
        v[8..16].copy_from_slice(&self.frames.to_be_bytes());
        v[16..].copy_from_slice(&self.bytes.to_be_bytes());
        v
    }
}

/// The tables of one write transaction, opened once for the whole batch,
/// and the queue metadata the batch read or changed (written back once, at
/// the end, by [`Tables::write_meta`]).
struct Tables<'t, 'd> {
    queue: Table<'t, &'static [u8], &'static [u8]>,
    meta_t: Table<'t, &'static [u8], &'static [u8]>,
    routes: Table<'t, &'static [u8], &'static [u8]>,
    meta: HashMap<DeviceId, (Meta, bool)>,
    /// Every non-empty queue as of the last commit.
    depths: &'d Depths,
    /// Bytes per sender as of the last commit.
    usage: &'d Usage,
    /// The senders and pairs this batch changed, as it left them, and the total.
    touched: Usage,
}

impl<'t, 'd> Tables<'t, 'd> {
    fn open(
        txn: &'t WriteTransaction,
        depths: &'d Depths,
        usage: &'d Usage,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            queue: txn.open_table(QUEUE).map_err(backend)?,
            meta_t: txn.open_table(META).map_err(backend)?,
            routes: txn.open_table(ROUTES).map_err(backend)?,
            meta: HashMap::new(),
            depths,
            usage,
            touched: Usage { total: usage.total, ..Usage::default() },
        })
    }

    /// Bytes `from` has queued in all, with this batch's changes.
    fn sender_bytes(&self, from: &DeviceId) -> u64 {
        let u = |x: &Usage| x.senders.get(from).copied();
        u(&self.touched).or_else(|| u(self.usage)).unwrap_or(0)
    }

    /// Bytes `from` has queued for `to`, with this batch's changes.
    fn pair_bytes(&self, from: &DeviceId, to: &DeviceId) -> u64 {
        let u = |x: &Usage| x.pairs.get(&(*from, *to)).copied();
        u(&self.touched).or_else(|| u(self.usage)).unwrap_or(0)
    }

    /// `len` bytes from `from` for `to` were queued (`added`) or removed.
    fn account(&mut self, from: &DeviceId, to: &DeviceId, len: u64, added: bool) {
        let step = |v: u64| if added { v.saturating_add(len) } else { v.saturating_sub(len) };
        let sender = step(self.sender_bytes(from));
        let pair = step(self.pair_bytes(from, to));
        self.touched.total = step(self.touched.total);
        self.touched.senders.insert(*from, sender);
        self.touched.pairs.insert((*from, *to), pair);
    }

    /// Why a frame of `len` bytes from `from` for `to` (whose queue is
    /// `meta`; `live`: connected) may not be queued, if it may not.
    fn refusal(
        &self,
        limits: &QueueLimits,
        from: &DeviceId,
        to: &DeviceId,
        meta: Meta,
        len: u64,
        live: bool,
    ) -> Option<StoreError> {
        if meta.frames + 1 > limits.max_frames || meta.bytes + len > limits.max_bytes {
            return Some(StoreError::QueueFull(*to));
        }
        if self.pair_bytes(from, to) + len > limits.sender_pair_max()
            || self.sender_bytes(from) + len > limits.sender_total_max()
        {
            return Some(StoreError::SenderShareFull);
        }
        let over_total = self.touched.total + len > limits.total_max_bytes;
        if over_total && !(live && meta.bytes + len <= LIVE_ALLOWANCE_BYTES) {
            return Some(StoreError::StorageFull);
        }
        None
    }

    /// `to`'s queue metadata as this batch left it.
    fn meta(&mut self, to: &DeviceId) -> Result<Meta, StoreError> {
        if let Some((m, _)) = self.meta.get(to) {
            return Ok(*m);
        }
        let m = match self.meta_t.get(&to.0[..]).map_err(backend)? {
            Some(v) => Meta::decode(v.value()),
            // Its first enqueue sets the next id past the id it was given.
            None => Meta::default(),
        };
        self.meta.insert(*to, (m, false));
        Ok(m)
    }

    fn set_meta(&mut self, to: &DeviceId, m: Meta) {
        self.meta.insert(*to, (m, true));
    }

    /// Write back the metadata the batch changed; returns it.
    fn write_meta(&mut self) -> Result<Vec<(DeviceId, Meta)>, StoreError> {
        let mut changed = Vec::new();
        for (to, (m, dirty)) in &self.meta {
            if *dirty {
                self.meta_t.insert(&to.0[..], &m.encode()[..]).map_err(backend)?;
                changed.push((*to, *m));
            }
        }
        Ok(changed)
    }

    /// Frames and bytes waiting in each non-empty queue, with this batch's
    /// changes.
    fn depths(&self) -> Vec<(DeviceId, QueueDepth)> {
        let mut out: Vec<(DeviceId, QueueDepth)> = self
            .depths
            .0
            .iter()
            .filter(|(to, _)| !self.meta.contains_key(to))
            .map(|(to, d)| (*to, *d))
            .collect();
        for (to, (m, _)) in &self.meta {
            if m.frames > 0 {
                out.push((*to, QueueDepth { frames: m.frames, bytes: m.bytes }));
            }
        }
        out
    }

    fn is_route(&self, a: &DeviceId, b: &DeviceId) -> Result<bool, StoreError> {
        let ab = self.routes.get(&rkey(a, b)[..]).map_err(backend)?.is_some();
        let ba = self.routes.get(&rkey(b, a)[..]).map_err(backend)?.is_some();
        Ok(ab && ba)
    }

    /// Remove queued frames for `to` matching `pred` within `ids`; keeps
    /// meta in step. Returns how many were removed.
    fn remove_where(
        &mut self,
        to: &DeviceId,
        ids: std::ops::RangeInclusive<u64>,
        mut pred: impl FnMut(&[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        let lo = qkey(to, *ids.start());
        let hi = qkey(to, *ids.end());
        let mut victims = Vec::new();
        for item in self.queue.range(&lo[..]..=&hi[..]).map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let v = v.value();
            if pred(v) {
                victims.push((
                    u64_at(k.value(), 16),
                    v.len().saturating_sub(24) as u64,
                    id16(v, 0),
                ));
            }
        }
        if victims.is_empty() {
            return Ok(0);
        }
        let mut meta = self.meta(to)?;
        for (id, len, from) in &victims {
            self.queue.remove(&qkey(to, *id)[..]).map_err(backend)?;
            meta.frames = meta.frames.saturating_sub(1);
            meta.bytes = meta.bytes.saturating_sub(*len);
            self.account(from, to, *len, false);
        }
        self.set_meta(to, meta);
        Ok(victims.len() as u64)
    }

    /// Remove up to `limit` frames from the head of `to`'s queue that
    /// expired by `now`. Frames are queued with one TTL, so they expire in id
    /// order; after the wall clock stepped back, a frame behind a younger
    /// one waits for it.
    fn expire_head(&mut self, to: &DeviceId, now: u64, limit: u64) -> Result<u64, StoreError> {
        let lo = qkey(to, 0);
        let hi = qkey(to, u64::MAX);
        let mut last = None;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        for item in self.queue.range(&lo[..]..=&hi[..]).map_err(backend)?.take(limit) {
            let (k, v) = item.map_err(backend)?;
            if u64_at(v.value(), 16) > now {
                break;
            }
            last = Some(u64_at(k.value(), 16));
        }
        match last {
            Some(up_to) => self.remove_where(to, 0..=up_to, |_| true),
            None => Ok(0),
        }
    }

    fn apply(&mut self, op: &Op, limits: &QueueLimits) -> Result<Answer, StoreError> {
        Ok(match op {
            Op::Enqueue { to, from, payload, now, id, live, .. } => {
                // The id was handed out, so it is spent whatever the answer:
                // the next id is saved past it, refused or not.
                let id = *id;
                let mut meta = self.meta(to)?;
                meta.next_id = meta.next_id.max(id + 1);
                self.set_meta(to, meta);
                if !self.is_route(from, to)? {
                    return Ok(Answer::U64(Err(StoreError::NoRoute)));
                }
                let len = payload.len() as u64;
                if let Some(refused) = self.refusal(limits, from, to, meta, len, *live) {
                    return Ok(Answer::U64(Err(refused)));
                }
                let expires = now.saturating_add(limits.ttl_secs);
                let mut v = Vec::with_capacity(24 + payload.len());
                v.extend_from_slice(&from.0);
                v.extend_from_slice(&expires.to_be_bytes());
                v.extend_from_slice(payload);
                self.queue.insert(&qkey(to, id)[..], &v[..]).map_err(backend)?;
                meta.frames += 1;
                meta.bytes += len;
                self.set_meta(to, meta);
                self.account(from, to, len, true);
                Answer::U64(Ok(id))
            }
            Op::Fetch { to, after, limit, .. } => {
                let lo = qkey(to, after.saturating_add(1));
                let hi = qkey(to, u64::MAX);
                let mut out = Vec::new();
                for item in self.queue.range(&lo[..]..=&hi[..]).map_err(backend)?.take(*limit) {
                    let (k, v) = item.map_err(backend)?;
                    let v = v.value();
                    out.push(Queued {
                        id: u64_at(k.value(), 16),
                        from: id16(v, 0),
                        payload: v.get(24..).unwrap_or_default().to_vec(),
                    });
                }
                Answer::Queued(out)
            }
            Op::Ack { to, up_to, .. } => {
                Answer::U64(Ok(self.remove_where(to, 0..=*up_to, |_| true)?))
            }
            Op::Depth { to, .. } => {
                let meta = self.meta(to)?;
                Answer::Depth(QueueDepth { frames: meta.frames, bytes: meta.bytes })
            }
            Op::Authorize { by, peer, .. } => {
                if self.routes.get(&rkey(by, peer)[..]).map_err(backend)?.is_none() {
                    let lo = rkey(by, &DeviceId([0; 16]));
                    let hi = rkey(by, &DeviceId([0xff; 16]));
                    let n = self
                        .routes
                        .range(&lo[..]..=&hi[..])
                        .map_err(backend)?
                        .take(MAX_PEERS)
                        .count();
                    if n >= MAX_PEERS {
                        return Ok(Answer::Unit(Err(StoreError::TooManyPeers)));
                    }
                    self.routes.insert(&rkey(by, peer)[..], &[][..]).map_err(backend)?;
                }
                Answer::Unit(Ok(()))
            }
            Op::Revoke { by, peer, .. } => {
                let existed = self.routes.remove(&rkey(by, peer)[..]).map_err(backend)?.is_some();
                if !existed {
                    // Nothing can be queued between them on `by`'s account.
                    return Ok(Answer::U64(Ok(0)));
                }
                let a = self.remove_where(peer, 0..=u64::MAX, |v| id16(v, 0) == *by)?;
                let b = self.remove_where(by, 0..=u64::MAX, |v| id16(v, 0) == *peer)?;
                Answer::U64(Ok(a + b))
            }
            Op::IsRoute { a, b, .. } => Answer::Bool(self.is_route(a, b)?),
            Op::Peers { a, .. } => {
                let lo = rkey(a, &DeviceId([0; 16]));
                let hi = rkey(a, &DeviceId([0xff; 16]));
                let mut out = Vec::new();
                for item in self.routes.range(&lo[..]..=&hi[..]).map_err(backend)? {
                    let (k, _) = item.map_err(backend)?;
                    let peer = id16(k.value(), 16);
                    if self.routes.get(&rkey(&peer, a)[..]).map_err(backend)?.is_some() {
                        out.push(peer);
                    }
                }
                Answer::Ids(out)
            }
            Op::Expire { now, .. } => {
                // The queues that hold frames, then the expired head of each.
                let mut n = 0;
                for (to, _) in self.depths() {
                    let left = MAX_EXPIRED_PER_SWEEP as u64 - n;
                    if left == 0 {
                        break;
                    }
                    n += self.expire_head(&to, *now, left)?;
                }
                Answer::U64(Ok(n))
            }
            Op::Totals { .. } => {
                let mut d = QueueDepth::default();
                for (_, q) in self.depths() {
                    d.frames += q.frames;
                    d.bytes += q.bytes;
                }
                Answer::Depth(d)
            }
        })
    }
}
