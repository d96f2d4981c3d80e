// CUDA kernels of the affine warp: one thread per output pixel, which loops
// over the K views of its sample (one launch for all of them), computes each
// source footprint once and applies it to every channel. Each thread inverts
// its matrices itself, so no inverse is stored and nothing syncs.
//
// The image gradient scatters with atomics by default; under
// torch.use_deterministic_algorithms(True) it gathers instead: one thread per
// input pixel enumerates, in a fixed order, the output pixels whose footprint
// can cover it, so the result is the same bit for bit on every run.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "affine_warp.h"
#include "affine_warp_gather.h"

namespace invfast {
namespace warp {
namespace {

constexpr int kThreads = 256;

struct Geometry {
  int64_t K, B, C, H, W, Ho, Wo;
  int64_t mat_rows;
  int64_t in_sb, in_sc, in_sh, in_sw;
  int64_t out_sk, out_sb, out_sc, out_sh, out_sw;
};

// `out5` is the output (or output gradient) seen as (K, B, C, H', W').
Geometry geometry(const at::Tensor& in, const at::Tensor& out5, const at::Tensor& mats) {
  return {out5.size(0),   in.size(0),    in.size(1),     in.size(2),     in.size(3),
          out5.size(3),   out5.size(4),  mats.size(1),   in.stride(0),   in.stride(1),
          in.stride(2),   in.stride(3),  out5.stride(0), out5.stride(1), out5.stride(2),
          out5.stride(3), out5.stride(4)};
}

at::Tensor as_views(const at::Tensor& t) { return t.dim() == 4 ? t.unsqueeze(0) : t; }

unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 30));
}

// Per-channel values passed by value: fill (one value, or one per channel up
// to kMaxFillChannels), and for the normalising warp a scale and shift per
// channel in device memory (result = value * scale + shift).
// NOTE: fill is kept in double and cast to the kernel's coordinate type where
// it is read, so that float64 images get the fill value the CPU kernel uses.
struct Epilogue {
  double fill[kMaxFillChannels];
  int per_channel;
  const float* scale;
  const float* shift;
};

Epilogue make_epilogue(const char* op, const std::vector<double>& fills, int64_t C) {
  Epilogue ep{};
  bool uniform = true;
  for (int64_t c = 1; c < C; ++c) {
    uniform = uniform && fills[c] == fills[0];
  }
  TORCH_CHECK(uniform || C <= kMaxFillChannels, op, ": a per-channel fill takes at most ",
              kMaxFillChannels, " channels on CUDA, got ", C);
  ep.per_channel = uniform ? 0 : 1;
  for (int64_t c = 0; c < (uniform ? std::min<int64_t>(C, 1) : C); ++c) {
    ep.fill[c] = fills[c];
  }
  return ep;
}

template <typename coord_t>
__device__ __forceinline__ bool is_identity(const InverseAffine<coord_t>& m) {
  return m.a == 1 && m.b == 0 && m.c == 0 && m.d == 0 && m.e == 1 && m.f == 0;
}

template <typename in_t, typename out_t>
__global__ void forward_kernel(const in_t* __restrict__ in, const double* __restrict__ mats,
                               out_t* __restrict__ out, int64_t n, Geometry g, Options opt,
                               Epilogue ep) {
  using coord_t = acc_t<in_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t u = i % g.Wo;
    const int64_t v = (i / g.Wo) % g.Ho;
    const int64_t b = i / (g.Wo * g.Ho);
    const in_t* src = in + b * g.in_sb;
    for (int64_t k = 0; k < g.K; ++k) {
      const auto inv = invert_affine<coord_t>(mats + (k * g.B + b) * g.mat_rows * 3, 3);
      out_t* dst = out + k * g.out_sk + b * g.out_sb + v * g.out_sh + u * g.out_sw;
      const auto put = [&](int64_t c, coord_t acc) {
        if (ep.scale != nullptr) {
          acc = acc * static_cast<coord_t>(ep.scale[c]) + static_cast<coord_t>(ep.shift[c]);
        }
        dst[c * g.out_sc] = store_as<out_t>(acc);
      };
      const auto fill = [&](int64_t c) {
        return static_cast<coord_t>(ep.fill[ep.per_channel ? c : 0]);
      };
      // NOTE: an identity matrix (a sample that was not transformed) copies.
      if (is_identity(inv) && u < g.W && v < g.H) {
        for (int64_t c = 0; c < g.C; ++c) {
          put(c, static_cast<coord_t>(src[c * g.in_sc + v * g.in_sh + u * g.in_sw]));
        }
        continue;
      }
      coord_t x, y;
      source_position(inv, u, v, x, y);
      if (opt.mode == Interp::Bicubic) {
        const auto fp =
            cubic_footprint(x, y, g.H, g.W, g.in_sh, g.in_sw, opt.padding, opt.align_corners);
        for (int64_t c = 0; c < g.C; ++c) {
          put(c, sample_cubic(src + c * g.in_sc, fp, fill(c)));
        }
        continue;
      }
      const auto fp =
          footprint(x, y, g.H, g.W, g.in_sh, g.in_sw, opt.mode, opt.padding, opt.align_corners);
      for (int64_t c = 0; c < g.C; ++c) {
        put(c, sample_linear(src + c * g.in_sc, fp, fill(c)));
      }
    }
  }
}

// grad_in is a contiguous float32 (float64 for double) buffer; taps of
// neighbouring output pixels overlap, hence the atomics.
template <typename coord_t>
__global__ void backward_atomic_kernel(const coord_t* __restrict__ grad_out,
                                       const double* __restrict__ mats, coord_t* grad_in, int64_t n,
                                       Geometry g, Options opt) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t u = i % g.Wo;
    const int64_t v = (i / g.Wo) % g.Ho;
    const int64_t b = i / (g.Wo * g.Ho);
    coord_t* gi = grad_in + b * g.C * g.H * g.W;
    for (int64_t k = 0; k < g.K; ++k) {
      const auto inv = invert_affine<coord_t>(mats + (k * g.B + b) * g.mat_rows * 3, 3);
      coord_t x, y;
      source_position(inv, u, v, x, y);
      const coord_t* go = grad_out + k * g.out_sk + b * g.out_sb + v * g.out_sh + u * g.out_sw;
      if (opt.mode == Interp::Bicubic) {
        const auto fp =
            cubic_footprint(x, y, g.H, g.W, g.W, int64_t(1), opt.padding, opt.align_corners);
        if (!fp.valid) {
          continue;
        }
        for (int64_t c = 0; c < g.C; ++c) {
          const coord_t gv = go[c * g.out_sc];
          for (int j = 0; j < 4; ++j) {
            for (int t = 0; t < 4; ++t) {
              if (fp.ox[t] >= 0 && fp.oy[j] >= 0) {
                atomicAdd(gi + c * g.H * g.W + fp.oy[j] + fp.ox[t], fp.wy[j] * fp.wx[t] * gv);
              }
            }
          }
        }
        continue;
      }
      const auto fp =
          footprint(x, y, g.H, g.W, g.W, int64_t(1), opt.mode, opt.padding, opt.align_corners);
      for (int64_t c = 0; c < g.C; ++c) {
        const coord_t gv = go[c * g.out_sc];
#pragma unroll
        for (int t = 0; t < 4; ++t) {
          if (fp.offset[t] >= 0) {
            atomicAdd(gi + c * g.H * g.W + fp.offset[t], fp.weight[t] * gv);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Deterministic (gather) image gradient: one thread per input pixel sums over
// the output pixels that read it (affine_warp_gather.h), a few channels at a
// time, in an order fixed by the geometry.

constexpr int kGatherChannels = 4;

template <typename coord_t>
__global__ void backward_gather_kernel(const coord_t* __restrict__ grad_out,
                                       const double* __restrict__ mats,
                                       coord_t* __restrict__ grad_in, int64_t n, Geometry g,
                                       Options opt) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t xi = i % g.W;
    const int64_t yi = (i / g.W) % g.H;
    const int64_t b = i / (g.W * g.H);
    for (int64_t c0 = 0; c0 < g.C; c0 += kGatherChannels) {
      const int nc = static_cast<int>(g.C - c0 < kGatherChannels ? g.C - c0 : kGatherChannels);
      coord_t acc[kGatherChannels] = {};
      for (int64_t k = 0; k < g.K; ++k) {
        const coord_t* go = grad_out + k * g.out_sk + b * g.out_sb + c0 * g.out_sc;
        const auto add = [&](int64_t u, int64_t v, coord_t w) {
          const coord_t* gp = go + v * g.out_sh + u * g.out_sw;
          for (int c = 0; c < nc; ++c) {
            acc[c] += w * gp[c * g.out_sc];
          }
        };
        gather::for_each_reader<coord_t>(mats + (k * g.B + b) * g.mat_rows * 3, xi, yi, g.H, g.W,
                                         g.Ho, g.Wo, opt, add);
      }
      for (int c = 0; c < nc; ++c) {
        grad_in[((b * g.C + c0 + c) * g.H + yi) * g.W + xi] = acc[c];
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Matrix gradient: one block per (view, sample, output row); a fixed-order
// tree reduction in shared memory gives per-row sums of g (x, y, 1)^T.

constexpr int kRowThreads = 128;

template <typename in_t>
__global__ void backward_matrices_kernel(const in_t* __restrict__ in,
                                         const acc_t<in_t>* __restrict__ grad_out,
                                         const double* __restrict__ mats,
                                         double* __restrict__ partial, int64_t rows, Geometry g,
                                         Options opt, Epilogue ep) {
  using coord_t = acc_t<in_t>;
  __shared__ double red[6][kRowThreads];
  // NOTE: rows (K * B * H') may pass the grid's 2^31 - 1 blocks, so blocks
  // stride over them; the loop is uniform across the block, so every thread
  // reaches each __syncthreads.
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t kb = row / g.Ho, v = row % g.Ho;
    const int64_t k = kb / g.B, b = kb % g.B;
    const auto inv = invert_affine<coord_t>(mats + kb * g.mat_rows * 3, 3);
    const in_t* src = in + b * g.in_sb;
    const coord_t* gp = grad_out + k * g.out_sk + b * g.out_sb + v * g.out_sh;
    double acc[6] = {0, 0, 0, 0, 0, 0};
    for (int64_t u = threadIdx.x; u < g.Wo; u += blockDim.x) {
      coord_t x, y;
      source_position(inv, u, v, x, y);
      if (!finite(x) || !finite(y)) {
        continue;
      }
      double gx = 0.0, gy = 0.0;
      for (int64_t c = 0; c < g.C; ++c) {
        coord_t dx, dy;
        const coord_t fill = static_cast<coord_t>(ep.fill[ep.per_channel ? c : 0]);
        position_grad(src + c * g.in_sc, x, y, g.H, g.W, g.in_sh, g.in_sw, opt.mode, opt.padding,
                      opt.align_corners, fill, dx, dy);
        const double go = gp[c * g.out_sc + u * g.out_sw];
        gx += go * dx;
        gy += go * dy;
      }
      add_inverse_grad(acc, x, y, gx, gy);
    }
    for (int t = 0; t < 6; ++t) {
      red[t][threadIdx.x] = acc[t];
    }
    __syncthreads();
    for (int s = kRowThreads / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) {
        for (int t = 0; t < 6; ++t) {
          red[t][threadIdx.x] += red[t][threadIdx.x + s];
        }
      }
      __syncthreads();
    }
    if (threadIdx.x < 6) {
      partial[row * 6 + threadIdx.x] = red[threadIdx.x][0];
    }
    // The next row overwrites red[t][0], which threads 1 to 5 may still be reading.
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------
// Launchers.

void run_forward(const char* op, const at::Tensor& images, const at::Tensor& matrices,
                 const Options& opt, const std::vector<double>& fills, const at::Tensor& scale,
                 const at::Tensor& shift, at::Tensor& out) {
  const int64_t C = images.size(1);
  if (out.numel() == 0) {
    return;
  }
  Epilogue ep = make_epilogue(op, fills, C);
  if (scale.defined()) {
    ep.scale = scale.const_data_ptr<float>();
    ep.shift = shift.const_data_ptr<float>();
  }
  if (images.size(2) == 0 || images.size(3) == 0) {
    at::Tensor v = at::tensor(fills, at::kDouble).view({C, 1, 1}).to(out.device());
    if (scale.defined()) {
      v = v * scale.view({C, 1, 1}) + shift.view({C, 1, 1});
    }
    if (out.scalar_type() == at::kByte) {
      v = v.round().clamp(0, 255).nan_to_num(0);
    }
    out.copy_(v.expand_as(out));
    return;
  }

  const at::Tensor mats = matrices_as_double(matrices);
  at::Tensor out5 = as_views(out);
  const Geometry g = geometry(images, out5, mats);
  const int64_t n = g.B * g.Ho * g.Wo;
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_pair(op, images.scalar_type(), out.scalar_type(), [&](auto in_tag, auto out_tag) {
    using in_t = typename decltype(in_tag)::type;
    using out_t = typename decltype(out_tag)::type;
    forward_kernel<in_t, out_t><<<blocks_for(n), kThreads, 0, stream>>>(
        images.const_data_ptr<in_t>(), mats.const_data_ptr<double>(),
        static_cast<out_t*>(out5.data_ptr()), n, g, opt, ep);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void affine_warp_out_cuda(const at::Tensor& images, const at::Tensor& matrices,
                          c10::string_view mode, c10::string_view padding_mode, bool align_corners,
                          c10::ArrayRef<double> fill, at::Tensor& out) {
  const char* op = "affine_warp";
  const auto call =
      check_out_call(op, images, matrices, mode, padding_mode, align_corners, fill, out);

  c10::cuda::CUDAGuard guard(images.device());
  run_forward(op, images, matrices, call.opt, call.fills, at::Tensor(), at::Tensor(), out);
}

at::Tensor affine_warp_cuda(const at::Tensor& images, const at::Tensor& matrices,
                            c10::string_view mode, c10::string_view padding_mode,
                            bool align_corners, c10::ArrayRef<double> fill, c10::IntArrayRef size,
                            std::optional<at::ScalarType> out_dtype) {
  const char* op = "affine_warp";
  const Views views = check_inputs(op, images, matrices);
  check_size(op, size);
  const auto dtype = output_dtype(op, images, out_dtype);

  c10::cuda::CUDAGuard guard(images.device());
  at::Tensor out = empty_output(images, views, size, dtype);
  affine_warp_out_cuda(images, matrices, mode, padding_mode, align_corners, fill, out);
  return out;
}

void warp_normalize_out_cuda(const at::Tensor& images, const at::Tensor& matrices,
                             const at::Tensor& mean, const at::Tensor& std, c10::string_view mode,
                             c10::string_view padding_mode, bool align_corners,
                             c10::ArrayRef<double> fill, at::Tensor& out) {
  const char* op = "warp_normalize";
  const auto call = check_out_call(op, images, matrices, mode, padding_mode, align_corners, fill,
                                   out, &mean, &std);

  c10::cuda::CUDAGuard guard(images.device());
  // result = (value / 255 - mean) / std = value * scale + shift, formed on the
  // device (no host sync, capturable in a CUDA graph).
  const at::Tensor s = std.to(at::kDouble), m = mean.to(at::kDouble);
  const at::Tensor scale = (1.0 / (255.0 * s)).to(at::kFloat).contiguous();
  const at::Tensor shift = (-m / s).to(at::kFloat).contiguous();
  run_forward(op, images, matrices, call.opt, call.fills, scale, shift, out);
}

at::Tensor warp_normalize_cuda(const at::Tensor& images, const at::Tensor& matrices,
                               const at::Tensor& mean, const at::Tensor& std, c10::string_view mode,
                               c10::string_view padding_mode, bool align_corners,
                               c10::ArrayRef<double> fill, c10::IntArrayRef size,
                               at::ScalarType out_dtype) {
  c10::cuda::CUDAGuard guard(images.device());
  at::Tensor out = normalize_output("warp_normalize", images, matrices, mean, std, size, out_dtype);
  warp_normalize_out_cuda(images, matrices, mean, std, mode, padding_mode, align_corners, fill,
                          out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> affine_warp_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& images_opt,
    const at::Tensor& matrices, c10::string_view mode, c10::string_view padding_mode,
    bool align_corners, c10::ArrayRef<double> fill, c10::IntArrayRef input_size, bool images_grad) {
  const char* op = "affine_warp_backward";
  const Options opt = parse_options(op, mode, padding_mode, align_corners);
  check_size(op, input_size);
  check_backward_args(op, grad_out, images_opt, matrices, input_size);

  c10::cuda::CUDAGuard guard(grad_out.device());

  const auto dtype = grad_out.scalar_type();
  const auto acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t B = grad_out.size(-4), C = grad_out.size(-3);
  const at::Tensor grad5 = as_views(grad_out.to(acc));
  const at::Tensor mats = matrices_as_double(matrices);
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor grad_images = grad_out.new_empty({0});
  at::Tensor grad_matrices = matrices.new_empty({0});

  if (images_grad) {
    at::Tensor gi = at::zeros({B, C, input_size[0], input_size[1]}, grad_out.options().dtype(acc));
    if (gi.numel() > 0 && grad5.numel() > 0) {
      const Geometry g = geometry(gi, grad5, mats);
      const bool deterministic = at::globalContext().deterministicAlgorithms();
      AT_DISPATCH_FLOATING_TYPES(acc, "affine_warp_backward_cuda", [&] {
        if (deterministic) {
          const int64_t n = B * input_size[0] * input_size[1];
          backward_gather_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
              grad5.const_data_ptr<scalar_t>(), mats.const_data_ptr<double>(),
              gi.mutable_data_ptr<scalar_t>(), n, g, opt);
        } else {
          const int64_t n = B * g.Ho * g.Wo;
          backward_atomic_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
              grad5.const_data_ptr<scalar_t>(), mats.const_data_ptr<double>(),
              gi.mutable_data_ptr<scalar_t>(), n, g, opt);
        }
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    grad_images = gi.to(dtype);
  }

  if (images_opt.has_value()) {
    const at::Tensor& images = *images_opt;
    const auto fills = channel_fill(op, fill, C, opt.padding);
    const Epilogue ep = make_epilogue(op, fills, C);
    at::Tensor sums = at::zeros({grad5.size(0) * B, 2, 3}, mats.options());
    if (images.numel() > 0 && grad5.numel() > 0) {
      const Geometry g = geometry(images, grad5, mats);
      const int64_t rows = g.K * g.B * g.Ho;
      at::Tensor partial = at::empty({rows, 6}, mats.options());
      const auto row_blocks = static_cast<unsigned int>(std::min<int64_t>(rows, 1 << 30));
      const at::Tensor gf = images.scalar_type() == at::kDouble ? grad5 : grad5.to(at::kFloat);
      AT_DISPATCH_FLOATING_TYPES_AND3(
          at::kHalf, at::kBFloat16, at::kByte, images.scalar_type(), "affine_warp_backward_cuda",
          [&] {
            backward_matrices_kernel<scalar_t><<<row_blocks, kRowThreads, 0, stream>>>(
                images.const_data_ptr<scalar_t>(), gf.const_data_ptr<acc_t<scalar_t>>(),
                mats.const_data_ptr<double>(), partial.mutable_data_ptr<double>(), rows, g, opt,
                ep);
          });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      sums = partial.view({g.K * g.B, g.Ho, 2, 3}).sum(1);
    }
    grad_matrices = matrix_grad_from_sums(sums, matrices);
  }
  return {grad_images, grad_matrices};
}

}  // namespace

TORCH_LIBRARY_IMPL(invfast, CUDA, m) {
  m.impl("affine_warp", &affine_warp_cuda);
  m.impl("affine_warp_out", &affine_warp_out_cuda);
  m.impl("affine_warp_backward", &affine_warp_backward_cuda);
  m.impl("warp_normalize", &warp_normalize_cuda);
  m.impl("warp_normalize_out", &warp_normalize_out_cuda);
}

}  // namespace warp
}  // namespace invfast
