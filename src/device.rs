//! Run-time device selection: `--device cpu|flex|ndarray|wgpu`.

use burn::tensor::Device;

use crate::error::LoadError;

/// Names accepted by `--device`.
pub const DEVICE_NAMES: &str = "cpu, flex, ndarray, wgpu";

/// The device for a name. `cpu` is the default CPU backend (see the README for the measurement
/// behind the choice).
pub fn parse_device(name: &str) -> Result<Device, LoadError> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        // The user named ndarray; burn deprecates it in favour of flex but it stays selectable.
        #[allow(deprecated)]
        "ndarray" => Ok(Device::ndarray()),
        "wgpu" => wgpu_device(),
        other => Err(LoadError::Device {
            name: other.into(),
            message: format!("unknown device (expected one of {DEVICE_NAMES})"),
        }),
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device, LoadError> {
    Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Result<Device, LoadError> {
    Err(LoadError::Device {
        name: "wgpu".into(),
        message: "this binary was built without the `wgpu` feature; rebuild with `cargo build --features wgpu`".into(),
    })
}

/// Sizes rayon's global pool, which flex's gemm and element-wise ops and our kernels all use:
/// `Some(n)` threads, or every core the OS gives this process. Returns the count in use. Call
/// before any tensor work (the pool is built once per process).
pub fn set_threads(threads: Option<usize>) -> Result<usize, LoadError> {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = match threads {
        None => available,
        Some(0) => {
            return Err(LoadError::Device {
                name: "--threads 0".into(),
                message: "the thread count must be at least 1".into(),
            })
        }
        // A typo such as 20000 would spawn that many OS threads.
        Some(n) if n > 4 * available.max(64) => {
            return Err(LoadError::Device {
                name: format!("--threads {n}"),
                message: format!("far more threads than the {available} cores here"),
            })
        }
        Some(n) => n,
    };
    // Fails only when a pool already exists (tests that set it twice): keep that one.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    keep_freed_memory();
    Ok(rayon::current_num_threads())
}

/// Lets glibc's malloc keep the memory this process frees for its next allocations instead of
/// handing it back to the kernel (called by [`set_threads`], which every command runs first).
///
/// Why: a forward allocates and frees the same activation sizes layer after layer. glibc
/// returns freed memory at the top of its heap once it exceeds the trim threshold (twice the
/// largest freed chunk, 25 MB for a [2048, 1536] f32 tensor), so every layer of a batch-8
/// prefill faulted its outputs in again: 250,000 page faults, 0.6 s of kernel time per forward
/// (of 6.5 s CPU), measured with `perf stat` on `examples/profile_forward`. With chunks below
/// 32 MB (glibc's largest mmap threshold) served from the heap and a 1 GiB trim threshold the
/// faults drop to those of the first forward. The peak RSS does not move (a LoRA step of
/// `bench_train`: 1636 vs 1634 MiB); memory freed after a peak stays mapped for reuse.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; both values are in glibc's ranges
        // (M_MMAP_THRESHOLD at most 32 MiB on 64-bit).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}
