//! Fused output head + cross-entropy: `Σ_rows −log softmax(h·Wᵀ)[target]` without ever holding
//! the `[rows, vocab]` logits or their gradient (as Liger-Kernel's fused linear cross-entropy,
//! Hsu et al. 2024, arXiv 2410.10989, and the measured prototype in
//! `shared/reference/custom-op/`).
//!
//! Rows are processed in chunks of `CHUNK`; per chunk (m kept rows, V = vocab, H = hidden):
//!
//! ```text
//! logits[m, V] = h[m, H] · Wᵀ                     (gemm)
//! loss        += log Σ exp(logits − max) − (logits[t] − max)
//! dlogits      = softmax(logits) − onehot(t)       (in place)
//! dh[m, H]     = dlogits · W                       (gemm)
//! ```
//!
//! The loss is the graph's output, so `d loss / d h` only needs the incoming scalar at backward
//! time: the forward computes it. Ignored rows (label −100, or out of the vocabulary, as
//! transformers' `ignore_index`) take no gemm at all and get a zero gradient. The head weight is
//! a constant here (a frozen `lm_head` or tied embedding): a trainable or adapted head takes the
//! reference composition instead (`linear_cross_entropy` decides).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Int, Shape, Tensor, TensorData};
use rayon::prelude::*;

use super::flex::{ids, tensor, F32};
use super::softmax;

/// Rows per chunk: the chunk's logits are `CHUNK × vocab` floats per thread (24 MiB at 49152).
const CHUNK: usize = 128;

/// How the head weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadLayout {
    /// `[vocab, hidden]`: a tied token embedding (PyTorch's Linear orientation).
    VocabMajor,
    /// `[hidden, vocab]`: a burn-oriented `Linear` weight.
    HiddenMajor,
}

#[backend_extension(Flex, Autodiff)]
pub trait LinearCrossEntropyOps: Backend {
    /// hidden [N, H], weight [V, H] (`vocab_major`) or [H, V] (a constant: no gradient),
    /// targets [N] (ignored when negative or ≥ V) -> [1]: the summed token loss.
    fn linear_cross_entropy(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        vocab_major: bool,
    ) -> FloatTensor<Self>;
}

/// Shapes of one call.
struct Dims {
    rows: usize,
    hidden: usize,
    vocab: usize,
}

/// `logits[m, V] = h[m, H] · Wᵀ` for the gathered rows `h`.
///
/// # Safety
/// `out` holds `m·V` floats, `h` holds `m·H`, `w` holds `V·H`.
unsafe fn head_forward(
    d: &Dims,
    m: usize,
    h: &[f32],
    w: &[f32],
    vocab_major: bool,
    out: &mut [f32],
) {
    // W as the right-hand [H, V] matrix: element (k, j) at w[j·H + k] (vocab-major) or w[k·V + j].
    let (w_cs, w_rs) = if vocab_major {
        (d.hidden as isize, 1)
    } else {
        (1, d.vocab as isize)
    };
    unsafe {
        gemm::gemm(
            m,
            d.vocab,
            d.hidden,
            out.as_mut_ptr(),
            1,
            d.vocab as isize,
            false,
            h.as_ptr(),
            1,
            d.hidden as isize,
            w.as_ptr(),
            w_cs,
            w_rs,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `dh[m, H] = dlogits[m, V] · W` (W as [V, H]).
///
/// # Safety
/// `dh` holds `m·H` floats, `dlogits` holds `m·V`, `w` holds `V·H`.
unsafe fn head_backward(
    d: &Dims,
    m: usize,
    dlogits: &[f32],
    w: &[f32],
    vocab_major: bool,
    dh: &mut [f32],
) {
    // W as the right-hand [V, H] matrix: element (j, k) at w[j·H + k] (vocab-major) or w[k·V + j].
    let (w_cs, w_rs) = if vocab_major {
        (1, d.hidden as isize)
    } else {
        (d.vocab as isize, 1)
    };
    unsafe {
        gemm::gemm(
            m,
            d.hidden,
            d.vocab,
            dh.as_mut_ptr(),
            1,
            d.hidden as isize,
            false,
            dlogits.as_ptr(),
            1,
            d.vocab as isize,
            w.as_ptr(),
            w_cs,
            w_rs,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Vocabulary entries per widened slab of a bf16/f16 head: `SLAB × hidden` f32 per thread
/// (4 MiB at hidden 1024, 16 MiB at 4096).
const SLAB: usize = 1024;

/// The head weight as the kernel reads it: f32 in place, or bf16/f16 (`--base-dtype`) widened
/// slab by slab into a per-thread buffer, so no f32 copy of the whole head is ever made.
#[derive(Clone, Copy)]
enum HeadWeight<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
    F16(&'a [half::f16]),
}

impl HeadWeight<'_> {
    /// Vocabulary entries `v0..v0 + n` as a row-major `[n, H]` f32 matrix in `buf`.
    fn widen_slab(&self, d: &Dims, v0: usize, n: usize, vocab_major: bool, buf: &mut [f32]) {
        fn widen<T: Copy>(
            w: &[T],
            d: &Dims,
            v0: usize,
            n: usize,
            vocab_major: bool,
            buf: &mut [f32],
            f: impl Fn(T) -> f32,
        ) {
            let h = d.hidden;
            if vocab_major {
                // [V, H]: the slab's rows are contiguous.
                for (o, &v) in buf[..n * h].iter_mut().zip(&w[v0 * h..(v0 + n) * h]) {
                    *o = f(v);
                }
            } else {
                // [H, V]: column j of row k at w[k·V + j].
                for k in 0..h {
                    let row = &w[k * d.vocab + v0..][..n];
                    for (j, &v) in row.iter().enumerate() {
                        buf[j * h + k] = f(v);
                    }
                }
            }
        }
        match *self {
            Self::F32(w) => widen(w, d, v0, n, vocab_major, buf, |v| v),
            Self::Bf16(w) => widen(w, d, v0, n, vocab_major, buf, half::bf16::to_f32),
            Self::F16(w) => widen(w, d, v0, n, vocab_major, buf, half::f16::to_f32),
        }
    }
}

/// `logits[m, v0..v0+n] = h[m, H] · slabᵀ` for a widened slab `[n, H]`.
///
/// # Safety
/// `out` holds `m·V` floats with `v0 + n ≤ V`, `h` holds `m·H`, `slab` holds `n·H`.
unsafe fn slab_forward(
    d: &Dims,
    m: usize,
    h: &[f32],
    slab: &[f32],
    v0: usize,
    n: usize,
    out: &mut [f32],
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            d.hidden,
            out.as_mut_ptr().add(v0),
            1,
            d.vocab as isize,
            false,
            h.as_ptr(),
            1,
            d.hidden as isize,
            slab.as_ptr(),
            d.hidden as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `dh[m, H] (+)= dlogits[m, v0..v0+n] · slab` for a widened slab `[n, H]`; the first slab
/// writes, the others accumulate.
///
/// # Safety
/// `dh` holds `m·H` floats, `dlogits` holds `m·V` with `v0 + n ≤ V`, `slab` holds `n·H`.
unsafe fn slab_backward(
    d: &Dims,
    m: usize,
    dlogits: &[f32],
    slab: &[f32],
    v0: usize,
    n: usize,
    dh: &mut [f32],
) {
    let accumulate = v0 > 0;
    unsafe {
        gemm::gemm(
            m,
            d.hidden,
            n,
            dh.as_mut_ptr(),
            1,
            d.hidden as isize,
            accumulate,
            dlogits.as_ptr().add(v0),
            1,
            d.vocab as isize,
            slab.as_ptr(),
            1,
            d.hidden as isize,
            if accumulate { 1.0f32 } else { 0.0f32 },
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The kernel on plain flex tensors: (loss [1], d loss / d hidden [N, H] when asked).
fn forward_flex(
    hidden: FlexTensor,
    weight: FlexTensor,
    targets: FlexTensor,
    vocab_major: bool,
    want_grad: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let hidden = F32::new(hidden);
    let weight = weight.to_contiguous();
    let (off, len) = (
        weight.layout().start_offset(),
        weight.layout().num_elements(),
    );
    let head = match weight.dtype() {
        DType::BF16 => HeadWeight::Bf16(&weight.storage::<half::bf16>()[off..][..len]),
        DType::F16 => HeadWeight::F16(&weight.storage::<half::f16>()[off..][..len]),
        _ => {
            assert_eq!(weight.dtype(), DType::F32, "the head is f32, bf16 or f16");
            HeadWeight::F32(&weight.storage::<f32>()[off..][..len])
        }
    };
    let wdims = weight.layout().shape();
    let [rows, h] = [hidden.dims()[0], hidden.dims()[1]];
    let vocab = if vocab_major { wdims[0] } else { wdims[1] };
    let d = Dims {
        rows,
        hidden: h,
        vocab,
    };
    let targets = ids(&targets);
    // Only kept rows are computed: SFT data masks every prompt token.
    let kept: Vec<(usize, usize)> = targets
        .iter()
        .enumerate()
        .filter(|(_, &t)| t >= 0 && (t as usize) < vocab)
        .map(|(i, &t)| (i, t as usize))
        .collect();
    let hs = hidden.as_slice();
    let narrow = !matches!(head, HeadWeight::F32(_));
    let chunks: Vec<&[(usize, usize)]> = kept.chunks(CHUNK).collect();
    let results: Vec<(f64, Vec<f32>)> = chunks
        .into_par_iter()
        .map_init(
            || {
                let slab = if narrow { SLAB.min(vocab) * h } else { 0 };
                (
                    vec![0f32; CHUNK * vocab],
                    vec![0f32; CHUNK * h],
                    vec![0f32; slab],
                )
            },
            |(logits, rows_h, slab), chunk| {
                let m = chunk.len();
                for (r, &(i, _)) in chunk.iter().enumerate() {
                    rows_h[r * h..(r + 1) * h].copy_from_slice(&hs[i * h..(i + 1) * h]);
                }
                let lg = &mut logits[..m * vocab];
                let rh = &rows_h[..m * h];
                match head {
                    // SAFETY: the buffers have the sizes head_forward requires.
                    HeadWeight::F32(ws) => unsafe { head_forward(&d, m, rh, ws, vocab_major, lg) },
                    _ => {
                        for v0 in (0..vocab).step_by(SLAB) {
                            let n = SLAB.min(vocab - v0);
                            head.widen_slab(&d, v0, n, vocab_major, slab);
                            // SAFETY: v0 + n ≤ vocab; the slab holds n·H floats.
                            unsafe { slab_forward(&d, m, rh, &slab[..n * h], v0, n, lg) };
                        }
                    }
                }
                let mut loss = 0f64;
                for (row, &(_, t)) in lg.chunks_mut(vocab).zip(chunk) {
                    loss += softmax::softmax_xent_row(row, t, want_grad) as f64;
                }
                let mut dh = Vec::new();
                if want_grad {
                    dh = vec![0f32; m * h];
                    match head {
                        // SAFETY: as above.
                        HeadWeight::F32(ws) => unsafe {
                            head_backward(&d, m, lg, ws, vocab_major, &mut dh)
                        },
                        _ => {
                            for v0 in (0..vocab).step_by(SLAB) {
                                let n = SLAB.min(vocab - v0);
                                head.widen_slab(&d, v0, n, vocab_major, slab);
                                // SAFETY: as in the forward.
                                unsafe { slab_backward(&d, m, lg, &slab[..n * h], v0, n, &mut dh) };
                            }
                        }
                    }
                }
                (loss, dh)
            },
        )
        .collect();
    let loss: f64 = results.iter().map(|(l, _)| l).sum();
    let loss = tensor(vec![loss as f32], [1]);
    let dh = want_grad.then(|| {
        let mut dh = vec![0f32; d.rows * h];
        for ((_, grads), chunk) in results.iter().zip(kept.chunks(CHUNK)) {
            for (r, &(i, _)) in chunk.iter().enumerate() {
                dh[i * h..(i + 1) * h].copy_from_slice(&grads[r * h..(r + 1) * h]);
            }
        }
        tensor(dh, [d.rows, h])
    });
    (loss, dh)
}

impl LinearCrossEntropyOps for Flex {
    fn linear_cross_entropy(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        vocab_major: bool,
    ) -> FloatTensor<Self> {
        forward_flex(hidden, weight, targets, vocab_major, false).0
    }
}

impl<C: CheckpointStrategy> LinearCrossEntropyOps for Autodiff<Flex, C> {
    fn linear_cross_entropy(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        vocab_major: bool,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LinearCrossEntropyBackward;

        impl Backward<Flex, 1> for LinearCrossEntropyBackward {
            /// d loss / d hidden, computed by the forward.
            type State = FlexTensor;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_hidden] = ops.parents;
                let grad = grads.consume::<Flex>(&ops.node); // [1]
                if let Some(node) = node_hidden {
                    let grad = Flex::float_reshape(grad, Shape::new([1, 1]));
                    grads.register::<Flex>(node.id, Flex::float_mul(ops.state, grad));
                }
            }
        }

        // The head weight is a constant: no graph edge, no gradient.
        let weight = weight.into_primitive();
        match LinearCrossEntropyBackward
            .prepare::<C>([hidden.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (loss, dh) =
                    forward_flex(hidden.into_primitive(), weight, targets, vocab_major, true);
                match dh {
                    Some(dh) => prep.finish(dh, loss),
                    None => unreachable!("forward_flex returns a gradient when asked"),
                }
            }
            OpsKind::UnTracked(prep) => prep.finish(
                forward_flex(hidden.into_primitive(), weight, targets, vocab_major, false).0,
            ),
        }
    }
}

/// The composition the fused op must equal: logits, log-softmax, gather, masked sum.
/// hidden [N, H], targets [N] -> [1]
pub fn linear_cross_entropy_reference(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    layout: HeadLayout,
    targets: &[i64],
) -> Tensor<1> {
    let device = hidden.device();
    let logits = match layout {
        HeadLayout::VocabMajor => hidden.matmul(weight.transpose()),
        HeadLayout::HiddenMajor => hidden.matmul(weight),
    };
    let [n, vocab] = logits.dims();
    let (mut ids, mut keep) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for &t in targets {
        let kept = t >= 0 && (t as usize) < vocab;
        ids.push(if kept { t } else { 0 });
        keep.push(if kept { 1.0f32 } else { 0.0 });
    }
    let ids: Tensor<2, Int> = Tensor::from_data(TensorData::new(ids, [n, 1]), &device);
    let keep: Tensor<2> = Tensor::from_data(TensorData::new(keep, [n, 1]), &device);
    (log_softmax(logits, 1).gather(1, ids) * keep).sum().neg()
}

/// `Σ_rows −log softmax(hidden·Wᵀ)[target]` over rows whose target is in the vocabulary.
/// hidden [N, H]; weight [V, H] (`VocabMajor`) or [H, V] (`HiddenMajor`); targets [N] -> [1].
/// Fused on flex + f32 when the weight takes no gradient; the reference composition otherwise.
pub fn linear_cross_entropy(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    layout: HeadLayout,
    targets: &[i64],
) -> Tensor<1> {
    // A bf16/f16 frozen head (`--base-dtype`) is read as it is stored and widened slab by slab
    // inside the kernel; the reference composition widens the whole head for its product.
    let weight_ok = matches!(weight.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && super::is_flex(&weight.device());
    if !super::fused(&hidden) || !weight_ok || weight.is_require_grad() {
        let weight = crate::models::linear::widened(weight);
        return linear_cross_entropy_reference(hidden, weight, layout, targets);
    }
    let n = targets.len();
    let device = hidden.device();
    let targets: Tensor<1, Int> =
        Tensor::from_data(TensorData::new(targets.to_vec(), [n]), &device);
    Tensor::from_dispatch(<Dispatch as LinearCrossEntropyOps>::linear_cross_entropy(
        hidden.into_dispatch(),
        weight.into_dispatch(),
        targets.into_dispatch(),
        layout == HeadLayout::VocabMajor,
    ))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution};

    use super::*;

    fn max_abs_diff(a: Tensor<2>, b: Tensor<2>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// Odd sizes (rows not a multiple of the chunk, vocab not a multiple of the SIMD width),
    /// ignored and out-of-vocabulary targets, both weight layouts.
    fn case(layout: HeadLayout) {
        case_of(layout, DType::F32, 301);
    }

    /// `dtype` heads: the reference composition takes the widened weight.
    fn case_of(layout: HeadLayout, dtype: DType, v: usize) {
        let device = Device::flex().autodiff();
        let (n, h) = (CHUNK + 37, 24);
        let hidden = Tensor::<2>::random([n, h], Distribution::Uniform(-2.0, 2.0), &device);
        let shape = match layout {
            HeadLayout::VocabMajor => [v, h],
            HeadLayout::HiddenMajor => [h, v],
        };
        let narrow =
            Tensor::<2>::random(shape, Distribution::Uniform(-0.5, 0.5), &device).cast(dtype);
        let wide = crate::models::linear::widened(narrow.clone());
        let weight = narrow;
        let targets: Vec<i64> = (0..n as i64)
            .map(|i| match i % 7 {
                0 => -100,
                1 => v as i64 + 3,
                _ => (i * 31) % v as i64,
            })
            .collect();
        let x = hidden.clone().require_grad();
        let reference = linear_cross_entropy_reference(x.clone(), wide, layout, &targets);
        let g_ref = x.grad(&reference.backward()).expect("reference gradient");
        let y = hidden.require_grad();
        let fused = linear_cross_entropy(y.clone(), weight, layout, &targets);
        let g_fused = y.grad(&fused.backward()).expect("fused gradient");
        let (a, b) = (reference.into_scalar::<f32>(), fused.into_scalar::<f32>());
        assert!((a - b).abs() <= 1e-5 * a.abs(), "loss {a} vs {b}");
        // f32 sums in another order differ in the last bits: the tolerance scales with the
        // gradient's own size (a fixed 1e-6 failed once in ~20 runs at 1.0e-6 on random data).
        let scale = g_ref.clone().abs().max().into_scalar::<f32>();
        let diff = max_abs_diff(g_ref, g_fused.clone());
        assert!(
            diff <= 1e-5 * scale,
            "gradient differs by {diff} (largest entry {scale})"
        );
        // Rows with an ignored target get no gradient.
        let row0 = g_fused.slice([0..1, 0..h]).abs().sum().into_scalar::<f32>();
        assert_eq!(row0, 0.0);
    }

    #[test]
    fn fused_loss_and_hidden_gradient_equal_the_composition_for_a_tied_embedding() {
        case(HeadLayout::VocabMajor);
    }

    #[test]
    fn fused_loss_and_hidden_gradient_equal_the_composition_for_a_linear_head() {
        case(HeadLayout::HiddenMajor);
    }

    #[test]
    fn a_bf16_or_f16_head_widened_slab_by_slab_equals_the_widened_composition() {
        // 2 × SLAB + 301 entries: three slabs, the last one partial.
        for dtype in [DType::BF16, DType::F16] {
            case_of(HeadLayout::VocabMajor, dtype, 2 * SLAB + 301);
            case_of(HeadLayout::HiddenMajor, dtype, 2 * SLAB + 301);
        }
    }

    #[test]
    fn fused_loss_without_autodiff_equals_the_composition() {
        let device = Device::flex();
        let hidden = Tensor::<2>::random([9, 8], Distribution::Uniform(-1.0, 1.0), &device);
        let weight = Tensor::<2>::random([50, 8], Distribution::Uniform(-1.0, 1.0), &device);
        let targets: Vec<i64> = (0..9).map(|i| i * 5).collect();
        let a = linear_cross_entropy_reference(
            hidden.clone(),
            weight.clone(),
            HeadLayout::VocabMajor,
            &targets,
        )
        .into_scalar::<f32>();
        let b = linear_cross_entropy(hidden, weight, HeadLayout::VocabMajor, &targets)
            .into_scalar::<f32>();
        assert!((a - b).abs() <= 1e-5 * a.abs(), "{a} vs {b}");
    }
}
