//! Scaled dot-product attention with GQA, a causal offset and key padding, fused on the CPU.
//!
//! `attention(q [b, h, s, d], k [b, kvh, t, d], v [b, kvh, t, d], mask, scale) -> [b, h, s, d]`:
//! `softmax(scale · q kᵀ + mask) v`, where query head `i` reads KV head `i / (h / kvh)` (GQA/MQA
//! by indexing, no `repeat_kv` copies) and the mask is described, not materialised
//! ([`AttnMask`]: key padding by index, a causal rule with an offset for prefix and cached keys).
//!
//! On flex + f32 it is one custom op ([`FusedAttentionOps`]) following FlashAttention-2
//! (Dao 2023, arXiv 2307.08691; the online softmax of Milakov & Gimelshein 2018,
//! arXiv 1805.02867), in `attention/flash.rs` (forward) and `attention/backward.rs`, with the
//! element-wise row steps (AVX2 when present) in `attention/rows.rs`:
//! - forward (Algorithm 1): per (batch, head, block of `BQ` queries), loop over blocks of `BK`
//!   keys: `S = Q Kᵀ` (gemm), scale and mask, online softmax (running max `m` and sum `l`,
//!   previous output rescaled by `exp(m_old − m_new)`), `O += P V` (gemm); finally `O /= l` and
//!   `LSE = m + ln l` saved per query row. Key blocks after the block's last causal key and
//!   blocks of padding only are skipped, so the `[b, h, s, t]` scores never exist;
//! - backward (Algorithm 2): `D = rowsum(dO ∘ O)`; per (batch, head), key blocks outer, query
//!   blocks inner (starting at the first query that sees the block): `P = exp(scale·S − LSE)`
//!   recomputed, `dV += Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ∘ (dP − D)`, `dQ += scale · dS K`,
//!   `dK += scale · dSᵀ Q`; dk/dv are summed over each group's query heads. Only the gradients
//!   of tracked inputs are computed.
//!
//! Threads (rayon): forward tasks are (batch, head, query block), backward tasks (batch, head),
//! each owning its output rows, dq rows and a per-head dk/dv partial `[b, h, t, d]` that is
//! reduced over the group afterwards. The backward keeps q, k, v, the output and the LSE
//! `[b, h, s]`: O(b·h·s) beyond the tensors the graph already holds.
//!
//! The output is returned as a `[b, h, s, d]` view of a `[b, s, h, d]` buffer, so the models'
//! `swap_dims(1, 2).reshape([b, s, h·d])` before `o_proj` is free.
//!
//! A query row that sees no key (a left-padding query) gives 0 and no gradient, as burn's
//! attention does (`attention_fallback` clamps the row max and sum: softmax 0; flex's kernels
//! leave such a row at 0).
//!
//! Everywhere else (wgpu, ndarray, other dtypes, `PEFT_KERNELS=off`) [`attention_reference`]
//! runs: the composition the models used before, `repeat_kv` + a dense bool mask + burn's
//! `attention`.

mod backward;
mod flash;
mod rows;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Device, Tensor, TensorData};

use flash::View;

/// Which keys each query sees: key `j` is visible to query `i` of batch row `b` iff
/// `key_valid[b·t + j]` (when given) and `j ≤ i + causal_offset` (when causal). Prefix keys
/// (prefix tuning) come first and are always valid; with `causal_offset = prefix + past` the
/// causal rule lets every query see them, and the cached keys, and the new keys up to its own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttnMask {
    /// [batch, keys] row-major: false = padding.
    pub key_valid: Option<Vec<bool>>,
    pub causal_offset: Option<usize>,
}

impl AttnMask {
    /// Every query sees every key (LLaMA-Adapter's adaption prompt).
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether no key is hidden from any query.
    pub fn is_none(&self) -> bool {
        self.key_valid.is_none() && self.causal_offset.is_none()
    }

    /// The dense mask `[batch, 1, seq, keys]`, true = hidden; `None` when nothing is hidden.
    pub fn dense(
        &self,
        batch: usize,
        seq: usize,
        keys: usize,
        device: &Device,
    ) -> Option<Tensor<4, Bool>> {
        if self.is_none() {
            return None;
        }
        let mut masked = Vec::with_capacity(batch * seq * keys);
        for b in 0..batch {
            for i in 0..seq {
                masked.extend((0..keys).map(|j| {
                    let padding = self.key_valid.as_ref().is_some_and(|v| !v[b * keys + j]);
                    let future = self.causal_offset.is_some_and(|off| j > i + off);
                    padding || future
                }));
            }
        }
        Some(Tensor::from_data(
            TensorData::new(masked, [batch, 1, seq, keys]),
            device,
        ))
    }
}

/// q: [b, h, s, d], k/v: [b, kvh, t, d] -> [b, h, s, d]; `h` a multiple of `kvh`, `mask`'s
/// `key_valid` of length `b · t`. Fused on flex + f32, else [`attention_reference`].
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: &AttnMask,
    scale: f64,
) -> Tensor<4> {
    let ([b, h, _, d], [kb, kvh, t, kd], vd) = (q.dims(), k.dims(), v.dims());
    // Shapes come from the models' own configs (validated at load): a mismatch is a bug.
    assert!(
        kb == b && kd == d && vd == k.dims() && kvh > 0 && h % kvh == 0,
        "attention: q {:?}, k {:?}, v {vd:?}",
        q.dims(),
        k.dims()
    );
    assert!(
        mask.key_valid.as_ref().is_none_or(|m| m.len() == b * t),
        "attention: key_valid covers {} keys, expected {b} x {t}",
        mask.key_valid.as_ref().map_or(0, Vec::len)
    );
    if super::fused(&q) && super::fused(&k) && super::fused(&v) {
        Tensor::from_dispatch(<Dispatch as FusedAttentionOps>::fused_attention(
            q.into_dispatch(),
            k.into_dispatch(),
            v.into_dispatch(),
            mask.clone(),
            scale,
        ))
    } else {
        attention_reference(q, k, v, mask, scale)
    }
}

/// The plain composition (and the path off flex): KV heads repeated to the query heads
/// (transformers' `repeat_kv`), the dense mask, burn's `attention`.
pub fn attention_reference(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: &AttnMask,
    scale: f64,
) -> Tensor<4> {
    let [b, h, s, _] = q.dims();
    let [_, kvh, t, _] = k.dims();
    let (k, v) = (repeat_kv(k, h / kvh), repeat_kv(v, h / kvh));
    let dense = mask
        .dense(b, s, t, &q.device())
        .map(|m| m.expand([b, h, s, t]));
    let options = AttentionModuleOptions {
        scale: Some(scale),
        softcap: None,
        is_causal: false,
    };
    burn_attention(q, k, v, dense, None, options)
}

/// [b, kvh, t, d] -> [b, kvh · groups, t, d]: each KV head serves `groups` consecutive query heads.
fn repeat_kv(x: Tensor<4>, groups: usize) -> Tensor<4> {
    if groups == 1 {
        return x;
    }
    let [b, h, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, h, groups, t, d])
        .reshape([b, h * groups, t, d])
}

#[backend_extension(Flex, Autodiff)]
pub trait FusedAttentionOps: Backend {
    /// q [b, h, s, d], k/v [b, kvh, t, d] -> [b, h, s, d] (see the module docs).
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: AttnMask,
        scale: f64,
    ) -> FloatTensor<Self>;
}

/// A flex f32 tensor whose layout `View` can read (non-negative strides, innermost stride 1).
fn readable(t: FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "fused attention takes f32 tensors");
    let layout = t.layout();
    let strides = layout.strides();
    if strides.iter().all(|&s| s >= 0) && (strides[3] == 1 || layout.shape()[3] == 1) {
        t
    } else {
        t.to_contiguous()
    }
}

fn view(t: &FlexTensor) -> View<'_> {
    let layout = t.layout();
    let (shape, st) = (layout.shape(), layout.strides());
    View {
        data: t.storage::<f32>(),
        offset: layout.start_offset(),
        strides: [st[0], st[1], st[2]],
        dims: [shape[0], shape[1], shape[2], shape[3]],
    }
}

/// The forward on flex tensors: (output [b, h, s, d] as a view of [b, s, h, d], LSE [b, h, s]).
fn forward_flex(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    mask: &AttnMask,
    scale: f64,
) -> (FlexTensor, Vec<f32>) {
    let [b, h, s, d] = view(q).dims;
    let (out, lse) = flash::forward(view(q), view(k), view(v), mask, scale as f32);
    let out = crate::kernels::flex::tensor(out, [b, s, h, d]).transpose(1, 2);
    (out, lse)
}

impl FusedAttentionOps for Flex {
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: AttnMask,
        scale: f64,
    ) -> FloatTensor<Self> {
        let (q, k, v) = (readable(q), readable(k), readable(v));
        forward_flex(&q, &k, &v, &mask, scale).0
    }
}

/// What the backward keeps: the inputs, the output and its log-sum-exp per query row.
#[derive(Clone)]
struct AttentionState {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    out: FlexTensor,
    lse: std::sync::Arc<Vec<f32>>,
    mask: AttnMask,
    scale: f64,
}

impl std::fmt::Debug for AttentionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttentionState")
            .field("q", &self.q.layout().shape())
            .field("k", &self.k.layout().shape())
            .field("scale", &self.scale)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttentionState;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_q, node_k, node_v] = ops.parents;
        let d_o = readable(grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let saved = backward::Saved {
            q: view(&st.q),
            k: view(&st.k),
            v: view(&st.v),
            o: view(&st.out),
            lse: &st.lse,
            d_o: view(&d_o),
        };
        let wanted = backward::Wanted {
            q: node_q.is_some(),
            k: node_k.is_some(),
            v: node_v.is_some(),
        };
        let g = backward::backward(&saved, &st.mask, st.scale as f32, wanted);
        let (q_shape, k_shape) = (st.q.layout().shape().clone(), st.k.layout().shape().clone());
        let tensor = crate::kernels::flex::tensor;
        if let Some(node) = node_q {
            grads.register::<Flex>(node.id, tensor(g.q, q_shape));
        }
        if let Some(node) = node_k {
            grads.register::<Flex>(node.id, tensor(g.k, k_shape.clone()));
        }
        if let Some(node) = node_v {
            grads.register::<Flex>(node.id, tensor(g.v, k_shape));
        }
    }
}

impl<C: CheckpointStrategy> FusedAttentionOps for Autodiff<Flex, C> {
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: AttnMask,
        scale: f64,
    ) -> FloatTensor<Self> {
        let prep = AttentionBackward
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful();
        let q = readable(q.into_primitive());
        let k = readable(k.into_primitive());
        let v = readable(v.into_primitive());
        let (out, lse) = forward_flex(&q, &k, &v, &mask, scale);
        match prep {
            OpsKind::Tracked(prep) => {
                let state = AttentionState {
                    q,
                    k,
                    v,
                    out: out.clone(),
                    lse: std::sync::Arc::new(lse),
                    mask,
                    scale,
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}
