// CUDA kernels of RandomAffine's parameter sampling: one thread per draw for
// the uniforms, one per sample for the matrices. A seed or step that lives on
// the device is read by every thread (no host sync, so a loop that bumps the
// step in place can be captured in a CUDA graph); one on the CPU is read by
// the launcher.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "augment.h"

namespace invfast {
namespace augment {
namespace {

constexpr int kThreads = 256;

unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 30));
}

// A seed or step: its value, or where to read it on the device.
struct KeyPart {
  uint64_t value;
  const int64_t* device;
};

KeyPart key_part(const at::Tensor& t) {
  if (t.is_cpu()) {
    return {host_value(t), nullptr};
  }
  return {0, t.const_data_ptr<int64_t>()};
}

__device__ __forceinline__ uint64_t read(const KeyPart& k) {
  return k.device != nullptr ? static_cast<uint64_t>(*k.device) : k.value;
}

__global__ void counter_uniform_kernel(const int64_t* __restrict__ ids, int64_t stride,
                                       KeyPart seed, KeyPart step, int64_t total, int64_t n,
                                       double* __restrict__ out) {
  const uint64_t key = counter_key(read(seed), read(step));
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / n, d = i - b * n;
    const uint64_t state = sample_state(key, static_cast<uint64_t>(ids[b * stride]));
    out[i] = counter_draw(state, static_cast<uint64_t>(d));
  }
}

// The angle list travels by value in the kernel's arguments: no copy to the
// device, so nothing to wait for and nothing that a CUDA graph would freeze.
struct AngleList {
  double value[kMaxCudaAngles];
  int64_t n;
};

__global__ void random_affine_kernel(const double* __restrict__ u, int64_t s0, int64_t s1,
                                     int64_t B, AffineRanges r, AngleList angles,
                                     float* __restrict__ out) {
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < B;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    random_affine_sample(r, u, s0, s1, b, angles.value, angles.n, out);
  }
}

at::Tensor counter_uniform_cuda(const at::Tensor& sample_ids, const at::Tensor& seed,
                                const at::Tensor& step, int64_t n) {
  const char* op = "counter_uniform";
  check_counter_args(op, sample_ids, seed, step, n);

  c10::cuda::CUDAGuard guard(sample_ids.device());
  const int64_t B = sample_ids.size(0);
  at::Tensor out = at::empty({B, n}, sample_ids.options().dtype(at::kDouble));
  if (out.numel() == 0) {
    return out;
  }

  const int64_t total = out.numel();
  auto stream = c10::cuda::getCurrentCUDAStream();
  counter_uniform_kernel<<<blocks_for(total), kThreads, 0, stream>>>(
      sample_ids.const_data_ptr<int64_t>(), sample_ids.stride(0), key_part(seed), key_part(step),
      total, n, out.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor random_affine_matrices_cuda(const at::Tensor& uniforms, c10::ArrayRef<double> params,
                                       c10::ArrayRef<double> angles, c10::ArrayRef<double> crop,
                                       c10::IntArrayRef sizes) {
  const char* op = "random_affine_matrices";
  check_uniforms(op, uniforms);
  const AffineRanges r = parse_ranges(op, params, angles, crop, sizes);
  TORCH_CHECK(static_cast<int64_t>(angles.size()) <= kMaxCudaAngles, op,
              ": the CUDA kernel takes at most ", kMaxCudaAngles, " angles, got ", angles.size());

  c10::cuda::CUDAGuard guard(uniforms.device());
  const int64_t B = uniforms.size(0);
  at::Tensor out = at::empty({B, 2, 3}, uniforms.options().dtype(at::kFloat));
  if (B == 0) {
    return out;
  }

  AngleList list{};
  list.n = static_cast<int64_t>(angles.size());
  std::copy(angles.begin(), angles.end(), list.value);
  auto stream = c10::cuda::getCurrentCUDAStream();
  random_affine_kernel<<<blocks_for(B), kThreads, 0, stream>>>(
      uniforms.const_data_ptr<double>(), uniforms.stride(0), uniforms.stride(1), B, r, list,
      out.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(invfast, CUDA, m) {
  m.impl("counter_uniform", &counter_uniform_cuda);
  m.impl("random_affine_matrices", &random_affine_matrices_cuda);
}

}  // namespace augment
}  // namespace invfast
