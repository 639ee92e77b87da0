//! SwiGLU: `silu(gate) · up` (Shazeer 2020, arXiv 2002.05202), the activation of Llama's MLP
//! (transformers `LlamaMLP.forward`: `down_proj(act_fn(gate_proj(x)) * up_proj(x))`) and of
//! ChatGLM's (`swiglu(x)`: `chunk(2, dim=-1)` of `dense_h_to_4h`, then `silu(x0) * x1`).
//!
//! Shapes: gate, up `[.., n]` -> `[.., n]`; [`swiglu_packed`] takes `[.., 2n]` = gate | up.
//!
//! Math, with σ(g) = 1 / (1 + e^−g), silu(g) = g·σ(g):
//! - forward   `y = g·σ(g)·u`
//! - backward  `du = dy·g·σ(g)`, `dg = dy·u·σ(g)·(1 + g·(1 − σ(g)))` (σ recomputed from g, not saved)
//!
//! The fused path (flex, f32) runs one pass over the rows on rayon's pool, eight lanes at a time
//! (`simd::exp` is a vectorised Cephes `expf`); the autodiff graph keeps gate and up (views of the
//! tensors it already holds) instead of the composition's σ, silu and product. Gate and up may be
//! views whose rows are strided (a slice of a wider last dim): they are read in place.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::rows::Rows;
use super::simd::{self, Kernel, Lanes};

/// silu(gate) · up. gate, up: [.., n] -> [.., n].
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    if super::fused(&gate) && super::fused(&up) && gate.dims() == up.dims() {
        Tensor::from_dispatch(<Dispatch as SwigluOps>::swiglu(
            gate.into_dispatch(),
            up.into_dispatch(),
        ))
    } else {
        reference(gate, up)
    }
}

/// silu(x[.., :n]) · x[.., n:]. x: [.., 2n] -> [.., n] (ChatGLM's fused `dense_h_to_4h` output).
pub fn swiglu_packed<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let width = x.dims()[D - 1];
    if super::fused(&x) && width % 2 == 0 {
        Tensor::from_dispatch(<Dispatch as SwigluOps>::swiglu_packed(x.into_dispatch()))
    } else {
        let (gate, up) = halves(x);
        reference(gate, up)
    }
}

/// The composition the models used before the kernel, and the path for every other backend.
pub fn reference<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    burn::tensor::activation::silu(gate) * up
}

/// x: [.., 2n] -> ([.., :n], [.., n:]) (`torch.chunk(x, 2, dim=-1)`).
pub fn halves<const D: usize>(x: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
    let width = x.dims()[D - 1];
    let gate = x.clone().narrow(D - 1, 0, width / 2);
    let up = x.narrow(D - 1, width / 2, width / 2);
    (gate, up)
}

#[backend_extension(Flex, Autodiff)]
pub trait SwigluOps: Backend {
    /// gate, up: [.., n] -> silu(gate) · up: [.., n]
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
    /// x: [.., 2n] -> silu(x[.., :n]) · x[.., n:]: [.., n]
    fn swiglu_packed(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl SwigluOps for Flex {
    fn swiglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        forward(&Rows::new(gate), &Rows::new(up))
    }

    fn swiglu_packed(x: FlexTensor) -> FlexTensor {
        let (gate, up) = split(&Rows::new(x));
        forward(&gate, &up)
    }
}

impl<C: CheckpointStrategy> SwigluOps for Autodiff<Flex, C> {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SwigluBackward;

        impl Backward<Flex, 2> for SwigluBackward {
            /// gate, up
            type State = (FlexTensor, FlexTensor);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_gate, node_up] = ops.parents;
                let dy = Rows::new(grads.consume::<Flex>(&ops.node));
                let (gate, up) = (Rows::new(ops.state.0), Rows::new(ops.state.1));
                let n = gate.width();
                let mut dgate = vec![0f32; gate.rows() * n];
                let mut dup = vec![0f32; gate.rows() * n];
                backward(&gate, &up, &dy, &mut dgate, &mut dup);
                if let Some(node) = node_gate {
                    grads.register::<Flex>(node.id, super::flex::tensor(dgate, gate.shape()));
                }
                if let Some(node) = node_up {
                    grads.register::<Flex>(node.id, super::flex::tensor(dup, up.shape()));
                }
            }
        }

        match SwigluBackward
            .prepare::<C>([gate.node(), up.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (g, u) = (
                    Rows::new(gate.into_primitive()),
                    Rows::new(up.into_primitive()),
                );
                let out = forward(&g, &u);
                prep.finish((g.tensor().clone(), u.tensor().clone()), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(
                &Rows::new(gate.into_primitive()),
                &Rows::new(up.into_primitive()),
            )),
        }
    }

    fn swiglu_packed(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SwigluPackedBackward;

        impl Backward<Flex, 1> for SwigluPackedBackward {
            /// x = gate | up
            type State = FlexTensor;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x] = ops.parents;
                let dy = Rows::new(grads.consume::<Flex>(&ops.node));
                let Some(node) = node_x else { return };
                let x = Rows::new(ops.state);
                let (gate, up) = split(&x);
                let n = gate.width();
                // d x = d gate | d up, written into one [rows, 2n] buffer.
                let mut dx = vec![0f32; x.rows() * 2 * n];
                backward_packed(&gate, &up, &dy, &mut dx);
                grads.register::<Flex>(node.id, super::flex::tensor(dx, x.shape()));
            }
        }

        match SwigluPackedBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = Rows::new(x.into_primitive());
                let (gate, up) = split(&x);
                let out = forward(&gate, &up);
                prep.finish(x.tensor().clone(), out)
            }
            OpsKind::UnTracked(prep) => {
                let (gate, up) = split(&Rows::new(x.into_primitive()));
                prep.finish(forward(&gate, &up))
            }
        }
    }
}

fn split(x: &Rows) -> (Rows, Rows) {
    let n = x.width() / 2;
    (x.cols(0, n), x.cols(n, n))
}

/// y[r] = silu(g[r]) · u[r] for every row, a contiguous tensor of g's shape.
fn forward(g: &Rows, u: &Rows) -> FlexTensor {
    assert_eq!(
        (g.rows(), g.width()),
        (u.rows(), u.width()),
        "swiglu: gate and up shapes"
    );
    let (rows, n) = (g.rows(), g.width());
    let mut out = vec![0f32; rows * n];
    let chunk = simd::chunk_rows(rows, n);
    out.par_chunks_mut(chunk * n.max(1))
        .enumerate()
        .for_each(|(c, block)| {
            for (i, y) in block.chunks_exact_mut(n.max(1)).enumerate() {
                let r = c * chunk + i;
                simd::dispatch(Fwd {
                    g: g.row(r),
                    u: u.row(r),
                    y,
                });
            }
        });
    super::flex::tensor(out, g.shape())
}

/// d gate and d up of every row, into contiguous `[rows, n]` buffers.
fn backward(g: &Rows, u: &Rows, dy: &Rows, dg: &mut [f32], du: &mut [f32]) {
    let (rows, n) = (g.rows(), g.width());
    assert_eq!(
        (dy.rows(), dy.width()),
        (rows, n),
        "swiglu: output gradient shape"
    );
    let chunk = simd::chunk_rows(rows, n);
    let step = chunk * n.max(1);
    dg.par_chunks_mut(step)
        .zip(du.par_chunks_mut(step))
        .enumerate()
        .for_each(|(c, (dg_block, du_block))| {
            let rows_here = dg_block.chunks_exact_mut(n.max(1));
            for (i, (dg, du)) in rows_here
                .zip(du_block.chunks_exact_mut(n.max(1)))
                .enumerate()
            {
                let r = c * chunk + i;
                simd::dispatch(Bwd {
                    g: g.row(r),
                    u: u.row(r),
                    dy: dy.row(r),
                    dg,
                    du,
                });
            }
        });
}

/// d x = d gate | d up for x = gate | up, into `dx: [rows, 2n]`.
fn backward_packed(g: &Rows, u: &Rows, dy: &Rows, dx: &mut [f32]) {
    let (rows, n) = (g.rows(), g.width());
    assert_eq!(
        (dy.rows(), dy.width()),
        (rows, n),
        "swiglu: output gradient shape"
    );
    let chunk = simd::chunk_rows(rows, 2 * n);
    dx.par_chunks_mut(chunk * 2 * n.max(1))
        .enumerate()
        .for_each(|(c, block)| {
            for (i, row) in block.chunks_exact_mut(2 * n.max(1)).enumerate() {
                let r = c * chunk + i;
                let (dg, du) = row.split_at_mut(n);
                simd::dispatch(Bwd {
                    g: g.row(r),
                    u: u.row(r),
                    dy: dy.row(r),
                    dg,
                    du,
                });
            }
        });
}

struct Fwd<'a> {
    g: &'a [f32],
    u: &'a [f32],
    y: &'a mut [f32],
}

impl Kernel for Fwd<'_> {
    type Out = ();
    #[inline(always)]
    fn run<V: Lanes>(self) {
        let n = self.y.len();
        assert!(self.g.len() == n && self.u.len() == n);
        let (g, u, y) = (self.g.as_ptr(), self.u.as_ptr(), self.y.as_mut_ptr());
        let m = n - n % V::N;
        let mut i = 0;
        // SAFETY: i + lanes <= n for the three rows of length n.
        unsafe {
            while i < m {
                fwd_at::<V>(g, u, y, i);
                i += V::N;
            }
            while i < n {
                fwd_at::<f32>(g, u, y, i);
                i += 1;
            }
        }
    }
}

#[inline(always)]
unsafe fn fwd_at<W: Lanes>(g: *const f32, u: *const f32, y: *mut f32, i: usize) {
    let gv = W::load(g.add(i));
    let uv = W::load(u.add(i));
    gv.mul(simd::sigmoid(gv)).mul(uv).store(y.add(i));
}

struct Bwd<'a> {
    g: &'a [f32],
    u: &'a [f32],
    dy: &'a [f32],
    dg: &'a mut [f32],
    du: &'a mut [f32],
}

impl Kernel for Bwd<'_> {
    type Out = ();
    #[inline(always)]
    fn run<V: Lanes>(self) {
        let n = self.g.len();
        assert!(
            self.u.len() == n && self.dy.len() == n && self.dg.len() == n && self.du.len() == n
        );
        let p = (
            self.g.as_ptr(),
            self.u.as_ptr(),
            self.dy.as_ptr(),
            self.dg.as_mut_ptr(),
            self.du.as_mut_ptr(),
        );
        let m = n - n % V::N;
        let mut i = 0;
        // SAFETY: i + lanes <= n for the five rows of length n.
        unsafe {
            while i < m {
                bwd_at::<V>(p, i);
                i += V::N;
            }
            while i < n {
                bwd_at::<f32>(p, i);
                i += 1;
            }
        }
    }
}

type BwdPtrs = (*const f32, *const f32, *const f32, *mut f32, *mut f32);

#[inline(always)]
unsafe fn bwd_at<W: Lanes>((g, u, dy, dg, du): BwdPtrs, i: usize) {
    let gv = W::load(g.add(i));
    let uv = W::load(u.add(i));
    let dyv = W::load(dy.add(i));
    let s = simd::sigmoid(gv);
    let silu = gv.mul(s);
    dyv.mul(silu).store(du.add(i));
    // σ'(g)·g + σ(g) = σ(g)·(1 + g·(1 − σ(g)))
    let one = W::splat(1.0);
    let dsilu = s.mul(gv.mul(one.sub(s)).add(one));
    dyv.mul(uv).mul(dsilu).store(dg.add(i));
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::random(shape, Distribution::Uniform(-6.0, 6.0), device)
    }

    #[test]
    fn fused_swiglu_matches_the_composition_on_odd_sizes_without_autodiff() {
        let device = Device::flex();
        // 37 rows (not a multiple of any chunk), 83 columns (not a multiple of 8 lanes).
        let (gate, up) = (random([37, 83], &device), random([37, 83], &device));
        let fused = swiglu(gate.clone(), up.clone());
        let want = reference(gate, up);
        assert!(max_diff(fused, want) <= 1e-5);
    }

    #[test]
    fn fused_swiglu_gradients_match_the_composition_for_gate_and_up() {
        let device = Device::flex().autodiff();
        // Large enough for several rayon tasks (rows not a multiple of the chunk).
        let gate = random([3, 171, 203], &device).require_grad();
        let up = random([3, 171, 203], &device).require_grad();
        let weights = random([3, 171, 203], &device);
        let fused = swiglu(gate.clone(), up.clone());
        let want = reference(gate.clone(), up.clone());
        assert!(max_diff(fused.clone(), want.clone()) <= 1e-5);
        let g1 = (fused * weights.clone()).sum().backward();
        let g2 = (want * weights).sum().backward();
        let scale = gate.grad(&g2).unwrap().abs().max().into_scalar::<f32>();
        let dg = max_diff(gate.grad(&g1).unwrap(), gate.grad(&g2).unwrap());
        let du = max_diff(up.grad(&g1).unwrap(), up.grad(&g2).unwrap());
        assert!(dg <= 1e-5 * scale.max(1.0), "d gate differs by {dg}");
        assert!(du <= 1e-5 * scale.max(1.0), "d up differs by {du}");
    }

    #[test]
    fn fused_swiglu_gives_a_gradient_only_to_the_tracked_input() {
        let device = Device::flex().autodiff();
        let gate = random([5, 9], &device).require_grad();
        let up = random([5, 9], &device);
        let grads = swiglu(gate.clone(), up.clone()).sum().backward();
        assert!(gate.grad(&grads).is_some());
        assert!(up.grad(&grads).is_none());
    }

    #[test]
    fn packed_swiglu_matches_the_split_composition_in_values_and_gradient() {
        let device = Device::flex().autodiff();
        let x = random([2, 67, 2 * 91], &device).require_grad();
        let weights = random([2, 67, 91], &device);
        let fused = swiglu_packed(x.clone());
        let (gate, up) = halves(x.clone());
        let want = reference(gate, up);
        assert!(max_diff(fused.clone(), want.clone()) <= 1e-5);
        let g1 = x.grad(&(fused * weights.clone()).sum().backward()).unwrap();
        let g2 = x.grad(&(want * weights).sum().backward()).unwrap();
        assert_eq!(g1.dims(), [2, 67, 182]);
        let scale = g2.clone().abs().max().into_scalar::<f32>();
        assert!(max_diff(g1, g2) <= 1e-5 * scale.max(1.0));
    }

    #[test]
    fn swiglu_on_strided_halves_reads_them_in_place_and_matches() {
        let device = Device::flex().autodiff();
        let x = random([4, 33, 2 * 45], &device).require_grad();
        // Each graph gets its own narrow views: burn's tape is consumed by a backward.
        let (gate, up) = halves(x.clone());
        let fused = swiglu(gate, up);
        let (gate, up) = halves(x.clone());
        let want = reference(gate, up);
        assert!(max_diff(fused.clone(), want.clone()) <= 1e-5);
        let g1 = x.grad(&fused.sum().backward()).unwrap();
        let g2 = x.grad(&want.sum().backward()).unwrap();
        assert!(max_diff(g1, g2) <= 1e-4);
    }

    #[test]
    fn swiglu_off_flex_or_in_another_dtype_takes_the_composition() {
        let device = Device::flex();
        let gate = random([3, 5], &device).cast(burn::tensor::DType::F64);
        let up = random([3, 5], &device).cast(burn::tensor::DType::F64);
        assert!(!crate::kernels::fused(&gate));
        let out = swiglu(gate.clone(), up.clone());
        assert_eq!(out.dtype(), burn::tensor::DType::F64);
        assert_eq!(max_diff(out, reference(gate, up)), 0.0);
    }
}
