#include "augment.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace invfast {
namespace augment {

namespace {

void check_key_part(const char* op, const char* name, const at::Tensor& t,
                    const at::Tensor& sample_ids) {
  TORCH_CHECK(t.numel() == 1, op, ": ", name, " must hold a single value, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kLong, op, ": ", name, " must be int64, got ",
              t.scalar_type());
  TORCH_CHECK(t.is_cpu() || t.device() == sample_ids.device(), op, ": ", name,
              " must be on the CPU or on sample_ids' device (", sample_ids.device(), "), got ",
              t.device());
}

}  // namespace

void check_counter_args(const char* op, const at::Tensor& sample_ids, const at::Tensor& seed,
                        const at::Tensor& step, int64_t n) {
  TORCH_CHECK(sample_ids.dim() == 1, op, ": sample_ids must be (B,), got shape ",
              sample_ids.sizes());
  TORCH_CHECK(sample_ids.scalar_type() == at::kLong, op, ": sample_ids must be int64, got ",
              sample_ids.scalar_type());
  check_key_part(op, "seed", seed, sample_ids);
  check_key_part(op, "step", step, sample_ids);
  TORCH_CHECK(n >= 0, op, ": n must be non-negative, got ", n);
}

uint64_t host_value(const at::Tensor& t) {
  TORCH_INTERNAL_ASSERT(t.is_cpu() && t.numel() == 1 && t.scalar_type() == at::kLong);
  return static_cast<uint64_t>(*t.const_data_ptr<int64_t>());
}

void check_uniforms(const char* op, const at::Tensor& uniforms) {
  TORCH_CHECK(uniforms.dim() == 2 && uniforms.size(1) == kDraws, op, ": uniforms must be (B, ",
              kDraws, "), got shape ", uniforms.sizes());
  TORCH_CHECK(uniforms.scalar_type() == at::kDouble, op, ": uniforms must be float64, got ",
              uniforms.scalar_type());
}

AffineRanges parse_ranges(const char* op, c10::ArrayRef<double> params,
                          c10::ArrayRef<double> angles, c10::ArrayRef<double> crop,
                          c10::IntArrayRef sizes) {
  TORCH_CHECK(params.size() == 13, op,
              ": params must hold 13 values (degrees, translate, scale, shear_x and shear_y as "
              "pairs, then hflip, vflip, p), got ",
              params.size());
  TORCH_CHECK(crop.empty() || crop.size() == 4, op,
              ": crop must be empty or hold crop_scale and crop_ratio (4 values), got ",
              crop.size());
  TORCH_CHECK(sizes.size() == 4 && sizes[0] >= 0 && sizes[1] >= 0 && sizes[2] >= 0 && sizes[3] >= 0,
              op, ": sizes must be four non-negative integers (H, W, H', W'), got ", sizes);

  AffineRanges r{};
  const double* p = params.data();
  for (int k = 0; k < 2; ++k) {
    r.degrees[k] = p[k];
    r.translate[k] = p[2 + k];
    r.scale[k] = p[4 + k];
    r.shear_x[k] = p[6 + k];
    r.shear_y[k] = p[8 + k];
  }
  r.hflip = p[10];
  r.vflip = p[11];
  r.p = p[12];
  r.has_angles = !angles.empty();
  r.crop = !crop.empty();
  if (r.crop) {
    r.crop_scale[0] = crop[0];
    r.crop_scale[1] = crop[1];
    // NOTE: the logs are taken here, on the host, so that both devices draw
    // the ratio from the same two numbers.
    r.log_ratio[0] = std::log(crop[2]);
    r.log_ratio[1] = std::log(crop[3]);
  }
  r.H = sizes[0];
  r.W = sizes[1];
  r.Ho = sizes[2];
  r.Wo = sizes[3];
  return r;
}

}  // namespace augment
}  // namespace invfast
