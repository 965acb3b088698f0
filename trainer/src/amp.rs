//! bf16 automatic mixed precision (`--amp`), as `torch.autocast(device, dtype=torch.bfloat16)`.
//!
//! tch only exposes libtorch's deprecated global switch, which enables CUDA autocast in fp16
//! (that would need a gradient scaler). libtorch's C++ functions that choose the device and the
//! dtype are plain free functions taking one-byte enums, so they are declared here by their
//! mangled names and called directly; the linking test keeps them resolvable.

use tch::Device;

use crate::error::{Result, TrainerError};

mod ffi {
    extern "C" {
        #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
        pub fn set_autocast_enabled(device: i8, enabled: bool);
        #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
        pub fn is_autocast_enabled(device: i8) -> bool;
        #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
        pub fn set_autocast_dtype(device: i8, dtype: i8);
        #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
        pub fn get_autocast_dtype(device: i8) -> i8;
    }
}

/// c10::DeviceType values.
const DEVICE_CPU: i8 = 0;
const DEVICE_CUDA: i8 = 1;
/// c10::ScalarType::BFloat16.
const BFLOAT16: i8 = 15;

fn device_type(device: Device) -> Result<i8> {
    match device {
        Device::Cpu => Ok(DEVICE_CPU),
        Device::Cuda(_) => Ok(DEVICE_CUDA),
        other => Err(TrainerError::Config(format!("--amp is not supported on {other:?}"))),
    }
}

/// bf16 autocast on `device` while alive (forward pass and loss; run backward after dropping
/// it, as PyTorch recommends). Restores the previous state on drop.
pub struct Autocast {
    device: i8,
    was_enabled: bool,
    previous_dtype: i8,
}

impl Autocast {
    pub fn bf16(device: Device) -> Result<Autocast> {
        let device = device_type(device)?;
        // SAFETY: plain setters on thread-local/global autocast state, valid device and dtype codes.
        unsafe {
            let guard = Autocast {
                device,
                was_enabled: ffi::is_autocast_enabled(device),
                previous_dtype: ffi::get_autocast_dtype(device),
            };
            ffi::set_autocast_dtype(device, BFLOAT16);
            ffi::set_autocast_enabled(device, true);
            torch_sys::at_autocast_increment_nesting();
            Ok(guard)
        }
    }

    /// Whether autocast is on for `device` right now.
    pub fn is_enabled(device: Device) -> Result<bool> {
        let d = device_type(device)?;
        // SAFETY: a getter.
        Ok(unsafe { ffi::is_autocast_enabled(d) })
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: as in `bf16`; clearing the cast cache when the outermost region ends is what
        // torch.autocast's __exit__ does.
        unsafe {
            if torch_sys::at_autocast_decrement_nesting() == 0 {
                torch_sys::at_autocast_clear_cache();
            }
            ffi::set_autocast_enabled(self.device, self.was_enabled);
            ffi::set_autocast_dtype(self.device, self.previous_dtype);
        }
    }
}
