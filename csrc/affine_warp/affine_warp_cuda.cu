// CUDA kernels of the affine warp: one thread per output pixel, computing the
// source footprint once and applying it to every channel. Each thread inverts
// its sample's matrix itself, so no inverse is stored and nothing syncs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "affine_warp.h"

namespace invfast {
namespace warp {
namespace {

constexpr int kThreads = 256;

struct Geometry {
  int64_t C, H, W, Ho, Wo;
  int64_t mat_rows;
  int64_t in_sb, in_sc, in_sh, in_sw;
  int64_t out_sb, out_sc, out_sh, out_sw;
};

Geometry geometry(const at::Tensor& in, const at::Tensor& out, const at::Tensor& matrices) {
  return {in.size(1),       in.size(2),    in.size(3),    out.size(2),  out.size(3),
          matrices.size(1), in.stride(0),  in.stride(1),  in.stride(2), in.stride(3),
          out.stride(0),    out.stride(1), out.stride(2), out.stride(3)};
}

unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 30));
}

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ in, const double* __restrict__ mats,
                               scalar_t* __restrict__ out, int64_t n, Geometry g, Options opt) {
  using coord_t = acc_t<scalar_t>;
  const coord_t fill = static_cast<coord_t>(opt.fill);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t u = i % g.Wo;
    const int64_t v = (i / g.Wo) % g.Ho;
    const int64_t b = i / (g.Wo * g.Ho);
    const auto inv = invert_affine<coord_t>(mats + b * g.mat_rows * 3, 3);
    coord_t x, y;
    source_position(inv, u, v, x, y);
    const auto fp =
        footprint(x, y, g.H, g.W, g.in_sh, g.in_sw, opt.mode, opt.padding, opt.align_corners);
    const scalar_t* src = in + b * g.in_sb;
    scalar_t* dst = out + b * g.out_sb + v * g.out_sh + u * g.out_sw;
    for (int64_t c = 0; c < g.C; ++c) {
      const scalar_t* plane = src + c * g.in_sc;
      coord_t acc = fp.outside * fill;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (fp.offset[k] >= 0) {
          acc += fp.weight[k] * static_cast<coord_t>(plane[fp.offset[k]]);
        }
      }
      dst[c * g.out_sc] = static_cast<scalar_t>(acc);
    }
  }
}

// grad_in is a contiguous float32 (float64 for double) buffer; taps of
// neighbouring output pixels overlap, hence the atomics.
template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad_out,
                                const double* __restrict__ mats, acc_t<scalar_t>* grad_in,
                                int64_t n, Geometry g, Options opt) {
  using coord_t = acc_t<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t u = i % g.Wo;
    const int64_t v = (i / g.Wo) % g.Ho;
    const int64_t b = i / (g.Wo * g.Ho);
    const auto inv = invert_affine<coord_t>(mats + b * g.mat_rows * 3, 3);
    coord_t x, y;
    source_position(inv, u, v, x, y);
    const auto fp =
        footprint(x, y, g.H, g.W, g.W, int64_t(1), opt.mode, opt.padding, opt.align_corners);
    const scalar_t* go = grad_out + b * g.out_sb + v * g.out_sh + u * g.out_sw;
    coord_t* gi = grad_in + b * g.C * g.H * g.W;
    for (int64_t c = 0; c < g.C; ++c) {
      const coord_t gv = static_cast<coord_t>(go[c * g.out_sc]);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (fp.offset[k] >= 0) {
          atomicAdd(gi + c * g.H * g.W + fp.offset[k], fp.weight[k] * gv);
        }
      }
    }
  }
}

void affine_warp_out_cuda(const at::Tensor& images, const at::Tensor& matrices,
                          c10::string_view mode, c10::string_view padding_mode, bool align_corners,
                          double fill, at::Tensor& out) {
  const char* op = "affine_warp";
  check_inputs(op, images, matrices);
  const Options opt = parse_options(mode, padding_mode, align_corners, fill);
  check_out(op, images, {out.size(2), out.size(3)}, out);

  c10::cuda::CUDAGuard guard(images.device());

  if (out.numel() == 0) {
    return;
  }
  if (images.size(2) == 0 || images.size(3) == 0) {
    out.fill_(opt.fill);
    return;
  }

  const at::Tensor mats = matrices_as_double(matrices);
  const Geometry g = geometry(images, out, mats);
  const int64_t n = out.size(0) * g.Ho * g.Wo;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, images.scalar_type(), "affine_warp_cuda", [&] {
        forward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
            images.const_data_ptr<scalar_t>(), mats.const_data_ptr<double>(),
            out.mutable_data_ptr<scalar_t>(), n, g, opt);
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor affine_warp_cuda(const at::Tensor& images, const at::Tensor& matrices,
                            c10::string_view mode, c10::string_view padding_mode,
                            bool align_corners, double fill, c10::IntArrayRef size) {
  check_inputs("affine_warp", images, matrices);
  check_size("affine_warp", size);

  c10::cuda::CUDAGuard guard(images.device());
  at::Tensor out = empty_output(images, size);
  affine_warp_out_cuda(images, matrices, mode, padding_mode, align_corners, fill, out);
  return out;
}

at::Tensor affine_warp_backward_cuda(const at::Tensor& grad_out, const at::Tensor& matrices,
                                     c10::string_view mode, c10::string_view padding_mode,
                                     bool align_corners, c10::IntArrayRef input_size) {
  const char* op = "affine_warp_backward";
  check_inputs(op, grad_out, matrices);
  const Options opt = parse_options(mode, padding_mode, align_corners, 0.0);
  check_size(op, input_size);

  c10::cuda::CUDAGuard guard(grad_out.device());

  const auto dtype = grad_out.scalar_type();
  const auto acc_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_in = at::zeros({grad_out.size(0), grad_out.size(1), input_size[0], input_size[1]},
                                 grad_out.options().dtype(acc_dtype));
  if (grad_out.numel() == 0 || grad_in.numel() == 0) {
    return grad_in.to(dtype);
  }

  const at::Tensor mats = matrices_as_double(matrices);
  Geometry g = geometry(grad_in, grad_out, mats);
  const int64_t n = grad_out.size(0) * g.Ho * g.Wo;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, dtype, "affine_warp_backward_cuda", [&] {
        backward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
            grad_out.const_data_ptr<scalar_t>(), mats.const_data_ptr<double>(),
            grad_in.mutable_data_ptr<acc_t<scalar_t>>(), n, g, opt);
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_in.to(dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(invfast, CUDA, m) {
  m.impl("affine_warp", &affine_warp_cuda);
  m.impl("affine_warp_out", &affine_warp_out_cuda);
  m.impl("affine_warp_backward", &affine_warp_backward_cuda);
}

}  // namespace warp
}  // namespace invfast
