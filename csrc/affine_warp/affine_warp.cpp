#include "affine_warp.h"

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace invfast {
namespace warp {

Options parse_options(const char* op, c10::string_view mode, c10::string_view padding_mode,
                      bool align_corners) {
  Options opt{};
  if (mode == "bilinear") {
    opt.mode = Interp::Bilinear;
  } else if (mode == "nearest") {
    opt.mode = Interp::Nearest;
  } else if (mode == "bicubic") {
    opt.mode = Interp::Bicubic;
  } else {
    TORCH_CHECK(false, op, ": mode must be 'bilinear', 'nearest' or 'bicubic', got '", mode, "'");
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
    TORCH_CHECK(false, op,
                ": padding_mode must be 'zeros', 'border', 'reflection' or 'fill', got '",
                padding_mode, "'");
  }
  opt.align_corners = align_corners;
  return opt;
}

Views check_inputs(const char* op, const at::Tensor& images, const at::Tensor& matrices) {
  TORCH_CHECK(images.dim() == 4, op, ": images must be (B, C, H, W), got shape ", images.sizes());
  const int64_t md = matrices.dim();
  TORCH_CHECK((md == 3 || md == 4) && matrices.size(md - 2) >= 2 && matrices.size(md - 2) <= 3 &&
                  matrices.size(md - 1) == 3,
              op,
              ": matrices must be (B, 2, 3), (B, 3, 3), (K, B, 2, 3) or (K, B, 3, 3), got shape ",
              matrices.sizes());
  TORCH_CHECK(matrices.size(md - 3) == images.size(0), op,
              ": matrices must have one matrix per image (", images.size(0), ") in dim ", md - 3,
              ", got ", matrices.size(md - 3));
  const auto dtype = images.scalar_type();
  TORCH_CHECK(dtype == at::kByte || dtype == at::kHalf || dtype == at::kBFloat16 ||
                  dtype == at::kFloat || dtype == at::kDouble,
              op, ": images must be uint8, float16, bfloat16, float32 or float64, got ", dtype);
  TORCH_CHECK(at::isFloatingType(matrices.scalar_type()), op,
              ": matrices must be a floating-point tensor, got ", matrices.scalar_type());
  TORCH_CHECK(images.device() == matrices.device(), op,
              ": images and matrices must be on one device, got ", images.device(), " and ",
              matrices.device());
  return {md == 4 ? matrices.size(0) : 1, md == 4};
}

std::vector<double> channel_fill(const char* op, c10::ArrayRef<double> fill, int64_t C,
                                 Padding padding) {
  TORCH_CHECK(fill.size() == 1 || static_cast<int64_t>(fill.size()) == C, op,
              ": fill must hold 1 or C (", C, ") values, got ", fill.size());
  std::vector<double> out(C, 0.0);
  if (padding == Padding::Fill) {
    for (int64_t c = 0; c < C; ++c) {
      out[c] = fill.size() == 1 ? fill[0] : fill[c];
    }
  }
  return out;
}

void check_size(const char* op, c10::IntArrayRef size) {
  TORCH_CHECK(size.size() == 2 && size[0] >= 0 && size[1] >= 0, op,
              ": size must be two non-negative integers (H', W'), got ", size);
}

at::ScalarType output_dtype(const char* op, const at::Tensor& images,
                            std::optional<at::ScalarType> out_dtype) {
  const auto in = images.scalar_type();
  const auto out = out_dtype.value_or(in);
  TORCH_CHECK(out == at::kByte || out == at::kHalf || out == at::kBFloat16 || out == at::kFloat ||
                  out == at::kDouble,
              op, ": out_dtype must be uint8, float16, bfloat16, float32 or float64, got ", out);
  TORCH_CHECK((in == at::kDouble) == (out == at::kDouble), op,
              ": float64 goes with float64 only (images ", in, ", out_dtype ", out, ")");
  return out;
}

void check_out(const char* op, const at::Tensor& images, const Views& views, c10::IntArrayRef size,
               const at::Tensor& out) {
  std::vector<int64_t> expected{images.size(0), images.size(1), size[0], size[1]};
  if (views.stacked) {
    expected.insert(expected.begin(), views.K);
  }
  TORCH_CHECK(out.sizes() == c10::IntArrayRef(expected), op, ": out must have shape ",
              c10::IntArrayRef(expected), ", got ", out.sizes());
  output_dtype(op, images, out.scalar_type());
  TORCH_CHECK(out.device() == images.device(), op, ": out must be on ", images.device(), ", got ",
              out.device());
}

namespace {

// The bytes from a non-empty tensor's first element to the end of its last one.
std::pair<uintptr_t, uintptr_t> byte_span(const at::Tensor& t) {
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) {
    last += (t.size(d) - 1) * t.stride(d);
  }
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  return {begin, begin + static_cast<uintptr_t>((last + 1) * t.element_size())};
}

// Whether a strided layout is sure to give every element its own location:
// with the dims sorted by stride, each stride passes the farthest element
// that the smaller ones reach.
bool surely_distinct(const at::Tensor& t) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size)
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) > 1) {
      dims.emplace_back(t.stride(d), t.size(d));
    }
  }
  std::sort(dims.begin(), dims.end());
  int64_t reach = 0;
  for (const auto& [stride, size] : dims) {
    if (stride <= reach) {
      return false;
    }
    reach += stride * (size - 1);
  }
  return true;
}

}  // namespace

// NOTE: the kernels write out while they read the inputs, from many threads:
// out may share no memory with an input (it would be read while written), and
// no two of its elements may be one location (an expanded tensor). Where
// ATen cannot tell (layouts that are not dense, or memory that two storages
// share, as views of one NumPy array do), out is refused if the spans of
// memory it and an input cover meet, or if its strides could overlap.
void check_out_memory(const char* op, const at::Tensor& out,
                      std::initializer_list<std::pair<const char*, const at::Tensor*>> inputs) {
  if (out.numel() == 0) {
    return;
  }
  const at::MemOverlap internal = at::has_internal_overlap(out);
  TORCH_CHECK(internal == at::MemOverlap::No ||
                  (internal == at::MemOverlap::TooHard && surely_distinct(out)),
              op,
              ": out must not have elements that share memory (an expanded tensor?); "
              "pass a contiguous buffer");
  const auto [out_begin, out_end] = byte_span(out);
  for (const auto& [name, t] : inputs) {
    if (t == nullptr || !t->defined() || t->numel() == 0) {
      continue;
    }
    const at::MemOverlapStatus status = at::get_overlap_status(out, *t);
    bool shared = status == at::MemOverlapStatus::Full || status == at::MemOverlapStatus::Partial;
    if (!shared &&
        (status == at::MemOverlapStatus::TooHard || !out.storage().is_alias_of(t->storage()))) {
      const auto [begin, end] = byte_span(*t);
      shared = begin < out_end && out_begin < end;
    }
    TORCH_CHECK(!shared, op, ": out must not share memory with ", name);
  }
}

void check_normalize_args(const char* op, const at::Tensor& images, const at::Tensor& mean,
                          const at::Tensor& std, at::ScalarType out_dtype) {
  TORCH_CHECK(images.scalar_type() == at::kByte, op, ": images must be uint8, got ",
              images.scalar_type());
  const int64_t C = images.size(1);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"mean", mean},
                                std::pair<const char*, const at::Tensor&>{"std", std}}) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == C, op, ": ", name, " must hold C (", C,
                ") values, got shape ", t.sizes());
    TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
                " must be floating point, got ", t.scalar_type());
    TORCH_CHECK(t.device() == images.device(), op, ": ", name, " must be on ", images.device(),
                ", got ", t.device());
  }
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kHalf || out_dtype == at::kBFloat16, op,
              ": out_dtype must be float32, float16 or bfloat16, got ", out_dtype);
}

OutCall check_out_call(const char* op, const at::Tensor& images, const at::Tensor& matrices,
                       c10::string_view mode, c10::string_view padding_mode, bool align_corners,
                       c10::ArrayRef<double> fill, const at::Tensor& out, const at::Tensor* mean,
                       const at::Tensor* std) {
  const Views views = check_inputs(op, images, matrices);
  const Options opt = parse_options(op, mode, padding_mode, align_corners);
  TORCH_CHECK(out.dim() >= 2, op, ": out must be (B, C, H', W') or (K, B, C, H', W')");
  if (mean != nullptr && std != nullptr) {
    check_normalize_args(op, images, *mean, *std, out.scalar_type());
  }
  check_out(op, images, views, {out.size(-2), out.size(-1)}, out);
  check_out_memory(op, out,
                   {{"images", &images}, {"matrices", &matrices}, {"mean", mean}, {"std", std}});
  return {opt, channel_fill(op, fill, images.size(1), opt.padding)};
}

at::Tensor normalize_output(const char* op, const at::Tensor& images, const at::Tensor& matrices,
                            const at::Tensor& mean, const at::Tensor& std, c10::IntArrayRef size,
                            at::ScalarType out_dtype) {
  const Views views = check_inputs(op, images, matrices);
  check_size(op, size);
  check_normalize_args(op, images, mean, std, out_dtype);
  return empty_output(images, views, size, out_dtype, false);
}

Views check_backward_args(const char* op, const at::Tensor& grad_out,
                          const std::optional<at::Tensor>& images, const at::Tensor& matrices,
                          c10::IntArrayRef input_size) {
  const int64_t gd = grad_out.dim();
  TORCH_CHECK(gd == 4 || gd == 5, op,
              ": grad_out must be (B, C, H', W') or (K, B, C, H', W'), "
              "got shape ",
              grad_out.sizes());
  TORCH_CHECK(at::isFloatingType(grad_out.scalar_type()), op,
              ": grad_out must be floating point, got ", grad_out.scalar_type());
  const int64_t md = matrices.dim();
  TORCH_CHECK(md == gd - 1 && matrices.size(md - 1) == 3 && matrices.size(md - 2) >= 2 &&
                  matrices.size(md - 2) <= 3 && matrices.size(md - 3) == grad_out.size(gd - 4) &&
                  (gd == 4 || matrices.size(0) == grad_out.size(0)),
              op, ": matrices of shape ", matrices.sizes(), " do not match grad_out of shape ",
              grad_out.sizes());
  const Views views{gd == 5 ? grad_out.size(0) : 1, gd == 5};
  TORCH_CHECK(matrices.device() == grad_out.device(), op,
              ": grad_out and matrices must be on one device");
  if (images.has_value()) {
    const at::Tensor& x = *images;
    TORCH_CHECK(x.dim() == 4 && x.size(0) == grad_out.size(gd - 4) &&
                    x.size(1) == grad_out.size(gd - 3) && x.size(2) == input_size[0] &&
                    x.size(3) == input_size[1],
                op, ": images must be (B, C) x input_size, got shape ", x.sizes());
    check_inputs(op, x, matrices);
  }
  return views;
}

at::Tensor empty_output(const at::Tensor& images, const Views& views, c10::IntArrayRef size,
                        at::ScalarType dtype, bool keep_format) {
  const auto format = keep_format ? images.suggest_memory_format() : at::MemoryFormat::Contiguous;
  at::Tensor out = at::empty({views.K * images.size(0), images.size(1), size[0], size[1]},
                             images.options().dtype(dtype).memory_format(format));
  if (!views.stacked) {
    return out;
  }
  return out.view({views.K, images.size(0), images.size(1), size[0], size[1]});
}

at::Tensor matrices_as_double(const at::Tensor& matrices) {
  const int64_t rows = matrices.size(-2);
  return matrices.to(at::kDouble).reshape({-1, rows, 3}).contiguous();
}

at::Tensor matrix_grad_from_sums(const at::Tensor& sums, const at::Tensor& matrices) {
  // NOTE: formed in float64 with at:: ops on the matrices' device: no host sync.
  const at::Tensor m = matrices_as_double(matrices);
  const at::Tensor a = m.narrow(1, 0, 2).narrow(2, 0, 2);
  const at::Tensor a00 = a.select(1, 0).select(1, 0), a01 = a.select(1, 0).select(1, 1);
  const at::Tensor a10 = a.select(1, 1).select(1, 0), a11 = a.select(1, 1).select(1, 1);
  const at::Tensor r = (a00 * a11 - a01 * a10).reciprocal();
  // -A^-T = -(1/det) [[a11, -a10], [-a01, a00]].
  const at::Tensor neg_inv_t =
      at::stack({at::stack({-a11 * r, a10 * r}, 1), at::stack({a01 * r, -a00 * r}, 1)}, 1);
  at::Tensor grad = at::matmul(neg_inv_t, sums);
  if (matrices.size(-2) == 3) {
    grad = at::cat({grad, at::zeros_like(grad.narrow(1, 0, 1))}, 1);
  }
  return grad.view(matrices.sizes()).to(matrices.scalar_type());
}

}  // namespace warp
}  // namespace invfast
