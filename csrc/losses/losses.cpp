#include "losses.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>
#include <vector>

namespace invfast {
namespace losses {

Reduction parse_reduction(const char* op, c10::string_view reduction) {
  if (reduction == "none") {
    return Reduction::None;
  }
  if (reduction == "sum") {
    return Reduction::Sum;
  }
  if (reduction == "mean") {
    return Reduction::Mean;
  }
  if (reduction == "batchmean") {
    return Reduction::BatchMean;
  }
  TORCH_CHECK(false, op, ": reduction must be 'none', 'sum', 'mean' or 'batchmean', got '",
              reduction, "'");
}

void check_logits(const char* op, const char* name, const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 2, op, ": ", name, " must be logits (N, C) or (N, C, d1, ...), got shape ",
              x.sizes());
  TORCH_CHECK(x.size(1) >= 1, op, ": ", name, " must have at least one class, got shape ",
              x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": ", name,
              " must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
}

void check_alike(const char* op, const char* name_a, const at::Tensor& a, const char* name_b,
                 const at::Tensor& b) {
  TORCH_CHECK(a.sizes() == b.sizes(), op, ": ", name_b, " must have the shape of ", name_a, " (",
              a.sizes(), "), got ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", name_b, " must have the dtype of ",
              name_a, " (", a.scalar_type(), "), got ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), op, ": ", name_b, " must be on the device of ", name_a,
              " (", a.device(), "), got ", b.device());
}

void check_temperature(const char* op, const char* name, double t) {
  TORCH_CHECK(std::isfinite(t) && t > 0, op, ": ", name, " must be a positive number, got ", t);
}

void check_mask(const char* op, const at::Tensor& mask, const at::Tensor& x) {
  std::vector<int64_t> rows_shape(x.sizes().begin(), x.sizes().end());
  rows_shape.erase(rows_shape.begin() + 1);
  TORCH_CHECK(mask.sizes() == c10::IntArrayRef(rows_shape), op, ": mask must have shape ",
              c10::IntArrayRef(rows_shape), ", got ", mask.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kBool || at::isFloatingType(mask.scalar_type()), op,
              ": mask must be bool or floating point, got ", mask.scalar_type());
  TORCH_CHECK(mask.device() == x.device(), op, ": mask must be on ", x.device(), ", got ",
              mask.device());
}

std::vector<double> check_views(const char* op, at::TensorList views,
                                c10::optional<at::ArrayRef<double>> weights) {
  const int64_t K = static_cast<int64_t>(views.size());
  TORCH_CHECK(K >= 2 && K <= kMaxViews, op, ": logits must be 2 to ", kMaxViews, " views, got ", K);
  check_logits(op, "logits[0]", views[0]);
  for (int64_t k = 1; k < K; ++k) {
    const std::string name = "logits[" + std::to_string(k) + "]";
    check_alike(op, "logits[0]", views[0], name.c_str(), views[k]);
  }
  std::vector<double> w(K, 1.0 / static_cast<double>(K));
  if (weights.has_value()) {
    TORCH_CHECK(static_cast<int64_t>(weights->size()) == K, op,
                ": weights must have one value per view (", K, "), got ", weights->size());
    double total = 0.0;
    for (int64_t k = 0; k < K; ++k) {
      TORCH_CHECK(std::isfinite((*weights)[k]) && (*weights)[k] > 0, op,
                  ": weights must be positive, got ", *weights);
      total += (*weights)[k];
    }
    for (int64_t k = 0; k < K; ++k) {
      w[k] = (*weights)[k] / total;
    }
  }
  return w;
}

bool parse_normalize(const char* op, c10::string_view normalize) {
  if (normalize == "all") {
    return false;
  }
  TORCH_CHECK(normalize == "kept", op, ": normalize must be 'all' or 'kept', got '", normalize,
              "'");
  return true;
}

void check_threshold(const char* op, double threshold) {
  TORCH_CHECK(threshold >= 0.0 && threshold <= 1.0, op, ": threshold must be in [0, 1], got ",
              threshold);
}

std::tuple<at::Tensor, at::Tensor> fixmatch_reduce(const at::Tensor& row_loss,
                                                   const at::Tensor& kept, bool by_kept) {
  const double rows = static_cast<double>(std::max<int64_t>(row_loss.numel(), 1));
  at::Tensor count = kept.sum();
  at::Tensor total = row_loss.sum();
  // NOTE: with no row kept, "kept" divides 0 by 1: the loss is 0, never NaN.
  at::Tensor loss = by_kept ? total.div_(count.clamp_min(1.0)) : total.div_(rows);
  return std::make_tuple(loss, count.div_(rows));
}

int64_t num_rows(const at::Tensor& x) { return x.size(1) == 0 ? 0 : x.numel() / x.size(1); }

at::Tensor as_rows(const at::Tensor& x) {
  const int64_t C = x.size(1);
  if (x.dim() == 2) {
    return x.contiguous();
  }
  return x.movedim(1, -1).contiguous().view({-1, C});
}

at::Tensor from_rows(const at::Tensor& rows, const at::Tensor& x) {
  if (x.dim() == 2) {
    return rows;
  }
  std::vector<int64_t> last(x.sizes().begin(), x.sizes().end());
  last.erase(last.begin() + 1);
  last.push_back(x.size(1));
  return rows.view(last).movedim(-1, 1);
}

at::Tensor mask_rows(const c10::optional<at::Tensor>& mask, const at::Tensor& x,
                     at::ScalarType acc) {
  if (!mask.has_value() || !mask->defined()) {
    return at::Tensor();
  }
  return mask->to(acc).contiguous().view({num_rows(x)});
}

at::ScalarType loss_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

double reduction_scale(Reduction reduction, const at::Tensor& x) {
  switch (reduction) {
    case Reduction::BatchMean:
      return 1.0 / static_cast<double>(std::max<int64_t>(x.size(0), 1));
    case Reduction::Mean:
      return 1.0 / static_cast<double>(std::max<int64_t>(num_rows(x), 1));
    default:
      return 1.0;
  }
}

at::Tensor reduce_rows(const at::Tensor& row_loss, Reduction reduction, const at::Tensor& x) {
  if (reduction == Reduction::None) {
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.erase(shape.begin() + 1);
    return row_loss.view(shape);
  }
  at::Tensor total = row_loss.sum();
  const double scale = reduction_scale(reduction, x);
  return scale == 1.0 ? total : total.mul_(scale);
}

at::Tensor no_grad(const at::Tensor& x) { return at::empty({0}, x.options()); }

}  // namespace losses
}  // namespace invfast
