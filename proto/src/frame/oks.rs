//! Runs of accepted `Send`s, the body of an `Oks` frame (protocol level 2,
//! PROTOCOL.md §6.5): one frame answers many `send_id`s the way as many
//! `Ok{ref_id}` frames would.

use crate::codec::{CodecError, Put, Reader};

/// Most runs in one `Oks` frame (the frame stays under `MAX_FRAME_LEN`:
/// 4 + 4096 × 12 bytes).
pub const MAX_OK_RUNS: usize = 4096;

/// The `send_id`s `first, first + 1, …, first + count − 1`, each accepted.
/// Valid when `count ≥ 1` and `first + count` does not overflow a `u64`
/// (so `u64::MAX` is never in a run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OkRun {
    /// The first id of the run.
    pub first: u64,
    /// How many consecutive ids, at least 1.
    pub count: u32,
}

impl OkRun {
    /// The run of one id; `None` for `u64::MAX`, which no run can hold.
    #[must_use]
    pub fn one(id: u64) -> Option<Self> {
        let run = Self { first: id, count: 1 };
        run.check().ok().map(|()| run)
    }

    /// The id after the last one (exclusive end); saturates for an invalid run.
    #[must_use]
    pub fn end(&self) -> u64 {
        self.first.saturating_add(u64::from(self.count))
    }

    /// Whether `id` is in the run.
    #[must_use]
    pub fn contains(&self, id: u64) -> bool {
        (self.first..self.end()).contains(&id)
    }

    /// The ids of the run, in increasing order.
    pub fn ids(&self) -> std::ops::Range<u64> {
        self.first..self.end()
    }

    /// Whether the run is valid (see the type's docs).
    pub(crate) fn check(&self) -> Result<(), CodecError> {
        if self.count == 0 {
            return Err(CodecError::BadValue("count"));
        }
        if self.first.checked_add(u64::from(self.count)).is_none() {
            return Err(CodecError::BadValue("first + count overflows"));
        }
        Ok(())
    }
}

/// Check a number of runs: 1 to [`MAX_OK_RUNS`].
pub(crate) fn check_len(n: usize) -> Result<(), CodecError> {
    match n {
        0 => Err(CodecError::BadValue("runs")),
        n if n > MAX_OK_RUNS => {
            Err(CodecError::TooLong { field: "runs", len: n, max: MAX_OK_RUNS })
        }
        _ => Ok(()),
    }
}

/// Check a whole `Oks` body: 1 to [`MAX_OK_RUNS`] valid runs.
pub(crate) fn check_runs(runs: &[OkRun]) -> Result<(), CodecError> {
    check_len(runs.len())?;
    runs.iter().try_for_each(OkRun::check)
}

/// Write an `Oks` body: `runs u16 ‖ runs × (first u64 ‖ count u32)`.
pub(super) fn encode(b: &mut Vec<u8>, runs: &[OkRun]) -> Result<(), CodecError> {
    check_runs(runs)?;
    b.put_u16(u16::try_from(runs.len()).unwrap_or(u16::MAX));
    for run in runs {
        b.put_u64(run.first);
        b.put_u32(run.count);
    }
    Ok(())
}

/// Read an `Oks` body, checked as it is read (PROTOCOL.md §4.4).
pub(super) fn decode(r: &mut Reader<'_>) -> Result<Vec<OkRun>, CodecError> {
    let n = usize::from(r.u16("runs")?);
    check_len(n)?;
    let mut runs = Vec::with_capacity(n);
    for _ in 0..n {
        let run = OkRun { first: r.u64("first")?, count: r.u32("count")? };
        run.check()?;
        runs.push(run);
    }
    Ok(runs)
}

/// Add `id` to `runs`: it extends the last run when it follows it directly,
/// otherwise it starts a new one (runs keep the order ids were added in).
/// `false`, and `runs` unchanged, when it fits nowhere: `id` is `u64::MAX`,
/// or it would be run number `MAX_OK_RUNS + 1` (the caller sends what it
/// has and starts again).
pub fn push_ok(runs: &mut Vec<OkRun>, id: u64) -> bool {
    if let Some(last) = runs.last_mut()
        && last.end() == id
        && let Some(count) = last.count.checked_add(1)
        && id != u64::MAX
    {
        last.count = count;
        return true;
    }
    match OkRun::one(id) {
        Some(run) if runs.len() < MAX_OK_RUNS => {
            runs.push(run);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Frame, FrameError, FrameType};

    #[test]
    fn ids_coalesce_into_runs_in_the_order_given() {
        let mut runs = Vec::new();
        for id in [5, 6, 7, 9, 10, 3, 4, 4] {
            assert!(push_ok(&mut runs, id));
        }
        let want = [(5, 3), (9, 2), (3, 2), (4, 1)].map(|(first, count)| OkRun { first, count });
        assert_eq!(runs, want);
        assert_eq!(runs.iter().flat_map(OkRun::ids).collect::<Vec<_>>(), [5, 6, 7, 9, 10, 3, 4, 4]);
        assert!(runs[0].contains(7) && !runs[0].contains(8) && !runs[0].contains(4));
    }

    #[test]
    fn the_edges_are_refused_not_wrapped() {
        let mut runs = Vec::new();
        assert!(!push_ok(&mut runs, u64::MAX));
        assert!(runs.is_empty());
        assert!(push_ok(&mut runs, u64::MAX - 1));
        assert!(!push_ok(&mut runs, u64::MAX));
        assert_eq!(runs, [OkRun { first: u64::MAX - 1, count: 1 }]);
        // A run full to u32::MAX starts a new one.
        let mut runs = vec![OkRun { first: 1, count: u32::MAX }];
        let next = 1 + u64::from(u32::MAX);
        assert!(push_ok(&mut runs, next));
        assert_eq!(runs[1], OkRun { first: next, count: 1 });
        // No run number MAX_OK_RUNS + 1.
        let mut runs: Vec<OkRun> =
            (0..MAX_OK_RUNS as u64).map(|i| OkRun { first: i * 2, count: 1 }).collect();
        assert!(!push_ok(&mut runs, u64::MAX / 2));
        assert!(
            push_ok(&mut runs, (MAX_OK_RUNS as u64 - 1) * 2 + 1),
            "extending the last run still fits"
        );
        assert_eq!(runs.len(), MAX_OK_RUNS);
    }

    /// An `Oks` frame on the wire: `runs` as given, then each `(first, count)`.
    fn wire(n: u16, runs: &[(u64, u32)]) -> Vec<u8> {
        let mut b = vec![crate::frame::VERSION, 0x15];
        b.extend_from_slice(&n.to_be_bytes());
        for (first, count) in runs {
            b.extend_from_slice(&first.to_be_bytes());
            b.extend_from_slice(&count.to_be_bytes());
        }
        b
    }

    fn malformed(source: CodecError) -> Result<Frame, FrameError> {
        Err(FrameError::Malformed { kind: FrameType::Oks, source })
    }

    #[test]
    fn the_wire_form_round_trips_and_every_bad_body_is_an_error() {
        let runs = vec![OkRun { first: 7, count: 3 }, OkRun { first: 12, count: 1 }];
        let bytes = Frame::Oks { runs: runs.clone() }.encode().unwrap();
        assert_eq!(bytes, wire(2, &[(7, 3), (12, 1)]));
        assert_eq!(Frame::decode(&bytes), Ok(Frame::Oks { runs }));

        assert_eq!(Frame::decode(&wire(0, &[])), malformed(CodecError::BadValue("runs")));
        assert_eq!(Frame::decode(&wire(1, &[(7, 0)])), malformed(CodecError::BadValue("count")));
        assert_eq!(
            Frame::decode(&wire(1, &[(u64::MAX - 2, 3)])),
            malformed(CodecError::BadValue("first + count overflows"))
        );
        assert!(Frame::decode(&wire(1, &[(u64::MAX - 3, 3)])).is_ok());
        let n = u16::try_from(MAX_OK_RUNS + 1).unwrap();
        let max = MAX_OK_RUNS;
        assert_eq!(
            Frame::decode(&wire(n, &[])),
            malformed(CodecError::TooLong { field: "runs", len: max + 1, max })
        );
        assert_eq!(Frame::decode(&wire(2, &[(7, 1)])), malformed(CodecError::Truncated("first")));
        let mut cut = wire(1, &[(7, 1)]);
        cut.pop();
        assert_eq!(Frame::decode(&cut), malformed(CodecError::Truncated("count")));
        assert_eq!(Frame::decode(&[1, 0x15, 0]), malformed(CodecError::Truncated("runs")));
        let mut long = wire(1, &[(7, 1)]);
        long.push(0);
        assert_eq!(Frame::decode(&long), malformed(CodecError::TrailingBytes(1)));

        // The largest frame fits, and nothing invalid is ever encoded.
        let full = vec![OkRun { first: 1, count: u32::MAX }; MAX_OK_RUNS];
        let bytes = Frame::Oks { runs: full }.encode().unwrap();
        assert_eq!(bytes.len(), 4 + 12 * MAX_OK_RUNS);
        assert!(bytes.len() <= crate::frame::MAX_FRAME_LEN);
        for runs in [
            vec![],
            vec![OkRun { first: 1, count: 0 }],
            vec![OkRun { first: 1, count: 1 }; MAX_OK_RUNS + 1],
        ] {
            assert!(matches!(
                Frame::Oks { runs }.encode(),
                Err(FrameError::Malformed { kind: FrameType::Oks, .. })
            ));
        }
    }

    #[test]
    fn invalid_runs_are_named() {
        assert_eq!(check_runs(&[]), Err(CodecError::BadValue("runs")));
        assert_eq!(check_runs(&[OkRun { first: 1, count: 0 }]), Err(CodecError::BadValue("count")));
        assert!(check_runs(&[OkRun { first: u64::MAX, count: 1 }]).is_err());
        assert!(check_runs(&[OkRun { first: u64::MAX - 1, count: 1 }]).is_ok());
        let many = vec![OkRun { first: 1, count: 1 }; MAX_OK_RUNS + 1];
        assert!(matches!(check_runs(&many), Err(CodecError::TooLong { field: "runs", .. })));
        assert!(check_runs(&many[1..]).is_ok());
    }
}
