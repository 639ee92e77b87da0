//! Activation checkpointing per decoder layer (`--gradient-checkpointing`, issue 17 item 4), as
//! transformers' `gradient_checkpointing_enable()` wraps each decoder layer in
//! `torch.utils.checkpoint`: the forward keeps only the layer's input; the backward re-runs the
//! layer's forward on a fresh graph and back-propagates the incoming gradient through it.
//!
//! Why ours and not burn's: burn 0.22.1's only strategy, `BalancedCheckpointing`
//! (burn-autodiff `checkpoint/strategy.rs`, chosen by `device.autodiff().gradient_checkpointing()`),
//! recomputes the ops marked *memory-bound* and still caches every *compute-bound* output — every
//! matmul, and our fused kernels, which are marked compute-bound — so the activations a layer keeps
//! stay. There is no "checkpoint this block" API.
//!
//! Mechanics: one custom autodiff op per layer whose parent is the layer input, threaded through
//! one identity op (`tie`) per trainable tensor of the layer, so every trainable tensor is an
//! ancestor and the backward reaches the adapters even when the input is untracked (after a
//! frozen embedding); a backend extension takes a fixed number of tensors, a layer any number.
//! The layer op's backward recomputes and leaves the parameter gradients in a shared slot that
//! the `tie` ops (run after it, being its ancestors) register. Its forward output is computed on untracked copies (no graph, no
//! saved activations); its state is the input value plus a closure that recomputes. The
//! recomputation uses fresh leaves (`detach().require_grad()`: new node ids) so the inner graph
//! never merges into the outer one, whose lock the outer backward holds (burn-autodiff
//! `runtime/graph.rs` notes that a step may run an inner backward). Dropout masks repeat because the
//! device RNG is reseeded with one seed per layer call, drawn before the forward.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Distribution, Tensor, TensorData};

/// Re-runs one layer: (input value, output gradient) -> (input grad, one grad per trainable
/// tensor, in visit order).
type Rerun = dyn Fn(FlexTensor, FlexTensor) -> (FlexTensor, Vec<FlexTensor>) + Send + Sync;

/// The recomputation carried by the op's state.
#[derive(Clone)]
pub struct Recompute(Arc<Rerun>);

impl fmt::Debug for Recompute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Recompute")
    }
}

/// Where the layer op's backward leaves the parameter gradients for the `tie` ops to register
/// (they run after it: they are its ancestors).
#[derive(Clone, Debug, Default)]
pub struct GradSlot(Arc<Mutex<Vec<Option<FlexTensor>>>>);

impl GradSlot {
    fn take(&self, index: usize) -> Option<FlexTensor> {
        let mut grads = self.0.lock().unwrap_or_else(|e| e.into_inner());
        grads.get_mut(index).and_then(Option::take)
    }

    fn fill(&self, grads: Vec<FlexTensor>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = grads.into_iter().map(Some).collect();
    }
}

// Backend extensions take a fixed number of tensors, and a layer has any number of trainable
// ones: each is made a parent by its own identity op on the running input (`tie`), and the layer
// op has the tied input as its one parent.
#[backend_extension(Flex, Autodiff)]
pub trait CheckpointOps: Backend {
    /// Identity on `x` with `param` as a second parent: its backward passes x's gradient through
    /// and registers the gradient the layer op left in `slot[index]` for `param`.
    fn tie(
        x: FloatTensor<Self>,
        param: FloatTensor<Self>,
        slot: GradSlot,
        index: usize,
    ) -> FloatTensor<Self>;

    /// Attaches `y` (computed from `x` without a graph) to `x`: its backward re-runs the layer,
    /// registers x's gradient and fills `slot` with the parameter gradients.
    fn checkpoint(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        recompute: Recompute,
        slot: GradSlot,
    ) -> FloatTensor<Self>;
}

impl CheckpointOps for Flex {
    fn tie(x: FlexTensor, _param: FlexTensor, _slot: GradSlot, _index: usize) -> FlexTensor {
        x
    }

    fn checkpoint(_x: FlexTensor, y: FlexTensor, _: Recompute, _: GradSlot) -> FlexTensor {
        y
    }
}

impl<C: CheckpointStrategy> CheckpointOps for Autodiff<Flex, C> {
    fn tie(
        x: FloatTensor<Self>,
        param: FloatTensor<Self>,
        slot: GradSlot,
        index: usize,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct TieBackward;

        impl Backward<Flex, 2> for TieBackward {
            type State = (GradSlot, usize);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let dx = grads.consume::<Flex>(&ops.node);
                let [node_x, node_param] = ops.parents;
                let (slot, index) = ops.state;
                if let Some(node) = node_x {
                    grads.register::<Flex>(node.id, dx);
                }
                if let (Some(node), Some(grad)) = (node_param, slot.take(index)) {
                    grads.register::<Flex>(node.id, grad);
                }
            }
        }

        match TieBackward
            .prepare::<C>([x.node(), param.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((slot, index), x.into_primitive()),
            OpsKind::UnTracked(prep) => prep.finish(x.into_primitive()),
        }
    }

    fn checkpoint(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        recompute: Recompute,
        slot: GradSlot,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerBackward;

        impl Backward<Flex, 1> for LayerBackward {
            /// the layer input (all the forward keeps), the recomputation, the gradient slot
            type State = (FlexTensor, Recompute, GradSlot);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let dy = grads.consume::<Flex>(&ops.node);
                let (x, recompute, slot) = ops.state;
                let [node_x] = ops.parents;
                let (dx, dparams) = (recompute.0)(x, dy);
                slot.fill(dparams);
                if let Some(node) = node_x {
                    grads.register::<Flex>(node.id, dx);
                }
            }
        }

        match LayerBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((x.into_primitive(), recompute, slot), y.into_primitive())
            }
            OpsKind::UnTracked(prep) => prep.finish(y.into_primitive()),
        }
    }
}

/// Collects a module's trainable float tensors (those requiring a gradient), in visit order.
#[derive(Default)]
struct Trainable(Vec<FloatTensor<Dispatch>>);

impl ModuleVisitor for Trainable {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        if t.is_require_grad() {
            self.0.push(t.into_dispatch());
        }
    }
}

/// Replaces every trainable tensor by a fresh leaf (a new node id) over the same values.
struct FreshLeaves;

impl ModuleMapper for FreshLeaves {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| match t.is_require_grad() {
            true => t.detach().require_grad(),
            false => t,
        })
    }
}

/// The layer forward under checkpointing: `forward(layer, x)` with only `x` kept for the backward.
/// Runs `forward` directly when there is nothing to recompute for (no autodiff, not flex, nothing
/// trainable reachable).
/// x: [batch, seq, hidden] -> [batch, seq, hidden]
pub fn checkpointed<M, F>(layer: &M, x: Tensor<3>, forward: F) -> Tensor<3>
where
    M: Module + Sync + 'static,
    F: Fn(&M, Tensor<3>) -> Tensor<3> + Send + Sync + 'static,
{
    let device = x.device();
    let mut trainable = Trainable::default();
    layer.visit(&mut trainable);
    if !device.is_autodiff()
        || !crate::kernels::is_flex(&device)
        || (!x.is_require_grad() && trainable.0.is_empty())
    {
        return forward(layer, x);
    }
    let seed = layer_seed(&device);
    device.seed(seed);
    // No graph: untracked parameters and input (dropout still applies: the device is autodiff).
    let y = forward(&layer.clone().no_grad(), x.clone().detach());
    let slot = GradSlot::default();
    let mut tied = x.into_dispatch();
    for (index, param) in trainable.0.into_iter().enumerate() {
        tied = <Dispatch as CheckpointOps>::tie(tied, param, slot.clone(), index);
    }
    let layer = layer.clone();
    let forward = Arc::new(forward);
    let recompute = Recompute(Arc::new(move |x, dy| {
        device.seed(seed);
        rerun(&layer, forward.as_ref(), (x, dy), &device)
    }));
    Tensor::from_dispatch(<Dispatch as CheckpointOps>::checkpoint(
        tied,
        y.into_dispatch(),
        recompute,
        slot,
    ))
}

/// Layer recomputations this process has run (a count for tests and diagnostics).
static RECOMPUTED: AtomicUsize = AtomicUsize::new(0);

/// How many layer forwards the checkpointed backward passes of this process have re-run.
pub fn recomputed_layers() -> usize {
    RECOMPUTED.load(Ordering::Relaxed)
}

/// The recomputation: the layer on fresh leaves, back-propagating `dy` as `sum(y · dy)`.
fn rerun<M, F>(
    layer: &M,
    forward: &F,
    (x, dy): (FlexTensor, FlexTensor),
    device: &Device,
) -> (FlexTensor, Vec<FlexTensor>)
where
    M: Module,
    F: Fn(&M, Tensor<3>) -> Tensor<3>,
{
    RECOMPUTED.fetch_add(1, Ordering::Relaxed);
    let to_flex = |data: TensorData| FlexTensor::from_data(data);
    let x = Tensor::<3>::from_data(x.into_data(), device).require_grad();
    let layer = layer.clone().map(&mut FreshLeaves);
    let mut fresh = Trainable::default();
    layer.visit(&mut fresh);
    let y = forward(&layer, x.clone());
    let dy = Tensor::<3>::from_data(dy.into_data(), device);
    let grads = (y * dy).sum().backward();
    let dx = match x.grad(&grads) {
        Some(g) => to_flex(g.into_data()),
        None => to_flex(TensorData::zeros::<f32, _>(x.shape())),
    };
    let dparams = fresh
        .0
        .into_iter()
        .map(|p| {
            // Rank-erased: `grad` and `shape` read the primitive, whatever its rank.
            let p = Tensor::<1>::from_dispatch(p);
            match p.grad(&grads) {
                Some(g) => to_flex(g.into_data()),
                None => to_flex(TensorData::zeros::<f32, _>(p.shape())),
            }
        })
        .collect();
    (dx, dparams)
}

/// One seed for a layer call's dropout masks, drawn from the device RNG so runs stay reproducible
/// from `--seed`.
fn layer_seed(device: &Device) -> u64 {
    let draw = Tensor::<1>::random([1], Distribution::Uniform(0.0, 1.0), device);
    draw.into_data()
        .iter::<f32>()
        .next()
        .map_or(0, |v| (f64::from(v) * 4294967296.0) as u64)
}
