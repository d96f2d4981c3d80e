// CUDA kernels of the consistency losses: one warp per row. A row is read
// once for its online softmax statistics (merged across the warp with
// shuffles), once for the loss and the gradients that need no row total, and
// once more only for those that do. Per-row losses go to a buffer that is
// summed afterwards, so nothing is added atomically and results are
// deterministic; nothing is read back to the host.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "losses.h"

namespace invfast {
namespace losses {
namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 4;
constexpr int kThreads = kWarp * kRowsPerBlock;

unsigned int blocks_for(int64_t rows) {
  return static_cast<unsigned int>(
      std::min<int64_t>((rows + kRowsPerBlock - 1) / kRowsPerBlock, 1 << 20));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// The softmax of one row, every lane of the warp holding the result.
template <typename scalar_t, typename T>
__device__ RowSoftmax<T> warp_softmax(const scalar_t* x, int64_t C, T inv_t, int lane) {
  SoftmaxStats<T> s = softmax_stats_init<T>();
  for (int64_t c = lane; c < C; c += kWarp) {
    softmax_stats_add(s, static_cast<T>(x[c]), inv_t);
  }
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const SoftmaxStats<T> other{__shfl_xor_sync(0xffffffffu, s.max, offset),
                                __shfl_xor_sync(0xffffffffu, s.sum, offset)};
    s = softmax_stats_merge(s, other, inv_t);
  }
  // NOTE: the butterfly gives every lane the same statistics only up to
  // rounding: the merge's two products may be contracted into an FMA, and the
  // two lanes of a pair then round differently. The callers branch on them
  // (FixMatch's confidence test) around full-warp shuffles, which must not
  // diverge, so every lane takes lane 0's.
  s.max = __shfl_sync(0xffffffffu, s.max, 0);
  s.sum = __shfl_sync(0xffffffffu, s.sum, 0);
  // NOTE: a row with no finite logit (all -inf) leaves sum = 0, whose softmax
  // would be exp(NaN) * inf and its top probability 1 / 0 = inf, a confident
  // row. The CPU kernels and PyTorch form exp(-inf - (-inf)) = NaN there: the
  // sum is NaN, and FixMatch never keeps such a row.
  if (!(s.max > -std::numeric_limits<T>::infinity())) {
    s.sum = std::numeric_limits<T>::quiet_NaN();
  }
  return row_softmax(s.max, s.sum, inv_t);
}

template <typename T>
__device__ __forceinline__ T prob(const RowSoftmax<T>& s, T x) {
  return std::exp(shifted(s, x)) * s.inv_sum;
}

// The row's exponential, exp((x - max) * inv_t), and its probability.
template <typename T>
struct Exp {
  T e, p;
};

template <typename T>
__device__ __forceinline__ Exp<T> exp_prob(const RowSoftmax<T>& s, T x) {
  const T e = std::exp(shifted(s, x));
  return {e, e * s.inv_sum};
}

template <typename scalar_t>
struct PairArgs {
  const scalar_t* a;
  const scalar_t* b;
  scalar_t* grad_a;  // null when not wanted
  scalar_t* grad_b;
  const acc_t<scalar_t>* mask;  // null for none
  acc_t<scalar_t>* loss;
  int64_t R, C;
  acc_t<scalar_t> inv_ta, inv_tb, scale;
};

template <Pair kind, typename scalar_t>
__global__ void pair_kernel(PairArgs<scalar_t> p) {
  using T = acc_t<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  for (int64_t r = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.x / kWarp; r < p.R;
       r += int64_t(gridDim.x) * kRowsPerBlock) {
    const scalar_t* a = p.a + r * p.C;
    const scalar_t* b = p.b + r * p.C;
    scalar_t* ga = p.grad_a != nullptr ? p.grad_a + r * p.C : nullptr;
    scalar_t* gb = p.grad_b != nullptr ? p.grad_b + r * p.C : nullptr;
    const T w = p.mask != nullptr ? p.mask[r] : T(1);
    // NOTE: a row of weight 0 is skipped, as on the CPU.
    if (w == T(0)) {
      for (int64_t c = lane; c < p.C; c += kWarp) {
        if (ga != nullptr) ga[c] = scalar_t(0);
        if (gb != nullptr) gb[c] = scalar_t(0);
      }
      if (lane == 0) p.loss[r] = T(0);
      continue;
    }
    const RowSoftmax<T> sa = warp_softmax(a, p.C, p.inv_ta, lane);
    const RowSoftmax<T> sb = warp_softmax(b, p.C, p.inv_tb, lane);
    const T half = kind == Pair::SymmetricKL ? T(0.5) : T(1);
    const T scale_a = w * p.scale * p.inv_ta * half, scale_b = w * p.scale * p.inv_tb * half;

    T acc0 = T(0), acc1 = T(0), acc2 = T(0);
    for (int64_t c = lane; c < p.C; c += kWarp) {
      const T xa = static_cast<T>(a[c]), xb = static_cast<T>(b[c]);
      const Exp<T> ea = exp_prob(sa, xa), eb = exp_prob(sb, xb);
      const T pa = ea.p, pb = eb.p, diff = prob_diff(ea.e, sa.inv_sum, eb.e, sb.inv_sum);
      const T la = log_prob(sa, xa), lb = log_prob(sb, xb);
      add_pair_terms<kind>(pa, pb, diff, la, lb, acc0, acc1, acc2);
      if (kind == Pair::KL && ga != nullptr) {
        ga[c] = static_cast<scalar_t>(kl_grad_q(diff) * scale_a);
      }
    }
    const T s0 = warp_sum(acc0), s1 = warp_sum(acc1), s2 = warp_sum(acc2);
    if ((kind != Pair::KL && ga != nullptr) || gb != nullptr) {
      for (int64_t c = lane; c < p.C; c += kWarp) {
        const T xa = static_cast<T>(a[c]), xb = static_cast<T>(b[c]);
        const Exp<T> ea = exp_prob(sa, xa), eb = exp_prob(sb, xb);
        const T pa = ea.p, pb = eb.p, diff = prob_diff(ea.e, sa.inv_sum, eb.e, sb.inv_sum);
        const T la = log_prob(sa, xa), lb = log_prob(sb, xb);
        T da, db;
        pair_grads<kind>(pa, pb, diff, la, lb, s0, s1, s2, da, db);
        if (kind != Pair::KL && ga != nullptr) ga[c] = static_cast<scalar_t>(da * scale_a);
        if (gb != nullptr) gb[c] = static_cast<scalar_t>(db * scale_b);
      }
    }
    if (lane == 0) {
      p.loss[r] = w * (kind == Pair::SymmetricKL ? half * (s0 + s1) : s0);
    }
  }
}

template <typename scalar_t>
struct JsArgs {
  const scalar_t* x[kMaxViews];
  scalar_t* grad[kMaxViews];  // all null when not wanted
  acc_t<scalar_t> w[kMaxViews];
  acc_t<scalar_t> log_w[kMaxViews];  // log(w[k])
  acc_t<scalar_t>* loss;
  int64_t R, C, K;
  acc_t<scalar_t> inv_t, scale;
};

// log M of class c, and the views' probabilities and log-probabilities.
template <typename scalar_t, typename T>
__device__ __forceinline__ T js_class(const JsArgs<scalar_t>& j, const RowSoftmax<T>* s,
                                      int64_t off, T* p, T* lp) {
  T u = T(0), e0 = T(0);
  for (int64_t k = 0; k < j.K; ++k) {
    const T x = static_cast<T>(j.x[k][off]);
    const Exp<T> e = exp_prob(s[k], x);
    p[k] = e.p;
    lp[k] = log_prob(s[k], x);
    if (k == 0) {
      e0 = e.e;
    } else {
      u += j.w[k] * prob_diff(e.e, s[k].inv_sum, e0, s[0].inv_sum);
    }
  }
  T floor = lp[0] + j.log_w[0];
  for (int64_t k = 1; k < j.K; ++k) {
    floor = at_least(floor, lp[k] + j.log_w[k]);
  }
  return at_least(log_mixture(p[0], lp[0], u), floor);
}

template <typename scalar_t>
__global__ void js_kernel(JsArgs<scalar_t> j) {
  using T = acc_t<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  for (int64_t r = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.x / kWarp; r < j.R;
       r += int64_t(gridDim.x) * kRowsPerBlock) {
    RowSoftmax<T> s[kMaxViews];
    for (int64_t k = 0; k < j.K; ++k) {
      s[k] = warp_softmax(j.x[k] + r * j.C, j.C, j.inv_t, lane);
    }
    T kl[kMaxViews], p[kMaxViews], lp[kMaxViews];
    for (int64_t k = 0; k < j.K; ++k) kl[k] = T(0);
    for (int64_t c = lane; c < j.C; c += kWarp) {
      const T lm = js_class(j, s, r * j.C + c, p, lp);
      for (int64_t k = 0; k < j.K; ++k) kl[k] += kl_term(p[k], lp[k], lm);
    }
    T js = T(0);
    for (int64_t k = 0; k < j.K; ++k) {
      kl[k] = warp_sum(kl[k]);
      js += j.w[k] * kl[k];
    }
    if (j.grad[0] != nullptr) {
      for (int64_t c = lane; c < j.C; c += kWarp) {
        const int64_t off = r * j.C + c;
        const T lm = js_class(j, s, off, p, lp);
        for (int64_t k = 0; k < j.K; ++k) {
          const T g = kl_grad_p(p[k], lp[k], lm, kl[k]) * (j.w[k] * j.scale * j.inv_t);
          j.grad[k][off] = static_cast<scalar_t>(g);
        }
      }
    }
    if (lane == 0) j.loss[r] = js;
  }
}

template <typename scalar_t>
struct FixArgs {
  const scalar_t* weak;
  const scalar_t* strong;
  scalar_t* grad;  // null when not wanted
  acc_t<scalar_t>* loss;
  acc_t<scalar_t>* kept;
  int64_t R, C;
  acc_t<scalar_t> inv_t, threshold;
};

template <typename scalar_t>
__global__ void fixmatch_kernel(FixArgs<scalar_t> f) {
  using T = acc_t<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  for (int64_t r = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.x / kWarp; r < f.R;
       r += int64_t(gridDim.x) * kRowsPerBlock) {
    const scalar_t* weak = f.weak + r * f.C;
    const scalar_t* strong = f.strong + r * f.C;
    scalar_t* grad = f.grad != nullptr ? f.grad + r * f.C : nullptr;
    const RowSoftmax<T> sw = warp_softmax(weak, f.C, f.inv_t, lane);
    if (!confident(sw.inv_sum, f.threshold)) {
      if (grad != nullptr) {
        for (int64_t c = lane; c < f.C; c += kWarp) grad[c] = scalar_t(0);
      }
      if (lane == 0) {
        f.loss[r] = T(0);
        f.kept[r] = T(0);
      }
      continue;
    }
    // The pseudo-label: the first class that attains the maximum, as argmax.
    int64_t label = f.C;
    for (int64_t c = lane; c < f.C; c += kWarp) {
      if (static_cast<T>(weak[c]) == sw.max) {
        label = c;
        break;
      }
    }
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      label = std::min(label, __shfl_xor_sync(0xffffffffu, label, offset));
    }
    label = std::min(label, f.C - 1);  // defensive: a kept row has a finite maximum
    const RowSoftmax<T> ss = warp_softmax(strong, f.C, T(1), lane);
    if (grad != nullptr) {
      for (int64_t c = lane; c < f.C; c += kWarp) {
        const T q = prob(ss, static_cast<T>(strong[c]));
        grad[c] = static_cast<scalar_t>(c == label ? q - T(1) : q);
      }
    }
    if (lane == 0) {
      f.loss[r] = -log_prob(ss, static_cast<T>(strong[label]));
      f.kept[r] = T(1);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pair_cuda(
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

  c10::cuda::CUDAGuard guard(a.device());

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
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "pair_cuda", [&] {
    using T = acc_t<scalar_t>;
    PairArgs<scalar_t> args{A.const_data_ptr<scalar_t>(),
                            B.const_data_ptr<scalar_t>(),
                            grad_a ? ga.mutable_data_ptr<scalar_t>() : nullptr,
                            grad_b ? gb.mutable_data_ptr<scalar_t>() : nullptr,
                            M.defined() ? M.const_data_ptr<T>() : nullptr,
                            row_loss.mutable_data_ptr<T>(),
                            R,
                            C,
                            static_cast<T>(1.0 / ta),
                            static_cast<T>(1.0 / tb),
                            static_cast<T>(scale)};
    switch (kind) {
      case Pair::KL:
        pair_kernel<Pair::KL><<<blocks_for(R), kThreads, 0, stream>>>(args);
        break;
      case Pair::SymmetricKL:
        pair_kernel<Pair::SymmetricKL><<<blocks_for(R), kThreads, 0, stream>>>(args);
        break;
      default:
        pair_kernel<Pair::MSE><<<blocks_for(R), kThreads, 0, stream>>>(args);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return finish();
}

std::tuple<at::Tensor, std::vector<at::Tensor>> js_consistency_cuda(
    at::TensorList logits, c10::optional<at::ArrayRef<double>> weights, double temperature,
    c10::string_view reduction, bool compute_grad) {
  const char* op = "js_consistency";
  const std::vector<double> w = check_views(op, logits, weights);
  check_temperature(op, "temperature", temperature);
  const Reduction red = parse_reduction(op, reduction);

  const at::Tensor& x0 = logits[0];
  c10::cuda::CUDAGuard guard(x0.device());

  const int64_t K = static_cast<int64_t>(logits.size());
  const int64_t C = x0.size(1), R = num_rows(x0);
  at::Tensor row_loss = at::empty({R}, x0.options().dtype(loss_dtype(x0)));
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
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "js_cuda", [&] {
    using T = acc_t<scalar_t>;
    JsArgs<scalar_t> args{};
    for (int64_t k = 0; k < K; ++k) {
      args.x[k] = rows[k].const_data_ptr<scalar_t>();
      args.grad[k] = compute_grad ? grads[k].mutable_data_ptr<scalar_t>() : nullptr;
      args.w[k] = static_cast<T>(w[k]);
      args.log_w[k] = static_cast<T>(std::log(w[k]));
    }
    args.loss = row_loss.mutable_data_ptr<T>();
    args.R = R;
    args.C = C;
    args.K = K;
    args.inv_t = static_cast<T>(1.0 / temperature);
    args.scale = static_cast<T>(scale);
    js_kernel<scalar_t><<<blocks_for(R), kThreads, 0, stream>>>(args);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return finish();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fixmatch_loss_cuda(
    const at::Tensor& weak, const at::Tensor& strong, double threshold, double temperature,
    c10::string_view normalize, bool compute_grad) {
  const char* op = "fixmatch_loss";
  check_logits(op, "weak", weak);
  check_alike(op, "weak", weak, "strong", strong);
  check_temperature(op, "temperature", temperature);
  check_threshold(op, threshold);
  const bool by_kept = parse_normalize(op, normalize);

  c10::cuda::CUDAGuard guard(weak.device());

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
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, weak.scalar_type(), "fixmatch_cuda", [&] {
        using T = acc_t<scalar_t>;
        FixArgs<scalar_t> args{W.const_data_ptr<scalar_t>(),
                               S.const_data_ptr<scalar_t>(),
                               compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr,
                               row_loss.mutable_data_ptr<T>(),
                               kept.mutable_data_ptr<T>(),
                               R,
                               C,
                               static_cast<T>(1.0 / temperature),
                               static_cast<T>(threshold)};
        fixmatch_kernel<scalar_t><<<blocks_for(R), kThreads, 0, stream>>>(args);
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return finish();
}

}  // namespace

TORCH_LIBRARY_IMPL(invfast, CUDA, m) {
  using Ops = PairOps<&pair_cuda>;
  m.impl("kl_consistency", &Ops::kl_consistency);
  m.impl("symmetric_kl", &Ops::symmetric_kl);
  m.impl("mse_consistency", &Ops::mse_consistency);
  m.impl("js_consistency", &js_consistency_cuda);
  m.impl("fixmatch_loss", &fixmatch_loss_cuda);
}

}  // namespace losses
}  // namespace invfast
