#include "affine_warp.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace invfast {
namespace warp {

Options parse_options(c10::string_view mode, c10::string_view padding_mode, bool align_corners,
                      double fill) {
  Options opt{};
  if (mode == "bilinear") {
    opt.mode = Interp::Bilinear;
  } else if (mode == "nearest") {
    opt.mode = Interp::Nearest;
  } else {
    TORCH_CHECK(false, "affine_warp: mode must be 'bilinear' or 'nearest', got '", mode, "'");
  }
  if (padding_mode == "zeros") {
    opt.padding = Padding::Zeros;
  } else if (padding_mode == "border") {
    opt.padding = Padding::Border;
  } else if (padding_mode == "reflection") {
    opt.padding = Padding::Reflection;
  } else if (padding_mode == "fill") {
    opt.padding = Padding::Fill;
  } else {
    TORCH_CHECK(false,
                "affine_warp: padding_mode must be 'zeros', 'border', 'reflection' or 'fill', "
                "got '",
                padding_mode, "'");
  }
  opt.align_corners = align_corners;
  opt.fill = opt.padding == Padding::Fill ? fill : 0.0;
  return opt;
}

void check_inputs(const char* op, const at::Tensor& images, const at::Tensor& matrices) {
  TORCH_CHECK(images.dim() == 4, op, ": images must be (B, C, H, W), got shape ", images.sizes());
  TORCH_CHECK(matrices.dim() == 3 && matrices.size(1) >= 2 && matrices.size(1) <= 3 &&
                  matrices.size(2) == 3,
              op, ": matrices must be (B, 2, 3) or (B, 3, 3), got shape ", matrices.sizes());
  TORCH_CHECK(matrices.size(0) == images.size(0), op, ": matrices must have one matrix per image (",
              images.size(0), "), got ", matrices.size(0));
  TORCH_CHECK(at::isFloatingType(images.scalar_type()), op,
              ": images must be float32, float64, float16 or bfloat16, got ", images.scalar_type());
  TORCH_CHECK(at::isFloatingType(matrices.scalar_type()), op,
              ": matrices must be a floating-point tensor, got ", matrices.scalar_type());
  TORCH_CHECK(images.device() == matrices.device(), op,
              ": images and matrices must be on one device, got ", images.device(), " and ",
              matrices.device());
}

void check_size(const char* op, c10::IntArrayRef size) {
  TORCH_CHECK(size.size() == 2 && size[0] >= 0 && size[1] >= 0, op,
              ": size must be two non-negative integers (H', W'), got ", size);
}

void check_out(const char* op, const at::Tensor& images, c10::IntArrayRef size,
               const at::Tensor& out) {
  const std::vector<int64_t> expected{images.size(0), images.size(1), size[0], size[1]};
  TORCH_CHECK(out.sizes() == c10::IntArrayRef(expected), op, ": out must have shape ",
              c10::IntArrayRef(expected), ", got ", out.sizes());
  TORCH_CHECK(out.scalar_type() == images.scalar_type(), op, ": out must have dtype ",
              images.scalar_type(), ", got ", out.scalar_type());
  TORCH_CHECK(out.device() == images.device(), op, ": out must be on ", images.device(), ", got ",
              out.device());
  // NOTE: an out that shares memory with images would be read while written.
  TORCH_CHECK(!out.is_same(images) &&
                  (out.numel() == 0 || images.numel() == 0 || out.data_ptr() != images.data_ptr()),
              op, ": out must not share memory with images");
}

at::Tensor empty_output(const at::Tensor& images, c10::IntArrayRef size) {
  return at::empty({images.size(0), images.size(1), size[0], size[1]},
                   images.options().memory_format(images.suggest_memory_format()));
}

at::Tensor matrices_as_double(const at::Tensor& matrices) {
  return matrices.to(at::kDouble).contiguous();
}

}  // namespace warp
}  // namespace invfast
