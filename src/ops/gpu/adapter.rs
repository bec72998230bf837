//! Which adapter burn-wgpu will run on, asked of wgpu before burn-wgpu is: burn-wgpu panics (on
//! its device thread, then on the caller's) when it finds none, as on a machine without a GPU
//! driver, and a user should get an error that says what to install instead.

use burn_wgpu::WgpuDevice;
use burn_wgpu::graphics::{AutoGraphicsApi, GraphicsApi};

use crate::{Error, Result};

/// The adapter (GPU, or software driver) burn-wgpu runs on for a device, from
/// [`crate::backend::wgpu_adapter`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WgpuAdapter {
    /// The adapter's name as its driver gives it, e.g. `NVIDIA H200` or
    /// `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// The graphics API: `Vulkan`, `Metal`, `Dx12` or `Gl`.
    pub api: String,
    /// A software driver on the CPU (Mesa's lavapipe, say): the results are right, and a
    /// CPU backend computes them faster.
    pub software: bool,
}

impl std::fmt::Display for WgpuAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}", self.name, self.api)?;
        if self.software {
            write!(f, ", a software driver on the CPU")?;
        }
        write!(f, ")")
    }
}

/// The adapter cubecl 0.10 picks for `device` (`cubecl_wgpu::runtime::request_adapter`): on the
/// graphics API burn-wgpu's default device uses (Vulkan, or Metal on macOS), the adapter wgpu
/// prefers for high performance for the default device, the `n`-th adapter of a kind for the
/// kinds, counting adapters of an unknown kind when there are too few of that kind.
pub(crate) fn find(device: &WgpuDevice) -> Result<WgpuAdapter> {
    use wgpu::DeviceType;
    let backend = <AutoGraphicsApi as GraphicsApi>::backend();
    // The kind of adapter asked for (none: the default device), what to call it, and which.
    let (kind, wanted, n) = match device {
        WgpuDevice::DiscreteGpu(n) => (Some(DeviceType::DiscreteGpu), "discrete GPU", *n),
        WgpuDevice::IntegratedGpu(n) => (Some(DeviceType::IntegratedGpu), "integrated GPU", *n),
        WgpuDevice::VirtualGpu(n) => (Some(DeviceType::VirtualGpu), "virtual GPU", *n),
        WgpuDevice::Cpu => (Some(DeviceType::Cpu), "CPU device", 0),
        WgpuDevice::Existing(id) => {
            return Ok(WgpuAdapter {
                name: format!("existing device {id}"),
                api: "set up by the caller".to_owned(),
                software: false,
            });
        }
        // `DefaultDevice` and the deprecated `BestAvailable`.
        _ => (None, "adapter", 0),
    };
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: backend.into(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = || -> Vec<wgpu::AdapterInfo> {
        cubecl::future::block_on(instance.enumerate_adapters(backend.into()))
            .iter()
            .map(wgpu::Adapter::get_info)
            .collect()
    };
    let found = match kind {
        // The default device: wgpu's high-performance choice, which exists when any adapter does.
        None => cubecl::future::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
        }))
        .ok()
        .map(|adapter| adapter.get_info()),
        Some(kind) => {
            let all = adapters();
            let of = |t: DeviceType| all.iter().filter(move |a| a.device_type == t);
            of(kind)
                .nth(n)
                .or_else(|| of(DeviceType::Other).nth(n))
                .cloned()
        }
    };
    let Some(info) = found else {
        // Only here, on the way to an error, are the adapters listed for the default device.
        let all = adapters();
        return Err(Error::NoDevice {
            wanted: if n == 0 {
                format!("{backend:?} {wanted}")
            } else {
                format!("{backend:?} {wanted} number {n} (counting from 0)")
            },
            found: if all.is_empty() {
                "none".to_owned()
            } else {
                all.iter()
                    .map(|a| format!("{} ({:?})", a.name, a.device_type))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            hint: format!(
                "install a GPU driver with {backend:?} support (on Linux without a GPU, Mesa's \
                 software driver: the `mesa-vulkan-drivers` package on Debian and Ubuntu), or \
                 use a CPU backend"
            ),
        });
    };
    Ok(WgpuAdapter {
        name: info.name,
        api: format!("{:?}", info.backend),
        software: info.device_type == DeviceType::Cpu,
    })
}
