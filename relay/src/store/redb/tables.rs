//! What the writer thread does inside one write transaction: the tables of
//! the batch, each operation applied in order ([`apply_batch`]) against the
//! in-memory accounts ([`super::accounts`]), and what the batch changed in
//! them, taken over by the writer once the commit succeeded ([`Changes`]).
//! Authorisations and their expiry are in [`super::routes`].

use std::collections::HashMap;

use redb::{ReadableTable, Table, WriteTransaction};
use tandem_proto::DeviceId;

use super::accounts::{Depths, Pending, Usage};
use super::layout::{
    FrameRow, META, Meta, NEXT_ID, PENDING, PUSH, QUEUE, ROUTES, SETTINGS, frame_value, qkey,
    u64_at,
};
use super::writer::failpoint;
use super::{Op, backend};
use crate::store::{
    AddrKey, Expired, LIVE_ALLOWANCE_BYTES, MAX_EXPIRED_PER_SWEEP, NewFrame, QueueDepth,
    QueueLimits, Queued, RouteLimits, StoreError, Totals, charged,
};

/// The writer's in-memory accounts as of the last commit.
pub(super) struct Accounts<'a> {
    pub(super) depths: &'a Depths,
    pub(super) usage: &'a Usage,
    pub(super) pending: &'a Pending,
}

/// What a batch changed in the accounts, as it left them.
#[derive(Default)]
pub(super) struct Changes {
    /// The queues whose metadata changed.
    pub(super) queues: Vec<(DeviceId, Meta)>,
    /// Every address and pair the batch touched, and the total.
    pub(super) usage: Usage,
    /// One-sided authorisations added (or, negative, removed) per address.
    pub(super) pending: HashMap<AddrKey, i64>,
}

/// Everything [`apply_batch`] reads besides the batch.
pub(super) struct Context<'a> {
    pub(super) limits: &'a QueueLimits,
    pub(super) routes: &'a RouteLimits,
    pub(super) accounts: Accounts<'a>,
}

/// Apply `batch` in order inside `txn`: one answer per op, what it changed,
/// and the error that stopped it (every answer from there on is
/// [`Answer::Pending`]; the caller aborts the transaction).
pub(super) fn apply_batch(
    txn: &WriteTransaction,
    batch: &[Op],
    cx: &Context<'_>,
) -> (Vec<Answer>, Changes, Option<StoreError>) {
    let mut answers = Vec::with_capacity(batch.len());
    let mut tables = match Tables::open(txn, cx) {
        Ok(t) => t,
        Err(e) => {
            answers.resize_with(batch.len(), || Answer::Pending);
            return (answers, Changes::default(), Some(e));
        }
    };
    for op in batch {
        match tables.apply(op) {
            Ok(a) => answers.push(a),
            Err(e) => {
                answers.resize_with(batch.len(), || Answer::Pending);
                return (answers, Changes::default(), Some(e));
            }
        }
    }
    match tables.write_meta() {
        Ok(queues) => {
            let Tables { touched, pending_delta, .. } = tables;
            (answers, Changes { queues, usage: touched, pending: pending_delta }, None)
        }
        Err(e) => (answers, Changes::default(), Some(e)),
    }
}

/// An operation's outcome, held until the commit.
pub(super) enum Answer {
    U64(Result<u64, StoreError>),
    Unit(Result<(), StoreError>),
    Bool(bool),
    Queued(Vec<Queued>),
    Depth(QueueDepth),
    Expired(Expired),
    Totals(Totals),
    Ids(Vec<DeviceId>),
    /// One answer per frame of an [`Op::EnqueueMany`].
    Many(Vec<Result<u64, StoreError>>),
    /// A push subscription read.
    Sub(Option<Vec<u8>>),
    Pending,
}

impl Answer {
    /// Whether this refused an enqueue for want of room.
    pub(super) fn is_full(&self) -> bool {
        matches!(self, Answer::U64(r) if Self::full_error(r))
    }

    /// Whether this refused any frame for want of room.
    pub(super) fn is_full_any(&self) -> bool {
        match self {
            Answer::Many(r) => r.iter().any(Self::full_error),
            a => a.is_full(),
        }
    }

    /// Whether `r` is a refusal for want of room.
    pub(super) fn full_error(r: &Result<u64, StoreError>) -> bool {
        matches!(
            r,
            Err(StoreError::QueueFull(_)
                | StoreError::SenderShareFull
                | StoreError::AddressShareFull
                | StoreError::StorageFull
                | StoreError::OverflowFull)
        )
    }

    pub(super) fn send(self, op: Op) {
        let e = || StoreError::Backend("internal: answer does not match operation".into());
        match (op, self) {
            (
                Op::Enqueue { reply, .. } | Op::Ack { reply, .. } | Op::Revoke { reply, .. },
                Answer::U64(r),
            ) => {
                let _ = reply.send(r);
            }
            (Op::EnqueueMany { reply, .. }, Answer::Many(r)) => drop(reply.send(Ok(r))),
            (Op::SaveCounter { .. }, _) => {}
            (Op::Authorize { reply, .. }, Answer::Unit(r)) => drop(reply.send(r)),
            (Op::IsRoute { reply, .. }, Answer::Bool(b)) => drop(reply.send(Ok(b))),
            (Op::Fetch { reply, .. }, Answer::Queued(q)) => drop(reply.send(Ok(q))),
            (Op::Depth { reply, .. }, Answer::Depth(d)) => drop(reply.send(Ok(d))),
            (Op::Expire { reply, .. }, Answer::Expired(x)) => drop(reply.send(Ok(x))),
            (Op::Totals { reply }, Answer::Totals(t)) => drop(reply.send(Ok(t))),
            (Op::Peers { reply, .. }, Answer::Ids(ids)) => drop(reply.send(Ok(ids))),
            (Op::SetPush { reply, .. }, Answer::Bool(b)) => drop(reply.send(Ok(b))),
            (Op::GetPush { reply, .. }, Answer::Sub(s)) => drop(reply.send(Ok(s))),
            (op, _) => op.fail(e()),
        }
    }
}

/// The tables of one write transaction, opened once for the whole batch,
/// the queue metadata the batch read or changed (written back once, at the
/// end, by [`Tables::write_meta`]), and the batch's changes to the accounts.
pub(super) struct Tables<'t, 'c> {
    pub(super) queue: Table<'t, &'static [u8], &'static [u8]>,
    pub(super) meta_t: Table<'t, &'static [u8], &'static [u8]>,
    pub(super) routes: Table<'t, &'static [u8], &'static [u8]>,
    pub(super) pending_t: Table<'t, &'static [u8], &'static [u8]>,
    settings: Table<'t, &'static [u8], &'static [u8]>,
    push: Table<'t, &'static [u8], &'static [u8]>,
    meta: HashMap<DeviceId, (Meta, bool)>,
    pub(super) cx: &'c Context<'c>,
    /// The addresses and pairs this batch changed, as it left them, and the total.
    touched: Usage,
    /// One-sided authorisations this batch added or removed, per address.
    pub(super) pending_delta: HashMap<AddrKey, i64>,
    /// The highest delivery id this batch's enqueues spent (0: none): the
    /// store-wide counter ([`NEXT_ID`]) is saved past it.
    max_id: u64,
}

impl<'t, 'c> Tables<'t, 'c> {
    fn open(txn: &'t WriteTransaction, cx: &'c Context<'c>) -> Result<Self, StoreError> {
        Ok(Self {
            queue: txn.open_table(QUEUE).map_err(backend)?,
            meta_t: txn.open_table(META).map_err(backend)?,
            routes: txn.open_table(ROUTES).map_err(backend)?,
            pending_t: txn.open_table(PENDING).map_err(backend)?,
            settings: txn.open_table(SETTINGS).map_err(backend)?,
            push: txn.open_table(PUSH).map_err(backend)?,
            meta: HashMap::new(),
            cx,
            touched: Usage { total: cx.accounts.usage.total, ..Usage::default() },
            pending_delta: HashMap::new(),
            max_id: 0,
        })
    }

    /// Bytes charged to `addr` in all, with this batch's changes.
    fn addr_bytes(&self, addr: &AddrKey) -> u64 {
        let u = |x: &Usage| x.addrs.get(addr).copied();
        u(&self.touched).or_else(|| u(self.cx.accounts.usage)).unwrap_or(0)
    }

    /// Bytes charged to `from` for `to`, with this batch's changes.
    fn pair_bytes(&self, from: &DeviceId, to: &DeviceId) -> u64 {
        let u = |x: &Usage| x.pairs.get(&(*from, *to)).copied();
        u(&self.touched).or_else(|| u(self.cx.accounts.usage)).unwrap_or(0)
    }

    /// A frame charged `cost` from `from` at `addr` for `to` was queued
    /// (`added`) or removed.
    fn account(&mut self, from: &DeviceId, to: &DeviceId, addr: &AddrKey, cost: u64, added: bool) {
        let step = |v: u64| if added { v.saturating_add(cost) } else { v.saturating_sub(cost) };
        let pair = step(self.pair_bytes(from, to));
        self.touched.total = step(self.touched.total);
        self.touched.pairs.insert((*from, *to), pair);
        if addr.is_known() {
            let a = step(self.addr_bytes(addr));
            self.touched.addrs.insert(*addr, a);
        }
    }

    /// Why the frame `f`, charged `cost`, may not be queued (its
    /// recipient's queue is `meta`; `live`: the recipient is connected),
    /// if it may not.
    fn refusal(&self, f: &NewFrame, meta: Meta, cost: u64, live: bool) -> Option<StoreError> {
        let limits = self.cx.limits;
        let queued = QueueDepth { frames: meta.frames, bytes: meta.bytes }.charged();
        if meta.frames + 1 > limits.max_frames || queued + cost > limits.max_bytes {
            return Some(StoreError::QueueFull(f.to));
        }
        if self.pair_bytes(&f.from, &f.to) + cost > limits.sender_pair_max() {
            return Some(StoreError::SenderShareFull);
        }
        let known = f.addr.is_known();
        let addr_bytes = if known { self.addr_bytes(&f.addr) } else { 0 };
        if known && addr_bytes + cost > limits.sender_total_max() {
            return Some(StoreError::AddressShareFull);
        }
        let total = self.touched.total + cost;
        if total <= limits.total_max_bytes {
            return None;
        }
        // Past the total: only for a connected recipient with a small
        // queue, within the overflow and the address's share of it.
        if !(live && queued + cost <= LIVE_ALLOWANCE_BYTES) {
            return Some(StoreError::StorageFull);
        }
        let overflow_end = limits.total_max_bytes.saturating_add(limits.overflow_max_bytes);
        if total > overflow_end || (known && addr_bytes + cost > limits.sender_overflow_max()) {
            return Some(StoreError::OverflowFull);
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

    /// Write back the metadata the batch changed (deleting the rows of
    /// queues it emptied: only queues that hold frames have one), and the
    /// store-wide counter past every id the batch spent; returns the
    /// metadata.
    fn write_meta(&mut self) -> Result<Vec<(DeviceId, Meta)>, StoreError> {
        let mut changed = Vec::new();
        for (to, (m, dirty)) in &self.meta {
            if *dirty {
                if m.frames == 0 {
                    self.meta_t.remove(&to.0[..]).map_err(backend)?;
                } else {
                    self.meta_t.insert(&to.0[..], &m.encode()[..]).map_err(backend)?;
                }
                changed.push((*to, *m));
            }
        }
        if self.max_id > 0 {
            let saved =
                self.settings.get(NEXT_ID).map_err(backend)?.map_or(1, |v| u64_at(v.value(), 0));
            let next = self.max_id.saturating_add(1);
            if next > saved {
                self.settings.insert(NEXT_ID, &next.to_be_bytes()[..]).map_err(backend)?;
            }
        }
        Ok(changed)
    }

    /// Frames and bytes waiting in each non-empty queue, with this batch's
    /// changes.
    fn depths(&self) -> Vec<(DeviceId, QueueDepth)> {
        let mut out: Vec<(DeviceId, QueueDepth)> = self
            .cx
            .accounts
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

    /// Remove queued frames for `to` matching `pred` within `ids`; keeps
    /// meta in step. Returns how many were removed.
    pub(super) fn remove_where(
        &mut self,
        to: &DeviceId,
        ids: std::ops::RangeInclusive<u64>,
        mut pred: impl FnMut(&FrameRow<'_>) -> bool,
    ) -> Result<u64, StoreError> {
        let lo = qkey(to, *ids.start());
        let hi = qkey(to, *ids.end());
        let mut victims = Vec::new();
        for item in self.queue.range(&lo[..]..=&hi[..]).map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let row = FrameRow::decode(v.value());
            if pred(&row) {
                victims.push((u64_at(k.value(), 16), row.payload.len() as u64, row.from, row.addr));
            }
        }
        if victims.is_empty() {
            return Ok(0);
        }
        let mut meta = self.meta(to)?;
        for (id, len, from, addr) in &victims {
            self.queue.remove(&qkey(to, *id)[..]).map_err(backend)?;
            meta.frames = meta.frames.saturating_sub(1);
            meta.bytes = meta.bytes.saturating_sub(*len);
            self.account(from, to, addr, charged(*len), false);
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
            if FrameRow::decode(v.value()).expires > now {
                break;
            }
            last = Some(u64_at(k.value(), 16));
        }
        match last {
            Some(up_to) => self.remove_where(to, 0..=up_to, |_| true),
            None => Ok(0),
        }
    }

    /// Queue `frame` under `id` (the outer error stops the batch).
    fn enqueue(
        &mut self,
        frame: &NewFrame,
        now: u64,
        id: u64,
        live: bool,
    ) -> Result<Result<u64, StoreError>, StoreError> {
        let to = &frame.to;
        // The id was handed out, so it is spent whatever the answer:
        // the counter is saved past it, refused or not.
        self.max_id = self.max_id.max(id);
        let mut meta = self.meta(to)?;
        if !self.is_route(&frame.from, to)? {
            return Ok(Err(StoreError::NoRoute));
        }
        let len = frame.payload.len() as u64;
        let cost = charged(len);
        if let Some(refused) = self.refusal(frame, meta, cost, live) {
            return Ok(Err(refused));
        }
        let expires = now.saturating_add(self.cx.limits.ttl_secs);
        let v = frame_value(&frame.from, expires, &frame.addr, &frame.payload);
        self.queue.insert(&qkey(to, id)[..], &v[..]).map_err(backend)?;
        meta.frames += 1;
        meta.bytes += len;
        meta.last = meta.last.max(now);
        self.set_meta(to, meta);
        self.account(&frame.from, to, &frame.addr, cost, true);
        Ok(Ok(id))
    }

    fn apply(&mut self, op: &Op) -> Result<Answer, StoreError> {
        Ok(match op {
            Op::Enqueue { frame, now, id, live, .. } => {
                Answer::U64(self.enqueue(frame, *now, *id, *live)?)
            }
            Op::EnqueueMany { frames, now, .. } => {
                let mut out = Vec::with_capacity(frames.len());
                for (id, frame) in frames {
                    // Held for a connected recipient: it was live.
                    out.push(self.enqueue(frame, *now, *id, true)?);
                }
                Answer::Many(out)
            }
            Op::SaveCounter { next, .. } => {
                self.max_id = self.max_id.max(next.saturating_sub(1));
                Answer::Pending
            }
            Op::Fetch { to, after, limit, .. } => {
                let lo = qkey(to, after.saturating_add(1));
                let hi = qkey(to, u64::MAX);
                let mut out = Vec::new();
                for item in self.queue.range(&lo[..]..=&hi[..]).map_err(backend)?.take(*limit) {
                    let (k, v) = item.map_err(backend)?;
                    let row = FrameRow::decode(v.value());
                    out.push(Queued {
                        id: u64_at(k.value(), 16),
                        from: row.from,
                        payload: row.payload.to_vec(),
                    });
                }
                Answer::Queued(out)
            }
            Op::Ack { to, up_to, .. } => {
                crate::failpoints::check("relay.ack").map_err(failpoint)?;
                Answer::U64(Ok(self.remove_where(to, 0..=*up_to, |_| true)?))
            }
            Op::Depth { to, .. } => {
                let meta = self.meta(to)?;
                Answer::Depth(QueueDepth { frames: meta.frames, bytes: meta.bytes })
            }
            Op::Authorize { by, peer, addr, now, .. } => {
                crate::failpoints::check("relay.route").map_err(failpoint)?;
                Answer::Unit(self.authorize(by, peer, *addr, *now)?)
            }
            Op::Revoke { by, peer, now, .. } => {
                crate::failpoints::check("relay.route").map_err(failpoint)?;
                Answer::U64(self.revoke(by, peer, *now)?)
            }
            Op::IsRoute { a, b, .. } => Answer::Bool(self.is_route(a, b)?),
            Op::SetPush { device, sub: Some(sub), .. } => {
                Answer::Bool(self.push.insert(&device.0[..], &sub[..]).map_err(backend)?.is_some())
            }
            Op::SetPush { device, sub: None, .. } => {
                Answer::Bool(self.push.remove(&device.0[..]).map_err(backend)?.is_some())
            }
            Op::GetPush { device, .. } => Answer::Sub(
                self.push.get(&device.0[..]).map_err(backend)?.map(|v| v.value().to_vec()),
            ),
            Op::Peers { a, .. } => Answer::Ids(self.peers(a)?),
            Op::Expire { now, .. } => {
                // The queues that hold frames, then the expired head of each.
                let mut frames = 0;
                for (to, _) in self.depths() {
                    let left = MAX_EXPIRED_PER_SWEEP as u64 - frames;
                    if left == 0 {
                        break;
                    }
                    frames += self.expire_head(&to, *now, left)?;
                }
                let authorizations = self.expire_pending(*now)?;
                Answer::Expired(Expired { frames, authorizations })
            }
            Op::Totals { .. } => {
                let mut queues = QueueDepth::default();
                for (_, q) in self.depths() {
                    queues.frames += q.frames;
                    queues.bytes += q.bytes;
                }
                let delta: i64 = self.pending_delta.values().sum();
                let base = self.cx.accounts.pending.total;
                let pending_authorizations = base.saturating_add_signed(delta);
                Answer::Totals(Totals { queues, pending_authorizations })
            }
        })
    }

    /// One-sided authorisations `addr` holds, with this batch's changes.
    pub(super) fn pending_of(&self, addr: &AddrKey) -> u64 {
        let delta = self.pending_delta.get(addr).copied().unwrap_or(0);
        self.cx.accounts.pending.of(addr).saturating_add_signed(delta)
    }

    /// One more (`n` = 1) or one fewer (-1) one-sided authorisation for `addr`.
    pub(super) fn count_pending(&mut self, addr: AddrKey, n: i64) {
        *self.pending_delta.entry(addr).or_insert(0) += n;
    }
}

/// A [`Pending`] with a batch's changes applied.
pub(super) fn apply_pending(p: &mut Pending, delta: HashMap<AddrKey, i64>) {
    for (addr, n) in delta {
        if n > 0 {
            p.add(addr, n.unsigned_abs());
        } else if n < 0 {
            p.remove(addr, n.unsigned_abs());
        }
    }
}
