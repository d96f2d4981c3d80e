// The CPU row kernels of the consistency losses, as the launchers in
// losses_cpu.cpp see them: plain functions on float or double rows with a
// contiguous class dimension, compiled once per instruction set (generic, and
// AVX2 + FMA and AVX-512 on x86) and chosen at run time.
#pragma once

#include <cstdint>

#include "losses_math.h"

namespace invfast {
namespace losses {
namespace cpu {

// One row of a two-distribution loss. `a` is the student (or first) row, `b`
// the teacher (or second) row. A gradient pointer is null when that gradient
// is not wanted; gradients are written already multiplied by grad_scale.
template <typename T>
struct PairRow {
  const T* a;
  const T* b;
  T* grad_a;
  T* grad_b;
  T* scratch;  // 2 * C elements
  int64_t C;
  T inv_ta;
  T inv_tb;
  T grad_scale;
};

// The most rows a block kernel takes: the lanes of the widest float vector.
constexpr int kMaxBlockRows = 16;

// Rows of a two-distribution loss with few classes, one row per vector lane:
// the class loop runs over transposed copies of the rows, so that no sum or
// maximum crosses lanes and a row costs about what its elements cost. n is
// at most the kernel's `block_lanes`; the fields are those of PairRow, per row.
template <typename T>
struct PairBlock {
  const T* a[kMaxBlockRows];
  const T* b[kMaxBlockRows];
  T* grad_a[kMaxBlockRows];  // null when that gradient is not wanted
  T* grad_b[kMaxBlockRows];
  T grad_scale[kMaxBlockRows];
  int n;
  int64_t C;
  T inv_ta;
  T inv_tb;
  T* scratch;  // 6 * C * kMaxBlockRows elements
};

// One row of the K-view JS divergence; weights sum to 1.
template <typename T>
struct JsRow {
  const T* const* x;     // K rows
  T* const* grad;        // K rows, or null
  const T* weights;      // K
  const T* log_weights;  // K: log(weights[k])
  T* scratch;            // (K + 1) * C elements
  int64_t C;
  int64_t K;
  T inv_t;
  T grad_scale;
};

// One row of FixMatch: the weak row picks the label, the strong row is scored.
template <typename T>
struct FixRow {
  const T* weak;
  const T* strong;
  T* grad;     // null when not wanted; written unscaled (q - onehot), or 0
  T* scratch;  // C elements
  int64_t C;
  T inv_t;
  T threshold;
};

template <typename T>
struct FixResult {
  T loss;  // the strong row's cross-entropy, 0 when not kept
  bool kept;
};

struct Kernels {
  const char* name;
  float (*pair_f)(Pair, const PairRow<float>&);
  double (*pair_d)(Pair, const PairRow<double>&);
  // Rows per PairBlock (the vector's lanes), and the block kernels, which
  // write the n rows' losses to loss[0 .. n).
  int block_lanes_f;
  int block_lanes_d;
  void (*pair_block_f)(Pair, const PairBlock<float>&, float* loss);
  void (*pair_block_d)(Pair, const PairBlock<double>&, double* loss);
  float (*js_f)(const JsRow<float>&);
  double (*js_d)(const JsRow<double>&);
  FixResult<float> (*fix_f)(const FixRow<float>&);
  FixResult<double> (*fix_d)(const FixRow<double>&);
};

namespace generic {
const Kernels& kernels();
}  // namespace generic

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define INVFAST_HAVE_AVX2_KERNELS 1
namespace avx2 {
const Kernels& kernels();
}  // namespace avx2
namespace avx512 {
const Kernels& kernels();
}  // namespace avx512
#endif

// AVX-512 (F, BW, VL, DQ), else AVX2 + FMA, when the processor has them, else
// the generic build; ATEN_CPU_CAPABILITY=avx2 stops at AVX2 and
// ATEN_CPU_CAPABILITY=default selects the generic build, as it does for ATen.
const Kernels& best_kernels();

}  // namespace cpu
}  // namespace losses
}  // namespace invfast
