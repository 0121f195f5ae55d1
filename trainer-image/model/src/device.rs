//! Which device the trainer, evaluator and server compute on.
//!
//! `LLAMADUO_DEVICE` chooses: `auto` (the default), `cpu`, `cuda` or `cuda:N`. `auto` takes
//! GPU 0 when the binary was built with the `cuda` feature and the GPU answers, else the CPU:
//! the CUDA image also runs on a CPU node, and says why it fell back. `cuda` asks for the GPU
//! and fails when there is none, so a pod that was meant to train on a GPU never trains on
//! its CPU for hours by accident.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};
use llamaduo::api::Precision;

pub use llamaduo::api::DEVICE_ENV;

/// A device request: what `LLAMADUO_DEVICE` says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// GPU 0 if this build has CUDA and the GPU works, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// That CUDA GPU, or an error.
    Cuda(usize),
}

/// Why a device request cannot be met.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    /// The value is not one of the accepted forms.
    #[error(
        "{DEVICE_ENV}={value:?} is not a device; use auto, cpu, cuda or cuda:N (N the GPU index)"
    )]
    Invalid {
        /// The rejected value.
        value: String,
    },
    /// A GPU was asked for, but this binary has no CUDA.
    #[error(
        "{DEVICE_ENV}={choice} asks for a GPU, but this llamaduo-trainer was built without CUDA; \
         use the CUDA image (trainer-image/Dockerfile.cuda) or set {DEVICE_ENV}=cpu"
    )]
    NotBuiltWithCuda {
        /// The request, as written.
        choice: String,
    },
    /// A GPU was asked for and CUDA could not open it.
    #[error(
        "{DEVICE_ENV}={choice}: CUDA cannot open GPU {ordinal} ({reason}); check that the pod \
         requests nvidia.com/gpu and the node has the NVIDIA driver, or set {DEVICE_ENV}=cpu"
    )]
    CudaUnavailable {
        /// The request, as written.
        choice: String,
        /// The GPU index.
        ordinal: usize,
        /// CUDA's error.
        reason: String,
    },
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(0) => f.write_str("cuda"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v = s.trim().to_ascii_lowercase();
        let invalid = || DeviceError::Invalid {
            value: s.to_string(),
        };
        match v.as_str() {
            "" | "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => {
                let n = v
                    .strip_prefix("cuda:")
                    .or_else(|| v.strip_prefix("gpu:"))
                    .ok_or_else(invalid)?;
                n.parse().map(Self::Cuda).map_err(|_| invalid())
            }
        }
    }
}

/// The device chosen, and why `auto` fell back to the CPU if it did.
#[derive(Clone, Debug)]
pub struct Selected {
    /// Where to compute.
    pub device: Device,
    /// Set when `auto` wanted CUDA and could not have it: CUDA's reason.
    pub fallback: Option<String>,
}

/// `cpu`, `cuda:N` or `metal:N`, for logs.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

impl DeviceChoice {
    /// Reads `LLAMADUO_DEVICE` (unset: `auto`).
    pub fn from_env() -> Result<Self, DeviceError> {
        std::env::var(DEVICE_ENV).unwrap_or_default().parse()
    }

    /// Opens the device. `open_cuda` is [`Device::new_cuda`] outside tests.
    pub fn select_with(
        self,
        cuda_built: bool,
        open_cuda: impl Fn(usize) -> candle_core::Result<Device>,
    ) -> Result<Selected, DeviceError> {
        match self {
            Self::Cpu => Ok(Selected {
                device: Device::Cpu,
                fallback: None,
            }),
            Self::Auto if !cuda_built => Ok(Selected {
                device: Device::Cpu,
                fallback: None,
            }),
            Self::Auto => match open_cuda(0) {
                Ok(device) => Ok(Selected {
                    device,
                    fallback: None,
                }),
                Err(e) => Ok(Selected {
                    device: Device::Cpu,
                    fallback: Some(one_line(&e)),
                }),
            },
            Self::Cuda(_) if !cuda_built => Err(DeviceError::NotBuiltWithCuda {
                choice: self.to_string(),
            }),
            Self::Cuda(ordinal) => open_cuda(ordinal)
                .map(|device| Selected {
                    device,
                    fallback: None,
                })
                .map_err(|e| DeviceError::CudaUnavailable {
                    choice: self.to_string(),
                    ordinal,
                    reason: one_line(&e),
                }),
        }
    }

    /// Opens the device on this machine, logging where work runs and any fallback.
    pub fn select(self) -> Result<Selected, DeviceError> {
        let selected =
            self.select_with(candle_core::utils::cuda_is_available(), Device::new_cuda)?;
        if let Some(reason) = &selected.fallback {
            tracing::warn!(
                reason = %reason,
                "this build has CUDA but no GPU could be opened; computing on the CPU ({DEVICE_ENV}=cuda makes this an error)"
            );
        }
        Ok(selected)
    }
}

fn one_line(e: &candle_core::Error) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The compute dtype for a precision on a device: bf16 on CUDA and f32 on the CPU for `auto`.
pub fn compute_dtype(precision: Precision, device: &Device) -> DType {
    match precision {
        Precision::Auto if device.is_cuda() => DType::BF16,
        Precision::Auto => DType::F32,
        Precision::Bf16 => DType::BF16,
        Precision::F32 => DType::F32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_gpu(_: usize) -> candle_core::Result<Device> {
        Err(candle_core::Error::Msg(
            "CUDA_ERROR_NO_DEVICE:\n no CUDA-capable device is detected".into(),
        ))
    }

    /// Stands in for an opened GPU (candle cannot make a CUDA device without one).
    fn some_gpu(_: usize) -> candle_core::Result<Device> {
        Ok(Device::Cpu)
    }

    #[test]
    fn parses_the_accepted_forms() {
        for (s, want) in [
            ("", DeviceChoice::Auto),
            ("auto", DeviceChoice::Auto),
            (" AUTO ", DeviceChoice::Auto),
            ("cpu", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("gpu", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
            ("CUDA:1", DeviceChoice::Cuda(1)),
        ] {
            assert_eq!(s.parse::<DeviceChoice>(), Ok(want), "{s:?}");
        }
        for s in ["tpu", "cuda:", "cuda:-1", "cuda:x", "metal"] {
            let err = s.parse::<DeviceChoice>().expect_err(s);
            let msg = err.to_string();
            assert!(msg.contains(DEVICE_ENV) && msg.contains("cuda:N"), "{msg}");
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
        assert_eq!(DeviceChoice::Cuda(0).to_string(), "cuda");
    }

    #[test]
    fn auto_is_the_cpu_without_cuda_and_falls_back_with_a_reason() {
        let s = DeviceChoice::Auto
            .select_with(false, some_gpu)
            .expect("cpu");
        assert!(s.device.is_cpu() && s.fallback.is_none());
        let s = DeviceChoice::Auto.select_with(true, no_gpu).expect("cpu");
        assert!(s.device.is_cpu());
        assert_eq!(
            s.fallback.as_deref(),
            Some("CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected")
        );
        let s = DeviceChoice::Auto.select_with(true, some_gpu).expect("gpu");
        assert!(s.fallback.is_none());
    }

    #[test]
    fn an_explicit_gpu_request_fails_instead_of_falling_back() {
        let err = DeviceChoice::Cuda(1)
            .select_with(false, some_gpu)
            .expect_err("no cuda build");
        assert!(err.to_string().contains("built without CUDA"), "{err}");
        assert!(err.to_string().contains("LLAMADUO_DEVICE=cpu"), "{err}");
        let err = DeviceChoice::Cuda(1)
            .select_with(true, no_gpu)
            .expect_err("no gpu");
        assert_eq!(
            err,
            DeviceError::CudaUnavailable {
                choice: "cuda:1".into(),
                ordinal: 1,
                reason: "CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected".into(),
            }
        );
        assert!(err.to_string().contains("nvidia.com/gpu"), "{err}");
        let s = DeviceChoice::Cpu.select_with(true, some_gpu).expect("cpu");
        assert!(s.device.is_cpu());
    }

    #[test]
    fn precision_auto_is_bf16_only_on_a_gpu() {
        assert_eq!(compute_dtype(Precision::Auto, &Device::Cpu), DType::F32);
        assert_eq!(compute_dtype(Precision::Bf16, &Device::Cpu), DType::BF16);
        assert_eq!(compute_dtype(Precision::F32, &Device::Cpu), DType::F32);
    }
}
