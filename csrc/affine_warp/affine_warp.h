// Host-side pieces of the affine warp that the CPU and CUDA launchers share:
// argument checks, string options, output allocation, dtype dispatch.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <c10/util/string_view.h>

#include <vector>

#include "affine_warp_math.h"

namespace invfast {
namespace warp {

// The CUDA kernels take per-channel fill values by value, up to this many.
constexpr int kMaxFillChannels = 64;

// Parses and checks the string options.
Options parse_options(const char* op, c10::string_view mode, c10::string_view padding_mode,
                      bool align_corners);

// How many views a call makes: matrices (B, R, 3) give K = 1 and a 4-d
// output, (K, B, R, 3) give K views and a (K, B, C, H', W') output.
struct Views {
  int64_t K;
  bool stacked;
};

// Checks images (B, C, H, W) and matrices (B, 2|3, 3) or (K, B, 2|3, 3) on one
// device; images of any dtype the kernels take (uint8, fp16, bf16, fp32, fp64).
Views check_inputs(const char* op, const at::Tensor& images, const at::Tensor& matrices);

// The fill value of every channel (C values) as float: `fill` holds one value
// or C values; it only counts for padding "fill" (and is 0 otherwise).
std::vector<double> channel_fill(const char* op, c10::ArrayRef<double> fill, int64_t C,
                                 Padding padding);

// Checks an output size (H', W').
void check_size(const char* op, c10::IntArrayRef size);

// The output dtype for images and an optional requested one; checks that the
// kernels have that pair (fp64 goes with fp64 only).
at::ScalarType output_dtype(const char* op, const at::Tensor& images,
                            std::optional<at::ScalarType> out_dtype);

// Checks a caller's output buffer for images, views and size.
void check_out(const char* op, const at::Tensor& images, const Views& views, c10::IntArrayRef size,
               const at::Tensor& out);

// Allocates (B, C, H', W') or (K, B, C, H', W') in `dtype`, each view in the
// images' memory format (keep_format) or contiguous.
at::Tensor empty_output(const at::Tensor& images, const Views& views, c10::IntArrayRef size,
                        at::ScalarType dtype, bool keep_format = true);

// Checks the extra arguments of warp_normalize: uint8 images, mean and std
// of C floating-point values on the images' device, a floating output dtype.
void check_normalize_args(const char* op, const at::Tensor& images, const at::Tensor& mean,
                          const at::Tensor& std, at::ScalarType out_dtype);

// What an out= entry point has checked and parsed: the options and the
// per-channel fill values for the launcher.
struct OutCall {
  Options opt;
  std::vector<double> fills;
};

// The checks of an out= call: images and matrices, options, the buffer, and
// for the normalising warp (mean and std given) its extra arguments.
OutCall check_out_call(const char* op, const at::Tensor& images, const at::Tensor& matrices,
                       c10::string_view mode, c10::string_view padding_mode, bool align_corners,
                       c10::ArrayRef<double> fill, const at::Tensor& out,
                       const at::Tensor* mean = nullptr, const at::Tensor* std = nullptr);

// Checks the arguments of the allocating normalising warp and allocates its
// (contiguous NCHW) output.
at::Tensor normalize_output(const char* op, const at::Tensor& images, const at::Tensor& matrices,
                            const at::Tensor& mean, const at::Tensor& std, c10::IntArrayRef size,
                            at::ScalarType out_dtype);

// Checks the arguments of the backward op: grad_out (B, C, H', W') or
// (K, B, C, H', W') for the matrices, images (when given) of input_size.
Views check_backward_args(const char* op, const at::Tensor& grad_out,
                          const std::optional<at::Tensor>& images, const at::Tensor& matrices,
                          c10::IntArrayRef input_size);

// The matrices as a contiguous (K * B, 2 or 3, 3) float64 tensor on their device.
at::Tensor matrices_as_double(const at::Tensor& matrices);

// d loss / d matrices from the per-matrix sums S = sum over output pixels of
// g (x, y, 1)^T, where g = d loss / d (source position (x, y)): the source
// position is A^-1 (q - t) for M = [A | t], so d loss / d M = -A^-T S.
// `sums` is (K * B, 2, 3) float64; returns the matrices' shape and dtype.
at::Tensor matrix_grad_from_sums(const at::Tensor& sums, const at::Tensor& matrices);

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<in_t>{}, TypeTag<out_t>{}) for the (images, output) dtype
// pair: uint8, fp16, bf16 and fp32 in any pair, fp64 with fp64 only.
template <typename F>
void dispatch_pair(const char* op, at::ScalarType in, at::ScalarType out, F&& f) {
  const auto with_out = [&](auto in_tag) {
    switch (out) {
      case at::kByte:
        return f(in_tag, TypeTag<uint8_t>{});
      case at::kHalf:
        return f(in_tag, TypeTag<c10::Half>{});
      case at::kBFloat16:
        return f(in_tag, TypeTag<c10::BFloat16>{});
      case at::kFloat:
        return f(in_tag, TypeTag<float>{});
      default:
        TORCH_CHECK(false, op, ": unsupported output dtype ", out);
    }
  };
  switch (in) {
    case at::kDouble:
      TORCH_CHECK(out == at::kDouble, op, ": float64 images give float64 output only, got ", out);
      return f(TypeTag<double>{}, TypeTag<double>{});
    case at::kByte:
      return with_out(TypeTag<uint8_t>{});
    case at::kHalf:
      return with_out(TypeTag<c10::Half>{});
    case at::kBFloat16:
      return with_out(TypeTag<c10::BFloat16>{});
    case at::kFloat:
      return with_out(TypeTag<float>{});
    default:
      TORCH_CHECK(false, op, ": unsupported images dtype ", in);
  }
}

}  // namespace warp
}  // namespace invfast
