//! Test values for the block quantizers: weight-like Gaussians, and blocks meant to break a fast
//! path (zeros, ties, equal magnitudes of both signs, the whole f32 range, subnormals, ±∞, NaN).

const QK: usize = 32;

/// xorshift64: uniform in [0, 1).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn gauss(&mut self) -> f32 {
        (0..4).map(|_| self.next()).sum::<f32>() - 2.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next() * n as f32) as usize).min(n - 1)
    }
}

/// `blocks` 32-value blocks meant to break a fast path: zeros, ties on Q4_0's and Q8_0's half
/// levels, equal magnitudes of both signs, magnitudes across the whole f32 range (both sides of
/// the f16 scale's range), subnormals, infinities and NaN; `extra` adds special values (a fast
/// path's own bounds).
pub fn hard_blocks(rng: &mut Rng, blocks: usize, extra: &[f32]) -> Vec<f32> {
    let mut specials = vec![
        0.0,
        -0.0,
        f32::MAX,
        -f32::MAX,
        f32::MIN_POSITIVE,
        1e-45,
        -1e-40,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        65504.0 * 8.0,
        6e-8 * 8.0,
    ];
    specials.extend_from_slice(extra);
    let mut out = Vec::with_capacity(blocks * QK);
    for _ in 0..blocks {
        let kind = rng.below(9);
        // A power-of-two scale from 2^-130 to 2^130, so products with it are exact.
        let p = 2f32.powi(rng.below(261) as i32 - 130);
        let block: Vec<f32> = match kind {
            0 => vec![0.0; QK],
            // Half-integers times 2^e: x · (−8 / max) = −x / 2^e lands on ties when max = ±8·2^e.
            1 => (0..QK)
                .map(|j| match j {
                    0 => 8.0 * p * if rng.next() < 0.5 { 1.0 } else { -1.0 },
                    _ => (rng.below(16) as f32 - 7.5) * p,
                })
                .collect(),
            // Few distinct values, many zeros, equal magnitudes of both signs.
            2 => (0..QK)
                .map(|_| [0.0, 1.0, -1.0, 0.5, -0.5, 3.0, -3.0][rng.below(7)] * p)
                .collect(),
            // Mostly zero with one or two values.
            3 => {
                let mut b = vec![0.0; QK];
                b[rng.below(QK)] = rng.gauss() * p;
                b[rng.below(QK)] = rng.gauss() * p;
                b
            }
            // A special value among Gaussians.
            4 => {
                let mut b: Vec<f32> = (0..QK).map(|_| rng.gauss() * 0.02).collect();
                b[rng.below(QK)] = specials[rng.below(specials.len())];
                b
            }
            // Gaussians at any magnitude.
            5 => (0..QK).map(|_| rng.gauss() * p).collect(),
            // Only specials.
            6 => (0..QK)
                .map(|_| specials[rng.below(specials.len())])
                .collect(),
            // Half-integers times 2^e with max 127·2^e: Q8_0's `x / (max / 127)` lands on ties.
            7 => (0..QK)
                .map(|j| match j {
                    0 => 127.0 * p,
                    _ => (rng.below(254) as f32 - 126.5) * p,
                })
                .collect(),
            // Weights as trained: Gaussian with an outlier.
            _ => (0..QK)
                .map(|j| rng.gauss() * if j == 5 { 0.2 } else { 0.02 })
                .collect(),
        };
        out.extend(block);
    }
    out
}
