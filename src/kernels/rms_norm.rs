//! RMSNorm (Zhang & Sennrich 2019, arXiv 1910.07467) as transformers' `LlamaRMSNorm` in f32:
//! `variance = x.pow(2).mean(-1, keepdim=True); x * torch.rsqrt(variance + eps)`, then `weight *`.
//! ChatGLM's `RMSNorm` is the same formula.
//!
//! Shapes: x `[.., n]`, weight `[n]` -> `[.., n]`; the backward state keeps x, weight and one
//! `rstd = 1 / sqrt(mean(x²) + eps)` per row.
//!
//! Math, per row, with x̂ = x·rstd and g = dy·w:
//! - forward   `y = x̂·w`
//! - backward  `dx = rstd·(g − x̂·mean(g·x̂))`, `dw = Σ_rows dy·x̂` (only when weight is tracked:
//!   full fine-tuning, `modules_to_save`)
//!
//! The fused path (flex, f32) is one read of x and one write of y, rows split over rayon's pool,
//! eight lanes at a time; the composition is five ops, each a full pass with its own tensor kept
//! by the autodiff graph.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::flex::F32;
use super::rows::Rows;
use super::simd::{self, Kernel, Lanes};

/// `weight · x / sqrt(mean(x²) + eps)` over the last dim. x: [.., n], weight: [n] -> [.., n].
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    if super::fused(&x) && super::fused(&weight) && weight.dims()[0] == x.dims()[D - 1] {
        Tensor::from_dispatch(<Dispatch as RmsNormOps>::rms_norm(
            x.into_dispatch(),
            weight.into_dispatch(),
            eps,
        ))
    } else {
        reference(x, weight, eps)
    }
}

/// The composition the models used before the kernel, and the path for every other backend.
pub fn reference<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    let variance = x.clone().powi_scalar(2).mean_dim(D - 1);
    let normed = x * (variance + eps).sqrt().recip();
    normed * weight.unsqueeze::<D>()
}

#[backend_extension(Flex, Autodiff)]
pub trait RmsNormOps: Backend {
    /// x: [.., n], weight: [n] -> [.., n]
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;
}

impl RmsNormOps for Flex {
    fn rms_norm(x: FlexTensor, weight: FlexTensor, eps: f64) -> FlexTensor {
        let weight = F32::new(weight);
        forward(&Rows::new(x), weight.as_slice(), eps, false).0
    }
}

impl<C: CheckpointStrategy> RmsNormOps for Autodiff<Flex, C> {
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct RmsNormBackward;

        impl Backward<Flex, 2> for RmsNormBackward {
            /// x, weight, rstd per row
            type State = (FlexTensor, FlexTensor, Vec<f32>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_weight] = ops.parents;
                let dy = Rows::new(grads.consume::<Flex>(&ops.node));
                let (x, weight, rstd) = ops.state;
                let (x, weight) = (Rows::new(x), F32::new(weight));
                let (dx, dw) = backward(
                    &x,
                    weight.as_slice(),
                    &rstd,
                    &dy,
                    node_x.is_some(),
                    node_weight.is_some(),
                );
                if let (Some(node), Some(dx)) = (node_x, dx) {
                    grads.register::<Flex>(node.id, dx);
                }
                if let (Some(node), Some(dw)) = (node_weight, dw) {
                    grads.register::<Flex>(node.id, dw);
                }
            }
        }

        match RmsNormBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = Rows::new(x.into_primitive());
                let weight = F32::new(weight.into_primitive());
                let (out, rstd) = forward(&x, weight.as_slice(), eps, true);
                prep.finish((x.tensor().clone(), weight.into_inner(), rstd), out)
            }
            OpsKind::UnTracked(prep) => {
                let weight = F32::new(weight.into_primitive());
                prep.finish(
                    forward(
                        &Rows::new(x.into_primitive()),
                        weight.as_slice(),
                        eps,
                        false,
                    )
                    .0,
                )
            }
        }
    }
}

/// y for every row (a contiguous tensor of x's shape) and, when asked, rstd per row.
fn forward(x: &Rows, w: &[f32], eps: f64, keep_rstd: bool) -> (FlexTensor, Vec<f32>) {
    let (rows, n) = (x.rows(), x.width());
    assert_eq!(w.len(), n, "rms_norm: weight length");
    let mut out = vec![0f32; rows * n];
    let mut rstd = vec![0f32; rows];
    let chunk = simd::chunk_rows(rows, n);
    out.par_chunks_mut(chunk * n.max(1))
        .zip(rstd.par_chunks_mut(chunk))
        .enumerate()
        .for_each(|(c, (block, rstd))| {
            for (i, (y, rstd)) in block.chunks_exact_mut(n.max(1)).zip(rstd).enumerate() {
                let r = c * chunk + i;
                *rstd = simd::dispatch(Fwd {
                    x: x.row(r),
                    w,
                    y,
                    eps: eps as f32,
                });
            }
        });
    if !keep_rstd {
        rstd = Vec::new();
    }
    (super::flex::tensor(out, x.shape()), rstd)
}

/// (dx of x's shape, dw: [n]), each only when asked.
fn backward(
    x: &Rows,
    w: &[f32],
    rstd: &[f32],
    dy: &Rows,
    want_x: bool,
    want_w: bool,
) -> (Option<FlexTensor>, Option<FlexTensor>) {
    let (rows, n) = (x.rows(), x.width());
    assert_eq!(
        (dy.rows(), dy.width()),
        (rows, n),
        "rms_norm: output gradient shape"
    );
    let chunk = simd::chunk_rows(rows, n);
    let mut dx = if want_x {
        vec![0f32; rows * n]
    } else {
        Vec::new()
    };
    let blocks: Vec<(usize, &mut [f32])> = if want_x {
        dx.chunks_mut(chunk * n.max(1)).enumerate().collect()
    } else {
        (0..rows.div_ceil(chunk))
            .map(|c| (c, &mut [][..]))
            .collect()
    };
    // One partial dw per task, summed in task order below (deterministic, unlike a rayon reduce).
    let partial_dw: Vec<Vec<f32>> = blocks
        .into_par_iter()
        .map(|(c, block)| {
            let mut dw = if want_w { vec![0f32; n] } else { Vec::new() };
            let r0 = c * chunk;
            for r in r0..(r0 + chunk).min(rows) {
                let dx_row = if want_x {
                    Some(&mut block[(r - r0) * n..][..n])
                } else {
                    None
                };
                simd::dispatch(Bwd {
                    x: x.row(r),
                    w,
                    dy: dy.row(r),
                    rstd: rstd[r],
                    dx: dx_row,
                    dw: want_w.then_some(&mut dw[..]),
                });
            }
            dw
        })
        .collect();
    let dw = want_w.then(|| {
        let mut dw = vec![0f32; n];
        for part in &partial_dw {
            dw.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
        super::flex::tensor(dw, [n])
    });
    let dx = want_x.then(|| super::flex::tensor(dx, x.shape()));
    (dx, dw)
}

/// One row: y = x·rstd·w; returns rstd.
struct Fwd<'a> {
    x: &'a [f32],
    w: &'a [f32],
    y: &'a mut [f32],
    eps: f32,
}

impl Kernel for Fwd<'_> {
    type Out = f32;
    #[inline(always)]
    fn run<V: Lanes>(self) -> f32 {
        let n = self.x.len();
        assert!(self.w.len() == n && self.y.len() == n);
        let (x, w, y) = (self.x.as_ptr(), self.w.as_ptr(), self.y.as_mut_ptr());
        let m = n - n % V::N;
        // SAFETY (both loops): i + lanes <= n for the three rows of length n.
        let mut ss = unsafe { dot::<V>(x, x, m) };
        for &v in &self.x[m..] {
            ss += v * v;
        }
        let rstd = 1.0 / (ss / n as f32 + self.eps).sqrt();
        let (rv, rs) = (V::splat(rstd), rstd);
        let mut i = 0;
        unsafe {
            while i < m {
                // (x·rstd)·w, the reference's order.
                V::load(x.add(i))
                    .mul(rv)
                    .mul(V::load(w.add(i)))
                    .store(y.add(i));
                i += V::N;
            }
            while i < n {
                *y.add(i) = *x.add(i) * rs * *w.add(i);
                i += 1;
            }
        }
        rstd
    }
}

/// Σ a·b over the first m values (m a multiple of the lanes), four accumulators so the adds
/// do not wait on each other.
///
/// # Safety
/// `a..a + m` and `b..b + m` must be readable.
#[inline(always)]
unsafe fn dot<V: Lanes>(a: *const f32, b: *const f32, m: usize) -> f32 {
    let (mut s0, mut s1, mut s2, mut s3) =
        (V::splat(0.0), V::splat(0.0), V::splat(0.0), V::splat(0.0));
    let m4 = m - m % (4 * V::N);
    let mut i = 0;
    while i < m4 {
        s0 = V::load(a.add(i)).mul_add(V::load(b.add(i)), s0);
        s1 = V::load(a.add(i + V::N)).mul_add(V::load(b.add(i + V::N)), s1);
        s2 = V::load(a.add(i + 2 * V::N)).mul_add(V::load(b.add(i + 2 * V::N)), s2);
        s3 = V::load(a.add(i + 3 * V::N)).mul_add(V::load(b.add(i + 3 * V::N)), s3);
        i += 4 * V::N;
    }
    while i < m {
        s0 = V::load(a.add(i)).mul_add(V::load(b.add(i)), s0);
        i += V::N;
    }
    s0.add(s1).add(s2.add(s3)).hsum()
}

/// Σ a·b·c over the first m values, as [`dot`].
///
/// # Safety
/// `a`, `b`, `c` readable for m values.
#[inline(always)]
unsafe fn dot3<V: Lanes>(a: *const f32, b: *const f32, c: *const f32, m: usize) -> f32 {
    let (mut s0, mut s1) = (V::splat(0.0), V::splat(0.0));
    let m2 = m - m % (2 * V::N);
    let mut i = 0;
    while i < m2 {
        let ab0 = V::load(a.add(i)).mul(V::load(b.add(i)));
        let ab1 = V::load(a.add(i + V::N)).mul(V::load(b.add(i + V::N)));
        s0 = ab0.mul_add(V::load(c.add(i)), s0);
        s1 = ab1.mul_add(V::load(c.add(i + V::N)), s1);
        i += 2 * V::N;
    }
    while i < m {
        s0 = V::load(a.add(i))
            .mul(V::load(b.add(i)))
            .mul_add(V::load(c.add(i)), s0);
        i += V::N;
    }
    s0.add(s1).hsum()
}

/// One row of the backward: dx (when asked) and dw += dy·x̂ (when asked).
struct Bwd<'a> {
    x: &'a [f32],
    w: &'a [f32],
    dy: &'a [f32],
    rstd: f32,
    dx: Option<&'a mut [f32]>,
    dw: Option<&'a mut [f32]>,
}

impl Kernel for Bwd<'_> {
    type Out = ();
    #[inline(always)]
    fn run<V: Lanes>(self) {
        let n = self.x.len();
        assert!(self.w.len() == n && self.dy.len() == n);
        let (x, w, dy) = (self.x.as_ptr(), self.w.as_ptr(), self.dy.as_ptr());
        let m = n - n % V::N;
        let r = V::splat(self.rstd);
        // SAFETY (every loop): i + lanes <= n for the rows of length n (dx, dw checked below).
        if let Some(dw) = self.dw {
            assert_eq!(dw.len(), n);
            let dwp = dw.as_mut_ptr();
            let mut i = 0;
            unsafe {
                while i < m {
                    let xh = V::load(x.add(i)).mul(r);
                    V::load(dy.add(i))
                        .mul_add(xh, V::load(dwp.add(i)))
                        .store(dwp.add(i));
                    i += V::N;
                }
                while i < n {
                    *dwp.add(i) += *dy.add(i) * (*x.add(i) * self.rstd);
                    i += 1;
                }
            }
        }
        let Some(dx) = self.dx else { return };
        assert_eq!(dx.len(), n);
        let dxp = dx.as_mut_ptr();
        // c = mean(g·x̂) = rstd·Σ (dy·w)·x / n, g = dy·w
        let mut dot = 0.0;
        for ((&dy, &w), &x) in self.dy.iter().zip(self.w).zip(self.x).skip(m) {
            dot += dy * w * x;
        }
        // SAFETY: m <= n for the three rows of length n.
        let dot = (unsafe { dot3::<V>(dy, w, x, m) } + dot) * self.rstd;
        let c = dot / n as f32;
        let cv = V::splat(c);
        let mut i = 0;
        unsafe {
            while i < m {
                let g = V::load(dy.add(i)).mul(V::load(w.add(i)));
                let xh = V::load(x.add(i)).mul(r);
                // rstd·(g − x̂·c)
                r.mul(g.sub(xh.mul(cv))).store(dxp.add(i));
                i += V::N;
            }
            while i < n {
                let g = *dy.add(i) * *w.add(i);
                let xh = *x.add(i) * self.rstd;
                *dxp.add(i) = self.rstd * (g - xh * c);
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::tensor::{Device, Distribution};

    fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    fn rel_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let scale = b.clone().abs().max().into_scalar::<f32>().max(1e-30);
        max_diff(a, b) / scale
    }

    #[test]
    fn fused_rms_norm_matches_the_composition_on_odd_sizes_without_autodiff() {
        let device = Device::flex();
        // 41 rows, 99 columns: neither a multiple of the chunk nor of the 8 lanes.
        let x = Tensor::<3>::random([1, 41, 99], Distribution::Normal(0.3, 2.0), &device);
        let w = Tensor::<1>::random([99], Distribution::Uniform(0.5, 1.5), &device);
        let fused = rms_norm(x.clone(), w.clone(), 1e-5);
        assert!(rel_diff(fused, reference(x, w, 1e-5)) <= 1e-6);
    }

    #[test]
    fn fused_rms_norm_gradients_match_the_composition_for_x_and_weight() {
        let device = Device::flex().autodiff();
        // 3 × 190 rows of 203: several rayon tasks, the last one short.
        let x = Tensor::<3>::random([3, 190, 203], Distribution::Normal(0.0, 1.5), &device)
            .require_grad();
        let w = Tensor::<1>::random([203], Distribution::Uniform(0.5, 1.5), &device).require_grad();
        let probe = Tensor::<3>::random([3, 190, 203], Distribution::Normal(0.0, 1.0), &device);
        let fused = rms_norm(x.clone(), w.clone(), 1e-6);
        let want = reference(x.clone(), w.clone(), 1e-6);
        assert!(rel_diff(fused.clone(), want.clone()) <= 1e-6);
        let g1 = (fused * probe.clone()).sum().backward();
        let g2 = (want * probe).sum().backward();
        let dx = rel_diff(x.grad(&g1).unwrap(), x.grad(&g2).unwrap());
        let dw = rel_diff(w.grad(&g1).unwrap(), w.grad(&g2).unwrap());
        assert!(dx <= 1e-5, "dx relative difference {dx}");
        assert!(dw <= 1e-5, "dw relative difference {dw}");
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient_and_x_still_does() {
        let device = Device::flex().autodiff();
        let x =
            Tensor::<2>::random([7, 13], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let w = Param::from_tensor(Tensor::<1>::ones([13], &device)).set_require_grad(false);
        let grads = rms_norm(x.clone(), w.val(), 1e-5).sum().backward();
        assert!(x.grad(&grads).is_some());
        assert!(w.val().grad(&grads).is_none());
    }

    #[test]
    fn only_the_weight_tracked_gives_the_weight_gradient_of_the_composition() {
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::random([300, 77], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<1>::random([77], Distribution::Uniform(0.5, 1.5), &device).require_grad();
        let g1 = rms_norm(x.clone(), w.clone(), 1e-5).sum().backward();
        let g2 = reference(x.clone(), w.clone(), 1e-5).sum().backward();
        assert!(x.grad(&g1).is_none());
        assert!(rel_diff(w.grad(&g1).unwrap(), w.grad(&g2).unwrap()) <= 1e-5);
    }
}
