// Per-row arithmetic of the consistency losses, shared by the CPU and CUDA
// kernels.
//
// Every loss compares class distributions given as logits. With a = x / T the
// scaled logits of one row, the kernels form
//
//   lp_c = a_c - max(a) - log(sum_j exp(a_j - max(a)))     (log-softmax)
//   p_c  = exp(a_c - max(a)) / sum_j exp(a_j - max(a))     (softmax)
//
// and then, per row (p from the teacher or first view, q from the student):
//
//   KL(p || q)     = sum_c p_c (lp_c - lq_c)
//   d/da_q KL      = q - p
//   d/da_p KL      = p (lp - lq - KL)
//   MSE(p, q)      = sum_c (p_c - q_c)^2
//   d/da_p MSE     = 2 p ((p - q) - sum_c p_c (p_c - q_c))
//   JS_w(p_1..p_K) = sum_k w_k KL(p_k || M),  M = sum_k w_k p_k
//   d/da_k JS_w    = w_k p_k (lp_k - log M - KL(p_k || M))
//   CE(q, y)       = log(sum_j exp(a_j)) - a_y,   d/da CE = q - onehot(y)
//
// A gradient with respect to the unscaled logits x is the one above divided
// by T. Sums over classes, the row reduction and the mask are the callers'
// business; this header holds what they all evaluate per element.
//
// The element functions are templates on the value type T. The CUDA kernels
// and scalar code use float or double; the CPU kernels use at::vec::Vectorized
// and provide their own versions of the primitives that branch or fuse
// (`nonzero_mul`, `log_mixture`, `mul_add`; see losses_cpu_kernels.h).
#pragma once

#include <cmath>
#include <limits>

#include "../common.h"

// NOTE: the CPU kernels are compiled once per instruction set, and each build
// names its own inline namespace here (losses_cpu_avx2.cpp sets avx2). Inline
// functions compiled for AVX2 then never share a symbol with the portable
// ones, so the linker cannot hand an AVX2 copy to code meant for any x86.
#ifndef INVFAST_MATH_ISA
#define INVFAST_MATH_ISA portable
#endif

namespace invfast {
namespace losses {

enum class Reduction : int { None = 0, Sum = 1, Mean = 2, BatchMean = 3 };
enum class Pair : int { KL = 0, SymmetricKL = 1, MSE = 2 };

// The most views js_consistency's kernels take; more run the reference.
constexpr int64_t kMaxViews = 16;

inline namespace INVFAST_MATH_ISA {

// NOTE: p * x with 0 * anything = 0. A class that one distribution gives no
// mass (a -inf logit, or a one-hot teacher underflowing in exp) has
// lp = -inf, and p * (lp - lq) would be 0 * -inf = NaN; the limit is 0.
template <typename T>
INVFAST_HOST_DEVICE T nonzero_mul(T p, T x) {
  return p == T(0) ? T(0) : p * x;
}

// log M_c for the mixture M = p0 + u of a JS divergence, where
// u = sum_{k>=1} w_k (p_k - p0) and lp0 = log p0.
// NOTE: when every view agrees on class c, u is exactly 0 and log M is taken
// to be lp0 itself, so that identical views give a loss and gradient of
// exactly 0; log(p0 + u) would differ from lp0 in the last bit.
template <typename T>
INVFAST_HOST_DEVICE T log_mixture(T p0, T lp0, T u) {
  return u == T(0) ? lp0 : std::log(p0 + u);
}

// log M raised to `floor` where it is below: the largest log(w_k) + lp_k over
// the views. Every term of M is non-negative, so log M is never less, but
// p0 + u can round to 0 (log M = -inf, and a loss of +inf) when the views'
// probabilities of a class differ by many orders of magnitude or a weight is
// tiny; log(w_k) + lp_k cannot. A NaN log M stays NaN.
template <typename T>
INVFAST_HOST_DEVICE T at_least(T lm, T floor) {
  return lm < floor ? floor : lm;
}

// a * b + c rounded once. NOTE: log-probabilities are formed with it, so
// that two rows with equal logits get equal log-probabilities wherever they
// are computed; left to itself the compiler may contract a * b + c into an
// FMA at one place and not at another, and identical inputs would no longer
// give a loss of exactly 0.
template <typename T>
INVFAST_HOST_DEVICE T mul_add(T a, T b, T c) {
  return std::fma(a, b, c);
}

// KL(p || q) summand of class c.
template <typename T>
INVFAST_HOST_DEVICE T kl_term(T p, T lp, T lq) {
  return nonzero_mul(p, lp - lq);
}

// p - q for p = e_p * inv_p and q = e_q * inv_q (exponentials and inverse
// sums). NOTE: written so that it is exactly 0 when the two rows agree,
// whatever FMA contraction the compiler applies; e_p * inv_p - q contracted
// to fma(e_p, inv_p, -q) would leave the rounding error of q.
template <typename T>
INVFAST_HOST_DEVICE T prob_diff(T e_p, T inv_p, T e_q, T inv_q) {
  return (e_p - e_q) * inv_p + e_q * (inv_p - inv_q);
}

// d KL(p || q) / d logits of q (the student side): q - p. The kernels pass
// prob_diff(...) to the one-argument form.
template <typename T>
INVFAST_HOST_DEVICE T kl_grad_q(T q_minus_p) {
  return q_minus_p;
}

template <typename T>
INVFAST_HOST_DEVICE T kl_grad_q(T q, T p) {
  return kl_grad_q(q - p);
}

// d KL(p || q) / d logits of p (the teacher side); kl is the row's KL(p || q).
template <typename T>
INVFAST_HOST_DEVICE T kl_grad_p(T p, T lp, T lq, T kl) {
  return nonzero_mul(p, lp - lq - kl);
}

// d [KL(p || q) + KL(q || p)] / d logits of p; kl_pq is the row's KL(p || q).
// Halving is the caller's.
template <typename T>
INVFAST_HOST_DEVICE T sym_kl_grad(T p, T p_minus_q, T lp, T lq, T kl_pq) {
  return kl_grad_p(p, lp, lq, kl_pq) + p_minus_q;
}

// (p_c - q_c)^2 and p_c (p_c - q_c), whose row sum the gradient needs.
template <typename T>
INVFAST_HOST_DEVICE T mse_term(T p_minus_q) {
  return p_minus_q * p_minus_q;
}

template <typename T>
INVFAST_HOST_DEVICE T mse_moment(T p, T p_minus_q) {
  return p * p_minus_q;
}

// d sum_c (p_c - q_c)^2 / d logits of p; moment is the row sum of mse_moment(p, p - q).
template <typename T>
INVFAST_HOST_DEVICE T mse_grad(T p, T p_minus_q, T moment) {
  return T(2) * p * (p_minus_q - moment);
}

// One class's share of the row sums of a pair loss, for probabilities pa, pb
// (diff = pa - pb) and log-probabilities la, lb: KL(p_b || p_a) in s0; for
// the symmetric KL the two directions in s0 and s1; for MSE the squared
// difference and the two moments in s0, s1, s2. T may be a vector type.
template <Pair kind, typename T>
INVFAST_HOST_DEVICE void add_pair_terms(T pa, T pb, T diff, T la, T lb, T& s0, T& s1, T& s2) {
  if (kind == Pair::KL) {
    s0 += kl_term(pb, lb, la);
  } else if (kind == Pair::SymmetricKL) {
    s0 += kl_term(pa, la, lb);
    s1 += kl_term(pb, lb, la);
  } else {
    s0 += mse_term(diff);
    s1 += mse_moment(pa, diff);
    s2 += mse_moment(pb, T(0) - diff);
  }
}

// One class's gradients with respect to the two rows' scaled logits, from the
// row sums of add_pair_terms; the rows' scales are the caller's. (For KL the
// first needs no sum: the kernels write it in the loss pass.)
template <Pair kind, typename T>
INVFAST_HOST_DEVICE void pair_grads(T pa, T pb, T diff, T la, T lb, T s0, T s1, T s2, T& ga,
                                    T& gb) {
  if (kind == Pair::KL) {
    ga = kl_grad_q(diff);
    gb = kl_grad_p(pb, lb, la, s0);
  } else if (kind == Pair::SymmetricKL) {
    ga = sym_kl_grad(pa, diff, la, lb, s0);
    gb = sym_kl_grad(pb, T(0) - diff, lb, la, s1);
  } else {
    ga = mse_grad(pa, diff, s1);
    gb = mse_grad(pb, T(0) - diff, s2);
  }
}

// Online softmax statistics of a row of raw logits x at temperature 1 / inv_t:
// the running maximum m of x and sum_j exp((x_j - m) * inv_t).
// NOTE: -inf logits add nothing; a row with no finite logit keeps
// m = -inf and sum = 0, and its log-sum-exp is -inf (its softmax is NaN,
// as in PyTorch, unless the row is masked out).
template <typename T>
struct SoftmaxStats {
  T max;
  T sum;
};

template <typename T>
INVFAST_HOST_DEVICE SoftmaxStats<T> softmax_stats_init() {
  return {-std::numeric_limits<T>::infinity(), T(0)};
}

template <typename T>
INVFAST_HOST_DEVICE void softmax_stats_add(SoftmaxStats<T>& s, T x, T inv_t) {
  if (x > s.max) {
    s.sum = s.sum * std::exp((s.max - x) * inv_t) + T(1);
    s.max = x;
  } else if (x != -std::numeric_limits<T>::infinity()) {  // a NaN propagates
    s.sum += std::exp((x - s.max) * inv_t);
  }
}

template <typename T>
INVFAST_HOST_DEVICE SoftmaxStats<T> softmax_stats_merge(SoftmaxStats<T> x, SoftmaxStats<T> y,
                                                        T inv_t) {
  const T m = x.max > y.max ? x.max : y.max;
  if (!(m > -std::numeric_limits<T>::infinity())) {
    // NOTE: neither part saw a finite logit, so each sum is 0, or NaN where
    // that part saw a NaN. Adding them keeps the NaN whichever part holds it;
    // returning one part would drop it, and on only one of two merging lanes.
    return {m, x.sum + y.sum};
  }
  return {m, x.sum * std::exp((x.max - m) * inv_t) + y.sum * std::exp((y.max - m) * inv_t)};
}

// The softmax of a row as the kernels use it: p_c = exp((x_c - max) * inv_t) * inv_sum
// and lp_c = (x_c - max) * inv_t - log_sum, where max is the largest raw logit.
template <typename T>
struct RowSoftmax {
  T max;
  T inv_t;
  T log_sum;
  T inv_sum;
};

template <typename T>
INVFAST_HOST_DEVICE RowSoftmax<T> row_softmax(T max, T sum, T inv_t) {
  return {max, inv_t, std::log(sum), T(1) / sum};
}

template <typename T, typename V>
INVFAST_HOST_DEVICE V shifted(const RowSoftmax<T>& s, V x) {
  return (x - V(s.max)) * V(s.inv_t);
}

template <typename T, typename V>
INVFAST_HOST_DEVICE V log_prob(const RowSoftmax<T>& s, V x) {
  return mul_add(x - V(s.max), V(s.inv_t), V(-s.log_sum));
}

// FixMatch: the largest probability of a row is exp(0) / sum.
template <typename T>
INVFAST_HOST_DEVICE T top_probability(T sum) {
  return T(1) / sum;
}

// Whether a row is kept; NOTE: a NaN confidence is never kept.
template <typename T>
INVFAST_HOST_DEVICE bool confident(T top_p, T threshold) {
  return top_p >= threshold;
}

}  // namespace INVFAST_MATH_ISA
}  // namespace losses
}  // namespace invfast
