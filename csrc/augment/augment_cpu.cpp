// CPU kernels of RandomAffine's parameter sampling: a loop over samples, in
// parallel only for batches large enough to pay for waking the threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "augment.h"

namespace invfast {
namespace augment {
namespace {

// Samples per task: below a few thousand draws, or a few hundred matrices,
// the loop is shorter than handing work to a second thread.
constexpr int64_t kCounterGrain = 4096;
constexpr int64_t kMatrixGrain = 512;

at::Tensor counter_uniform_cpu(const at::Tensor& sample_ids, const at::Tensor& seed,
                               const at::Tensor& step, int64_t n) {
  const char* op = "counter_uniform";
  check_counter_args(op, sample_ids, seed, step, n);

  const int64_t B = sample_ids.size(0);
  at::Tensor out = at::empty({B, n}, sample_ids.options().dtype(at::kDouble));
  if (out.numel() == 0) {
    return out;
  }

  const uint64_t key = counter_key(host_value(seed), host_value(step));
  const int64_t* ids = sample_ids.const_data_ptr<int64_t>();
  const int64_t stride = sample_ids.stride(0);
  double* o = out.mutable_data_ptr<double>();
  at::parallel_for(0, B, std::max<int64_t>(1, kCounterGrain / n), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const uint64_t state = sample_state(key, static_cast<uint64_t>(ids[b * stride]));
      for (int64_t d = 0; d < n; ++d) {
        o[b * n + d] = counter_draw(state, static_cast<uint64_t>(d));
      }
    }
  });
  return out;
}

at::Tensor random_affine_matrices_cpu(const at::Tensor& uniforms, c10::ArrayRef<double> params,
                                      c10::ArrayRef<double> angles, c10::ArrayRef<double> crop,
                                      c10::IntArrayRef sizes) {
  const char* op = "random_affine_matrices";
  check_uniforms(op, uniforms);
  const AffineRanges r = parse_ranges(op, params, angles, crop, sizes);

  const int64_t B = uniforms.size(0);
  at::Tensor out = at::empty({B, 2, 3}, uniforms.options().dtype(at::kFloat));
  if (B == 0) {
    return out;
  }

  const double* u = uniforms.const_data_ptr<double>();
  const int64_t s0 = uniforms.stride(0), s1 = uniforms.stride(1);
  const int64_t n_angles = static_cast<int64_t>(angles.size());
  float* o = out.mutable_data_ptr<float>();
  at::parallel_for(0, B, kMatrixGrain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      random_affine_sample(r, u, s0, s1, b, angles.data(), n_angles, o);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(invfast, CPU, m) {
  m.impl("counter_uniform", &counter_uniform_cpu);
  m.impl("random_affine_matrices", &random_affine_matrices_cpu);
}

}  // namespace augment
}  // namespace invfast
