// CPU launchers of the consistency losses: checks, then at::parallel_for over
// rows, each row handed to the vectorised row kernels of losses_cpu_kernels.h.
// Half and bfloat16 rows are widened to float in a per-thread scratch row,
// and their gradients narrowed back, so the row kernels see float or double.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "losses.h"
#include "losses_cpu_rows.h"

namespace invfast {
namespace losses {
namespace cpu {

const Kernels& best_kernels() {
  static const Kernels* chosen = [] {
#ifdef INVFAST_HAVE_AVX2_KERNELS
    // As ATen: ATEN_CPU_CAPABILITY=default or avx2 caps the instruction set.
    const char* forced = std::getenv("ATEN_CPU_CAPABILITY");
    const bool generic_only = forced != nullptr && std::strcmp(forced, "default") == 0;
    const bool avx2_only = forced != nullptr && std::strcmp(forced, "avx2") == 0;
    if (!generic_only && !avx2_only && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq")) {
      return &avx512::kernels();
    }
    if (!generic_only && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return &avx2::kernels();
    }
#endif
    return &generic::kernels();
  }();
  return *chosen;
}

namespace {

// Up to this many classes a pair loss runs one row per vector lane (PairBlock).
// NOTE: measured on an AVX-512 machine (fwd+bwd, 2 threads): the block form
// took a third to a half of the row form's time at C = 10 and 32 for KL and
// symmetric KL, the same for MSE at 32, and was no faster at C = 64.
constexpr int64_t kBlockMaxClasses = 32;

int block_lanes(const Kernels& k, float) { return k.block_lanes_f; }
int block_lanes(const Kernels& k, double) { return k.block_lanes_d; }
void run_block(const Kernels& k, Pair kind, const PairBlock<float>& b, float* loss) {
  k.pair_block_f(kind, b, loss);
}
void run_block(const Kernels& k, Pair kind, const PairBlock<double>& b, double* loss) {
  k.pair_block_d(kind, b, loss);
}

float run_pair(const Kernels& k, Pair kind, const PairRow<float>& r) { return k.pair_f(kind, r); }
double run_pair(const Kernels& k, Pair kind, const PairRow<double>& r) { return k.pair_d(kind, r); }
float run_js(const Kernels& k, const JsRow<float>& r) { return k.js_f(r); }
double run_js(const Kernels& k, const JsRow<double>& r) { return k.js_d(r); }
FixResult<float> run_fix(const Kernels& k, const FixRow<float>& r) { return k.fix_f(r); }
FixResult<double> run_fix(const Kernels& k, const FixRow<double>& r) { return k.fix_d(r); }

int64_t grain_for(int64_t C) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(C, 1)); }

// A row of the input as acc_t: the row itself, or its widened copy in buf.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
const acc* widen(const scalar_t* row, int64_t C, acc* buf) {
  if constexpr (std::is_same_v<scalar_t, acc>) {
    return row;
  } else {
    for (int64_t c = 0; c < C; ++c) {
      buf[c] = static_cast<acc>(row[c]);
    }
    return buf;
  }
}

// Where the row kernel writes a gradient row: the output itself, or buf.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
acc* grad_target(scalar_t* row, acc* buf) {
  if (row == nullptr) {
    return nullptr;
  }
  if constexpr (std::is_same_v<scalar_t, acc>) {
    return row;
  } else {
    return buf;
  }
}

template <typename scalar_t, typename acc = acc_t<scalar_t>>
void narrow(const acc* buf, scalar_t* row, int64_t C) {
  if constexpr (!std::is_same_v<scalar_t, acc>) {
    if (row != nullptr) {
      for (int64_t c = 0; c < C; ++c) {
        row[c] = static_cast<scalar_t>(buf[c]);
      }
    }
  }
}

template <typename scalar_t>
void zero_row(scalar_t* row, int64_t C) {
  if (row != nullptr) {
    std::fill(row, row + C, scalar_t(0));
  }
}

// The pair losses of rows with few classes, a block of rows at a time (see
// PairBlock). Returns false, doing nothing, for half and bfloat16, whose rows
// take the row form.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
bool pair_blocks(const Kernels& kernels, Pair kind, const scalar_t* pa, const scalar_t* pb,
                 scalar_t* pga, scalar_t* pgb, const acc* pm, acc* loss, int64_t R, int64_t C,
                 double ta, double tb, double scale) {
  if constexpr (!std::is_same_v<scalar_t, acc>) {
    return false;
  } else {
    const int lanes = block_lanes(kernels, acc(0));
    at::parallel_for(0, R, grain_for(C), [&](int64_t begin, int64_t end) {
      std::vector<acc> buf(6 * C * kMaxBlockRows);
      PairBlock<acc> block{};
      block.C = C;
      block.inv_ta = static_cast<acc>(1.0 / ta);
      block.inv_tb = static_cast<acc>(1.0 / tb);
      block.scratch = buf.data();
      int64_t rows[kMaxBlockRows];
      acc out[kMaxBlockRows];
      const auto flush = [&] {
        run_block(kernels, kind, block, out);
        for (int j = 0; j < block.n; ++j) {
          loss[rows[j]] = (pm != nullptr ? pm[rows[j]] : acc(1)) * out[j];
        }
        block.n = 0;
      };
      for (int64_t r = begin; r < end; ++r) {
        const acc w = pm != nullptr ? pm[r] : acc(1);
        // NOTE: a row of weight 0 is skipped, as in the row form.
        if (w == acc(0)) {
          loss[r] = acc(0);
          zero_row(pga != nullptr ? pga + r * C : nullptr, C);
          zero_row(pgb != nullptr ? pgb + r * C : nullptr, C);
          continue;
        }
        const int j = block.n++;
        rows[j] = r;
        block.a[j] = pa + r * C;
        block.b[j] = pb + r * C;
        block.grad_a[j] = pga != nullptr ? pga + r * C : nullptr;
        block.grad_b[j] = pgb != nullptr ? pgb + r * C : nullptr;
        block.grad_scale[j] = static_cast<acc>(w * scale);
        if (block.n == lanes) {
          flush();
        }
      }
      if (block.n > 0) {
        // The unused lanes scale by 0; their results are dropped.
        for (int j = block.n; j < kMaxBlockRows; ++j) {
          block.grad_scale[j] = acc(0);
        }
        flush();
      }
    });
    return true;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pair_cpu(
    const char* op, Pair kind, const at::Tensor& a, const at::Tensor& b, double ta, double tb,
    const c10::optional<at::Tensor>& mask, c10::string_view reduction, bool grad_a, bool grad_b) {
  const char* name_a = kind == Pair::SymmetricKL ? "a" : "student";
  const char* name_b = kind == Pair::SymmetricKL ? "b" : "teacher";
  check_logits(op, name_a, a);
  check_alike(op, name_a, a, name_b, b);
  check_temperature(op, "temperature", ta);
  check_temperature(op, "teacher_temperature", tb);
  if (mask.has_value() && mask->defined()) {
    check_mask(op, *mask, a);
  }
  const Reduction red = parse_reduction(op, reduction);

  const int64_t C = a.size(1), R = num_rows(a);
  const at::ScalarType acc_dtype = loss_dtype(a);
  at::Tensor row_loss = at::empty({R}, a.options().dtype(acc_dtype));
  at::Tensor ga = grad_a ? at::empty({R, C}, a.options()) : at::Tensor();
  at::Tensor gb = grad_b ? at::empty({R, C}, a.options()) : at::Tensor();
  auto finish = [&] {
    return std::make_tuple(reduce_rows(row_loss, red, a), grad_a ? from_rows(ga, a) : no_grad(a),
                           grad_b ? from_rows(gb, a) : no_grad(a));
  };
  if (R == 0) {
    return finish();
  }

  const at::Tensor A = as_rows(a), B = as_rows(b);
  const at::Tensor M = mask_rows(mask, a, acc_dtype);
  const double scale = reduction_scale(red, a);
  const Kernels& kernels = best_kernels();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "pair_cpu", [&] {
    using acc = acc_t<scalar_t>;
    constexpr bool narrow_type = !std::is_same_v<scalar_t, acc>;
    const scalar_t* pa = A.const_data_ptr<scalar_t>();
    const scalar_t* pb = B.const_data_ptr<scalar_t>();
    scalar_t* pga = grad_a ? ga.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* pgb = grad_b ? gb.mutable_data_ptr<scalar_t>() : nullptr;
    const acc* pm = M.defined() ? M.const_data_ptr<acc>() : nullptr;
    acc* loss = row_loss.mutable_data_ptr<acc>();
    if (C <= kBlockMaxClasses &&
        pair_blocks(kernels, kind, pa, pb, pga, pgb, pm, loss, R, C, ta, tb, scale)) {
      return;
    }
    at::parallel_for(0, R, grain_for(C), [&](int64_t begin, int64_t end) {
      std::vector<acc> buf((narrow_type ? 6 : 2) * C);
      acc* wide = buf.data() + 2 * C;  // a, b, grad a, grad b
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* ra = pga != nullptr ? pga + r * C : nullptr;
        scalar_t* rb = pgb != nullptr ? pgb + r * C : nullptr;
        const acc w = pm != nullptr ? pm[r] : acc(1);
        // NOTE: a row of weight 0 is skipped, so a masked-out row of NaNs or
        // -infs cannot turn the loss or the gradient into NaN.
        if (w == acc(0)) {
          loss[r] = acc(0);
          zero_row(ra, C);
          zero_row(rb, C);
          continue;
        }
        PairRow<acc> row{widen(pa + r * C, C, wide),
                         widen(pb + r * C, C, wide + C),
                         grad_target(ra, wide + 2 * C),
                         grad_target(rb, wide + 3 * C),
                         buf.data(),
                         C,
                         static_cast<acc>(1.0 / ta),
                         static_cast<acc>(1.0 / tb),
                         static_cast<acc>(w * scale)};
        loss[r] = w * run_pair(kernels, kind, row);
        narrow(wide + 2 * C, ra, C);
        narrow(wide + 3 * C, rb, C);
      }
    });
  });
  return finish();
}

std::tuple<at::Tensor, std::vector<at::Tensor>> js_consistency_cpu(
    at::TensorList logits, c10::optional<at::ArrayRef<double>> weights, double temperature,
    c10::string_view reduction, bool compute_grad) {
  const char* op = "js_consistency";
  const std::vector<double> w = check_views(op, logits, weights);
  check_temperature(op, "temperature", temperature);
  const Reduction red = parse_reduction(op, reduction);

  const at::Tensor& x0 = logits[0];
  const int64_t K = static_cast<int64_t>(logits.size());
  const int64_t C = x0.size(1), R = num_rows(x0);
  const at::ScalarType acc_dtype = loss_dtype(x0);
  at::Tensor row_loss = at::empty({R}, x0.options().dtype(acc_dtype));
  std::vector<at::Tensor> grads;
  if (compute_grad) {
    for (int64_t k = 0; k < K; ++k) {
      grads.push_back(at::empty({R, C}, x0.options()));
    }
  }
  auto finish = [&] {
    std::vector<at::Tensor> out;
    for (const at::Tensor& g : grads) {
      out.push_back(from_rows(g, x0));
    }
    return std::make_tuple(reduce_rows(row_loss, red, x0), out);
  };
  if (R == 0) {
    return finish();
  }

  std::vector<at::Tensor> rows;
  for (const at::Tensor& x : logits) {
    rows.push_back(as_rows(x));
  }
  const double scale = reduction_scale(red, x0);
  const Kernels& kernels = best_kernels();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x0.scalar_type(), "js_consistency_cpu", [&] {
        using acc = acc_t<scalar_t>;
        constexpr bool narrow_type = !std::is_same_v<scalar_t, acc>;
        std::vector<const scalar_t*> px;
        std::vector<scalar_t*> pg;
        for (int64_t k = 0; k < K; ++k) {
          px.push_back(rows[k].const_data_ptr<scalar_t>());
          pg.push_back(compute_grad ? grads[k].mutable_data_ptr<scalar_t>() : nullptr);
        }
        const std::vector<acc> wk(w.begin(), w.end());
        std::vector<acc> log_wk(K);
        for (int64_t k = 0; k < K; ++k) {
          log_wk[k] = static_cast<acc>(std::log(w[k]));
        }
        acc* loss = row_loss.mutable_data_ptr<acc>();
        at::parallel_for(0, R, grain_for(K * C), [&](int64_t begin, int64_t end) {
          std::vector<acc> buf((K + 1 + (narrow_type ? 2 * K : 0)) * C);
          acc* wide = buf.data() + (K + 1) * C;  // K inputs, then K gradients
          std::vector<const acc*> x(K);
          std::vector<acc*> g(K);
          for (int64_t r = begin; r < end; ++r) {
            for (int64_t k = 0; k < K; ++k) {
              x[k] = widen(px[k] + r * C, C, wide + k * C);
              g[k] = grad_target(compute_grad ? pg[k] + r * C : nullptr, wide + (K + k) * C);
            }
            JsRow<acc> row{x.data(),
                           compute_grad ? g.data() : nullptr,
                           wk.data(),
                           log_wk.data(),
                           buf.data(),
                           C,
                           K,
                           static_cast<acc>(1.0 / temperature),
                           static_cast<acc>(scale)};
            loss[r] = run_js(kernels, row);
            if (compute_grad) {
              for (int64_t k = 0; k < K; ++k) {
                narrow(wide + (K + k) * C, pg[k] + r * C, C);
              }
            }
          }
        });
      });
  return finish();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fixmatch_loss_cpu(
    const at::Tensor& weak, const at::Tensor& strong, double threshold, double temperature,
    c10::string_view normalize, bool compute_grad) {
  const char* op = "fixmatch_loss";
  check_logits(op, "weak", weak);
  check_alike(op, "weak", weak, "strong", strong);
  check_temperature(op, "temperature", temperature);
  check_threshold(op, threshold);
  const bool by_kept = parse_normalize(op, normalize);

  const int64_t C = weak.size(1), R = num_rows(weak);
  const at::ScalarType acc_dtype = loss_dtype(weak);
  at::Tensor row_loss = at::zeros({R}, weak.options().dtype(acc_dtype));
  at::Tensor kept = at::zeros({R}, weak.options().dtype(acc_dtype));
  at::Tensor grad = compute_grad ? at::empty({R, C}, weak.options()) : at::Tensor();
  auto finish = [&] {
    auto [loss, fraction] = fixmatch_reduce(row_loss, kept, by_kept);
    return std::make_tuple(loss, fraction, compute_grad ? from_rows(grad, weak) : no_grad(weak));
  };
  if (R == 0) {
    return finish();
  }

  const at::Tensor W = as_rows(weak), S = as_rows(strong);
  const Kernels& kernels = best_kernels();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, weak.scalar_type(), "fixmatch_loss_cpu", [&] {
        using acc = acc_t<scalar_t>;
        constexpr bool narrow_type = !std::is_same_v<scalar_t, acc>;
        const scalar_t* pw = W.const_data_ptr<scalar_t>();
        const scalar_t* ps = S.const_data_ptr<scalar_t>();
        scalar_t* pg = compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr;
        acc* loss = row_loss.mutable_data_ptr<acc>();
        acc* keep = kept.mutable_data_ptr<acc>();
        at::parallel_for(0, R, grain_for(C), [&](int64_t begin, int64_t end) {
          std::vector<acc> buf((narrow_type ? 4 : 1) * C);
          acc* wide = buf.data() + C;  // weak, strong, gradient
          for (int64_t r = begin; r < end; ++r) {
            scalar_t* rg = pg != nullptr ? pg + r * C : nullptr;
            FixRow<acc> row{widen(pw + r * C, C, wide),
                            widen(ps + r * C, C, wide + C),
                            grad_target(rg, wide + 2 * C),
                            buf.data(),
                            C,
                            static_cast<acc>(1.0 / temperature),
                            static_cast<acc>(threshold)};
            const FixResult<acc> res = run_fix(kernels, row);
            loss[r] = res.loss;
            keep[r] = res.kept ? acc(1) : acc(0);
            narrow(wide + 2 * C, rg, C);
          }
        });
      });
  return finish();
}

}  // namespace

TORCH_LIBRARY_IMPL(invfast, CPU, m) {
  using Ops = PairOps<&pair_cpu>;
  m.impl("kl_consistency", &Ops::kl_consistency);
  m.impl("symmetric_kl", &Ops::symmetric_kl);
  m.impl("mse_consistency", &Ops::mse_consistency);
  m.impl("js_consistency", &js_consistency_cpu);
  m.impl("fixmatch_loss", &fixmatch_loss_cpu);
}

}  // namespace cpu
}  // namespace losses
}  // namespace invfast
