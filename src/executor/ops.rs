//! The per-op forward glue: dllama's `*Forward_*` functions (batch, z and column loops, thread
//! splits) around the kernels of `airllama-kernels`.
//!
//! Each op runs as one job on the thread pool: every thread claims its part of the output
//! ([`SplitMut`]) cut exactly as dllama's `SPLIT_THREADS` cuts it, so SIMD loops and their
//! scalar tails start and end where dllama's do. Ops whose bits do not depend on the split and
//! that cost next to nothing (copies, SHIFT, MOE_GATE) run on the calling thread.
use std::ops::Range;
use std::sync::Mutex;

use airllama_kernels::backend::Backend;
use airllama_kernels::block::{BLOCK_SIZE, FloatType, Q40Block, Q40x8Block, Q80Block};
use airllama_kernels::matmul::{MatmulOrder, matmul_f32, matmul_order, matmul_q80_q40};
use airllama_kernels::ops;
use airllama_kernels::packed::{ROWS_PER_GROUP, matmul_q80_q40x8};
use airllama_kernels::parallel::{Part, Split, SplitMut, ThreadPool};
use airllama_kernels::quant::{dequantize_q80, quantize_q80};

use super::ExecutorError;
use super::memory::{Element, Slab, view, view_mut};
use super::plan::{Experts, Kernel, OpPlan, View};

/// What an op's forward may touch besides its own plan.
pub(crate) struct Ctx<'a> {
    pub backend: Backend,
    pub pool: &'a mut ThreadPool,
    pub slots: &'a mut [Slab],
    pub weight: &'a [u8],
    /// A Q40 matmul's weight is in the interleaved layout ([`airllama_kernels::packed`]).
    pub interleaved: bool,
    pub scratch: &'a [Mutex<Vec<f32>>],
    pub batch: usize,
}

/// The first failure inside a parallel job (threads cannot return errors).
#[derive(Default)]
struct Failure(Mutex<Option<String>>);

impl Failure {
    fn set(&self, what: String) {
        if let Ok(mut f) = self.0.lock()
            && f.is_none()
        {
            *f = Some(what);
        }
    }

    fn into_result(self, op: &OpPlan) -> Result<(), ExecutorError> {
        match self.0.into_inner().ok().flatten() {
            None => Ok(()),
            Some(what) => Err(ExecutorError::OpFailed {
                op: op.name.clone(),
                layer: op.layer,
                what,
            }),
        }
    }
}

fn failed(op: &OpPlan, what: impl Into<String>) -> ExecutorError {
    ExecutorError::OpFailed {
        op: op.name.clone(),
        layer: op.layer,
        what: what.into(),
    }
}

/// `N` distinct slots at once, mutably.
fn slots_mut<'s, const N: usize>(
    slots: &'s mut [Slab],
    op: &OpPlan,
    idx: [usize; N],
) -> Result<[&'s mut Slab; N], ExecutorError> {
    slots
        .get_disjoint_mut(idx)
        .map_err(|_| failed(op, "slots overlap"))
}

/// The output slot, the input slot unless the op runs in place (its input is its output), and
/// `other`, a slot the op only reads.
fn slots_maybe_in_place<'s>(
    slots: &'s mut [Slab],
    op: &OpPlan,
    in_place: bool,
    other: usize,
) -> Result<(&'s mut Slab, Option<&'s Slab>, &'s Slab), ExecutorError> {
    let (i, o) = (&op.input, &op.output);
    if in_place {
        let [out, other] = slots_mut(slots, op, [o.slot, other])?;
        Ok((out, None, other))
    } else {
        let [out, inp, other] = slots_mut(slots, op, [o.slot, i.slot, other])?;
        Ok((out, Some(inp), other))
    }
}

/// What an op that may run in place reads for one output `row`: its `input` window, or, in
/// place, a copy of the row in the thread's `scratch` (the kernel writes the row while it reads
/// the values the row had). `None` in place without scratch.
fn source<'a>(
    input: Option<&'a [f32]>,
    scratch: Option<&'a mut Vec<f32>>,
    row: &[f32],
) -> Option<&'a [f32]> {
    match (input, scratch) {
        (Some(input), _) => Some(input),
        (None, Some(tmp)) => {
            tmp.clear();
            tmp.extend_from_slice(row);
            Some(tmp)
        }
        (None, None) => None,
    }
}

/// A column split of `v`'s window over its first `rows` rows.
fn columns(v: &View, rows: usize, unit: usize) -> Split {
    Split::Columns {
        stride: v.stride,
        rows,
        offset: v.offset,
        len: v.len,
        unit,
    }
}

/// The part's columns relative to the view's window start.
fn rel(part: &Part<'_, impl Sized>, v: &View) -> std::ops::Range<usize> {
    let c = part.columns();
    c.start - v.offset..c.end - v.offset
}

/// A row index `r` of a view (z-major) is active in a forward when its y is below the batch.
fn active(v: &View, r: usize, batch: usize) -> bool {
    r % v.y < batch
}

/// Position of batch item `y` from a position pipe, checked against `limit`.
fn position(positions: &[f32], y: usize, limit: usize) -> Option<usize> {
    let p = *positions.get(y)?;
    if p.is_finite() && p >= 0.0 && p.fract() == 0.0 && (p as usize) < limit {
        Some(p as usize)
    } else {
        None
    }
}

/// Ops with less work than this (in rough element operations) run their thread parts one
/// after another on the calling thread instead of waking the pool: the parts and so the bits are
/// the same, and a pool round trip costs more than such an op (and much more on a busy machine).
const PARALLEL_MIN_WORK: usize = 1 << 15;

/// Rough element operations of one forward of `op` over `batch` items.
fn work(op: &OpPlan, batch: usize) -> usize {
    let (i, o) = (&op.input, &op.output);
    let rows = |v: &View| batch * v.z;
    match op.kernel {
        Kernel::MergeAddF32 { slices } | Kernel::MergeAddQ80 { slices } => batch * o.x * slices,
        Kernel::MergeSum => batch * o.x * i.z,
        Kernel::InvRms { .. } | Kernel::RmsNormF32 { .. } | Kernel::RmsNormQ80 { .. } => {
            batch * i.x
        }
        Kernel::MatmulF32 { n, d, .. } | Kernel::MatmulQ40 { n, d, .. } => rows(o) * n * d,
        Kernel::Rope { dim0, .. } => batch * dim0 * 4,
        Kernel::MultiHeadAtt {
            n_heads0,
            head_dim,
            seq_len,
            ..
        } => batch * n_heads0 * head_dim * seq_len,
        Kernel::Silu | Kernel::Gelu | Kernel::Softmax => rows(o) * o.x * 16,
        // A copy's bits do not depend on the split: it stays on the calling thread.
        Kernel::CastCopy => 0,
        _ => rows(o) * o.x,
    }
}

/// Runs the job for every thread index (on the pool, or inline when `inline`), then reports
/// the first failure.
fn run(
    pool: &mut ThreadPool,
    inline: bool,
    op: &OpPlan,
    failure: Failure,
    job: &(dyn Fn(usize, &Failure) + Sync),
) -> Result<(), ExecutorError> {
    if inline {
        let n = pool.n_threads();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (0..n).for_each(|t| job(t, &failure))
        }))
        .map_err(|_| failed(op, "an op panicked"))?;
    } else {
        pool.run(&|t| job(t, &failure))
            .map_err(|e| failed(op, e.0))?;
    }
    failure.into_result(op)
}

/// [`run`] with each thread's job handed the part of `s` that thread claimed.
fn run_parts<T: Send>(
    pool: &mut ThreadPool,
    inline: bool,
    op: &OpPlan,
    failure: Failure,
    s: &SplitMut<'_, T>,
    job: &(dyn Fn(Part<'_, T>, &Failure) + Sync),
) -> Result<(), ExecutorError> {
    run(pool, inline, op, failure, &|t, f| match s.claim(t) {
        Ok(part) => job(part, f),
        Err(_) => f.set("claim".into()),
    })
}

fn split<'a, T>(
    op: &OpPlan,
    data: &'a mut [T],
    geometry: Split,
    n: usize,
) -> Result<SplitMut<'a, T>, ExecutorError> {
    SplitMut::new(data, geometry, n).map_err(|e| failed(op, format!("split: {e}")))
}

/// The input of one row of a [`row_op`], as one thread sees it.
#[derive(Clone, Copy)]
struct RowInput<'a, T> {
    /// The whole input row.
    row: &'a [T],
    /// The elements `start..end` of the row's first slice hold the values of the thread's output
    /// columns (a `Range` is not `Copy`).
    start: usize,
    end: usize,
    /// Elements of one slice (an output row's worth of values).
    slice_len: usize,
}

impl<'a, T> RowInput<'a, T> {
    /// The input elements holding the same values as the thread's output columns.
    fn window(self) -> &'a [T] {
        self.slice(0)
    }

    /// The same window in slice `k` of the input row, for inputs that hold several output-row
    /// wide slices one after the other (MERGE_ADD's slices of every node).
    fn slice(self, k: usize) -> &'a [T] {
        let base = k * self.slice_len;
        &self.row[base + self.start..base + self.end]
    }
}

/// The per-row kernel of a [`row_op`]: `(row, columns, input, output)`.
type RowKernel<'k, In, Out> = dyn Fn(usize, Range<usize>, RowInput<'_, In>, &mut [Out]) + Sync + 'k;

/// A row op: each of the first `rows` rows of `op.output` whose batch item is below `batch`
/// becomes `kernel` of the same row of `op.input` (dllama's `for z { for y < batchSize }` loops
/// of CAST, REPEAT_Z's first plane, MERGE_ADD and RMS_NORM over a Q80 input).
///
/// Every output row is cut between threads as dllama's per-row `SPLIT_THREADS` cuts it, in items
/// that hold whole elements of both types (one Q80 block when one side is Q80 and the other
/// `f32`, one element when both are of one type). The kernel gets the row index, this thread's
/// columns of the row (relative to the view's window, in output elements), the input row with
/// the range of it that holds the same values, and the output elements to write.
fn row_op<In: Element + Sync, Out: Element + Send>(
    op: &OpPlan,
    pool: &mut ThreadPool,
    out: &mut Slab,
    inp: &Slab,
    rows: usize,
    batch: usize,
    kernel: &RowKernel<'_, In, Out>,
) -> Result<(), ExecutorError> {
    let (i, o) = (&op.input, &op.output);
    let inp = view::<In>(inp.bytes())?;
    let unit = (In::VALUES / Out::VALUES).max(1);
    let n = pool.n_threads();
    let s = split(
        op,
        view_mut::<Out>(out.bytes_mut())?,
        columns(o, rows, unit),
        n,
    )?;
    let inline = work(op, batch) < PARALLEL_MIN_WORK;
    run_parts(pool, inline, op, Failure::default(), &s, &|mut part, _| {
        let r = rel(&part, o);
        let (start, end) = (
            r.start * Out::VALUES / In::VALUES,
            r.end * Out::VALUES / In::VALUES,
        );
        let slice_len = o.x / In::VALUES;
        for (row, out_row) in part.rows_mut(rows) {
            if active(o, row, batch) {
                let input = RowInput {
                    row: &inp[i.row(row)],
                    start,
                    end,
                    slice_len,
                };
                kernel(row, r.clone(), input, out_row);
            }
        }
    })
}

/// Runs one op for `ctx.batch` batch items.
pub(crate) fn forward(op: &OpPlan, ctx: Ctx<'_>) -> Result<(), ExecutorError> {
    let (i, o) = (op.input, op.output);
    let batch = ctx.batch;
    let backend = ctx.backend;
    let n = ctx.pool.n_threads();
    let inline = work(op, batch) < PARALLEL_MIN_WORK;
    let failure = Failure::default();
    match op.kernel {
        Kernel::MergeAddF32 { slices } | Kernel::MergeAddQ80 { slices } => {
            let [out, inp] = slots_mut(ctx.slots, op, [o.slot, i.slot])?;
            if matches!(op.kernel, Kernel::MergeAddQ80 { .. }) {
                row_op::<Q80Block, f32>(op, ctx.pool, out, inp, batch, batch, &|_, _, x, y| {
                    (0..slices).for_each(|k| ops::merge_add_q80(backend, y, x.slice(k)))
                })
            } else {
                row_op::<f32, f32>(op, ctx.pool, out, inp, batch, batch, &|_, _, x, y| {
                    (0..slices).for_each(|k| ops::merge_add_f32(backend, y, x.slice(k)))
                })
            }
        }
        Kernel::MergeSum => {
            let [out, inp] = slots_mut(ctx.slots, op, [o.slot, i.slot])?;
            let out = view_mut::<f32>(out.bytes_mut())?;
            let inp = view::<f32>(inp.bytes())?;
            let s = split(op, out, columns(&o, batch, 1), n)?;
            run_parts(ctx.pool, inline, op, failure, &s, &|mut part, _| {
                let r = rel(&part, &o);
                let mut rows: Vec<&[f32]> = Vec::with_capacity(i.z);
                for (y, row) in part.rows_mut(batch) {
                    rows.clear();
                    for z in 0..i.z {
                        let in_row = &inp[i.row(z * i.y + y)];
                        rows.push(&in_row[r.clone()]);
                    }
                    ops::merge_sum(backend, row, &rows);
                }
            })
        }
        Kernel::Embedding { quantize, vocab } => {
            let [out, inp] = slots_mut(ctx.slots, op, [o.slot, i.slot])?;
            let tokens = view::<f32>(inp.bytes())?;
            let weight = view::<f32>(ctx.weight)?;
            for y in 0..batch {
                let token = tokens
                    .get(i.row(y).start)
                    .and_then(|&t| position(&[t], 0, vocab))
                    .ok_or_else(|| failed(op, "token out of range"))?;
                let src = &weight[token * o.x..(token + 1) * o.x];
                if quantize {
                    let out = view_mut::<Q80Block>(out.bytes_mut())?;
                    quantize_q80(backend, src, &mut out[o.row(y)]);
                } else {
                    let out = view_mut::<f32>(out.bytes_mut())?;
                    ops::copy(backend, &mut out[o.row(y)], src);
                }
            }
            Ok(())
        }
        Kernel::InvRms {
            epsilon,
            columns: cols,
            col_size,
        } => {
            let [out, inp] = slots_mut(ctx.slots, op, [o.slot, i.slot])?;
            let out = view_mut::<f32>(out.bytes_mut())?;
            let inp = view::<f32>(inp.bytes())?;
            let geometry = Split::Rows {
                stride: o.stride,
                rows: batch,
                offset: o.offset,
                len: o.len,
            };
            let s = split(op, out, geometry, n)?;
            run_parts(ctx.pool, inline, op, failure, &s, &|mut part, _| {
                for (y, row) in part.rows_mut(batch) {
                    let in_row = &inp[i.row(y)];
                    for c in 0..cols {
                        row[c] = ops::inv_rms(
                            backend,
                            &in_row[c * col_size..(c + 1) * col_size],
                            epsilon,
                        );
                    }
                }
            })
        }
        Kernel::RmsNormF32 {
            inv_rms,
            inv_rms_stride,
            columns: cols,
            col_size,
            in_place,
        } => {
            let weight = view::<f32>(ctx.weight)?;
            // Each (batch item, column) is one row of `col_size` values split between threads:
            // one column is the view's own rows, several need rows that follow each other.
            let geometry = Split::Columns {
                stride: if cols == 1 { o.stride } else { col_size },
                rows: batch * cols,
                offset: o.offset,
                len: col_size,
                unit: 1,
            };
            if cols > 1 && (o.stride != o.len || i.stride != i.len) {
                return Err(failed(op, "multi-column rms norm needs contiguous rows"));
            }
            let (out, inp, inv) = slots_maybe_in_place(ctx.slots, op, in_place, inv_rms)?;
            let inv = view::<f32>(inv.bytes())?;
            let inp = inp.map(|inp| view::<f32>(inp.bytes())).transpose()?;
            let s = split(op, view_mut::<f32>(out.bytes_mut())?, geometry, n)?;
            let scratch = ctx.scratch;
            run(ctx.pool, inline, op, failure, &|t, f| {
                let Ok(mut part) = s.claim(t) else {
                    return f.set("claim".into());
                };
                let r = rel(&part, &o);
                let mut tmp = scratch.get(t).and_then(|m| m.lock().ok());
                for (yc, row) in part.rows_mut(batch * cols) {
                    let (y, col) = (yc / cols, yc % cols);
                    let start = i.row(y).start + col * col_size;
                    let input = inp.map(|inp| &inp[start + r.start..start + r.end]);
                    let Some(x) = source(input, tmp.as_deref_mut(), row) else {
                        return f.set("no scratch".into());
                    };
                    let inv_value = inv[y * inv_rms_stride + col];
                    ops::rms_norm_f32(backend, row, x, &weight[r.clone()], inv_value);
                }
            })
        }
        Kernel::RmsNormQ80 { inv_rms } => {
            let weight = view::<f32>(ctx.weight)?;
            let [out, inp, inv] = slots_mut(ctx.slots, op, [o.slot, i.slot, inv_rms])?;
            let inv = view::<f32>(inv.bytes())?;
            row_op::<Q80Block, f32>(op, ctx.pool, out, inp, batch, batch, &|y, r, x, row| {
                ops::rms_norm_q80(backend, row, x.window(), &weight[r], inv[y]);
            })
        }
        Kernel::MatmulF32 {
            n: cols_in,
            d,
            experts,
        }
        | Kernel::MatmulQ40 {
            n: cols_in,
            d,
            experts,
        } => {
            let weights = if matches!(op.kernel, Kernel::MatmulF32 { .. }) {
                MatWeights::F32(view::<f32>(ctx.weight)?)
            } else if ctx.interleaved {
                MatWeights::Q40x8(view::<Q40x8Block>(ctx.weight)?)
            } else {
                MatWeights::Q40(view::<Q40Block>(ctx.weight)?)
            };
            matmul(
                op, ctx.pool, inline, ctx.slots, batch, backend, failure, cols_in, d, experts,
                weights,
            )
        }
        Kernel::Rope {
            falcon,
            dim0,
            head_dim,
            shift,
            slice_dim,
            cache,
            positions,
            seq_len,
        } => {
            let [x, cache, pos] = slots_mut(ctx.slots, op, [o.slot, cache, positions])?;
            let cache = view::<f32>(cache.bytes())?;
            let pos = view::<f32>(pos.bytes())?;
            let unit = if falcon { head_dim } else { 2 };
            let geometry = Split::Columns {
                stride: o.stride,
                rows: batch,
                offset: o.offset,
                len: dim0,
                unit,
            };
            let s = split(op, view_mut::<f32>(x.bytes_mut())?, geometry, n)?;
            run_parts(ctx.pool, inline, op, failure, &s, &|mut part, f| {
                let r = rel(&part, &o);
                for (y, row) in part.rows_mut(batch) {
                    let Some(p) = position(pos, y, seq_len) else {
                        return f.set("position out of range".into());
                    };
                    if row.is_empty() {
                        continue;
                    }
                    if falcon {
                        ops::rope_falcon(
                            backend,
                            row,
                            &cache[p * head_dim..(p + 1) * head_dim],
                            head_dim,
                        );
                    } else {
                        let base = p * slice_dim + shift;
                        ops::rope_llama(backend, row, &cache[base + r.start..base + r.end]);
                    }
                }
            })
        }
        Kernel::MultiHeadAtt {
            n_heads,
            n_heads0,
            n_kv_heads,
            head_dim,
            seq_len,
            q_slice_d0,
            kv_dim0,
            positions,
            query,
            key_cache,
            value_cache,
            att,
        } => {
            let [out, att, q, kc, vc, pos] = slots_mut(
                ctx.slots,
                op,
                [o.slot, att, query, key_cache, value_cache, positions],
            )?;
            let q = view::<f32>(q.bytes())?;
            let kc = view::<f32>(kc.bytes())?;
            let vc = view::<f32>(vc.bytes())?;
            let pos = view::<f32>(pos.bytes())?;
            let out_geometry = Split::Columns {
                stride: o.stride,
                rows: batch,
                offset: o.offset,
                len: n_heads0 * head_dim,
                unit: head_dim,
            };
            let att_row = n_heads0 * seq_len;
            let att_geometry = Split::Columns {
                stride: att_row,
                rows: batch,
                offset: 0,
                len: att_row,
                unit: seq_len,
            };
            let so = split(op, view_mut::<f32>(out.bytes_mut())?, out_geometry, n)?;
            let sa = split(op, view_mut::<f32>(att.bytes_mut())?, att_geometry, n)?;
            run(ctx.pool, inline, op, failure, &|t, f| {
                let (Ok(mut po), Ok(mut pa)) = (so.claim(t), sa.claim(t)) else {
                    return f.set("claim".into());
                };
                let r = rel(&po, &o);
                let heads = r.start / head_dim..r.end / head_dim;
                if heads.is_empty() {
                    return;
                }
                for ((y, y_row), (_, att_row)) in po.rows_mut(batch).zip(pa.rows_mut(batch)) {
                    let Some(p) = position(pos, y, seq_len) else {
                        return f.set("position out of range".into());
                    };
                    let shape = ops::AttentionShape {
                        n_heads,
                        n_kv_heads,
                        head_dim,
                        kv_dim0,
                        seq_len,
                        pos: p,
                    };
                    let q_row = &q[y * q_slice_d0..(y + 1) * q_slice_d0];
                    ops::multihead_attention(
                        backend,
                        heads.clone(),
                        &shape,
                        y_row,
                        q_row,
                        att_row,
                        kc,
                        vc,
                    );
                }
            })
        }
        Kernel::Silu | Kernel::Gelu => {
            let gelu = matches!(op.kernel, Kernel::Gelu);
            // dllama's SILU loops z and batch items, GELU only the batch items of plane 0.
            let rows = if gelu { batch } else { o.rows() };
            let s = split(
                op,
                view_mut::<f32>(ctx.slots[o.slot].bytes_mut())?,
                columns(&o, rows, 1),
                n,
            )?;
            run_parts(ctx.pool, inline, op, failure, &s, &|mut part, _| {
                for (r, row) in part.rows_mut(rows) {
                    if !active(&o, r, batch) {
                        continue;
                    }
                    if gelu {
                        ops::gelu(backend, row);
                    } else {
                        ops::silu(backend, row);
                    }
                }
            })
        }
        Kernel::Mul {
            multiplier,
            in_place,
        }
        | Kernel::Scale {
            scale: multiplier,
            in_place,
        } => {
            let is_mul = matches!(op.kernel, Kernel::Mul { .. });
            let rows = o.rows();
            let (out, inp, m) = slots_maybe_in_place(ctx.slots, op, in_place, multiplier)?;
            let m = view::<f32>(m.bytes())?;
            let inp = inp.map(|inp| view::<f32>(inp.bytes())).transpose()?;
            let s = split(
                op,
                view_mut::<f32>(out.bytes_mut())?,
                columns(&o, rows, 1),
                n,
            )?;
            let scratch = ctx.scratch;
            run(ctx.pool, inline, op, failure, &|t, f| {
                let Ok(mut part) = s.claim(t) else {
                    return f.set("claim".into());
                };
                let r = rel(&part, &o);
                let mut tmp = scratch.get(t).and_then(|m| m.lock().ok());
                for (row_index, row) in part.rows_mut(rows) {
                    if !active(&o, row_index, batch) {
                        continue;
                    }
                    let input = inp.map(|inp| &inp[i.row(row_index)][r.clone()]);
                    let Some(x) = source(input, tmp.as_deref_mut(), row) else {
                        return f.set("no scratch".into());
                    };
                    if is_mul {
                        let base = o.x * row_index;
                        ops::mul_f32(backend, row, x, &m[base + r.start..base + r.end]);
                    } else {
                        ops::scale(backend, row, x, m[row_index]);
                    }
                }
            })
        }
        Kernel::CastCopy => {
            let [out, inp] = slots_mut(ctx.slots, op, [o.slot, i.slot])?;
            let rows = o.rows();
            if o.float_type == FloatType::Q80 {
                row_op::<Q80Block, Q80Block>(op, ctx.pool, out, inp, rows, batch, &|_, _, x, y| {
                    y.copy_from_slice(x.window())
                })
            } else {
                row_op::<f32, f32>(op, ctx.pool, out, inp, rows, batch, &|_, _, x, y| {
                    y.copy_from_slice(x.window())
                })
            }
        }
        Kernel::CastQuantize | Kernel::RepeatZ => {
            let repeat = matches!(op.kernel, Kernel::RepeatZ);
            let rows = if repeat { batch } else { o.rows() };
            let [out, inp] = slots_mut(ctx.slots, op, [o.slot, i.slot])?;
            row_op::<f32, Q80Block>(op, ctx.pool, out, inp, rows, batch, &|_, _, x, y| {
                quantize_q80(backend, x.window(), y)
            })?;
            if repeat {
                let out = view_mut::<Q80Block>(out.bytes_mut())?;
                for z in 1..o.z {
                    for y in 0..batch {
                        let src = o.row(y);
                        out.copy_within(src, o.row(z * o.y + y).start);
                    }
                }
            }
            Ok(())
        }
        Kernel::CastDequantize => {
            let [out, inp] = slots_mut(ctx.slots, op, [o.slot, i.slot])?;
            row_op::<Q80Block, f32>(op, ctx.pool, out, inp, o.rows(), batch, &|_, _, x, y| {
                dequantize_q80(backend, x.window(), y)
            })
        }
        Kernel::Shift { positions } => {
            let [out, inp, pos] = slots_mut(ctx.slots, op, [o.slot, i.slot, positions])?;
            let out = view_mut::<f32>(out.bytes_mut())?;
            let inp = view::<f32>(inp.bytes())?;
            let pos = view::<f32>(pos.bytes())?;
            let limit = o.len / i.x;
            for y in 0..batch {
                let p = position(pos, y, limit)
                    .ok_or_else(|| failed(op, "position out of the cache"))?;
                ops::copy(backend, &mut out[p * i.x..(p + 1) * i.x], &inp[i.row(y)]);
            }
            Ok(())
        }
        Kernel::Softmax => {
            let geometry = Split::Rows {
                stride: o.stride,
                rows: batch,
                offset: o.offset,
                len: o.len,
            };
            let s = split(
                op,
                view_mut::<f32>(ctx.slots[o.slot].bytes_mut())?,
                geometry,
                n,
            )?;
            run_parts(ctx.pool, inline, op, failure, &s, &|mut part, _| {
                for (_, row) in part.rows_mut(batch) {
                    ops::softmax(backend, row);
                }
            })
        }
        Kernel::MoeGate {
            k,
            norm_topk,
            indexes,
        } => {
            let [out, inp, idx] = slots_mut(ctx.slots, op, [o.slot, i.slot, indexes])?;
            let out = view_mut::<f32>(out.bytes_mut())?;
            let inp = view::<f32>(inp.bytes())?;
            let idx = view_mut::<f32>(idx.bytes_mut())?;
            let mut scratch = vec![0u32; i.x];
            let mut weights = vec![0f32; k];
            for y in 0..batch {
                ops::moe_gate(
                    backend,
                    &inp[i.row(y)],
                    k,
                    norm_topk,
                    &mut scratch,
                    &mut idx[y * k..(y + 1) * k],
                    &mut weights,
                )
                .map_err(|e| failed(op, e.to_string()))?;
                for (kk, w) in weights.iter().enumerate() {
                    out[o.row(kk * o.y + y).start] = *w;
                }
            }
            Ok(())
        }
    }
}

/// The input rows and weight of a MATMUL, typed.
#[derive(Clone, Copy)]
enum MatInput<'a> {
    F32(&'a [f32], &'a [f32]),
    Q80(&'a [Q80Block], &'a [Q40Block]),
    Q80x8(&'a [Q80Block], &'a [Q40x8Block]),
}

/// The weight of a MATMUL, typed.
#[derive(Clone, Copy)]
enum MatWeights<'a> {
    F32(&'a [f32]),
    Q40(&'a [Q40Block]),
    /// Eight rows interleaved: rows are split between threads in whole groups.
    Q40x8(&'a [Q40x8Block]),
}

/// MATMUL (`matmulForward_*`): tinyBLAS order for contiguous multi-item batches where dllama's
/// build takes `llamafile_sgemm`, else the per-row kernel; experts pick their weight plane per
/// batch item. Every output element is computed on its own, so the output rows are split between
/// threads the way dllama's row kernel splits them in both orders.
#[allow(clippy::too_many_arguments)]
fn matmul(
    op: &OpPlan,
    pool: &mut ThreadPool,
    inline: bool,
    slots: &mut [Slab],
    batch: usize,
    backend: Backend,
    failure: Failure,
    n_in: usize,
    d: usize,
    experts: Option<Experts>,
    weights: MatWeights<'_>,
) -> Result<(), ExecutorError> {
    let (i, o) = (op.input, op.output);
    let threads = pool.n_threads();
    let (weight_type, input_type) = match weights {
        MatWeights::F32(_) => (FloatType::F32, FloatType::F32),
        MatWeights::Q40(_) | MatWeights::Q40x8(_) => (FloatType::Q40, FloatType::Q80),
    };
    // Items (values or blocks) per weight row and per expert plane.
    let per_row = match weights {
        MatWeights::F32(_) => n_in,
        MatWeights::Q40(_) | MatWeights::Q40x8(_) => n_in / BLOCK_SIZE,
    };
    let unit = match weights {
        MatWeights::Q40x8(_) if experts.is_none() => ROWS_PER_GROUP,
        MatWeights::Q40x8(_) => return Err(failed(op, "interleaved weights with experts")),
        _ => 1,
    };
    let plane = per_row * d;
    let contiguous = i.contiguous && o.contiguous && i.z == 1;
    let order = matmul_order(backend, batch, n_in, weight_type, input_type, contiguous)
        .ok_or_else(|| failed(op, "no kernel for these matmul types"))?;
    let rows = if experts.is_some() { o.rows() } else { batch };
    let (out, inp, idx) = match experts {
        None => {
            let [out, inp] = slots_mut(slots, op, [o.slot, i.slot])?;
            (out, inp, None)
        }
        Some(e) => {
            let [out, inp, idx] = slots_mut(slots, op, [o.slot, i.slot, e.indexes])?;
            (out, inp, Some(view::<f32>(idx.bytes())?))
        }
    };
    let s = split(
        op,
        view_mut::<f32>(out.bytes_mut())?,
        columns(&o, rows, unit),
        threads,
    )?;
    // The input typed once, before the job: a slot that cannot be viewed fails the op.
    let input = match weights {
        MatWeights::F32(w) => MatInput::F32(view::<f32>(inp.bytes())?, w),
        MatWeights::Q40(w) => MatInput::Q80(view::<Q80Block>(inp.bytes())?, w),
        MatWeights::Q40x8(w) => MatInput::Q80x8(view::<Q80Block>(inp.bytes())?, w),
    };
    let call = |outs: &mut [&mut [f32]],
                x_start: usize,
                x_len: usize,
                w_start: usize,
                w_len: usize,
                ord: MatmulOrder| match input {
        MatInput::F32(x, w) => matmul_f32(
            backend,
            ord,
            outs,
            &x[x_start..x_start + x_len],
            &w[w_start..w_start + w_len],
            n_in,
        ),
        MatInput::Q80(x, w) => matmul_q80_q40(
            backend,
            ord,
            outs,
            &x[x_start..x_start + x_len],
            &w[w_start..w_start + w_len],
            n_in,
        ),
        // Whole groups: `w_start` and `w_len` count row blocks, eight to an interleaved block.
        MatInput::Q80x8(x, w) => matmul_q80_q40x8(
            backend,
            ord,
            outs,
            &x[x_start..x_start + x_len],
            &w[w_start / ROWS_PER_GROUP..(w_start + w_len) / ROWS_PER_GROUP],
            n_in,
        ),
    };
    run_parts(pool, inline, op, failure, &s, &|mut part, f| {
        let r = rel(&part, &o);
        if r.is_empty() {
            return;
        }
        let w_start = r.start * per_row;
        let w_len = (r.end - r.start) * per_row;
        match (experts, idx) {
            (Some(e), Some(idx)) => {
                for (row_index, row) in part.rows_mut(rows) {
                    let (z, y) = (row_index / o.y, row_index % o.y);
                    if y >= batch {
                        continue;
                    }
                    let Some(expert) = position(idx, y * e.n_active + z, e.n_experts) else {
                        return f.set("active expert index out of range".into());
                    };
                    let x = i.row(z * i.y + y);
                    call(
                        &mut [row],
                        x.start,
                        i.len,
                        expert * plane + w_start,
                        w_len,
                        MatmulOrder::Row,
                    );
                }
            }
            _ if order == MatmulOrder::TinyBlas && i.stride == i.len => {
                let mut outs: Vec<&mut [f32]> = part.rows_mut(batch).map(|(_, row)| row).collect();
                call(&mut outs, i.offset, batch * i.len, w_start, w_len, order);
            }
            _ => {
                for (y, row) in part.rows_mut(batch) {
                    call(
                        &mut [row],
                        i.row(y).start,
                        i.len,
                        w_start,
                        w_len,
                        MatmulOrder::Row,
                    );
                }
            }
        }
    })
}
