//! A frozen linear whose weight is stored narrow (bf16/f16, `--base-dtype`): `y = x·widen(W)`,
//! the widened f32 copy living only for the product. Under autodiff burn's own matmul keeps its
//! untracked right-hand side as backward state (burn-autodiff 0.22.1 `float_matmul` checkpoints
//! `rhs` whenever `lhs` is tracked), so a training forward through `linear(x, W.cast(F32))` would
//! hold an f32 copy of every layer's weight until the backward: the f32 base again, on top of the
//! narrow one. This op keeps the narrow weight as its state and widens it again in the backward
//! (`dx = dy·widen(W)ᵀ`); the weight takes no gradient. Measured on the SmolLM2-shaped model, load
//! + one LoRA step: with burn's composition (`PEFT_KERNELS=off`) a bf16 base peaks at 1043 MiB
//! against f32's 785 MiB; with this op (and the fused LoRA linear and loss) at 411 vs 654 MiB.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::{DType, FloatDType, Tensor};

#[backend_extension(Flex, Autodiff)]
pub trait NarrowLinearOps: Backend {
    /// x [N, in] (f32), weight [in, out] (bf16 or f16, a constant) -> [N, out] (f32)
    fn narrow_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The weight in f32 (a no-op for f32).
pub(crate) fn widen(weight: FlexTensor) -> FlexTensor {
    Flex::float_cast(weight, FloatDType::F32)
}

fn product(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
    Flex::float_matmul(x, widen(weight))
}

impl NarrowLinearOps for Flex {
    fn narrow_linear(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
        product(x, weight)
    }
}

impl<C: CheckpointStrategy> NarrowLinearOps for Autodiff<Flex, C> {
    fn narrow_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct NarrowLinearBackward;

        impl Backward<Flex, 1> for NarrowLinearBackward {
            /// The narrow weight [in, out].
            type State = FlexTensor;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x] = ops.parents;
                let dy = grads.consume::<Flex>(&ops.node);
                if let Some(node) = node_x {
                    let wt = Flex::float_transpose(widen(ops.state));
                    grads.register::<Flex>(node.id, Flex::float_matmul(dy, wt));
                }
            }
        }

        // The weight is a constant: no graph edge, no gradient.
        let weight = weight.into_primitive();
        match NarrowLinearBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = product(x.into_primitive(), weight.clone());
                prep.finish(weight, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(product(x.into_primitive(), weight)),
        }
    }
}

/// `x · W` for x [.., in] (f32) and a frozen bf16/f16 weight [in, out] on flex; `None` for any
/// other case (an f32 weight, another backend, kernels disabled), which the caller computes
/// with burn's `linear`.
pub fn narrow_linear<const D: usize>(x: &Tensor<D>, weight: &Tensor<2>) -> Option<Tensor<D>> {
    let narrow = matches!(weight.dtype(), DType::BF16 | DType::F16);
    let [inp, out] = weight.dims();
    let dims = x.dims();
    if !narrow
        || weight.is_require_grad()
        || !super::fused(x)
        || !super::is_flex(&weight.device())
        || D < 2
        || dims[D - 1] != inp
    {
        return None;
    }
    let rows: usize = dims[..D - 1].iter().product();
    let x2 = x.clone().reshape([rows, inp]);
    let y = Tensor::<2>::from_dispatch(<Dispatch as NarrowLinearOps>::narrow_linear(
        x2.into_dispatch(),
        weight.clone().into_dispatch(),
    ));
    let mut out_dims = dims;
    out_dims[D - 1] = out;
    Some(y.reshape(out_dims))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution};

    use super::*;

    #[test]
    fn a_narrow_linear_equals_the_widened_product_in_value_and_input_gradient() {
        let device = Device::flex().autodiff();
        for dtype in [DType::BF16, DType::F16] {
            let w =
                Tensor::<2>::random([7, 5], Distribution::Uniform(-1.0, 1.0), &device).cast(dtype);
            let x = Tensor::<3>::random([2, 3, 7], Distribution::Uniform(-1.0, 1.0), &device)
                .require_grad();
            let want = x
                .clone()
                .matmul(w.clone().cast(DType::F32).unsqueeze::<3>());
            let got = narrow_linear(&x, &w).expect("a narrow weight on flex takes the op");
            let diff = (want.clone() - got.clone())
                .abs()
                .max()
                .into_scalar::<f32>();
            assert!(diff < 1e-5, "{dtype:?}: value {diff}");
            let gw = want.sum().backward();
            let gg = got.sum().backward();
            let (a, b) = (x.grad(&gw).unwrap(), x.grad(&gg).unwrap());
            let diff = (a - b).abs().max().into_scalar::<f32>();
            assert!(diff < 1e-5, "{dtype:?}: gradient {diff}");
        }
    }
}
