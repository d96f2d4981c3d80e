// CPU kernels of the affine warp: forward parallel over (batch, output row),
// backward parallel over (batch, channel) planes so that no two threads add
// into the same gradient element.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "affine_warp.h"

namespace invfast {
namespace warp {
namespace {

template <typename coord_t>
std::vector<InverseAffine<coord_t>> inverses(const at::Tensor& matrices) {
  const at::Tensor m = matrices_as_double(matrices);
  const double* p = m.data_ptr<double>();
  const int64_t B = m.size(0), rows = m.size(1);
  std::vector<InverseAffine<coord_t>> inv(B);
  for (int64_t b = 0; b < B; ++b) {
    inv[b] = invert_affine<coord_t>(p + b * rows * 3, 3);
  }
  return inv;
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& images, const at::Tensor& matrices, const Options& opt,
                    at::Tensor& out) {
  using coord_t = acc_t<scalar_t>;
  const auto inv = inverses<coord_t>(matrices);
  const int64_t C = images.size(1), H = images.size(2), W = images.size(3);
  const int64_t Ho = out.size(2), Wo = out.size(3);
  const int64_t in_sb = images.stride(0), in_sc = images.stride(1);
  const int64_t in_sh = images.stride(2), in_sw = images.stride(3);
  const int64_t out_sb = out.stride(0), out_sc = out.stride(1);
  const int64_t out_sh = out.stride(2), out_sw = out.stride(3);
  const scalar_t* in = images.const_data_ptr<scalar_t>();
  scalar_t* dst = out.mutable_data_ptr<scalar_t>();
  const coord_t fill = static_cast<coord_t>(opt.fill);

  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, Wo * C));
  at::parallel_for(0, out.size(0) * Ho, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / Ho, v = row % Ho;
      const scalar_t* src = in + b * in_sb;
      scalar_t* o = dst + b * out_sb + v * out_sh;
      for (int64_t u = 0; u < Wo; ++u) {
        coord_t x, y;
        source_position(inv[b], u, v, x, y);
        const auto fp =
            footprint(x, y, H, W, in_sh, in_sw, opt.mode, opt.padding, opt.align_corners);
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* plane = src + c * in_sc;
          coord_t acc = fp.outside * fill;
          for (int k = 0; k < 4; ++k) {
            if (fp.offset[k] >= 0) {
              acc += fp.weight[k] * static_cast<coord_t>(plane[fp.offset[k]]);
            }
          }
          o[c * out_sc + u * out_sw] = static_cast<scalar_t>(acc);
        }
      }
    }
  });
}

template <typename scalar_t, typename grad_t>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& matrices, const Options& opt,
                     at::Tensor& grad_in) {
  using coord_t = acc_t<scalar_t>;
  const auto inv = inverses<coord_t>(matrices);
  const int64_t C = grad_in.size(1), H = grad_in.size(2), W = grad_in.size(3);
  const int64_t Ho = grad_out.size(2), Wo = grad_out.size(3);
  const int64_t g_sb = grad_out.stride(0), g_sc = grad_out.stride(1);
  const int64_t g_sh = grad_out.stride(2), g_sw = grad_out.stride(3);
  // grad_in is freshly allocated and contiguous.
  const int64_t gi_sh = W, gi_sw = 1;
  const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
  grad_t* gi = grad_in.mutable_data_ptr<grad_t>();

  at::parallel_for(0, grad_in.size(0) * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t b = plane / C, c = plane % C;
      const scalar_t* gp = g + b * g_sb + c * g_sc;
      grad_t* dst = gi + plane * H * W;
      for (int64_t v = 0; v < Ho; ++v) {
        for (int64_t u = 0; u < Wo; ++u) {
          coord_t x, y;
          source_position(inv[b], u, v, x, y);
          const auto fp =
              footprint(x, y, H, W, gi_sh, gi_sw, opt.mode, opt.padding, opt.align_corners);
          const coord_t go = static_cast<coord_t>(gp[v * g_sh + u * g_sw]);
          for (int k = 0; k < 4; ++k) {
            if (fp.offset[k] >= 0) {
              dst[fp.offset[k]] += static_cast<grad_t>(fp.weight[k] * go);
            }
          }
        }
      }
    }
  });
}

void affine_warp_out_cpu(const at::Tensor& images, const at::Tensor& matrices,
                         c10::string_view mode, c10::string_view padding_mode, bool align_corners,
                         double fill, at::Tensor& out) {
  const char* op = "affine_warp";
  check_inputs(op, images, matrices);
  const Options opt = parse_options(mode, padding_mode, align_corners, fill);
  check_out(op, images, {out.size(2), out.size(3)}, out);

  if (out.numel() == 0) {
    return;
  }
  if (images.size(2) == 0 || images.size(3) == 0) {
    out.fill_(opt.fill);
    return;
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "affine_warp_cpu",
                                  [&] { forward_kernel<scalar_t>(images, matrices, opt, out); });
}

at::Tensor affine_warp_cpu(const at::Tensor& images, const at::Tensor& matrices,
                           c10::string_view mode, c10::string_view padding_mode, bool align_corners,
                           double fill, c10::IntArrayRef size) {
  check_inputs("affine_warp", images, matrices);
  check_size("affine_warp", size);

  at::Tensor out = empty_output(images, size);
  affine_warp_out_cpu(images, matrices, mode, padding_mode, align_corners, fill, out);
  return out;
}

at::Tensor affine_warp_backward_cpu(const at::Tensor& grad_out, const at::Tensor& matrices,
                                    c10::string_view mode, c10::string_view padding_mode,
                                    bool align_corners, c10::IntArrayRef input_size) {
  const char* op = "affine_warp_backward";
  check_inputs(op, grad_out, matrices);
  const Options opt = parse_options(mode, padding_mode, align_corners, 0.0);
  check_size(op, input_size);

  // Half and bfloat16 gradients accumulate in float32 and are rounded once.
  const auto dtype = grad_out.scalar_type();
  const auto acc_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_in = at::zeros({grad_out.size(0), grad_out.size(1), input_size[0], input_size[1]},
                                 grad_out.options().dtype(acc_dtype));
  if (grad_out.numel() == 0 || grad_in.numel() == 0) {
    return grad_in.to(dtype);
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "affine_warp_backward_cpu", [&] {
    backward_kernel<scalar_t, acc_t<scalar_t>>(grad_out, matrices, opt, grad_in);
  });
  return grad_in.to(dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(invfast, CPU, m) {
  m.impl("affine_warp", &affine_warp_cpu);
  m.impl("affine_warp_out", &affine_warp_out_cpu);
  m.impl("affine_warp_backward", &affine_warp_backward_cpu);
}

}  // namespace warp
}  // namespace invfast
