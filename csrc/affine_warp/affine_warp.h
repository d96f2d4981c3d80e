// Host-side pieces of the affine warp that the CPU and CUDA launchers share:
// argument checks, string options, output allocation.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include "affine_warp_math.h"

namespace invfast {
namespace warp {

struct Options {
  Interp mode;
  Padding padding;
  bool align_corners;
  double fill;
};

// Parses and checks the string options; `fill` is kept only for padding "fill".
Options parse_options(c10::string_view mode, c10::string_view padding_mode, bool align_corners,
                      double fill);

// Checks images (B, C, H, W) and matrices (B, 2, 3) or (B, 3, 3) on one device.
void check_inputs(const char* op, const at::Tensor& images, const at::Tensor& matrices);

// Checks an output size (H', W').
void check_size(const char* op, c10::IntArrayRef size);

// Checks a caller's output buffer for images and size.
void check_out(const char* op, const at::Tensor& images, c10::IntArrayRef size,
               const at::Tensor& out);

// Allocates (B, C, H', W') in the images' dtype and memory format.
at::Tensor empty_output(const at::Tensor& images, c10::IntArrayRef size);

// The matrices as a contiguous (B, 2 or 3, 3) float64 tensor on their device.
at::Tensor matrices_as_double(const at::Tensor& matrices);

}  // namespace warp
}  // namespace invfast
