// The CPU row kernels, written once on at::vec::Vectorized and compiled once
// per instruction set. The including file defines INVFAST_MATH_ISA (the
// namespace of this build) and, for a vector build, CPU_CAPABILITY; see
// losses_cpu_generic.cpp, losses_cpu_avx2.cpp and losses_cpu_avx512.cpp.
//
// NOTE: a row makes three passes over at most 2 x C floats, which stay in
// L1/L2: the maximum, then exp() stored into scratch with its sum, then the
// loss (and the gradient when the row's total is not needed first). An
// online softmax (one pass for maximum and sum) would compute every exp()
// twice; on a CPU the exp(), not the memory, is the cost. The CUDA kernels,
// which are bound by memory, use the online form.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <limits>

#include "losses_cpu_rows.h"
#include "losses_math.h"

namespace invfast {
namespace losses {

// Vector forms of the primitives of losses_math.h that branch or fuse.
template <>
inline at::vec::Vectorized<float> mul_add(at::vec::Vectorized<float> a,
                                          at::vec::Vectorized<float> b,
                                          at::vec::Vectorized<float> c) {
  return at::vec::fmadd(a, b, c);
}

template <>
inline at::vec::Vectorized<double> mul_add(at::vec::Vectorized<double> a,
                                           at::vec::Vectorized<double> b,
                                           at::vec::Vectorized<double> c) {
  return at::vec::fmadd(a, b, c);
}

template <>
inline at::vec::Vectorized<float> nonzero_mul(at::vec::Vectorized<float> p,
                                              at::vec::Vectorized<float> x) {
  using V = at::vec::Vectorized<float>;
  return V::blendv(p * x, V(0.0f), p == V(0.0f));
}

template <>
inline at::vec::Vectorized<double> nonzero_mul(at::vec::Vectorized<double> p,
                                               at::vec::Vectorized<double> x) {
  using V = at::vec::Vectorized<double>;
  return V::blendv(p * x, V(0.0), p == V(0.0));
}

template <>
inline at::vec::Vectorized<float> at_least(at::vec::Vectorized<float> lm,
                                           at::vec::Vectorized<float> floor) {
  return at::vec::Vectorized<float>::blendv(lm, floor, lm < floor);
}

template <>
inline at::vec::Vectorized<double> at_least(at::vec::Vectorized<double> lm,
                                            at::vec::Vectorized<double> floor) {
  return at::vec::Vectorized<double>::blendv(lm, floor, lm < floor);
}

template <>
inline at::vec::Vectorized<float> log_mixture(at::vec::Vectorized<float> p0,
                                              at::vec::Vectorized<float> lp0,
                                              at::vec::Vectorized<float> u) {
  using V = at::vec::Vectorized<float>;
  return V::blendv((p0 + u).log(), lp0, u == V(0.0f));
}

template <>
inline at::vec::Vectorized<double> log_mixture(at::vec::Vectorized<double> p0,
                                               at::vec::Vectorized<double> lp0,
                                               at::vec::Vectorized<double> u) {
  using V = at::vec::Vectorized<double>;
  return V::blendv((p0 + u).log(), lp0, u == V(0.0));
}

namespace cpu {
namespace INVFAST_MATH_ISA {
namespace {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// Loads n <= size() elements; the lanes past n hold `fill`.
template <typename T>
Vec<T> load(const T* p, int64_t n, T fill = T(0)) {
  if (n == Vec<T>::size()) {
    return Vec<T>::loadu(p);
  }
  return Vec<T>::set(Vec<T>(fill), Vec<T>::loadu(p, n), n);
}

template <typename T>
void store(Vec<T> v, T* p, int64_t n) {
  if (n == Vec<T>::size()) {
    v.store(p);
  } else {
    v.store(p, static_cast<int>(n));
  }
}

#ifdef CPU_CAPABILITY_AVX2
// NOTE: the last, partial chunk of every row goes through masked loads and
// stores. at::vec's partial loadu copies the lanes through memory, which
// stalls store forwarding; with C = 100 a row has a dozen such chunks.
inline __m256i lanes_below(int64_t n, __m256i lane) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lane);
}

inline Vec<float> load(const float* p, int64_t n, float fill = 0.0f) {
  if (n == 8) {
    return Vec<float>::loadu(p);
  }
  const __m256i m = lanes_below(n, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
}

inline void store(Vec<float> v, float* p, int64_t n) {
  if (n == 8) {
    v.store(p);
  } else {
    _mm256_maskstore_ps(p, lanes_below(n, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)), v);
  }
}

// Each 64-bit lane k is masked by the pair of 32-bit lanes (2k, 2k + 1).
inline Vec<double> load(const double* p, int64_t n, double fill = 0.0) {
  if (n == 4) {
    return Vec<double>::loadu(p);
  }
  const __m256i m = lanes_below(n, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
  return _mm256_blendv_pd(_mm256_set1_pd(fill), _mm256_maskload_pd(p, m), _mm256_castsi256_pd(m));
}

inline void store(Vec<double> v, double* p, int64_t n) {
  if (n == 4) {
    v.store(p);
  } else {
    _mm256_maskstore_pd(p, lanes_below(n, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3)), v);
  }
}
#endif

#ifdef CPU_CAPABILITY_AVX512
// The last, partial chunk of a row in one masked instruction; masked-off
// lanes are not read or written.
inline Vec<float> load(const float* p, int64_t n, float fill = 0.0f) {
  if (n == 16) {
    return Vec<float>::loadu(p);
  }
  return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), static_cast<__mmask16>((1u << n) - 1), p);
}

inline void store(Vec<float> v, float* p, int64_t n) {
  if (n == 16) {
    v.store(p);
  } else {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);
  }
}

inline Vec<double> load(const double* p, int64_t n, double fill = 0.0) {
  if (n == 8) {
    return Vec<double>::loadu(p);
  }
  return _mm512_mask_loadu_pd(_mm512_set1_pd(fill), static_cast<__mmask8>((1u << n) - 1), p);
}

inline void store(Vec<double> v, double* p, int64_t n) {
  if (n == 8) {
    v.store(p);
  } else {
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << n) - 1), v);
  }
}
#endif

// Calls f(i, n) for the chunks [i, i + n) of [0, C), n = size() but for the
// last. The full chunks see n as a constant, so that their loads and stores
// need no test.
template <typename T, typename F>
void for_chunks(int64_t C, F&& f) {
  constexpr int64_t W = Vec<T>::size();
  int64_t i = 0;
  for (; i + W <= C; i += W) {
    f(i, W);
  }
  if (i < C) {
    f(i, C - i);
  }
}

template <typename T>
T reduce_sum(Vec<T> v) {
  return at::vec::vec_reduce_all<T>([](Vec<T> x, Vec<T> y) { return x + y; }, v);
}

// The maximum, NaN if any lane is NaN.
template <typename T>
T reduce_max(Vec<T> v) {
  return at::vec::vec_reduce_all<T>([](Vec<T> x, Vec<T> y) { return at::vec::maximum(x, y); }, v);
}

// exp() of the bulk of the work: a polynomial accurate to a few ulp for float.
// NOTE: exp_u20 clamps its argument first, which turns a NaN into the largest
// argument and its result into +inf; the NaN is put back, so that a NaN or
// an inf - inf in a row makes its sum, loss and gradient NaN, as in PyTorch.
// It also returns 0 below about -87, where exp would be subnormal.
inline Vec<float> fast_exp(Vec<float> v) { return Vec<float>::blendv(v.exp_u20(), v, v != v); }
inline Vec<double> fast_exp(Vec<double> v) { return v.exp(); }

// Softmax statistics of R rows, with e_c = exp((x_c - max) * inv_t) of row r
// left in e[r]. NOTE: the rows share each loop so that their exp() chains
// overlap: with C ~ 100 a row is a dozen chunks, and one row alone leaves the
// core waiting on the latency of every chunk's exp() and on the reductions.
// kLogSum = false leaves log_sum at 0, for callers that use the
// probabilities alone (MSE): it saves two scalar logs per pair of rows.
template <int R, typename T, bool kLogSum = true>
void softmax_rows(const T* const (&x)[R], int64_t C, const T (&inv_t)[R], T* const (&e)[R],
                  RowSoftmax<T> (&out)[R]) {
  using V = Vec<T>;
  const T ninf = -std::numeric_limits<T>::infinity();
  V vmax[R];
  for (int r = 0; r < R; ++r) {
    vmax[r] = V(ninf);
  }
  // NOTE: the plain maximum instruction, which may drop a NaN: a NaN in the
  // row still reaches the sum through its exp() and makes the row's loss and
  // gradient NaN, as a NaN-propagating maximum would.
  for_chunks<T>(C, [&](int64_t i, int64_t n) {
    for (int r = 0; r < R; ++r) {
      vmax[r] = at::vec::clamp_min(load(x[r] + i, n, ninf), vmax[r]);
    }
  });
  RowSoftmax<T> shift[R];
  V vsum[R];
  for (int r = 0; r < R; ++r) {
    shift[r] = RowSoftmax<T>{reduce_max(vmax[r]), inv_t[r], T(0), T(0)};
    vsum[r] = V(T(0));
  }
  for_chunks<T>(C, [&](int64_t i, int64_t n) {
    for (int r = 0; r < R; ++r) {
      V ev = fast_exp(shifted(shift[r], load(x[r] + i, n)));
      if (n < V::size()) {
        ev = V::set(V(T(0)), ev, n);
      }
      store(ev, e[r] + i, n);
      vsum[r] += ev;
    }
  });
  for (int r = 0; r < R; ++r) {
    const T sum = reduce_sum(vsum[r]);
    out[r] = kLogSum ? row_softmax(shift[r].max, sum, inv_t[r])
                     : RowSoftmax<T>{shift[r].max, inv_t[r], T(0), T(1) / sum};
  }
}

template <typename T, bool kLogSum = true>
RowSoftmax<T> softmax_row(const T* x, int64_t C, T inv_t, T* e) {
  RowSoftmax<T> out[1];
  softmax_rows<1, T, kLogSum>({x}, C, {inv_t}, {e}, out);
  return out[0];
}

template <Pair kind, typename T>
T pair_row(const PairRow<T>& r) {
  using V = Vec<T>;
  const int64_t C = r.C;
  T* ea = r.scratch;
  T* eb = r.scratch + C;
  RowSoftmax<T> s[2];
  softmax_rows<2, T, kind != Pair::MSE>({r.a, r.b}, C, {r.inv_ta, r.inv_tb}, {ea, eb}, s);
  const RowSoftmax<T>&sa = s[0], &sb = s[1];
  const V inv_sa(sa.inv_sum), inv_sb(sb.inv_sum);
  // NOTE: the symmetric KL is the mean of the two directions, as R-Drop uses it.
  const T half = kind == Pair::SymmetricKL ? T(0.5) : T(1);
  const V scale_a(r.grad_scale * r.inv_ta * half), scale_b(r.grad_scale * r.inv_tb * half);

  // The loss pass; it also writes the gradients that need no row total.
  V acc0(T(0)), acc1(T(0)), acc2(T(0));
  for_chunks<T>(C, [&](int64_t i, int64_t n) {
    const V xa = load(r.a + i, n), xb = load(r.b + i, n);
    const V e_a = load(ea + i, n), e_b = load(eb + i, n);
    const V pa = e_a * inv_sa, pb = e_b * inv_sb, diff = prob_diff(e_a, inv_sa, e_b, inv_sb);
    const V la = log_prob(sa, xa), lb = log_prob(sb, xb);
    add_pair_terms<kind>(pa, pb, diff, la, lb, acc0, acc1, acc2);
    if (kind == Pair::KL && r.grad_a != nullptr) {
      store(kl_grad_q(diff) * scale_a, r.grad_a + i, n);
    }
  });
  const T s0 = reduce_sum(acc0), s1 = reduce_sum(acc1), s2 = reduce_sum(acc2);
  const bool second_a = kind != Pair::KL && r.grad_a != nullptr;
  if (second_a || r.grad_b != nullptr) {
    for_chunks<T>(C, [&](int64_t i, int64_t n) {
      const V xa = load(r.a + i, n), xb = load(r.b + i, n);
      const V e_a = load(ea + i, n), e_b = load(eb + i, n);
      const V pa = e_a * inv_sa, pb = e_b * inv_sb, diff = prob_diff(e_a, inv_sa, e_b, inv_sb);
      const V la = log_prob(sa, xa), lb = log_prob(sb, xb);
      V ga, gb;
      pair_grads<kind>(pa, pb, diff, la, lb, V(s0), V(s1), V(s2), ga, gb);
      if (kind != Pair::KL && r.grad_a != nullptr) {
        store(ga * scale_a, r.grad_a + i, n);
      }
      if (r.grad_b != nullptr) {
        store(gb * scale_b, r.grad_b + i, n);
      }
    });
  }
  return kind == Pair::SymmetricKL ? half * (s0 + s1) : s0;
}

template <typename T>
T pair_row_any(Pair kind, const PairRow<T>& r) {
  switch (kind) {
    case Pair::KL:
      return pair_row<Pair::KL>(r);
    case Pair::SymmetricKL:
      return pair_row<Pair::SymmetricKL>(r);
    default:
      return pair_row<Pair::MSE>(r);
  }
}

// A block of rows of a pair loss, one row per lane (see PairBlock): the same
// arithmetic as pair_row, where every row total is a vector of per-row totals.
template <Pair kind, typename T>
void pair_block(const PairBlock<T>& r, T* loss) {
  using V = Vec<T>;
  constexpr int W = V::size();
  const int64_t C = r.C;
  T* const xa = r.scratch;
  T* const xb = xa + C * W;
  T* const ea = xb + C * W;
  T* const eb = ea + C * W;
  T* const ga = eb + C * W;
  T* const gb = ga + C * W;
  // Transposed copies, class-major: x[c * W + j] is class c of row j. Lanes
  // past n hold zeros; their results are dropped.
  for (int j = 0; j < W; ++j) {
    for (int64_t c = 0; c < C; ++c) {
      xa[c * W + j] = j < r.n ? r.a[j][c] : T(0);
      xb[c * W + j] = j < r.n ? r.b[j][c] : T(0);
    }
  }
  // See softmax_rows for the plain maximum.
  const T ninf = -std::numeric_limits<T>::infinity();
  V ma(ninf), mb(ninf);
  for (int64_t c = 0; c < C; ++c) {
    ma = at::vec::clamp_min(V::loadu(xa + c * W), ma);
    mb = at::vec::clamp_min(V::loadu(xb + c * W), mb);
  }
  const V ita(r.inv_ta), itb(r.inv_tb);
  V sa(T(0)), sb(T(0));
  for (int64_t c = 0; c < C; ++c) {
    const V e_a = fast_exp((V::loadu(xa + c * W) - ma) * ita);
    const V e_b = fast_exp((V::loadu(xb + c * W) - mb) * itb);
    e_a.store(ea + c * W);
    e_b.store(eb + c * W);
    sa += e_a;
    sb += e_b;
  }
  const V inv_sa = V(T(1)) / sa, inv_sb = V(T(1)) / sb;
  // MSE uses the probabilities alone.
  const V nla = kind == Pair::MSE ? V(T(0)) : V(T(0)) - sa.log();
  const V nlb = kind == Pair::MSE ? V(T(0)) : V(T(0)) - sb.log();
  const T half = kind == Pair::SymmetricKL ? T(0.5) : T(1);
  const V row_scale = V::loadu(r.grad_scale);
  const V scale_a = row_scale * V(r.inv_ta * half), scale_b = row_scale * V(r.inv_tb * half);
  const bool want_a = r.grad_a[0] != nullptr, want_b = r.grad_b[0] != nullptr;

  V acc0(T(0)), acc1(T(0)), acc2(T(0));
  for (int64_t c = 0; c < C; ++c) {
    const V e_a = V::loadu(ea + c * W), e_b = V::loadu(eb + c * W);
    const V pa = e_a * inv_sa, pb = e_b * inv_sb, diff = prob_diff(e_a, inv_sa, e_b, inv_sb);
    const V la = mul_add(V::loadu(xa + c * W) - ma, ita, nla);
    const V lb = mul_add(V::loadu(xb + c * W) - mb, itb, nlb);
    add_pair_terms<kind>(pa, pb, diff, la, lb, acc0, acc1, acc2);
    if (kind == Pair::KL && want_a) {
      (kl_grad_q(diff) * scale_a).store(ga + c * W);
    }
  }
  const bool second_a = kind != Pair::KL && want_a;
  if (second_a || want_b) {
    for (int64_t c = 0; c < C; ++c) {
      const V e_a = V::loadu(ea + c * W), e_b = V::loadu(eb + c * W);
      const V pa = e_a * inv_sa, pb = e_b * inv_sb, diff = prob_diff(e_a, inv_sa, e_b, inv_sb);
      const V la = mul_add(V::loadu(xa + c * W) - ma, ita, nla);
      const V lb = mul_add(V::loadu(xb + c * W) - mb, itb, nlb);
      V g_a, g_b;
      pair_grads<kind>(pa, pb, diff, la, lb, acc0, acc1, acc2, g_a, g_b);
      if (kind != Pair::KL && want_a) {
        (g_a * scale_a).store(ga + c * W);
      }
      if (want_b) {
        (g_b * scale_b).store(gb + c * W);
      }
    }
  }
  // The gradients back into the rows.
  for (int j = 0; j < r.n; ++j) {
    for (int64_t c = 0; c < C; ++c) {
      if (want_a) {
        r.grad_a[j][c] = ga[c * W + j];
      }
      if (want_b) {
        r.grad_b[j][c] = gb[c * W + j];
      }
    }
  }
  T s0[W], s1[W];
  acc0.store(s0);
  acc1.store(s1);
  for (int j = 0; j < r.n; ++j) {
    loss[j] = kind == Pair::SymmetricKL ? half * (s0[j] + s1[j]) : s0[j];
  }
}

template <typename T>
void pair_block_any(Pair kind, const PairBlock<T>& r, T* loss) {
  switch (kind) {
    case Pair::KL:
      return pair_block<Pair::KL>(r, loss);
    case Pair::SymmetricKL:
      return pair_block<Pair::SymmetricKL>(r, loss);
    default:
      return pair_block<Pair::MSE>(r, loss);
  }
}

template <typename T>
T js_row(const JsRow<T>& r) {
  using V = Vec<T>;
  const int64_t C = r.C, K = r.K;
  RowSoftmax<T> s[kMaxViews];
  int64_t k0 = 0;
  for (; k0 + 2 <= K; k0 += 2) {
    RowSoftmax<T> two[2];
    softmax_rows<2, T>({r.x[k0], r.x[k0 + 1]}, C, {r.inv_t, r.inv_t},
                       {r.scratch + k0 * C, r.scratch + (k0 + 1) * C}, two);
    s[k0] = two[0];
    s[k0 + 1] = two[1];
  }
  if (k0 < K) {
    s[k0] = softmax_row(r.x[k0], C, r.inv_t, r.scratch + k0 * C);
  }
  T* log_m = r.scratch + K * C;

  V kl[kMaxViews];
  for (int64_t k = 0; k < K; ++k) {
    kl[k] = V(T(0));
  }
  for_chunks<T>(C, [&](int64_t i, int64_t n) {
    const V e0 = load(r.scratch + i, n), inv0(s[0].inv_sum);
    const V p0 = e0 * inv0;
    const V lp0 = log_prob(s[0], load(r.x[0] + i, n));
    V u(T(0));
    V floor = lp0 + V(r.log_weights[0]);
    for (int64_t k = 1; k < K; ++k) {
      const V ek = load(r.scratch + k * C + i, n);
      u += V(r.weights[k]) * prob_diff(ek, V(s[k].inv_sum), e0, inv0);
      floor = at_least(floor, log_prob(s[k], load(r.x[k] + i, n)) + V(r.log_weights[k]));
    }
    const V lm = at_least(log_mixture(p0, lp0, u), floor);
    store(lm, log_m + i, n);
    kl[0] += kl_term(p0, lp0, lm);
    // NOTE: each view's exponential and log-probability are formed again
    // here; kept from the loop above in arrays of K vectors they made the
    // whole op about 18% slower (the arrays live on the stack).
    for (int64_t k = 1; k < K; ++k) {
      const V pk = load(r.scratch + k * C + i, n) * V(s[k].inv_sum);
      kl[k] += kl_term(pk, log_prob(s[k], load(r.x[k] + i, n)), lm);
    }
  });
  T js = T(0);
  T kl_k[kMaxViews];
  for (int64_t k = 0; k < K; ++k) {
    kl_k[k] = reduce_sum(kl[k]);
    js += r.weights[k] * kl_k[k];
  }

  if (r.grad != nullptr) {
    for (int64_t k = 0; k < K; ++k) {
      const T* e = r.scratch + k * C;
      const V scale(r.weights[k] * r.grad_scale * r.inv_t), inv_sum(s[k].inv_sum), kk(kl_k[k]);
      for_chunks<T>(C, [&](int64_t i, int64_t n) {
        const V pk = load(e + i, n) * inv_sum;
        const V lpk = log_prob(s[k], load(r.x[k] + i, n));
        store(kl_grad_p(pk, lpk, load(log_m + i, n), kk) * scale, r.grad[k] + i, n);
      });
    }
  }
  return js;
}

template <typename T>
FixResult<T> fix_row(const FixRow<T>& r) {
  using V = Vec<T>;
  const int64_t C = r.C;
  // The weak row's confidence and label need no log.
  const RowSoftmax<T> sw = softmax_row<T, false>(r.weak, C, r.inv_t, r.scratch);
  if (!confident(sw.inv_sum, r.threshold)) {
    if (r.grad != nullptr) {
      for_chunks<T>(C, [&](int64_t i, int64_t n) { store(V(T(0)), r.grad + i, n); });
    }
    return {T(0), false};
  }
  // The pseudo-label: the first class that attains the maximum, as argmax.
  int64_t label = 0;
  while (label < C - 1 && !(r.weak[label] == sw.max)) {
    ++label;
  }

  const RowSoftmax<T> ss = softmax_row(r.strong, C, T(1), r.scratch);
  const V lq = log_prob(ss, V(r.strong[label]));
  T lq_label[V::size()];
  lq.store(lq_label);
  if (r.grad != nullptr) {
    const V inv_sum(ss.inv_sum);
    for_chunks<T>(
        C, [&](int64_t i, int64_t n) { store(load(r.scratch + i, n) * inv_sum, r.grad + i, n); });
    r.grad[label] -= T(1);
  }
  return {-lq_label[0], true};
}

const Kernels table = {
    C10_STRINGIZE(INVFAST_MATH_ISA),
    &pair_row_any<float>,
    &pair_row_any<double>,
    static_cast<int>(Vec<float>::size()),
    static_cast<int>(Vec<double>::size()),
    &pair_block_any<float>,
    &pair_block_any<double>,
    &js_row<float>,
    &js_row<double>,
    &fix_row<float>,
    &fix_row<double>,
};

}  // namespace

const Kernels& kernels() { return table; }

}  // namespace INVFAST_MATH_ISA
}  // namespace cpu
}  // namespace losses
}  // namespace invfast
