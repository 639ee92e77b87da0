//! A LoRA linear layer in one op (Hu et al. 2021, arXiv 2106.09685; PEFT `tuners/lora/layer.py`
//! `Linear.forward`: `result = base_layer(x) + lora_B(lora_A(dropout(x))) * scaling`), for plain
//! LoRA and rsLoRA (the scale differs, not the op). With a dropout, the caller applies it and
//! passes `x_low = dropout(x)` ([`lora_linear_dropout`]); DoRA keeps `peft::lora`'s composition.
//!
//! Shapes (burn orientation): x `[.., in]` (rows flattened to N), W `[in, out]` (frozen),
//! bias `[out]` (frozen), A `[in, r]`, B `[r, out]`, scale s -> `[.., out]`.
//!
//! Math, with gemm's accumulate form `dst = α·dst + β·lhs·rhs`:
//! - forward   `xa = x·A`; `y = bias` (broadcast), `y += x·W`, `y += s·xa·B` (in place)
//! - backward  `t = dY·Bᵀ` [N, r]; `dA = s·xᵀ·t`; `dB = s·xaᵀ·dY` (reusing the saved xa);
//!   `dx = dY·Wᵀ`, then `dx += s·t·Aᵀ` into the same buffer. No dW (W is frozen), and each
//!   gradient only for a tracked input (layer 0's x comes from the frozen embedding). With a
//!   dropout, x_low replaces x in xa and dA, and `d x_low = s·t·Aᵀ` is its own gradient.
//!
//! The composition materialises and keeps `x·A·B`, its scaled copy and the sum, and its backward
//! splits, scales and adds `[N, out]` and `[N, in]` tensors; here the only extra tensors are the
//! `[N, r]` ones. W is read through its strides (a transposed checkpoint view is not copied).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::module::linear;
use burn::tensor::{DType, Tensor};

use super::bf16_gemm::{gemm_bf16, Bf16Tensor};
use super::flex::F32;
use crate::models::linear::ComputeDtype;

/// `x·W + bias + s·(x·A)·B`. x: [.., in], W: [in, out], bias: [out], A: [in, r], B: [r, out].
/// Fused on flex when W and bias are frozen; otherwise (or elsewhere) the composition.
pub fn lora_linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    a: Tensor<2>,
    b: Tensor<2>,
    scale: f64,
) -> Tensor<D> {
    call(x, None, weight, bias, a, b, scale, ComputeDtype::F32)
}

/// [`lora_linear`] (`x_low` None) or [`lora_linear_dropout`] (`x_low` = dropout(x)) with the
/// frozen product `x·W` computed in `compute`: bf16 (`--compute-dtype bf16`) multiplies a bf16
/// W by bf16-rounded x and dY with `kernels::bf16_gemm` where that kernel runs (else f32).
#[allow(clippy::too_many_arguments)]
pub fn lora_linear_in<const D: usize>(
    x: Tensor<D>,
    x_low: Option<Tensor<D>>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    a: Tensor<2>,
    b: Tensor<2>,
    scale: f64,
    compute: ComputeDtype,
) -> Tensor<D> {
    call(x, x_low, weight, bias, a, b, scale, compute)
}

/// `x·W + bias + s·(x_low·A)·B` with `x_low = dropout(x)` computed by the caller (PEFT applies
/// LoRA's dropout to the low-rank input only). Same shapes as [`lora_linear`]; x and x_low get
/// their own gradients (`dY·Wᵀ` and `s·dY·Bᵀ·Aᵀ`).
pub fn lora_linear_dropout<const D: usize>(
    x: Tensor<D>,
    x_low: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    a: Tensor<2>,
    b: Tensor<2>,
    scale: f64,
) -> Tensor<D> {
    call(x, Some(x_low), weight, bias, a, b, scale, ComputeDtype::F32)
}

#[allow(clippy::too_many_arguments)]
fn call<const D: usize>(
    x: Tensor<D>,
    x_low: Option<Tensor<D>>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    a: Tensor<2>,
    b: Tensor<2>,
    scale: f64,
    compute: ComputeDtype,
) -> Tensor<D> {
    let dims = x.dims();
    let [inp, out] = weight.dims();
    let [a_in, r] = a.dims();
    let frozen = !weight.is_require_grad() && bias.as_ref().is_none_or(|b| !b.is_require_grad());
    // The frozen weight may be stored narrow (`--base-dtype`): widened inside the op, and kept
    // narrow as the backward's state (see `kernels::narrow_linear` for why).
    let weight_ok = matches!(weight.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && super::is_flex(&weight.device());
    let f32s = super::fused(&x)
        && weight_ok
        && super::fused(&a)
        && super::fused(&b)
        && bias.as_ref().is_none_or(super::fused)
        && x_low.as_ref().is_none_or(super::fused);
    let fits = D >= 2
        && dims[D - 1] == inp
        && a_in == inp
        && b.dims() == [r, out]
        && x_low.as_ref().is_none_or(|l| l.dims() == dims);
    if !(frozen && f32s && fits) {
        let x_low = x_low.unwrap_or_else(|| x.clone());
        return reference(x, x_low, weight, bias, a, b, scale);
    }
    let rows: usize = dims[..D - 1].iter().product();
    let split = x_low.is_some();
    let bf16 = compute == ComputeDtype::Bf16
        && weight.dtype() == DType::BF16
        && super::bf16_gemm::supported();
    let x = x.reshape([rows, inp]);
    // Without dropout x_low must be the very node of x (the backward puts the whole gradient
    // there), so it is the reshaped x itself, not a second reshape.
    let x_low = match x_low {
        Some(l) => l.reshape([rows, inp]),
        None => x.clone(),
    };
    let (x, x_low) = (x.into_dispatch(), x_low.into_dispatch());
    let (weight, a, b) = (weight.into_dispatch(), a.into_dispatch(), b.into_dispatch());
    // Two methods rather than an `Option` bias: burn 0.22.1's `backend_extension` does not
    // convert an optional tensor argument.
    let y = match bias {
        Some(bias) => <Dispatch as LoraLinearOps>::lora_linear_bias(
            x,
            x_low,
            weight,
            bias.into_dispatch(),
            a,
            b,
            scale,
            split,
            bf16,
        ),
        None => {
            <Dispatch as LoraLinearOps>::lora_linear(x, x_low, weight, a, b, scale, split, bf16)
        }
    };
    let mut out_dims = dims;
    out_dims[D - 1] = out;
    Tensor::<2>::from_dispatch(y).reshape(out_dims)
}

/// `peft::lora`'s composition (`base_layer(x) + lora_B(lora_A(dropout(x))) * scaling`, with
/// x_low = dropout(x)), and the path for every other case.
pub fn reference<const D: usize>(
    x: Tensor<D>,
    x_low: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    a: Tensor<2>,
    b: Tensor<2>,
    scale: f64,
) -> Tensor<D> {
    let low = linear(linear(x_low, a, None), b, None);
    let base = crate::models::linear::frozen_product(x, &weight);
    let base = match bias {
        Some(bias) => base + bias.unsqueeze::<D>(),
        None => base,
    };
    base + low.mul_scalar(scale)
}

#[backend_extension(Flex, Autodiff)]
pub trait LoraLinearOps: Backend {
    /// x, x_low: [N, in] (`split` false: x_low is x), weight: [in, out] (a constant),
    /// a: [in, r], b: [r, out] -> [N, out]; `bf16`: x·W and dY·Wᵀ by `kernels::bf16_gemm`
    /// (a bf16 weight, a CPU with avx512bf16)
    #[allow(clippy::too_many_arguments)]
    fn lora_linear(
        x: FloatTensor<Self>,
        x_low: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f64,
        split: bool,
        bf16: bool,
    ) -> FloatTensor<Self>;
    /// The same plus bias: [out] (a constant).
    #[allow(clippy::too_many_arguments)]
    fn lora_linear_bias(
        x: FloatTensor<Self>,
        x_low: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f64,
        split: bool,
        bf16: bool,
    ) -> FloatTensor<Self>;
}

impl LoraLinearOps for Flex {
    fn lora_linear(
        x: FlexTensor,
        x_low: FlexTensor,
        weight: FlexTensor,
        a: FlexTensor,
        b: FlexTensor,
        scale: f64,
        _split: bool,
        bf16: bool,
    ) -> FlexTensor {
        plain(x, x_low, weight, None, a, b, scale, bf16)
    }

    fn lora_linear_bias(
        x: FlexTensor,
        x_low: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        a: FlexTensor,
        b: FlexTensor,
        scale: f64,
        _split: bool,
        bf16: bool,
    ) -> FlexTensor {
        plain(x, x_low, weight, Some(bias), a, b, scale, bf16)
    }
}

#[allow(clippy::too_many_arguments)]
fn plain(
    x: FlexTensor,
    x_low: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    a: FlexTensor,
    b: FlexTensor,
    scale: f64,
    bf16: bool,
) -> FlexTensor {
    let (x, xl) = (Mat::new(x), Mat::new(x_low));
    let w = Frozen::new(weight, bf16);
    let (a, b) = (Mat::new(a), Mat::new(b));
    forward(
        &x,
        &xl,
        &w,
        bias.map(F32::new).as_ref(),
        &a,
        &b,
        scale as f32,
    )
    .0
}

impl<C: CheckpointStrategy> LoraLinearOps for Autodiff<Flex, C> {
    fn lora_linear(
        x: FloatTensor<Self>,
        x_low: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f64,
        split: bool,
        bf16: bool,
    ) -> FloatTensor<Self> {
        tracked::<C>([x, x_low, a, b], weight, None, scale, split, bf16)
    }

    fn lora_linear_bias(
        x: FloatTensor<Self>,
        x_low: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f64,
        split: bool,
        bf16: bool,
    ) -> FloatTensor<Self> {
        tracked::<C>([x, x_low, a, b], weight, Some(bias), scale, split, bf16)
    }
}

type AdTensor<C> = FloatTensor<Autodiff<Flex, C>>;

#[derive(Debug)]
struct LoraLinearBackward;

/// x_low, xa = x_low·A, W (in its storage dtype), A, B, s, split, bf16
type LoraState = (
    FlexTensor,
    FlexTensor,
    FlexTensor,
    FlexTensor,
    FlexTensor,
    f32,
    bool,
    bool,
);

impl Backward<Flex, 4> for LoraLinearBackward {
    type State = LoraState;

    fn backward(
        self,
        ops: Ops<Self::State, 4>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        // Without dropout x_low is x (the same graph node twice): its whole gradient goes to
        // node_x in one buffer.
        let [node_x, node_low, node_a, node_b] = ops.parents;
        let dy = Mat::new(grads.consume::<Flex>(&ops.node));
        let (xl, xa, w, a, b, s, split, bf16) = ops.state;
        let (xl, xa, w, a, b) = (
            Mat::new(xl),
            Mat::new(xa),
            Frozen::new(w, bf16),
            Mat::new(a),
            Mat::new(b),
        );
        let (n, inp, r, out) = (xl.rows, xl.cols, a.cols, b.cols);
        // t = dY·Bᵀ [N, r]
        let mut t = vec![0f32; n * r];
        gemm_into(&mut t, n, r, out, &dy, &b.t(), false, 1.0);
        let t = Mat::from_vec(t, n, r);
        if let Some(node) = node_a {
            // dA = s·x_lowᵀ·t [in, r]
            let mut da = vec![0f32; inp * r];
            gemm_into(&mut da, inp, r, n, &xl.t(), &t, false, s);
            grads.register::<Flex>(node.id, super::flex::tensor(da, [inp, r]));
        }
        if let Some(node) = node_b {
            // dB = s·xaᵀ·dY [r, out]
            let mut db = vec![0f32; r * out];
            gemm_into(&mut db, r, out, n, &xa.t(), &dy, false, s);
            grads.register::<Flex>(node.id, super::flex::tensor(db, [r, out]));
        }
        let low_into_x = !split && node_x.is_some();
        if let Some(node) = node_x {
            // dx = dY·Wᵀ, then (no dropout) dx += s·t·Aᵀ in place [N, in]
            let mut dx = vec![0f32; n * inp];
            match &w {
                Frozen::F32(w) => gemm_into(&mut dx, n, inp, out, &dy, &w.t(), false, 1.0),
                Frozen::Bf16(w) => {
                    let dy = F32::new(dy.tensor.clone());
                    gemm_bf16(&mut dx, dy.as_slice(), n, out, &w.view().t(), false);
                }
            }
            if low_into_x {
                gemm_into(&mut dx, n, inp, r, &t, &a.t(), true, s);
            }
            grads.register::<Flex>(node.id, super::flex::tensor(dx, [n, inp]));
        }
        if let (Some(node), true) = (node_low, split) {
            // d x_low = s·t·Aᵀ [N, in]
            let mut dl = vec![0f32; n * inp];
            gemm_into(&mut dl, n, inp, r, &t, &a.t(), false, s);
            grads.register::<Flex>(node.id, super::flex::tensor(dl, [n, inp]));
        }
    }
}

fn tracked<C: CheckpointStrategy>(
    [x, x_low, a, b]: [AdTensor<C>; 4],
    weight: AdTensor<C>,
    bias: Option<AdTensor<C>>,
    scale: f64,
    split: bool,
    bf16: bool,
) -> AdTensor<C> {
    // W and bias are frozen (checked by `lora_linear`): constants, no graph edge. W is kept in
    // its storage dtype for the backward; `mw` is its f32 view (or bf16 as stored, for the
    // bf16 gemm) for the forward only.
    let w_stored = weight.into_primitive();
    let mw = Frozen::new(w_stored.clone(), bf16);
    let bias = bias.map(|b| F32::new(b.into_primitive()));
    let s = scale as f32;
    let nodes = [x.node(), x_low.node(), a.node(), b.node()];
    let (mx, ml) = (
        Mat::new(x.into_primitive()),
        Mat::new(x_low.into_primitive()),
    );
    let (ma, mb) = (Mat::new(a.into_primitive()), Mat::new(b.into_primitive()));
    match LoraLinearBackward
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (y, xa) = forward(&mx, &ml, &mw, bias.as_ref(), &ma, &mb, s);
            prep.finish(
                (
                    ml.tensor, xa, w_stored, ma.tensor, mb.tensor, s, split, bf16,
                ),
                y,
            )
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(forward(&mx, &ml, &mw, bias.as_ref(), &ma, &mb, s).0)
        }
    }
}

/// (y [N, out], xa = x_low·A [N, r]).
fn forward(
    x: &Mat,
    xl: &Mat,
    w: &Frozen,
    bias: Option<&F32>,
    a: &Mat,
    b: &Mat,
    s: f32,
) -> (FlexTensor, FlexTensor) {
    let (n, inp, r, out) = (x.rows, x.cols, a.cols, b.cols);
    assert!(
        w.dims() == (inp, out) && a.rows == inp && b.rows == r && (xl.rows, xl.cols) == (n, inp),
        "lora_linear: shapes"
    );
    let mut xa = vec![0f32; n * r];
    gemm_into(&mut xa, n, r, inp, xl, a, false, 1.0);
    let mut y = vec![0f32; n * out];
    let has_bias = match bias {
        Some(bias) => {
            let bias = bias.as_slice();
            assert_eq!(bias.len(), out, "lora_linear: bias length");
            y.chunks_exact_mut(out.max(1))
                .for_each(|row| row.copy_from_slice(bias));
            true
        }
        None => false,
    };
    match w {
        Frozen::F32(w) => gemm_into(&mut y, n, out, inp, x, w, has_bias, 1.0),
        Frozen::Bf16(w) => {
            let x = F32::new(x.tensor.clone());
            gemm_bf16(&mut y, x.as_slice(), n, inp, &w.view(), has_bias);
        }
    }
    let xa = Mat::from_vec(xa, n, r);
    gemm_into(&mut y, n, out, r, &xa, b, true, s);
    (super::flex::tensor(y, [n, out]), xa.tensor)
}

/// The frozen weight [in, out] as the products read it: f32 (widened when stored narrow), or
/// bf16 as stored for `kernels::bf16_gemm` (`--compute-dtype bf16`).
enum Frozen {
    F32(Mat),
    Bf16(Bf16Tensor),
}

impl Frozen {
    fn new(weight: FlexTensor, bf16: bool) -> Self {
        if bf16 && weight.dtype() == DType::BF16 {
            Self::Bf16(Bf16Tensor::new(weight))
        } else {
            Self::F32(Mat::new(super::narrow_linear::widen(weight)))
        }
    }

    /// (rows, cols)
    fn dims(&self) -> (usize, usize) {
        match self {
            Self::F32(w) => (w.rows, w.cols),
            Self::Bf16(w) => {
                let v = w.view();
                (v.rows, v.cols)
            }
        }
    }
}

/// A 2-D f32 flex tensor read through its strides (copied only for a negative or broadcast one).
struct Mat {
    tensor: FlexTensor,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
}

impl Mat {
    fn new(tensor: FlexTensor) -> Self {
        assert_eq!(tensor.dtype(), DType::F32, "lora_linear takes f32 tensors");
        let plain = |t: &FlexTensor| t.layout().strides().iter().all(|&s| s > 0);
        let tensor = if plain(&tensor) {
            tensor
        } else {
            tensor.to_contiguous()
        };
        let l = tensor.layout();
        let [rows, cols] = l.shape().dims::<2>();
        let (rs, cs) = (l.strides()[0], l.strides()[1]);
        Self {
            tensor,
            rows,
            cols,
            rs,
            cs,
        }
    }

    fn from_vec(values: Vec<f32>, rows: usize, cols: usize) -> Self {
        Self::new(super::flex::tensor(values, [rows, cols]))
    }

    /// The transpose, as a view.
    fn t(&self) -> Mat {
        Mat {
            tensor: self.tensor.clone(),
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn ptr(&self) -> *const f32 {
        self.tensor.storage::<f32>()[self.tensor.layout().start_offset()..].as_ptr()
    }
}

/// dst[m, n] (row-major) = (read ? dst : 0) + beta·lhs[m, k]·rhs[k, n].
#[allow(clippy::too_many_arguments)]
fn gemm_into(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    lhs: &Mat,
    rhs: &Mat,
    read: bool,
    beta: f32,
) {
    assert!(dst.len() == m * n && lhs.rows == m && lhs.cols == k && rhs.rows == k && rhs.cols == n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    // As burn-flex's matmul: threads only above 192³ multiply-adds.
    let parallelism = if m.saturating_mul(n).saturating_mul(k) >= 192 * 192 * 192 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: dst holds m·n values row-major; lhs and rhs are views whose strides address only
    // their own tensors' storage (checked sizes above, strides from their layouts).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            read,
            lhs.ptr(),
            lhs.cs,
            lhs.rs,
            rhs.ptr(),
            rhs.cs,
            rhs.rs,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::tensor::{Device, Distribution};

    fn rel_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let scale = b.clone().abs().max().into_scalar::<f32>().max(1e-30);
        (a - b).abs().max().into_scalar::<f32>() / scale
    }

    struct Case {
        x: Tensor<3>,
        w: Param<Tensor<2>>,
        bias: Option<Param<Tensor<1>>>,
        a: Tensor<2>,
        b: Tensor<2>,
        probe: Tensor<3>,
    }

    fn case(device: &Device, inp: usize, out: usize, r: usize, bias: bool, x_grad: bool) -> Case {
        let u = |lo, hi| Distribution::Uniform(lo, hi);
        let x = Tensor::<3>::random([2, 37, inp], u(-1.0, 1.0), device);
        Case {
            x: if x_grad { x.require_grad() } else { x },
            w: Param::from_tensor(Tensor::random([inp, out], u(-0.1, 0.1), device))
                .set_require_grad(false),
            bias: bias.then(|| {
                Param::from_tensor(Tensor::random([out], u(-0.1, 0.1), device))
                    .set_require_grad(false)
            }),
            a: Tensor::random([inp, r], u(-0.1, 0.1), device).require_grad(),
            b: Tensor::random([r, out], u(-0.1, 0.1), device).require_grad(),
            probe: Tensor::random([2, 37, out], u(-1.0, 1.0), device),
        }
    }

    fn run(c: &Case, fused: bool) -> (Tensor<3>, burn::tensor::Gradients) {
        let bias = c.bias.as_ref().map(|b| b.val());
        let (a, b) = (c.a.clone(), c.b.clone());
        let y = if fused {
            lora_linear(c.x.clone(), c.w.val(), bias, a, b, 1.75)
        } else {
            reference(c.x.clone(), c.x.clone(), c.w.val(), bias, a, b, 1.75)
        };
        let grads = (y.clone() * c.probe.clone()).sum().backward();
        (y, grads)
    }

    /// x, A and B get the same gradients from both runs (relative 1e-5 each).
    fn assert_same_gradients(
        c: &Case,
        g1: &burn::tensor::Gradients,
        g2: &burn::tensor::Gradients,
        what: &str,
    ) {
        let dx = rel_diff(c.x.grad(g1).unwrap(), c.x.grad(g2).unwrap());
        let da = rel_diff(c.a.grad(g1).unwrap(), c.a.grad(g2).unwrap());
        let db = rel_diff(c.b.grad(g1).unwrap(), c.b.grad(g2).unwrap());
        assert!(
            dx <= 1e-5 && da <= 1e-5 && db <= 1e-5,
            "{what}dx {dx}, dA {da}, dB {db}"
        );
    }

    #[test]
    fn fused_lora_linear_matches_the_composition_in_values_and_every_gradient() {
        let device = Device::flex().autodiff();
        // 74 rows, in 93, out 131, r 5: no size a multiple of a gemm tile.
        let c = case(&device, 93, 131, 5, true, true);
        let (y1, g1) = run(&c, true);
        let (y2, g2) = run(&c, false);
        assert!(rel_diff(y1, y2) <= 1e-5);
        assert_same_gradients(&c, &g1, &g2, "");
        assert!(c.w.val().grad(&g1).is_none());
    }

    #[test]
    fn a_bf16_or_f16_frozen_weight_gives_the_widened_weight_values_and_gradients() {
        let device = Device::flex().autodiff();
        for dtype in [DType::BF16, DType::F16] {
            let mut c = case(&device, 93, 131, 5, true, true);
            c.w = Param::from_tensor(c.w.val().cast(dtype)).set_require_grad(false);
            let (y1, g1) = run(&c, true);
            let wide = Case {
                w: Param::from_tensor(c.w.val().cast(DType::F32)).set_require_grad(false),
                ..c
            };
            let (y2, g2) = run(&wide, false);
            let c = wide;
            assert!(rel_diff(y1, y2) <= 1e-5, "{dtype:?}");
            assert_same_gradients(&c, &g1, &g2, &format!("{dtype:?}: "));
        }
    }

    #[test]
    fn an_untracked_input_gets_no_gradient_and_the_factors_still_match() {
        let device = Device::flex().autodiff();
        let c = case(&device, 64, 48, 8, false, false);
        let (_, g1) = run(&c, true);
        let (_, g2) = run(&c, false);
        assert!(c.x.grad(&g1).is_none());
        assert!(rel_diff(c.a.grad(&g1).unwrap(), c.a.grad(&g2).unwrap()) <= 1e-5);
        assert!(rel_diff(c.b.grad(&g1).unwrap(), c.b.grad(&g2).unwrap()) <= 1e-5);
    }

    #[test]
    fn a_transposed_frozen_weight_is_read_in_place_and_gives_the_same_output() {
        let device = Device::flex();
        let x = Tensor::<3>::random([3, 11, 40], Distribution::Normal(0.0, 1.0), &device);
        // [out, in] as PyTorch stores it, seen as [in, out].
        let w = Tensor::<2>::random([24, 40], Distribution::Normal(0.0, 0.1), &device).transpose();
        let a = Tensor::<2>::random([40, 4], Distribution::Normal(0.0, 0.1), &device);
        let b = Tensor::<2>::random([4, 24], Distribution::Normal(0.0, 0.1), &device);
        let fused = lora_linear(x.clone(), w.clone(), None, a.clone(), b.clone(), 0.5);
        let want = reference(x.clone(), x, w, None, a, b, 0.5);
        assert!(rel_diff(fused, want) <= 1e-5);
    }

    #[test]
    fn with_dropout_outside_x_and_the_dropped_input_get_their_own_matching_gradients() {
        let device = Device::flex().autodiff();
        let c = case(&device, 45, 70, 3, true, true);
        // A fixed mask (p = 0.25, kept values scaled by 1/0.75) standing in for dropout.
        let mask = Tensor::<3>::random(c.x.dims(), Distribution::Bernoulli(0.75), &device)
            .div_scalar(0.75);
        let run = |fused: bool| {
            let x_low = c.x.clone() * mask.clone();
            let bias = c.bias.as_ref().map(|b| b.val());
            let (a, b) = (c.a.clone(), c.b.clone());
            let y = if fused {
                lora_linear_dropout(c.x.clone(), x_low, c.w.val(), bias, a, b, 1.75)
            } else {
                reference(c.x.clone(), x_low, c.w.val(), bias, a, b, 1.75)
            };
            let grads = (y.clone() * c.probe.clone()).sum().backward();
            (y, grads)
        };
        let ((y1, g1), (y2, g2)) = (run(true), run(false));
        assert!(rel_diff(y1, y2) <= 1e-5);
        assert_same_gradients(&c, &g1, &g2, "");
    }

    #[test]
    fn a_trainable_bias_takes_the_composition_and_gets_its_gradient() {
        let device = Device::flex().autodiff();
        let mut c = case(&device, 16, 8, 2, true, true);
        c.bias = c.bias.map(|b| b.set_require_grad(true));
        let bias = c.bias.as_ref().unwrap().val();
        assert!(bias.is_require_grad());
        let (_, g) = run(&c, true);
        assert!(bias.grad(&g).is_some());
    }
}
