//! The fused attention kernel against its reference composition (`repeat_kv` + dense mask +
//! burn's `attention`): values and the gradients of q, k and v, on the shapes and masks the
//! models produce.

use burn::tensor::{Device, Tensor, TensorData};
use peft::kernels::attention::{attention, attention_reference, AttnMask};
use peft::models::Inputs;

/// Max abs difference allowed, relative to the reference's magnitude (at least 1).
const TOL: f32 = 1e-5;

/// Deterministic values in [-2, 2) (an LCG: no test depends on a random seed).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn tensor(shape: [usize; 4], seed: u64, device: &Device) -> Tensor<4> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(values(n, seed), shape), device)
}

/// One comparison: q [b, h, s, d], k/v [b, kvh, t, d] and a mask.
struct Case {
    b: usize,
    h: usize,
    kvh: usize,
    s: usize,
    t: usize,
    d: usize,
    mask: AttnMask,
}

fn max_diff(a: Tensor<4>, b: Tensor<4>) -> (f32, f32) {
    let scale = b.clone().abs().max().into_scalar::<f32>().max(1.0);
    ((a - b).abs().max().into_scalar::<f32>(), scale)
}

fn assert_close(name: &str, fused: Tensor<4>, reference: Tensor<4>) {
    assert_eq!(fused.dims(), reference.dims(), "{name} shape");
    let (diff, scale) = max_diff(fused, reference);
    assert!(
        diff <= TOL * scale,
        "{name}: max |fused - reference| = {diff:e} (reference magnitude {scale})"
    );
}

/// Output and (when `track` says) the gradients of q, k, v of `f` under the loss Σ out ∘ w.
type Run = (Tensor<4>, [Option<Tensor<4>>; 3]);

fn run(
    case: &Case,
    track: [bool; 3],
    f: fn(Tensor<4>, Tensor<4>, Tensor<4>, &AttnMask, f64) -> Tensor<4>,
) -> Run {
    let device = Device::flex().autodiff();
    let Case {
        b, h, kvh, s, t, d, ..
    } = *case;
    let input = |shape, seed, tracked: bool| {
        let x = tensor(shape, seed, &device);
        if tracked {
            x.require_grad()
        } else {
            x
        }
    };
    let q = input([b, h, s, d], 1, track[0]);
    let k = input([b, kvh, t, d], 2, track[1]);
    let v = input([b, kvh, t, d], 3, track[2]);
    let w = tensor([b, h, s, d], 4, &device);
    let scale = 1.0 / (d as f64).sqrt();
    let out = f(q.clone(), k.clone(), v.clone(), &case.mask, scale);
    let grads = (out.clone() * w).sum().backward();
    let grads = [q.grad(&grads), k.grad(&grads), v.grad(&grads)];
    (out.inner(), grads)
}

/// Fused vs reference: values, and the gradients of every input.
fn check(case: Case) {
    check_tracked(&case, [true; 3]);
}

fn check_tracked(case: &Case, track: [bool; 3]) {
    let (out, grads) = run(case, track, attention);
    let (ref_out, ref_grads) = run(case, track, attention_reference);
    assert_close("output", out, ref_out);
    for ((name, g), r) in ["dq", "dk", "dv"].iter().zip(grads).zip(ref_grads) {
        match (g, r) {
            (Some(g), Some(r)) => assert_close(name, g, r),
            (None, None) => {}
            (g, r) => panic!(
                "{name}: fused has a gradient: {}, reference: {}",
                g.is_some(),
                r.is_some()
            ),
        }
    }
    // Inference (flex without autodiff) takes the forward kernel alone.
    let device = Device::flex();
    let Case {
        b, h, kvh, s, t, d, ..
    } = *case;
    let (q, k, v) = (
        tensor([b, h, s, d], 1, &device),
        tensor([b, kvh, t, d], 2, &device),
        tensor([b, kvh, t, d], 3, &device),
    );
    let scale = 1.0 / (d as f64).sqrt();
    let fused = attention(q.clone(), k.clone(), v.clone(), &case.mask, scale);
    assert_close(
        "inference output",
        fused,
        attention_reference(q, k, v, &case.mask, scale),
    );
}

/// `key_valid` rows from 0/1 lists.
fn valid(rows: &[&[u8]]) -> Option<Vec<bool>> {
    Some(
        rows.iter()
            .flat_map(|r| r.iter().map(|&x| x != 0))
            .collect(),
    )
}

/// A padded row: `left` pads, `real` tokens, then pads up to `len`.
fn padded(left: usize, real: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| u8::from(j >= left && j < left + real))
        .collect()
}

#[test]
fn causal_attention_with_left_and_right_padding_matches_the_reference() {
    // Row 0 is left-padded: its first five queries see only padding (fully masked rows).
    let (s, t) = (70, 70);
    check(Case {
        b: 2,
        h: 4,
        kvh: 2,
        s,
        t,
        d: 16,
        mask: AttnMask {
            key_valid: valid(&[&padded(5, 65, t), &padded(0, 50, t)]),
            causal_offset: Some(0),
        },
    });
}

#[test]
fn grouped_query_attention_matches_the_reference() {
    check(Case {
        b: 2,
        h: 6,
        kvh: 2,
        s: 33,
        t: 33,
        d: 64,
        mask: AttnMask {
            key_valid: None,
            causal_offset: Some(0),
        },
    });
}

#[test]
fn multi_head_attention_matches_the_reference() {
    check(Case {
        b: 1,
        h: 3,
        kvh: 3,
        s: 40,
        t: 40,
        d: 8,
        mask: AttnMask {
            key_valid: valid(&[&padded(0, 37, 40)]),
            causal_offset: Some(0),
        },
    });
}

#[test]
fn multi_query_attention_matches_the_reference() {
    check(Case {
        b: 2,
        h: 4,
        kvh: 1,
        s: 20,
        t: 20,
        d: 16,
        mask: AttnMask {
            key_valid: valid(&[&padded(3, 17, 20), &padded(0, 20, 20)]),
            causal_offset: Some(0),
        },
    });
}

#[test]
fn key_value_prefixes_before_the_causal_part_are_seen_by_every_query() {
    // Three prefix keys (prefix tuning), then 20 padded, causal keys: offset = prefix.
    let mut row0 = vec![1u8; 3];
    row0.extend(padded(4, 16, 20));
    let mut row1 = vec![1u8; 3];
    row1.extend(padded(0, 20, 20));
    check(Case {
        b: 2,
        h: 4,
        kvh: 2,
        s: 20,
        t: 23,
        d: 16,
        mask: AttnMask {
            key_valid: valid(&[&row0, &row1]),
            causal_offset: Some(3),
        },
    });
}

#[test]
fn a_cached_decoding_step_sees_all_past_keys() {
    // One new query after 8 cached keys (2 of them left padding in row 0).
    check(Case {
        b: 2,
        h: 6,
        kvh: 2,
        s: 1,
        t: 9,
        d: 16,
        mask: AttnMask {
            key_valid: valid(&[&padded(2, 7, 9), &padded(0, 9, 9)]),
            causal_offset: Some(8),
        },
    });
}

#[test]
fn unmasked_attention_over_an_adaption_prompt_matches_the_reference() {
    check(Case {
        b: 2,
        h: 6,
        kvh: 3,
        s: 20,
        t: 7,
        d: 16,
        mask: AttnMask::none(),
    });
}

#[test]
fn sequences_spanning_several_partial_blocks_match_the_reference() {
    // 130 = 2 full blocks of 64 and a partial one, queries and keys; a cached prefix of 5 keys.
    check(Case {
        b: 1,
        h: 2,
        kvh: 1,
        s: 130,
        t: 135,
        d: 16,
        mask: AttnMask {
            key_valid: None,
            causal_offset: Some(5),
        },
    });
}

#[test]
fn a_batch_row_of_padding_only_gives_zeros_and_no_gradient() {
    let case = Case {
        b: 2,
        h: 2,
        kvh: 1,
        s: 10,
        t: 10,
        d: 16,
        mask: AttnMask {
            key_valid: valid(&[&[0; 10], &padded(0, 10, 10)]),
            causal_offset: Some(0),
        },
    };
    check_tracked(&case, [true; 3]);
    let (out, [dq, _, _]) = run(&case, [true; 3], attention);
    let row0 = |x: Tensor<4>| x.slice([0..1]).abs().max().into_scalar::<f32>();
    assert_eq!(row0(out), 0.0);
    assert_eq!(row0(dq.expect("dq")), 0.0);
}

#[test]
fn untracked_inputs_get_no_gradient() {
    let case = Case {
        b: 1,
        h: 4,
        kvh: 2,
        s: 12,
        t: 12,
        d: 8,
        mask: AttnMask {
            key_valid: None,
            causal_offset: Some(0),
        },
    };
    for track in [
        [true, false, false],
        [false, true, false],
        [false, false, true],
        [false, true, true],
    ] {
        check_tracked(&case, track);
    }
}

#[test]
fn the_described_mask_densifies_to_the_models_dense_mask() {
    let device = Device::flex();
    let padded = Inputs::with_mask(vec![1, 2, 3, 4, 5, 6], &[0, 1, 1, 1, 1, 0], 2, 3);
    let plain = Inputs::new(vec![1, 2, 3, 4], 2, 2);
    let mut compared = 0;
    for inputs in [padded, plain] {
        for (past, prefix) in [(0, 0), (0, 2), (1, 3)] {
            let mut inputs = inputs.clone();
            if let Some(m) = &inputs.key_mask {
                // The key mask covers cached keys too: prepend `past` real ones per row.
                let row = m.len() / inputs.batch;
                let rows = m.chunks(row);
                inputs.key_mask = Some(
                    rows.flat_map(|r| std::iter::repeat_n(true, past).chain(r.iter().copied()))
                        .collect(),
                );
            }
            let keys = prefix + past + inputs.seq;
            let dense = inputs
                .attn_mask(past, prefix)
                .dense(inputs.batch, inputs.seq, keys, &device)
                .expect("a causal mask hides keys");
            let expected = inputs.attention_mask(past, prefix, &device);
            assert_eq!(
                dense.into_data(),
                expected.into_data(),
                "past {past}, prefix {prefix}"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 6);
}
