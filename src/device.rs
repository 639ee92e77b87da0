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
    Ok(rayon::current_num_threads())
}
