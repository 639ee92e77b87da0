//! Eight-lane f32 arithmetic for the element-wise kernels: AVX2 + FMA when the CPU has them
//! (detected at run time, as gemm's and burn's `x86-v4` kernels are), one lane at a time otherwise.
//!
//! Why intrinsics rather than loops left to the auto-vectoriser: the crate's own code is built at
//! `opt-level = 1` in the dev profile (tests, examples, the benchmarks), and rustc runs LLVM's loop
//! and SLP vectorisers only at 2 and 3 (checked: a zipped `a * b` loop has no `mulps` at O1). A
//! kernel is written once, generic over [`Lanes`], as a [`Kernel`] whose `run` is
//! `#[inline(always)]`; [`dispatch`] monomorphises it inside a `#[target_feature(enable = "avx2,fma")]`
//! function, so its body is compiled with those features (the pattern of the `pulp` crate).
//!
//! [`exp`] is Cephes' `expf` (S. Moshier, range reduction by ln 2 split in two constants and a
//! degree-5 minimax polynomial; peak relative error about 1.7e-7 over the clamped range), the
//! same code on both lane types, so a value does not depend on where a row's tail starts.

/// What the kernels need from a lane type: f32 (one lane) or [`F32x8`].
pub trait Lanes: Copy {
    const N: usize;
    /// # Safety
    /// `p..p + N` must be readable.
    unsafe fn load(p: *const f32) -> Self;
    /// # Safety
    /// `p..p + N` must be writable.
    unsafe fn store(self, p: *mut f32);
    fn splat(v: f32) -> Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    /// self · b + c (fused where the CPU has FMA).
    fn mul_add(self, b: Self, c: Self) -> Self;
    fn max(self, o: Self) -> Self;
    fn min(self, o: Self) -> Self;
    /// Round to the nearest integer (ties: either way, only used for range reduction).
    fn round(self) -> Self;
    /// 2^n for an integral n in [-126, 127].
    fn pow2(self) -> Self;
    /// Sum of the lanes.
    fn hsum(self) -> f32;
}

impl Lanes for f32 {
    const N: usize = 1;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        *p
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        *p = self
    }
    #[inline(always)]
    fn splat(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self - o
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self * o
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        self / o
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // Not `f32::mul_add`: without FMA in the target that is a libm call.
        self * b + c
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        if self > o {
            self
        } else {
            o
        }
    }
    #[inline(always)]
    fn min(self, o: Self) -> Self {
        if self < o {
            self
        } else {
            o
        }
    }
    #[inline(always)]
    fn round(self) -> Self {
        self.round()
    }
    #[inline(always)]
    fn pow2(self) -> Self {
        f32::from_bits(((self as i32 + 127) as u32) << 23)
    }
    #[inline(always)]
    fn hsum(self) -> f32 {
        self
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::F32x8;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Lanes;
    use std::arch::x86_64::*;

    /// Eight f32 lanes in an AVX register. Its methods are only reached through
    /// [`super::dispatch`] after AVX2 and FMA were detected.
    #[derive(Clone, Copy)]
    pub struct F32x8(__m256);

    // SAFETY (every method): the intrinsics need AVX/AVX2/FMA, which `dispatch` checked before
    // running any kernel monomorphised for F32x8.
    impl Lanes for F32x8 {
        const N: usize = 8;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Self(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0)
        }
        #[inline(always)]
        fn splat(v: f32) -> Self {
            unsafe { Self(_mm256_set1_ps(v)) }
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            unsafe { Self(_mm256_add_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            unsafe { Self(_mm256_sub_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            unsafe { Self(_mm256_mul_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn div(self, o: Self) -> Self {
            unsafe { Self(_mm256_div_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn mul_add(self, b: Self, c: Self) -> Self {
            unsafe { Self(_mm256_fmadd_ps(self.0, b.0, c.0)) }
        }
        #[inline(always)]
        fn max(self, o: Self) -> Self {
            unsafe { Self(_mm256_max_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn min(self, o: Self) -> Self {
            unsafe { Self(_mm256_min_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn round(self) -> Self {
            unsafe {
                Self(_mm256_round_ps::<
                    { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
                >(self.0))
            }
        }
        #[inline(always)]
        fn pow2(self) -> Self {
            unsafe {
                let n = _mm256_add_epi32(_mm256_cvtps_epi32(self.0), _mm256_set1_epi32(127));
                Self(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(n)))
            }
        }
        #[inline(always)]
        fn hsum(self) -> f32 {
            unsafe {
                let s = _mm_add_ps(
                    _mm256_castps256_ps128(self.0),
                    _mm256_extractf128_ps::<1>(self.0),
                );
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
                _mm_cvtss_f32(s)
            }
        }
    }
}

/// e^x (Cephes `expf`), clamped to [-87, 88] so that 2^n stays a normal number: below, the true
/// value is under 1.7e-38 and the clamped one is too; above, f32 would overflow anyway.
#[inline(always)]
pub fn exp<V: Lanes>(x: V) -> V {
    let x = x.max(V::splat(-87.0)).min(V::splat(88.0));
    let n = x.mul(V::splat(std::f32::consts::LOG2_E)).round();
    // ln 2 = 0.693359375 − 2.12194440e-4, the first part exact in few bits.
    let r = n.mul_add(V::splat(-0.693_359_4), x);
    let r = n.mul_add(V::splat(2.121_944_4e-4), r);
    let z = r.mul(r);
    let mut y = V::splat(1.987_569_1e-4);
    y = y.mul_add(r, V::splat(1.398_199_9e-3));
    y = y.mul_add(r, V::splat(8.333_452e-3));
    y = y.mul_add(r, V::splat(4.166_579_6e-2));
    y = y.mul_add(r, V::splat(1.666_666_5e-1));
    y = y.mul_add(r, V::splat(5.000_000_1e-1));
    let y = y.mul_add(z, r.add(V::splat(1.0)));
    y.mul(n.pow2())
}

/// σ(x) = 1 / (1 + e^−x).
#[inline(always)]
pub fn sigmoid<V: Lanes>(x: V) -> V {
    let one = V::splat(1.0);
    one.div(one.add(exp(V::splat(0.0).sub(x))))
}

/// A kernel written once for every lane type.
pub trait Kernel {
    type Out;
    /// Mark implementations `#[inline(always)]`: that is what puts their body inside the
    /// AVX2-enabled function.
    fn run<V: Lanes>(self) -> Self::Out;
}

/// Runs `kernel` with the widest lanes this CPU has.
#[inline]
pub fn dispatch<K: Kernel>(kernel: K) -> K::Out {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 and FMA were detected.
        return unsafe { run_avx2(kernel) };
    }
    kernel.run::<f32>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<K: Kernel>(kernel: K) -> K::Out {
    kernel.run::<F32x8>()
}

/// Whether the AVX2 + FMA lanes are used (`PEFT_SIMD=off` forces one lane, for A/B checks).
pub fn avx2() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let off = std::env::var("PEFT_SIMD").is_ok_and(|v| v == "off" || v == "0");
        #[cfg(target_arch = "x86_64")]
        let has = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        let has = false;
        has && !off
    })
}

/// Rows per rayon task for `rows` rows of `width` values: about 16K values a task (small enough
/// that two threads share a [b·s, hidden] activation evenly, large enough that a task's overhead
/// is noise), and a single task under 32K values (decoding one token).
pub fn chunk_rows(rows: usize, width: usize) -> usize {
    let total = rows.saturating_mul(width.max(1));
    if total <= 32 * 1024 {
        return rows.max(1);
    }
    (16 * 1024 / width.max(1)).clamp(1, rows.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct ExpAll<'a>(&'a [f32], &'a mut [f32]);
    impl Kernel for ExpAll<'_> {
        type Out = ();
        #[inline(always)]
        fn run<V: Lanes>(self) {
            let n = self.0.len();
            let m = n - n % V::N;
            let mut i = 0;
            while i < m {
                unsafe { exp(V::load(self.0.as_ptr().add(i))).store(self.1.as_mut_ptr().add(i)) };
                i += V::N;
            }
            for j in m..n {
                self.1[j] = exp(self.0[j]);
            }
        }
    }

    #[test]
    fn the_vector_exp_is_within_a_few_ulp_of_the_library_exp() {
        let xs: Vec<f32> = (0..20_001)
            .map(|i| -87.0 + i as f32 * (175.0 / 20_000.0))
            .collect();
        let mut out = vec![0.0; xs.len()];
        dispatch(ExpAll(&xs, &mut out));
        let worst = xs
            .iter()
            .zip(&out)
            .map(|(&x, &y)| {
                let want = (x as f64).exp();
                ((y as f64 - want) / want).abs()
            })
            .fold(0.0, f64::max);
        assert!(worst < 4e-7, "worst relative error {worst:e}");
    }

    #[test]
    fn the_vector_exp_saturates_instead_of_producing_nan() {
        let xs = [-1e30f32, -200.0, -88.0, 89.0, 1e30, 0.0, -0.0, 1.0, -1.0];
        let mut out = [0.0; 9];
        dispatch(ExpAll(&xs, &mut out));
        assert!(out.iter().all(|v| v.is_finite() && *v >= 0.0), "{out:?}");
        assert!(out[0] < 1e-37 && out[4] > 1e38 && out[5] == 1.0, "{out:?}");
    }

    #[test]
    fn chunks_split_a_training_activation_between_threads_and_keep_a_token_whole() {
        assert!(1024 / chunk_rows(1024, 1536) >= 8);
        assert_eq!(chunk_rows(1, 1536), 1);
        assert_eq!(chunk_rows(3, 576), 3);
        assert_eq!(chunk_rows(0, 576), 1);
    }
}
