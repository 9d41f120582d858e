//! Model-based checking shared by the backends' tests: a random sequence of operations is
//! applied both to a backend and to a plain byte vector, and every read and extent report
//! of the backend must agree with the model.

use proptest::prelude::*;

use crate::{Backend, ErrorKind, ZeroFlags};

#[derive(Debug, Clone)]
pub enum Op {
    Write { offset: u64, length: u64, seed: u8, fua: bool },
    Trim { offset: u64, length: u64, fua: bool },
    Zero { offset: u64, length: u64, flags: ZeroFlags },
    Read { offset: u64, length: u64 },
    Extents { offset: u64, length: u64 },
    Flush,
}

/// A range within `0..size`, often aligned to 4 KiB (where hole punching is exact) and
/// sometimes not, with lengths from one byte to a few chunks.
fn range(size: u64) -> impl Strategy<Value = (u64, u64)> {
    let offset = prop_oneof![0..size, (0..size / 4096).prop_map(|b| b * 4096)];
    let length = prop_oneof![1..200_000u64, (1..48u64).prop_map(|b| b * 4096)];
    (offset, length).prop_map(move |(o, l)| (o, l.min(size - o).max(1)))
}

pub fn ops(size: u64, max_ops: usize) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => (range(size), any::<u8>(), any::<bool>())
            .prop_map(|((offset, length), seed, fua)| Op::Write { offset, length, seed, fua }),
        1 => (range(size), any::<bool>()).prop_map(|((offset, length), fua)| Op::Trim { offset, length, fua }),
        2 => (range(size), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |((offset, length), may_trim, fast_only, fua)| Op::Zero {
                offset,
                length,
                flags: ZeroFlags { may_trim, fast_only, fua },
            }
        ),
        2 => range(size).prop_map(|(offset, length)| Op::Read { offset, length }),
        2 => range(size).prop_map(|(offset, length)| Op::Extents { offset, length }),
        1 => Just(Op::Flush),
    ];
    proptest::collection::vec(op, 1..max_ops)
}

/// Never zero, so that a hole reported over written data is always caught.
pub fn pattern(seed: u8, offset: u64, length: u64) -> Vec<u8> {
    (0..length).map(|i| ((seed as u64 + offset + i) % 251 + 1) as u8).collect()
}

/// Apply `ops` to `backend` and to a model; `None` in the model is "unspecified" (trimmed,
/// when `trim_zeroes` is false).
pub fn check(backend: &dyn Backend, ops: &[Op], trim_zeroes: bool) -> Result<(), TestCaseError> {
    let size = backend.size();
    let mut model: Vec<Option<u8>> = vec![Some(0); size as usize];
    let span = |offset: u64, length: u64| offset as usize..(offset + length) as usize;
    for op in ops {
        match *op {
            Op::Write { offset, length, seed, fua } => {
                let data = pattern(seed, offset, length);
                backend.write_at(&data, offset, fua).map_err(|e| TestCaseError::fail(e.to_string()))?;
                for (m, b) in model[span(offset, length)].iter_mut().zip(data) {
                    *m = Some(b);
                }
            }
            Op::Trim { offset, length, fua } => {
                backend.trim(offset, length, fua).map_err(|e| TestCaseError::fail(e.to_string()))?;
                if backend.capabilities().can_trim {
                    let after = if trim_zeroes { Some(0) } else { None };
                    model[span(offset, length)].fill(after);
                }
            }
            Op::Zero { offset, length, flags } => match backend.zero(offset, length, flags) {
                Ok(()) => model[span(offset, length)].fill(Some(0)),
                Err(e) if flags.fast_only && e.kind == ErrorKind::NotSupported => {}
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            },
            Op::Read { offset, length } => check_read(backend, &model, offset, length)?,
            Op::Extents { offset, length } => check_extents(backend, &model, offset, length)?,
            Op::Flush => backend.flush().map_err(|e| TestCaseError::fail(e.to_string()))?,
        }
    }
    check_read(backend, &model, 0, size)?;
    check_extents(backend, &model, 0, size)
}

fn check_read(backend: &dyn Backend, model: &[Option<u8>], offset: u64, length: u64) -> Result<(), TestCaseError> {
    let mut buf = vec![0xa5; length as usize];
    backend.read_at(&mut buf, offset).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let want = &model[offset as usize..(offset + length) as usize];
    for (i, (got, want)) in buf.iter().zip(want).enumerate() {
        if let Some(want) = want {
            prop_assert_eq!(got, want, "byte {} differs after reading {}+{}", offset + i as u64, offset, length);
        }
    }
    Ok(())
}

/// Extents must start at `offset`, stay within the request, cover at least a byte, and never
/// claim zeroes (hole or zero) where the model has data; what they claim as zeroes must also
/// read back as zeroes.
fn check_extents(backend: &dyn Backend, model: &[Option<u8>], offset: u64, length: u64) -> Result<(), TestCaseError> {
    let extents = backend.extents(offset, length).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let total: u64 = extents.iter().map(|e| e.length).sum();
    prop_assert!(total >= 1 && total <= length, "extents cover {} of {}", total, length);
    prop_assert!(extents.iter().all(|e| e.length > 0), "empty extent in {:?}", extents);
    let mut pos = offset;
    for e in &extents {
        if e.hole || e.zero {
            let range = pos as usize..(pos + e.length) as usize;
            let bad = model[range.clone()].iter().position(|b| matches!(b, Some(v) if *v != 0));
            prop_assert!(bad.is_none(), "extent {:?} at {} claims zeroes over data at {:?}", e, pos, bad);
            let mut buf = vec![0xa5; e.length as usize];
            backend.read_at(&mut buf, pos).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(buf.iter().all(|&b| b == 0), "extent {:?} at {} does not read as zeroes", e, pos);
        }
        pos += e.length;
    }
    Ok(())
}
