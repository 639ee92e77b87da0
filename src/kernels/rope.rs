//! Rotary position embedding applied to queries and keys (Su et al. 2021, arXiv 2104.09864), in
//! the two layouts the models use:
//! - [`rope`]: transformers' Llama `apply_rotary_pos_emb`, `x·cos + rotate_half(x)·sin` with
//!   `rotate_half([x1, x2]) = [−x2, x1]` over the two halves of each head;
//! - [`rope_pairs`]: ChatGLM's `apply_rotary_pos_emb` (THUDM `modeling_chatglm.py`): only the first
//!   `rot` dims rotate, as interleaved pairs `(x[2i], x[2i+1])`, the rest pass through.
//!
//! Shapes: x `[b, heads, s, d]` (any strides with a contiguous last dim: the `swap_dims(1, 2)`
//! view of the projection is read in place); Llama cos, sin `[b or 1, 1, s, d]`; ChatGLM cos, sin
//! `[b or 1, 1, s, rot/2, 1]` -> `[b, heads, s, d]`.
//!
//! Math, per head row, with h = d/2 (Llama):
//! - forward   `y1 = x1·c1 − x2·s1`, `y2 = x2·c2 + x1·s2`
//! - backward  the transposed rotation: `dx1 = dy1·c1 + dy2·s2`, `dx2 = dy2·c2 − dy1·s1`
//!   (the rotation by −θ when c1 = c2, s1 = s2, as `Rope::cos_sin` builds them)
//!
//! and for each ChatGLM pair (a, b) with angle θ_i: `y = (a·c − b·s, b·c + a·s)`, backward
//! `(da, db) = (dy_a·c + dy_b·s, dy_b·c − dy_a·s)`.
//!
//! cos and sin are constants (no gradient). The forward writes a contiguous `[b, heads, s, d]`
//! (what attention reads); the backward writes dx in x's own memory order, so the projection's
//! `reshape`/`swap_dims` backward stays a view instead of a copy. The composition is about seven
//! ops (two slices, neg, cat, two muls, add) each over the whole tensor.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::flex::F32;
use super::simd::{self, Kernel, Lanes};

/// Llama rotary: x·cos + rotate_half(x)·sin. x: [b, h, s, d]; cos, sin: [b or 1, 1, s, d].
pub fn rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [b, _, s, d] = x.dims();
    let [cb, one, cs, cd] = cos.dims();
    let fits = (cb == b || cb == 1) && one == 1 && cs == s && cd == d && d % 2 == 0;
    if super::fused(&x) && super::fused(cos) && fits && sin.dims() == cos.dims() {
        Tensor::from_dispatch(<Dispatch as RopeOps>::rope(
            x.into_dispatch(),
            cos.clone().into_dispatch(),
            sin.clone().into_dispatch(),
        ))
    } else {
        reference(x, cos, sin)
    }
}

/// ChatGLM rotary: the first `rot` dims as rotated pairs, the rest passed.
/// x: [b, h, s, d]; cos, sin: [b or 1, 1, s, rot/2, 1].
pub fn rope_pairs(x: Tensor<4>, cos: &Tensor<5>, sin: &Tensor<5>, rot: usize) -> Tensor<4> {
    let [b, _, s, d] = x.dims();
    let [cb, one, cs, half, last] = cos.dims();
    let fits = (cb == b || cb == 1)
        && one == 1
        && cs == s
        && last == 1
        && rot % 2 == 0
        && half * 2 == rot
        && rot <= d;
    if super::fused(&x) && super::fused(cos) && fits && sin.dims() == cos.dims() {
        let flat = |t: &Tensor<5>| t.clone().reshape([cb, 1, s, half]).into_dispatch();
        Tensor::from_dispatch(<Dispatch as RopeOps>::rope_pairs(
            x.into_dispatch(),
            flat(cos),
            flat(sin),
        ))
    } else {
        reference_pairs(x, cos, sin, rot)
    }
}

/// The Llama composition (transformers' `rotate_half`), and the path for every other backend.
pub fn reference(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [b, h, s, d] = x.dims();
    let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..d / 2]);
    let x2 = x.clone().slice([0..b, 0..h, 0..s, d / 2..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// The ChatGLM composition (`apply_rotary_pos_emb` of `modeling_chatglm.py`).
pub fn reference_pairs(x: Tensor<4>, cos: &Tensor<5>, sin: &Tensor<5>, r: usize) -> Tensor<4> {
    let [b, h, s, d] = x.dims();
    let pass = x.clone().slice([0..b, 0..h, 0..s, r..d]);
    let pairs = x
        .slice([0..b, 0..h, 0..s, 0..r])
        .reshape([b, h, s, r / 2, 2]);
    let x0 = pairs.clone().slice([0..b, 0..h, 0..s, 0..r / 2, 0..1]);
    let x1 = pairs.slice([0..b, 0..h, 0..s, 0..r / 2, 1..2]);
    let out0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
    let out1 = x1 * cos.clone() + x0 * sin.clone();
    let rotated = Tensor::cat(vec![out0, out1], 4).reshape([b, h, s, r]);
    Tensor::cat(vec![rotated, pass], 3)
}

#[backend_extension(Flex, Autodiff)]
pub trait RopeOps: Backend {
    /// x: [b, h, s, d]; cos, sin: [b or 1, 1, s, d] -> [b, h, s, d]
    fn rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    /// x: [b, h, s, d]; cos, sin: [b or 1, 1, s, rot/2] -> [b, h, s, d]
    fn rope_pairs(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Llama: halves of the head.
    Half,
    /// ChatGLM: interleaved pairs of the first 2·(cos width) dims.
    Pairs,
}

impl RopeOps for Flex {
    fn rope(x: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        let angles = Angles::new(cos, sin);
        rotate(&Heads::new(x), &angles, Mode::Half, false, None)
    }

    fn rope_pairs(x: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        let angles = Angles::new(cos, sin);
        rotate(&Heads::new(x), &angles, Mode::Pairs, false, None)
    }
}

impl<C: CheckpointStrategy> RopeOps for Autodiff<Flex, C> {
    fn rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        tracked::<C>(x, cos, sin, Mode::Half)
    }

    fn rope_pairs(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        tracked::<C>(x, cos, sin, Mode::Pairs)
    }
}

#[derive(Debug)]
struct RopeBackward;

impl Backward<Flex, 1> for RopeBackward {
    /// cos, sin, the mode, and x's memory layout (dims and strides) for dx.
    type State = (FlexTensor, FlexTensor, Mode, [usize; 4], [isize; 4]);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let dy = Heads::new(grads.consume::<Flex>(&ops.node));
        let Some(node) = node_x else { return };
        let (cos, sin, mode, _dims, strides) = ops.state;
        let angles = Angles::new(cos, sin);
        let dx = rotate(&dy, &angles, mode, true, Some(strides));
        grads.register::<Flex>(node.id, dx);
    }
}

type AdTensor<C> = FloatTensor<Autodiff<Flex, C>>;

fn tracked<C: CheckpointStrategy>(
    x: AdTensor<C>,
    cos: AdTensor<C>,
    sin: AdTensor<C>,
    mode: Mode,
) -> AdTensor<C> {
    // cos and sin are constants: no graph edge.
    let (cos, sin) = (cos.into_primitive(), sin.into_primitive());
    match RopeBackward
        .prepare::<C>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let x = Heads::new(x.into_primitive());
            let angles = Angles::new(cos.clone(), sin.clone());
            let out = rotate(&x, &angles, mode, false, None);
            prep.finish((cos, sin, mode, x.dims, x.strides), out)
        }
        OpsKind::UnTracked(prep) => {
            let angles = Angles::new(cos, sin);
            prep.finish(rotate(
                &Heads::new(x.into_primitive()),
                &angles,
                mode,
                false,
                None,
            ))
        }
    }
}

/// A [b, h, s, d] f32 tensor whose head rows are contiguous (copied to contiguous otherwise).
struct Heads {
    tensor: FlexTensor,
    dims: [usize; 4],
    /// element strides of b, h, s, d (d's is 1)
    strides: [isize; 4],
}

impl Heads {
    fn new(tensor: FlexTensor) -> Self {
        assert_eq!(tensor.dtype(), DType::F32, "rope takes f32 tensors");
        let read = |t: &FlexTensor| -> ([usize; 4], [isize; 4]) {
            let l = t.layout();
            let d = l.shape().dims::<4>();
            let s = l.strides();
            (d, [s[0], s[1], s[2], s[3]])
        };
        let (dims, strides) = read(&tensor);
        let ok = (strides[3] == 1 || dims[3] <= 1) && strides.iter().all(|&s| s >= 0);
        let tensor = if ok { tensor } else { tensor.to_contiguous() };
        let (dims, strides) = read(&tensor);
        Self {
            tensor,
            dims,
            strides,
        }
    }

    /// The head row (b, h, s): d values.
    #[inline]
    fn row(&self, b: usize, h: usize, s: usize) -> &[f32] {
        let at = self.tensor.layout().start_offset() as isize
            + b as isize * self.strides[0]
            + h as isize * self.strides[1]
            + s as isize * self.strides[2];
        &self.tensor.storage::<f32>()[at as usize..][..self.dims[3]]
    }
}

/// cos and sin rows for each (batch, position): [cb, 1, s, w] contiguous.
struct Angles {
    cos: F32,
    sin: F32,
    batch: usize,
    seq: usize,
    width: usize,
}

impl Angles {
    fn new(cos: FlexTensor, sin: FlexTensor) -> Self {
        let (cos, sin) = (F32::new(cos), F32::new(sin));
        let d = cos.dims();
        let (batch, seq, width) = (d[0], d[2], d[3]);
        assert_eq!(cos.dims(), sin.dims(), "rope: cos and sin shapes");
        Self {
            cos,
            sin,
            batch,
            seq,
            width,
        }
    }

    #[inline]
    fn rows(&self, b: usize, s: usize) -> (&[f32], &[f32]) {
        let b = if self.batch == 1 { 0 } else { b };
        let at = (b * self.seq + s) * self.width;
        (
            &self.cos.as_slice()[at..][..self.width],
            &self.sin.as_slice()[at..][..self.width],
        )
    }
}

/// The rotation of every head row of `x` (the transposed one when `transpose`), written
/// contiguous [b, h, s, d], or, with `like`, in the memory order of a tensor with those strides
/// (when they are a dense permutation; contiguous otherwise).
fn rotate(
    x: &Heads,
    angles: &Angles,
    mode: Mode,
    transpose: bool,
    like: Option<[isize; 4]>,
) -> FlexTensor {
    let [b, h, s, d] = x.dims;
    assert!(angles.batch == b || angles.batch == 1, "rope: cos batch");
    assert_eq!(angles.seq, s, "rope: cos positions");
    match mode {
        Mode::Half => assert_eq!(angles.width, d, "rope: cos width"),
        Mode::Pairs => assert!(2 * angles.width <= d, "rope: rotary width"),
    }
    // Memory order of the three leading dims, outermost first.
    let order = like
        .and_then(|st| dense_order([b, h, s, d], st))
        .unwrap_or([0, 1, 2]);
    let lead = [b, h, s];
    let (n1, n2) = (lead[order[1]], lead[order[2]]);
    let rows = b * h * s;
    let mut out = vec![0f32; rows * d];
    let chunk = simd::chunk_rows(rows, d);
    out.par_chunks_mut(chunk * d.max(1))
        .enumerate()
        .for_each(|(c, block)| {
            for (i, y) in block.chunks_exact_mut(d.max(1)).enumerate() {
                let p = c * chunk + i;
                let mut at = [0usize; 3];
                at[order[0]] = p / (n1 * n2);
                at[order[1]] = p / n2 % n1;
                at[order[2]] = p % n2;
                let (cos, sin) = angles.rows(at[0], at[2]);
                let xr = x.row(at[0], at[1], at[2]);
                match mode {
                    Mode::Half => simd::dispatch(HalfRow {
                        x: xr,
                        cos,
                        sin,
                        y,
                        transpose,
                    }),
                    Mode::Pairs => pairs_row(xr, cos, sin, y, transpose),
                }
            }
        });
    let physical = [lead[order[0]], lead[order[1]], lead[order[2]], d];
    let t = super::flex::tensor(out, physical);
    if order == [0, 1, 2] {
        return t;
    }
    // Logical dim i is physical position inv[i].
    let mut inv = [0usize, 0, 0, 3];
    for (pos, &dim) in order.iter().enumerate() {
        inv[dim] = pos;
    }
    t.permute(&inv)
}

/// The order (outermost first) of b, h, s in memory when `strides` lay [b, h, s, d] out densely
/// with d innermost.
fn dense_order(dims: [usize; 4], strides: [isize; 4]) -> Option<[usize; 3]> {
    if strides[3] != 1 {
        return None;
    }
    let mut order = [0usize, 1, 2];
    order.sort_by_key(|&i| std::cmp::Reverse(strides[i]));
    let mut expected = dims[3] as isize;
    for &i in order.iter().rev() {
        if dims[i] > 1 && strides[i] != expected {
            return None;
        }
        expected *= dims[i] as isize;
    }
    Some(order)
}

/// One Llama head row: y1 = x1·c1 − x2·s1, y2 = x2·c2 + x1·s2 (transposed: dx1 = x1·c1 + x2·s2,
/// dx2 = x2·c2 − x1·s1, with x the output gradient).
struct HalfRow<'a> {
    x: &'a [f32],
    cos: &'a [f32],
    sin: &'a [f32],
    y: &'a mut [f32],
    transpose: bool,
}

impl Kernel for HalfRow<'_> {
    type Out = ();
    #[inline(always)]
    fn run<V: Lanes>(self) {
        let d = self.x.len();
        assert!(self.cos.len() == d && self.sin.len() == d && self.y.len() == d && d % 2 == 0);
        let h = d / 2;
        let p = (
            self.x.as_ptr(),
            self.cos.as_ptr(),
            self.sin.as_ptr(),
            self.y.as_mut_ptr(),
        );
        let m = h - h % V::N;
        let mut j = 0;
        // SAFETY: j + lanes <= h, so j + h + lanes <= d for the four rows of length d.
        unsafe {
            while j < m {
                half_at::<V>(p, h, j, self.transpose);
                j += V::N;
            }
            while j < h {
                half_at::<f32>(p, h, j, self.transpose);
                j += 1;
            }
        }
    }
}

#[inline(always)]
unsafe fn half_at<W: Lanes>(
    (x, c, s, y): (*const f32, *const f32, *const f32, *mut f32),
    h: usize,
    j: usize,
    transpose: bool,
) {
    let (x1, x2) = (W::load(x.add(j)), W::load(x.add(j + h)));
    let (c1, c2) = (W::load(c.add(j)), W::load(c.add(j + h)));
    let (s1, s2) = (W::load(s.add(j)), W::load(s.add(j + h)));
    let (y1, y2) = if transpose {
        (x1.mul(c1).add(x2.mul(s2)), x2.mul(c2).sub(x1.mul(s1)))
    } else {
        (x1.mul(c1).sub(x2.mul(s1)), x2.mul(c2).add(x1.mul(s2)))
    };
    y1.store(y.add(j));
    y2.store(y.add(j + h));
}

/// One ChatGLM head row: pairs i < cos.len() rotated, the rest copied.
fn pairs_row(x: &[f32], cos: &[f32], sin: &[f32], y: &mut [f32], transpose: bool) {
    let r = 2 * cos.len();
    let sign = if transpose { -1.0 } else { 1.0 };
    for (((yp, xp), &c), &s) in y[..r]
        .chunks_exact_mut(2)
        .zip(x[..r].chunks_exact(2))
        .zip(cos)
        .zip(sin)
    {
        let s = sign * s;
        yp[0] = xp[0] * c - xp[1] * s;
        yp[1] = xp[1] * c + xp[0] * s;
    }
    y[r..].copy_from_slice(&x[r..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::rope::{Rope, RopeScaling};
    use burn::tensor::{Device, Distribution, TensorData};

    fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// [b, h, s, d] as the attention builds it: the [b, s, h, d] projection, heads swapped in.
    fn heads(b: usize, h: usize, s: usize, d: usize, device: &Device) -> Tensor<4> {
        Tensor::<4>::random([b, s, h, d], Distribution::Normal(0.0, 1.0), device).swap_dims(1, 2)
    }

    fn positions(b: usize, s: usize) -> Vec<usize> {
        (0..b * s).map(|i| 3 + i % s + 5 * (i / s)).collect()
    }

    #[test]
    fn fused_rope_matches_rotate_half_in_values_and_gradient() {
        let device = Device::flex().autodiff();
        // 3 heads × 37 positions × batch 2 = 222 rows (not a multiple of the chunk), d = 40
        // (half 20: not a multiple of 8 lanes).
        let (b, h, s, d) = (2, 3, 37, 40);
        let (cos, sin) =
            Rope::new(d, 10000.0, &RopeScaling::None).cos_sin(&positions(b, s), b, s, &device);
        let x0 = Tensor::<4>::random([b, s, h, d], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let probe = Tensor::<4>::random([b, h, s, d], Distribution::Normal(0.0, 1.0), &device);
        let fused = rope(x0.clone().swap_dims(1, 2), &cos, &sin);
        let want = reference(x0.clone().swap_dims(1, 2), &cos, &sin);
        assert!(max_diff(fused.clone(), want.clone()) <= 1e-5);
        let g1 = x0.grad(&(fused * probe.clone()).sum().backward()).unwrap();
        let g2 = x0.grad(&(want * probe).sum().backward()).unwrap();
        assert!(max_diff(g1, g2) <= 1e-5);
    }

    #[test]
    fn fused_rope_on_a_contiguous_tensor_with_general_cos_and_sin_matches() {
        // cos/sin that are not the halves-repeated Rope tables: checks the full formula.
        let device = Device::flex().autodiff();
        let (b, h, s, d) = (1, 5, 300, 18);
        let x = Tensor::<4>::random([b, h, s, d], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let cos = Tensor::<4>::random([1, 1, s, d], Distribution::Uniform(-1.0, 1.0), &device);
        let sin = Tensor::<4>::random([1, 1, s, d], Distribution::Uniform(-1.0, 1.0), &device);
        let fused = rope(x.clone(), &cos, &sin);
        let want = reference(x.clone(), &cos, &sin);
        assert!(max_diff(fused.clone(), want.clone()) <= 1e-5);
        let g1 = x.grad(&(fused.clone() * fused).sum().backward()).unwrap();
        let g2 = x.grad(&(want.clone() * want).sum().backward()).unwrap();
        assert!(max_diff(g1, g2) <= 1e-4);
    }

    #[test]
    fn fused_rope_without_autodiff_matches_for_one_decoded_token() {
        let device = Device::flex();
        let (b, h, s, d) = (3, 4, 1, 64);
        let (cos, sin) =
            Rope::new(d, 10000.0, &RopeScaling::None).cos_sin(&[7, 100, 4095], b, s, &device);
        let x = heads(b, h, s, d, &device);
        assert!(max_diff(rope(x.clone(), &cos, &sin), reference(x, &cos, &sin)) <= 1e-5);
    }

    #[test]
    fn the_rope_gradient_is_laid_out_like_the_input_so_the_head_swap_stays_a_view() {
        let values: Vec<f32> = (0..2 * 5 * 3 * 8).map(|v| v as f32).collect();
        // [b, s, h, d] memory seen as [b, h, s, d]
        let x = Heads::new(crate::kernels::flex::tensor(values, [2, 5, 3, 8]).transpose(1, 2));
        let angles = Angles::new(
            crate::kernels::flex::tensor(vec![1.0; 5 * 8], [1, 1, 5, 8]),
            crate::kernels::flex::tensor(vec![0.0; 5 * 8], [1, 1, 5, 8]),
        );
        let dx = rotate(&x, &angles, Mode::Half, true, Some(x.strides));
        assert_eq!(dx.layout().strides(), &x.strides[..]);
        assert_eq!(dx.layout().shape().dims::<4>(), [2, 3, 5, 8]);
        // cos = 1, sin = 0: the identity, element for element.
        assert_eq!(
            dx.to_contiguous().into_data(),
            x.tensor.to_contiguous().into_data()
        );
    }

    fn glm_tables(b: usize, s: usize, rot: usize, device: &Device) -> (Tensor<5>, Tensor<5>) {
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in positions(b, s) {
            for i in 0..rot / 2 {
                let angle = p as f32 / 10000f32.powf(2.0 * i as f32 / rot as f32);
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let shape = [b, 1, s, rot / 2, 1];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }

    #[test]
    fn fused_pair_rope_matches_the_chatglm_composition_in_values_and_gradient() {
        let device = Device::flex().autodiff();
        let (b, h, s, d, rot) = (2, 3, 29, 24, 12);
        let (cos, sin) = glm_tables(b, s, rot, &device);
        let x0 = Tensor::<4>::random([b, s, h, d], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let probe = Tensor::<4>::random([b, h, s, d], Distribution::Normal(0.0, 1.0), &device);
        let fused = rope_pairs(x0.clone().swap_dims(1, 2), &cos, &sin, rot);
        let want = reference_pairs(x0.clone().swap_dims(1, 2), &cos, &sin, rot);
        assert!(max_diff(fused.clone(), want.clone()) <= 1e-5);
        let g1 = x0.grad(&(fused * probe.clone()).sum().backward()).unwrap();
        let g2 = x0.grad(&(want * probe).sum().backward()).unwrap();
        assert!(max_diff(g1, g2) <= 1e-5);
    }
}
