// Host-side pieces of RandomAffine's parameter sampling that the CPU and CUDA
// launchers share: argument checks and the ranges' layout.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include "augment_math.h"

namespace invfast {
namespace augment {

// The most angles random_affine_matrices' CUDA kernel takes (they travel in
// its arguments); more run the reference.
constexpr int64_t kMaxCudaAngles = 64;

// sample_ids (B,) int64; seed and step single int64 values, each on the CPU
// or on the ids' device; n >= 0.
void check_counter_args(const char* op, const at::Tensor& sample_ids, const at::Tensor& seed,
                        const at::Tensor& step, int64_t n);

// A single-element int64 tensor on the CPU, read as the 64 bits the hash takes.
uint64_t host_value(const at::Tensor& t);

// uniforms (B, kDraws) float64, any strides.
void check_uniforms(const char* op, const at::Tensor& uniforms);

// The ranges from the op's arguments:
//   params: degrees (lo, hi), translate (fx, fy), scale (lo, hi), shear_x
//           (lo, hi), shear_y (lo, hi), hflip, vflip, p;
//   crop:   empty, or crop_scale (lo, hi) and crop_ratio (lo, hi);
//   sizes:  H, W of the input and H', W' of the output.
AffineRanges parse_ranges(const char* op, c10::ArrayRef<double> params,
                          c10::ArrayRef<double> angles, c10::ArrayRef<double> crop,
                          c10::IntArrayRef sizes);

}  // namespace augment
}  // namespace invfast
