// Host-side pieces of the consistency losses that the CPU and CUDA launchers
// share: argument checks, string options, the row layout, the reduction.
//
// Every loss works on rows: an input (N, C, d1, ...) is N * d1 * ... rows of
// C classes. A row's loss is weighted by its mask value (0 skips the row), and
// the reductions are "none" (per row, shape (N, d1, ...)), "sum",
// "batchmean" (sum / N) and "mean" (sum / number of rows); the last two agree
// for (N, C) inputs. NOTE: with no rows at all, the mean reductions give 0.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <tuple>
#include <vector>

#include "losses_math.h"

namespace invfast {
namespace losses {

Reduction parse_reduction(const char* op, c10::string_view reduction);

// Logits (N, C, ...) of a floating dtype with at least one class.
void check_logits(const char* op, const char* name, const at::Tensor& x);

// Two inputs of one shape, dtype and device.
void check_alike(const char* op, const char* name_a, const at::Tensor& a, const char* name_b,
                 const at::Tensor& b);

void check_temperature(const char* op, const char* name, double t);

// A mask of shape (N, d1, ...) on x's device, bool or floating.
void check_mask(const char* op, const at::Tensor& mask, const at::Tensor& x);

// Checks the 2 to kMaxViews views of a JS divergence (one shape, dtype and
// device) and their weights; returns the weights normalised to sum to 1.
std::vector<double> check_views(const char* op, at::TensorList views,
                                c10::optional<at::ArrayRef<double>> weights);

// FixMatch's normalize: false for "all", true for "kept".
bool parse_normalize(const char* op, c10::string_view normalize);

void check_threshold(const char* op, double threshold);

// FixMatch's (loss, kept fraction) from per-row losses and kept flags (0 or 1),
// with tensor arithmetic only: nothing is read back to the host.
std::tuple<at::Tensor, at::Tensor> fixmatch_reduce(const at::Tensor& row_loss,
                                                   const at::Tensor& kept, bool by_kept);

int64_t num_rows(const at::Tensor& x);

// x as a contiguous (rows, C) tensor; dense inputs are moved to class-last.
// Limitation: a dense (N, C, d1, ...) input is copied once to put its
// classes last; the kernels read only contiguous rows.
at::Tensor as_rows(const at::Tensor& x);

// A (rows, C) tensor seen in x's shape (a view, class-last in memory).
at::Tensor from_rows(const at::Tensor& rows, const at::Tensor& x);

// The mask as a contiguous (rows,) tensor of dtype acc, or an undefined tensor.
at::Tensor mask_rows(const c10::optional<at::Tensor>& mask, const at::Tensor& x,
                     at::ScalarType acc);

// float64 for float64 inputs, float32 otherwise.
at::ScalarType loss_dtype(const at::Tensor& x);

// What the row gradients are multiplied by: 1, 1 / N or 1 / rows.
double reduction_scale(Reduction reduction, const at::Tensor& x);

// Per-row losses (rows,) to the op's output: (N, d1, ...) or a 0-dim tensor.
at::Tensor reduce_rows(const at::Tensor& row_loss, Reduction reduction, const at::Tensor& x);

// The placeholder returned for a gradient that was not asked for.
at::Tensor no_grad(const at::Tensor& x);

// The three pair losses share one launcher per device,
// run(op, kind, a, b, temperature_a, temperature_b, mask, reduction, grad_a, grad_b).
// PairOps<run> adapts it to each op's schema, so that both devices and the
// autograd formula register the same signatures without writing them again.
using PairResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using PairLauncher = PairResult (*)(const char*, Pair, const at::Tensor&, const at::Tensor&, double,
                                    double, const c10::optional<at::Tensor>&, c10::string_view,
                                    bool, bool);

template <PairLauncher run>
struct PairOps {
  static PairResult kl_consistency(const at::Tensor& student, const at::Tensor& teacher,
                                   double temperature, double teacher_temperature,
                                   const c10::optional<at::Tensor>& mask,
                                   c10::string_view reduction, bool grad_student,
                                   bool grad_teacher) {
    return run("kl_consistency", Pair::KL, student, teacher, temperature, teacher_temperature, mask,
               reduction, grad_student, grad_teacher);
  }

  static PairResult symmetric_kl(const at::Tensor& a, const at::Tensor& b, double temperature,
                                 const c10::optional<at::Tensor>& mask, c10::string_view reduction,
                                 bool grad_a, bool grad_b) {
    return run("symmetric_kl", Pair::SymmetricKL, a, b, temperature, temperature, mask, reduction,
               grad_a, grad_b);
  }

  static PairResult mse_consistency(const at::Tensor& student, const at::Tensor& teacher,
                                    double temperature, const c10::optional<at::Tensor>& mask,
                                    c10::string_view reduction, bool grad_student,
                                    bool grad_teacher) {
    return run("mse_consistency", Pair::MSE, student, teacher, temperature, temperature, mask,
               reduction, grad_student, grad_teacher);
  }
};

}  // namespace losses
}  // namespace invfast
