//! Depthwise convolutions on tract, channels last.
//!
//! At 28x28 the depthwise nets' maps are 14x14 down to 1x1 with up to 960 channels. NCHW,
//! tract 0.23 walks a depthwise convolution plane by plane and zone by zone, vectorised
//! along rows only 14 points long at most: MobileNetV2 spent half of a one-image run there.
//! With a batch it also lowers an NCHW 1x1 convolution to one matrix product over
//! `N * H * W` rows followed by a separate axis move and bias add (40% of a 16-image run).
//!
//! Channels-last, every output point is one contiguous run over the channels, which tract
//! computes with the `DepthwiseC` kernel of tract-linalg's routine registry where the host
//! has one, and tract declares none for x86. [`depthwise_c_f32`] is one (AVX), registered
//! below. It adds in tract's order (bias, then each tap's product, no FMA), so its results are
//! bit-identical to tract's scalar loop. With a kernel present, tract's declutter already
//! moves depthwise layers of 16+ channels channels-last where the graph allows; a model with
//! depthwise convolutions is also made channels-last throughout by tract's `conv_nhwc`
//! transform ([`to_channels_last`]), which measured faster again (MNASNet 0.5 at batch 64,
//! 2 threads: 9,100-11,400 img/s with the kernel alone, 11,100-11,700 with both; 3,400-3,600
//! before either; ort 17,700-20,500).

use tract_linalg::isa::{Arch, Isa, IsaReq};
use tract_linalg::routines::{Func, Routine, RoutineFactory};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::Conv;

/// The registry name of [`depthwise_c_f32`].
pub(crate) const KERNEL_NAME: &str = "infer_avx_depthwise_c_f32";

#[cfg(target_arch = "x86_64")]
inventory::submit! {
    Routine {
        func: Func::DepthwiseC,
        arch: Some(Arch::X86_64),
        isa: IsaReq::ANY.needing(&[Isa::X86_64Avx]),
        boost: 0,
        round_trip: false,
        factory: RoutineFactory::DepthwiseCF32 { name: KERNEL_NAME, run: depthwise_c_f32 },
    }
}

/// tract-linalg's `DepthwiseCF32` contract: `len` output points of `channels` contiguous
/// channels; point `i`, channel `c` is `bias[c]` plus, tap by tap,
/// `kernel[tap_indices[t] * k_stride + c] * input[i * in_stride + offsets[t] + c]`.
/// 32 channels (four registers) a block, then 8, then one at a time.
///
/// # Safety
/// The pointers must be valid for every read and write that sum names (tract's contract),
/// and the CPU must have AVX: the registry only hands this kernel out where it does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn depthwise_c_f32(
    input: *const f32,
    output: *mut f32,
    kernel: *const f32,
    tap_indices: &[usize],
    offsets: &[isize],
    bias: *const f32,
    channels: usize,
    k_stride: usize,
    len: usize,
    in_stride: isize,
    out_stride: isize,
) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): every address is one the caller's contract makes valid.
    unsafe {
        for i in 0..len as isize {
            let x = input.offset(i * in_stride);
            let out = output.offset(i * out_stride);
            let mut c = 0;
            while c + 32 <= channels {
                let mut a = [0; 4].map(|_| _mm256_setzero_ps());
                for (r, acc) in a.iter_mut().enumerate() {
                    *acc = _mm256_loadu_ps(bias.add(c + 8 * r));
                }
                for (&t, &off) in tap_indices.iter().zip(offsets) {
                    let k = kernel.add(t * k_stride + c);
                    let x = x.offset(off).add(c);
                    for (r, acc) in a.iter_mut().enumerate() {
                        let p = _mm256_mul_ps(_mm256_loadu_ps(k.add(8 * r)), _mm256_loadu_ps(x.add(8 * r)));
                        *acc = _mm256_add_ps(*acc, p);
                    }
                }
                for (r, acc) in a.iter().enumerate() {
                    _mm256_storeu_ps(out.add(c + 8 * r), *acc);
                }
                c += 32;
            }
            while c + 8 <= channels {
                let mut acc = _mm256_loadu_ps(bias.add(c));
                for (&t, &off) in tap_indices.iter().zip(offsets) {
                    let p = _mm256_mul_ps(
                        _mm256_loadu_ps(kernel.add(t * k_stride + c)),
                        _mm256_loadu_ps(x.offset(off).add(c)),
                    );
                    acc = _mm256_add_ps(acc, p);
                }
                _mm256_storeu_ps(out.add(c), acc);
                c += 8;
            }
            while c < channels {
                let mut acc = *bias.add(c);
                for (&t, &off) in tap_indices.iter().zip(offsets) {
                    acc += *kernel.add(t * k_stride + c) * *x.offset(off).add(c);
                }
                *out.add(c) = acc;
                c += 1;
            }
        }
    }
}

/// Whether `model` has a depthwise convolution: one filter per channel, more than one channel.
pub(crate) fn has_depthwise(model: &TypedModel) -> bool {
    model.nodes.iter().any(|node| {
        node.op_as::<Conv>().is_some_and(|conv| {
            let c = conv.pool_spec.input_channels;
            c > 1 && conv.group == c && conv.pool_spec.output_channels == c
        })
    })
}

/// tract's `conv_nhwc` transform (every float convolution channels-last, axis moves around
/// them, folded where they meet), then a declutter to fold them.
pub(crate) fn to_channels_last(model: TypedModel) -> TractResult<TypedModel> {
    let mut model = model;
    let transform = tract_onnx::tract_core::transform::get_transform("conv_nhwc")?
        .ok_or_else(|| TractError::msg("this tract has no conv_nhwc transform"))?;
    transform.transform(&mut model)?;
    model.into_decluttered()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_linalg::routines::best_for;
    use tract_onnx::tract_core::ops::cnn::{KernelFormat, PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::nn::DataFormat;

    /// Deterministic values in [-1, 1), some exactly zero.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                if i % 7 == 3 {
                    0.0
                } else {
                    ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
                }
            })
            .collect()
    }

    #[test]
    fn the_registry_hands_out_this_kernel_on_x86_with_avx() {
        assert!(std::arch::is_x86_feature_detected!("avx"), "the test machines have AVX; this kernel needs it");
        let native = tract_linalg::isa::native();
        let routine = best_for(Func::DepthwiseC, DatumType::F32, &native).expect("a DepthwiseC kernel");
        assert_eq!(routine.name(), KERNEL_NAME);
        assert!(tract_linalg::routines::depthwise_c_f32().is_some());
    }

    /// The kernel against the scalar walk it replaces (bias, then one multiply and one add
    /// per tap, in order): bit for bit, for every block path (32, 8, 1 channels), a kernel
    /// stride wider than the channels (tract runs blocks of channels), several points.
    #[test]
    fn kernel_is_bit_identical_to_the_scalar_walk() {
        let (len, in_stride, out_stride) = (3usize, 1000isize, 120isize);
        for &channels in &[1usize, 7, 8, 9, 31, 32, 33, 45, 96, 100] {
            for &n_taps in &[1usize, 4, 9, 25] {
                let k_stride = channels + 3;
                let tap_indices: Vec<usize> = (0..n_taps).rev().collect();
                let offsets: Vec<isize> = (0..n_taps as isize).map(|t| t * 110 % 700).collect();
                let input = values(len * in_stride as usize + 800, channels as u64);
                let kernel = values(n_taps * k_stride, 7 + n_taps as u64);
                let bias = values(channels, 11);
                let mut got = vec![f32::NAN; len * out_stride as usize];
                // SAFETY: every read is inside `input`/`kernel`/`bias`, every write inside `got`.
                unsafe {
                    depthwise_c_f32(
                        input.as_ptr(),
                        got.as_mut_ptr(),
                        kernel.as_ptr(),
                        &tap_indices,
                        &offsets,
                        bias.as_ptr(),
                        channels,
                        k_stride,
                        len,
                        in_stride,
                        out_stride,
                    )
                };
                for i in 0..len {
                    for c in 0..channels {
                        let mut want = bias[c];
                        for (&t, &off) in tap_indices.iter().zip(&offsets) {
                            want += kernel[t * k_stride + c] * input[i * in_stride as usize + off as usize + c];
                        }
                        let g = got[i * out_stride as usize + c];
                        assert_eq!(
                            g.to_bits(),
                            want.to_bits(),
                            "channels {channels} taps {n_taps} point {i} channel {c}"
                        );
                    }
                }
            }
        }
    }

    /// One depthwise convolution, NCHW: `[n, c, h, w]`, `k x k` kernel.
    struct Case {
        n: usize,
        c: usize,
        hw: usize,
        k: usize,
        stride: usize,
        dilation: usize,
        pad: usize,
    }

    /// The convolution by its definition, in f64.
    fn direct(case: &Case, x: &[f32], kernel: &[f32], bias: &[f32], out_hw: usize) -> Vec<f32> {
        let Case { n, c, hw, k, stride, dilation, pad } = *case;
        let mut y = vec![0f32; n * c * out_hw * out_hw];
        for b in 0..n {
            for ch in 0..c {
                for oy in 0..out_hw {
                    for ox in 0..out_hw {
                        let mut acc = bias[ch] as f64;
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * stride + ky * dilation) as isize - pad as isize;
                                let ix = (ox * stride + kx * dilation) as isize - pad as isize;
                                if (0..hw as isize).contains(&iy) && (0..hw as isize).contains(&ix) {
                                    let xv = x[((b * c + ch) * hw + iy as usize) * hw + ix as usize];
                                    acc += kernel[(ch * k + ky) * k + kx] as f64 * xv as f64;
                                }
                            }
                        }
                        y[((b * c + ch) * out_hw + oy) * out_hw + ox] = acc as f32;
                    }
                }
            }
        }
        y
    }

    /// A depthwise convolution optimised channels-last (what `infer` does to a model that has
    /// one) gives the convolution's definition, within float32 summation order, on the map
    /// sizes the zoo sees at 28x28 (14x14 down to 1x1), strided, dilated, with channel counts
    /// that leave every block remainder; and its plan runs tract's channels-last depthwise op.
    #[test]
    fn channels_last_plans_compute_the_depthwise_convolution() {
        let cases = [
            Case { n: 1, c: 32, hw: 14, k: 3, stride: 1, dilation: 1, pad: 1 },
            Case { n: 3, c: 24, hw: 14, k: 5, stride: 2, dilation: 1, pad: 2 },
            Case { n: 2, c: 144, hw: 7, k: 3, stride: 2, dilation: 1, pad: 1 },
            Case { n: 1, c: 40, hw: 7, k: 3, stride: 1, dilation: 2, pad: 2 },
            Case { n: 16, c: 20, hw: 4, k: 5, stride: 1, dilation: 1, pad: 2 },
            Case { n: 1, c: 576, hw: 2, k: 3, stride: 1, dilation: 1, pad: 1 },
            Case { n: 2, c: 17, hw: 1, k: 3, stride: 1, dilation: 1, pad: 1 },
        ];
        for (i, case) in cases.iter().enumerate() {
            let Case { n, c, hw, k, stride, dilation, pad } = *case;
            let out_hw = (hw + 2 * pad - dilation * (k - 1) - 1) / stride + 1;
            let x = values(n * c * hw * hw, 100 + i as u64);
            let kernel = values(c * k * k, 200 + i as u64);
            let bias = values(c, 300 + i as u64);

            let mut model = TypedModel::default();
            let src = model.add_source("x", f32::fact([n, c, hw, hw])).unwrap();
            let kt = tract_ndarray::Array4::from_shape_vec((c, 1, k, k), kernel.clone()).unwrap().into_tensor();
            let kw = model.add_const("kernel", kt).unwrap();
            let bw = model.add_const("bias", tensor1(&bias)).unwrap();
            let conv = Conv {
                pool_spec: PoolSpec {
                    data_format: DataFormat::NCHW,
                    kernel_shape: tvec![k, k],
                    padding: PaddingSpec::Explicit(tvec![pad, pad], tvec![pad, pad]),
                    dilations: Some(tvec![dilation, dilation]),
                    strides: Some(tvec![stride, stride]),
                    input_channels: c,
                    output_channels: c,
                },
                kernel_fmt: KernelFormat::OIHW,
                group: c,
                q_params: None,
            };
            let y = model.wire_node("dw", conv, &[src, kw, bw]).unwrap();
            model.select_output_outlets(&y).unwrap();
            assert!(has_depthwise(&model));

            let optimised = to_channels_last(model).unwrap().into_optimized().unwrap();
            let channels_last_dw = optimised.nodes.iter().any(|node| {
                node.op().name() == "DepthWiseConv"
                    && optimised.outlet_fact(node.inputs[0]).unwrap().shape.last() == Some(&c.to_dim())
            });
            assert!(channels_last_dw, "case {i}: no channels-last DepthWiseConv in the plan:\n{optimised}");
            let plan = optimised.into_runnable().unwrap();
            let xt = tract_ndarray::Array4::from_shape_vec((n, c, hw, hw), x.clone()).unwrap().into_tensor();
            let got = plan.run(tvec![xt.into_tvalue()]).unwrap();
            let got = got[0].to_plain_array_view::<f32>().unwrap();
            assert_eq!(got.shape(), &[n, c, out_hw, out_hw], "case {i}");
            let want = direct(case, &x, &kernel, &bias, out_hw);
            for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "case {i}, element {j}: {g} vs {w}");
            }
        }
    }
}
