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
