// CPU kernels of the affine warp: forward parallel over (batch, output row),
// every view of a sample computed while its image is hot in cache; the image
// gradient parallel over (batch, channel) planes, so that no two threads add
// into the same element and the order of additions is fixed (deterministic);
// the matrix gradient as per-row sums added up in a fixed order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define INVFAST_X86_AVX2 1
#endif

#include "affine_warp.h"

namespace invfast {
namespace warp {
namespace {

template <typename coord_t>
std::vector<InverseAffine<coord_t>> inverses(const at::Tensor& matrices) {
  const at::Tensor m = matrices_as_double(matrices);
  const double* p = m.data_ptr<double>();
  const int64_t B = m.size(0), rows = m.size(1);  // B here counts K * B matrices
  std::vector<InverseAffine<coord_t>> inv(B);
  for (int64_t b = 0; b < B; ++b) {
    inv[b] = invert_affine<coord_t>(p + b * rows * 3, 3);
  }
  return inv;
}

// Output pixels are handled in chunks of a row: one pass computes where each
// pixel reads, the next applies that to every channel.
constexpr int64_t kChunk = 64;

// Where the pixels of one chunk read. A bilinear pixel whose four taps all lie
// inside the image ("interior") keeps a base offset and four weights; one
// that reads nothing at all takes the fill value; the rest go through the
// general `footprint`.
enum Kind : uint8_t { kInterior = 0, kOutside = 1, kGeneral = 2 };

template <typename coord_t>
struct Chunk {
  int64_t offset[kChunk];
  coord_t w[4][kChunk];
  uint8_t kind[kChunk];
  bool all_interior;
};

template <typename coord_t>
void locate_chunk(const InverseAffine<coord_t>& m, int64_t u0, int64_t n, int64_t v, int64_t H,
                  int64_t W, int64_t sh, int64_t sw, const Options& opt, Chunk<coord_t>& ch) {
  const coord_t vf = static_cast<coord_t>(v);
  const coord_t rx = m.b * vf + m.c, ry = m.e * vf + m.f;
  const coord_t xmax = static_cast<coord_t>(W - 1), ymax = static_cast<coord_t>(H - 1);
  const bool remaps = opt.padding == Padding::Border || opt.padding == Padding::Reflection;
  bool all = true;
  for (int64_t j = 0; j < n; ++j) {
    const coord_t uf = static_cast<coord_t>(u0 + j);
    coord_t x = m.a * uf + rx, y = m.d * uf + ry;
    // NOTE: NaN fails these tests, so a non-finite position is never interior.
    bool in = x >= coord_t(0) && x < xmax && y >= coord_t(0) && y < ymax;
    uint8_t kind = kInterior;
    if (!in) {
      if (remaps && finite(x) && finite(y)) {
        // Border and reflection bring the position inside; most land interior.
        x = pad_coordinate(x, W, opt.padding, opt.align_corners);
        y = pad_coordinate(y, H, opt.padding, opt.align_corners);
        in = x >= coord_t(0) && x < xmax && y >= coord_t(0) && y < ymax;
      }
      const bool far = !(x > coord_t(-1) && x < xmax + 1 && y > coord_t(-1) && y < ymax + 1);
      kind = in ? kInterior : (far && !remaps ? kOutside : kGeneral);
    }
    // Truncation is floor for the non-negative positions that are used.
    const int64_t x0 = in ? static_cast<int64_t>(x) : 0;
    const int64_t y0 = in ? static_cast<int64_t>(y) : 0;
    const coord_t fx = x - static_cast<coord_t>(x0), fy = y - static_cast<coord_t>(y0);
    ch.offset[j] = y0 * sh + x0 * sw;
    ch.w[0][j] = (coord_t(1) - fy) * (coord_t(1) - fx);
    ch.w[1][j] = (coord_t(1) - fy) * fx;
    ch.w[2][j] = fy * (coord_t(1) - fx);
    ch.w[3][j] = fy * fx;
    ch.kind[j] = kind;
    all = all && in;
  }
  ch.all_interior = all;
}

template <typename scalar_t, typename coord_t>
inline coord_t sample_interior(const scalar_t* p, const Chunk<coord_t>& ch, int64_t j, int64_t sh,
                               int64_t sw) {
  // Same order of operations as sample_linear, so both paths agree bitwise.
  coord_t acc = ch.w[0][j] * static_cast<coord_t>(p[0]);
  acc += ch.w[1][j] * static_cast<coord_t>(p[sw]);
  acc += ch.w[2][j] * static_cast<coord_t>(p[sh]);
  acc += ch.w[3][j] * static_cast<coord_t>(p[sh + sw]);
  return acc;
}

// Output columns [lo, hi) of a row whose positions lie at least `kMargin`
// inside [0, W-1] x [0, H-1]: there every tap of a bilinear or nearest sample
// is in the image, whatever the padding. Solved in double from the same float
// row constants the kernels use; the margin covers float rounding.
constexpr double kMargin = 1e-3;

inline void interior_columns(double a, double rx, double d, double ry, int64_t H, int64_t W,
                             int64_t Wo, int64_t& lo, int64_t& hi) {
  lo = hi = 0;
  if (!(std::isfinite(a) && std::isfinite(rx) && std::isfinite(d) && std::isfinite(ry))) {
    return;
  }
  double ulo = 0.0, uhi = static_cast<double>(Wo - 1);
  const auto narrow = [&](double slope, double start, int64_t size) {
    const double first = kMargin, last = static_cast<double>(size - 1) - kMargin;
    if (last < first) {
      uhi = -1.0;
    } else if (slope == 0.0) {
      if (start < first || start > last) {
        uhi = -1.0;
      }
    } else {
      double t0 = (first - start) / slope, t1 = (last - start) / slope;
      if (t0 > t1) {
        std::swap(t0, t1);
      }
      ulo = std::max(ulo, t0);
      uhi = std::min(uhi, t1);
    }
  };
  narrow(a, rx, W);
  narrow(d, ry, H);
  if (ulo <= uhi) {
    lo = static_cast<int64_t>(std::ceil(ulo));
    hi = static_cast<int64_t>(std::floor(uhi)) + 1;
  }
}

#ifdef INVFAST_X86_AVX2
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

// The taps of a bilinear sample, for eight pixels whose horizontal neighbours
// are adjacent (unit stride): each pair (p[o], p[o + 1]) is gathered as one
// 64-bit element. The pixels go in two gathers, (0 1 4 5) and (2 3 6 7), so
// that the pairs sit in the order `_mm256_unpacklo_ps` / `_mm256_unpackhi_ps`
// put per-pixel weights in, and one `_mm256_hadd_ps` of the weighted pairs
// returns the eight results in lane order.
struct PairWeights {
  __m128i idx_lo, idx_hi;       // offsets of pixels (0 1 4 5) and (2 3 6 7)
  __m256 top_lo, top_hi;        // weights of the upper pairs, interleaved
  __m256 bottom_lo, bottom_hi;  // and of the lower pairs
};

__attribute__((target("avx2,fma"))) inline PairWeights pair_weights(__m256i idx, __m256 fx,
                                                                    __m256 fy) {
  const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
  const __m256i ordered = _mm256_permutevar8x32_epi32(idx, order);
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 gx = _mm256_sub_ps(one, fx), gy = _mm256_sub_ps(one, fy);
  // (1 - fx, fx) per pixel, and the row weight repeated for both taps.
  const __m256 wx_lo = _mm256_unpacklo_ps(gx, fx), wx_hi = _mm256_unpackhi_ps(gx, fx);
  PairWeights w;
  w.idx_lo = _mm256_castsi256_si128(ordered);
  w.idx_hi = _mm256_extracti128_si256(ordered, 1);
  w.top_lo = _mm256_mul_ps(wx_lo, _mm256_unpacklo_ps(gy, gy));
  w.top_hi = _mm256_mul_ps(wx_hi, _mm256_unpackhi_ps(gy, gy));
  w.bottom_lo = _mm256_mul_ps(wx_lo, _mm256_unpacklo_ps(fy, fy));
  w.bottom_hi = _mm256_mul_ps(wx_hi, _mm256_unpackhi_ps(fy, fy));
  return w;
}

// Four 64-bit elements at float offsets `idx` from `base`. The masked form
// with every lane on is the same instruction; GCC's unmasked one warns about
// its own placeholder operand.
__attribute__((target("avx2,fma"))) inline __m256 gather_pairs(const double* base, __m128i idx) {
  const __m256d all = _mm256_castsi256_pd(_mm256_set1_epi64x(-1));
  return _mm256_castpd_ps(_mm256_mask_i32gather_pd(_mm256_setzero_pd(), base, idx, all, 4));
}

// One channel of eight bilinear samples from the plane `p` with row stride sh.
__attribute__((target("avx2,fma"))) inline __m256 sample_pairs(const float* p, int64_t sh,
                                                               const PairWeights& w) {
  const double* top = reinterpret_cast<const double*>(p);
  const double* bottom = reinterpret_cast<const double*>(p + sh);
  const __m256 t_lo = gather_pairs(top, w.idx_lo), t_hi = gather_pairs(top, w.idx_hi);
  const __m256 b_lo = gather_pairs(bottom, w.idx_lo), b_hi = gather_pairs(bottom, w.idx_hi);
  const __m256 lo = _mm256_fmadd_ps(b_lo, w.bottom_lo, _mm256_mul_ps(t_lo, w.top_lo));
  const __m256 hi = _mm256_fmadd_ps(b_hi, w.bottom_hi, _mm256_mul_ps(t_hi, w.top_hi));
  return _mm256_hadd_ps(lo, hi);
}

// Element offsets iy * sh + ix * sw of eight pixels.
__attribute__((target("avx2,fma"))) inline __m256i plane_offsets(__m256i ix, __m256i iy,
                                                                 __m256i vsh, __m256i vsw) {
  return _mm256_add_epi32(_mm256_mullo_epi32(iy, vsh), _mm256_mullo_epi32(ix, vsw));
}

// The four bilinear weights of eight pixels from their fractional positions:
// w[0] (x0, y0), w[1] (x0 + 1, y0), w[2] (x0, y0 + 1), w[3] (x0 + 1, y0 + 1).
struct BilinearWeights {
  __m256 w[4];
};

__attribute__((target("avx2,fma"))) inline BilinearWeights bilinear_weights(__m256 fx, __m256 fy) {
  const __m256 gx = _mm256_sub_ps(_mm256_set1_ps(1.f), fx);
  const __m256 gy = _mm256_sub_ps(_mm256_set1_ps(1.f), fy);
  return {
      {_mm256_mul_ps(gx, gy), _mm256_mul_ps(fx, gy), _mm256_mul_ps(gx, fy), _mm256_mul_ps(fx, fy)}};
}

// Where eight consecutive output pixels of a row read, for the interior
// loops: the offset of each pixel's first tap (clamped into the image, so
// that no rounding can read outside it) and, for bilinear, the fractional
// position. Built once per row run; `at` is called per eight columns
// (`position` alone by the edge loop, which does its own bounds).
template <bool kBilinear>
struct RowLanes {
  __m256 lane, va, vd, vrx, vry;
  __m256i zero, xmax, ymax, vsh, vsw;

  __attribute__((target("avx2,fma"))) RowLanes(float a, float rx, float d, float ry, int64_t H,
                                               int64_t W, int64_t sh, int64_t sw) {
    const int last = kBilinear ? 2 : 1;  // bilinear reads x0 + 1 and y0 + 1 too
    lane = _mm256_setr_ps(0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f);
    va = _mm256_set1_ps(a), vd = _mm256_set1_ps(d);
    vrx = _mm256_set1_ps(rx), vry = _mm256_set1_ps(ry);
    zero = _mm256_setzero_si256();
    xmax = _mm256_set1_epi32(static_cast<int>(std::max<int64_t>(W - last, 0)));
    ymax = _mm256_set1_epi32(static_cast<int>(std::max<int64_t>(H - last, 0)));
    vsh = _mm256_set1_epi32(static_cast<int>(sh));
    vsw = _mm256_set1_epi32(static_cast<int>(sw));
  }

  // The source positions of columns u .. u + 7.
  __attribute__((target("avx2,fma"))) void position(int64_t u, __m256& x, __m256& y) const {
    const __m256 uf = _mm256_add_ps(_mm256_set1_ps(static_cast<float>(u)), lane);
    x = _mm256_fmadd_ps(va, uf, vrx);
    y = _mm256_fmadd_ps(vd, uf, vry);
  }

  __attribute__((target("avx2,fma"))) __m256i at(int64_t u, __m256& fx, __m256& fy) const {
    __m256 x, y;
    position(u, x, y);
    const int mode = kBilinear ? _MM_FROUND_TO_NEG_INF : _MM_FROUND_TO_NEAREST_INT;
    const __m256 xf = _mm256_round_ps(x, mode | _MM_FROUND_NO_EXC);
    const __m256 yf = _mm256_round_ps(y, mode | _MM_FROUND_NO_EXC);
    const __m256i ix = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvttps_epi32(xf), zero), xmax);
    const __m256i iy = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvttps_epi32(yf), zero), ymax);
    fx = _mm256_sub_ps(x, xf);
    fy = _mm256_sub_ps(y, yf);
    return plane_offsets(ix, iy, vsh, vsw);
  }
};

// Samples output columns [lo, hi) of one row, eight at a time, for float
// images whose plane offsets fit in int32, into a row with unit stride. The
// columns must come from `interior_columns`; indices are clamped all the same,
// so that no rounding can ever read outside the plane. Returns the first
// column left for the scalar code.
template <bool kBilinear>
__attribute__((target("avx2,fma"))) int64_t interior_run_avx2(
    const float* src, int64_t C, int64_t in_sc, int64_t sh, int64_t sw, int64_t H, int64_t W,
    float a, float rx, float d, float ry, int64_t lo, int64_t hi, float* out, int64_t out_sc) {
  const RowLanes<kBilinear> row(a, rx, d, ry, H, W, sh, sw);
  const int64_t sd = sh + sw;
  int64_t u = lo;
  for (; u + 8 <= hi; u += 8) {
    __m256 fx, fy;
    const __m256i idx = row.at(u, fx, fy);
    if (kBilinear && sw == 1) {
      // Horizontal neighbours are adjacent: half the gathered elements.
      const PairWeights w = pair_weights(idx, fx, fy);
      for (int64_t c = 0; c < C; ++c) {
        _mm256_storeu_ps(out + c * out_sc + u, sample_pairs(src + c * in_sc, sh, w));
      }
      continue;
    }
    const BilinearWeights w = bilinear_weights(fx, fy);
    for (int64_t c = 0; c < C; ++c) {
      const float* p = src + c * in_sc;
      __m256 r;
      if (kBilinear) {
        const __m256 v00 = _mm256_i32gather_ps(p, idx, 4);
        const __m256 v01 = _mm256_i32gather_ps(p + sw, idx, 4);
        const __m256 v10 = _mm256_i32gather_ps(p + sh, idx, 4);
        const __m256 v11 = _mm256_i32gather_ps(p + sd, idx, 4);
        // The operations of `sample_pairs`, so that both paths agree bitwise.
        const __m256 left = _mm256_fmadd_ps(v10, w.w[2], _mm256_mul_ps(v00, w.w[0]));
        const __m256 right = _mm256_fmadd_ps(v11, w.w[3], _mm256_mul_ps(v01, w.w[1]));
        r = _mm256_add_ps(left, right);
      } else {
        r = _mm256_i32gather_ps(p, idx, 4);
      }
      _mm256_storeu_ps(out + c * out_sc + u, r);
    }
  }
  return u;
}

// The low byte of each 32-bit lane, as a float.
__attribute__((target("avx2,fma"))) inline __m256 low_byte(__m256i taps, __m256i byte) {
  return _mm256_cvtepi32_ps(_mm256_and_si256(taps, byte));
}

// Stores the first n (1 to 8) lanes of v at p. A partial vector goes through
// a copy rather than a masked store: masked-off lanes that fall on a page not
// yet mapped (a fresh output) cost a microcode assist per store, which made
// a fresh output several times dearer to fault in than a plain write does.
__attribute__((target("avx2,fma"))) inline void store_lanes(float* p, int n, __m256 v) {
  if (n == 8) {
    _mm256_storeu_ps(p, v);
    return;
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, v);
  std::copy(lanes, lanes + n, p);
}

// value * scale[c] + shift[c], the normalising warp's last step.
__attribute__((target("avx2,fma"))) inline __m256 epilogue(__m256 value, const float* scale,
                                                           const float* shift, int64_t c) {
  return _mm256_fmadd_ps(value, _mm256_set1_ps(scale[c]), _mm256_set1_ps(shift[c]));
}

// Samples output columns [lo, hi) of one row of a channels-last uint8 image
// with C <= 4 into float planes of unit stride, eight pixels at a time: one
// 32-bit gather per tap fetches every channel of the pixel, which the lanes
// then take apart byte by byte. Each result is `value * scale[c] + shift[c]`.
// The gathers read up to 4 - C bytes past a tap's last channel, so the
// caller keeps the columns away from the last pixel of the tensor. Returns
// the first column left for the scalar code.
template <bool kBilinear>
__attribute__((target("avx2,fma"))) int64_t
interior_run_u8_avx2(const uint8_t* src, int64_t C, int64_t sh, int64_t sw, int64_t H, int64_t W,
                     float a, float rx, float d, float ry, int64_t lo, int64_t hi,
                     const float* scale, const float* shift, float* out, int64_t out_sc) {
  const __m256i zero = _mm256_setzero_si256(), byte = _mm256_set1_epi32(0xff);
  const RowLanes<kBilinear> row(a, rx, d, ry, H, W, sh, sw);
  const int* base = reinterpret_cast<const int*>(src);
  const auto* bytes = reinterpret_cast<const char*>(src);
  int64_t u = lo;
  for (; u + 8 <= hi; u += 8) {
    __m256 fx, fy;
    const __m256i idx = row.at(u, fx, fy);
    __m256i t00 = _mm256_i32gather_epi32(base, idx, 1), t01 = zero, t10 = zero, t11 = zero;
    BilinearWeights w{};
    if (kBilinear) {
      t01 = _mm256_i32gather_epi32(reinterpret_cast<const int*>(bytes + sw), idx, 1);
      t10 = _mm256_i32gather_epi32(reinterpret_cast<const int*>(bytes + sh), idx, 1);
      t11 = _mm256_i32gather_epi32(reinterpret_cast<const int*>(bytes + sh + sw), idx, 1);
      w = bilinear_weights(fx, fy);
    }
    for (int64_t c = 0; c < C; ++c) {
      __m256 r = low_byte(t00, byte);
      if (kBilinear) {
        const __m256 left = _mm256_fmadd_ps(low_byte(t10, byte), w.w[2], _mm256_mul_ps(r, w.w[0]));
        const __m256 right = _mm256_fmadd_ps(low_byte(t11, byte), w.w[3],
                                             _mm256_mul_ps(low_byte(t01, byte), w.w[1]));
        r = _mm256_add_ps(left, right);
      }
      _mm256_storeu_ps(out + c * out_sc + u, epilogue(r, scale, shift, c));
      // The next channel is the next byte of each tap.
      t00 = _mm256_srli_epi32(t00, 8);
      t01 = _mm256_srli_epi32(t01, 8);
      t10 = _mm256_srli_epi32(t10, 8);
      t11 = _mm256_srli_epi32(t11, 8);
    }
  }
  return u;
}

// Samples output columns [lo, hi) of one row, eight at a time, wherever they
// read: the vector counterpart of `footprint` + `sample_linear` for zeros,
// fill and border padding. Taps outside the image are never loaded (masked
// gathers of clamped offsets) and read the channel's fill value; positions
// that are non-finite or touch no pixel take the fill value. A last, partial
// group of columns is computed whole and stored in part. Float images as for `interior_run_avx2`;
// channels-last uint8 images as for `interior_run_u8_avx2` (one 32-bit
// gather per tap for all channels, results `value * scale[c] + shift[c]`).
template <bool kBilinear, typename in_t>
__attribute__((target("avx2,fma"))) void edge_run_avx2(
    const in_t* src, int64_t C, int64_t in_sc, int64_t sh, int64_t sw, int64_t H, int64_t W,
    bool border, float a, float rx, float d, float ry, int64_t lo, int64_t hi, const float* fill,
    const float* scale, const float* shift, float* out, int64_t out_sc) {
  constexpr bool kBytes = std::is_same_v<in_t, uint8_t>;
  static_assert(kBytes || std::is_same_v<in_t, float>, "float or uint8 images");
  const RowLanes<kBilinear> row(a, rx, d, ry, H, W, sh, sw);
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.f);
  const __m256 huge = _mm256_set1_ps(std::numeric_limits<float>::max());
  const __m256 xlast = _mm256_set1_ps(static_cast<float>(W - 1));
  const __m256 ylast = _mm256_set1_ps(static_cast<float>(H - 1));
  const __m256i izero = _mm256_setzero_si256(), ione = _mm256_set1_epi32(1);
  const __m256i byte = _mm256_set1_epi32(0xff);
  const __m256i ixlast = _mm256_set1_epi32(static_cast<int>(W - 1));
  const __m256i iylast = _mm256_set1_epi32(static_cast<int>(H - 1));
  const __m256i vsh = row.vsh, vsw = row.vsw;
  const int* words = reinterpret_cast<const int*>(src);
  for (int64_t u = lo; u < hi; u += 8) {
    // Lanes past `hi` are computed (from in-image offsets) but not stored.
    const int n = static_cast<int>(std::min<int64_t>(hi - u, 8));
    __m256 x, y;
    row.position(u, x, y);
    // |x| <= FLT_MAX fails for NaN and both infinities.
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 finite =
        _mm256_and_ps(_mm256_cmp_ps(_mm256_and_ps(x, abs_mask), huge, _CMP_LE_OQ),
                      _mm256_cmp_ps(_mm256_and_ps(y, abs_mask), huge, _CMP_LE_OQ));
    if (border) {
      x = _mm256_min_ps(_mm256_max_ps(x, zero), xlast);
      y = _mm256_min_ps(_mm256_max_ps(y, zero), ylast);
    }
    __m256 ok;
    if (kBilinear) {
      const __m256 minus_one = _mm256_set1_ps(-1.f);
      ok = _mm256_and_ps(finite, _mm256_and_ps(_mm256_cmp_ps(x, minus_one, _CMP_GT_OQ),
                                               _mm256_cmp_ps(y, minus_one, _CMP_GT_OQ)));
      ok =
          _mm256_and_ps(ok, _mm256_and_ps(_mm256_cmp_ps(x, _mm256_add_ps(xlast, one), _CMP_LT_OQ),
                                          _mm256_cmp_ps(y, _mm256_add_ps(ylast, one), _CMP_LT_OQ)));
    } else {
      x = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      y = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      ok = _mm256_and_ps(finite, _mm256_and_ps(_mm256_cmp_ps(x, zero, _CMP_GE_OQ),
                                               _mm256_cmp_ps(y, zero, _CMP_GE_OQ)));
      ok = _mm256_and_ps(ok, _mm256_and_ps(_mm256_cmp_ps(x, xlast, _CMP_LE_OQ),
                                           _mm256_cmp_ps(y, ylast, _CMP_LE_OQ)));
    }
    const __m256i iok = _mm256_castps_si256(ok);
    if (_mm256_testz_si256(iok, iok)) {
      // Nothing in these eight columns reads the image.
      for (int64_t c = 0; c < C; ++c) {
        const __m256 f = _mm256_set1_ps(fill[c]);
        store_lanes(out + c * out_sc + u, n, kBytes ? epilogue(f, scale, shift, c) : f);
      }
      continue;
    }
    // Positions that read nothing move to (0, 0), so every conversion below
    // is of a small number; their taps are masked off all the same.
    x = _mm256_and_ps(x, ok);
    y = _mm256_and_ps(y, ok);
    if (!kBilinear) {
      const __m256i off = plane_offsets(_mm256_cvttps_epi32(x), _mm256_cvttps_epi32(y), vsh, vsw);
      __m256i taps = izero;
      if constexpr (kBytes) {
        taps = _mm256_mask_i32gather_epi32(izero, words, off, iok, 1);
      }
      for (int64_t c = 0; c < C; ++c) {
        const __m256 f = _mm256_set1_ps(fill[c]);
        if constexpr (kBytes) {
          const __m256 r = _mm256_blendv_ps(f, low_byte(taps, byte), ok);
          store_lanes(out + c * out_sc + u, n, epilogue(r, scale, shift, c));
          taps = _mm256_srli_epi32(taps, 8);
        } else {
          const __m256 r = _mm256_mask_i32gather_ps(f, src + c * in_sc, off, ok, 4);
          store_lanes(out + c * out_sc + u, n, r);
        }
      }
      continue;
    }
    const __m256 x0f = _mm256_floor_ps(x), y0f = _mm256_floor_ps(y);
    const __m256 fx = _mm256_sub_ps(x, x0f), fy = _mm256_sub_ps(y, y0f);
    const __m256i ix0 = _mm256_cvttps_epi32(x0f), iy0 = _mm256_cvttps_epi32(y0f);
    // Which of the taps x0, x0 + 1, y0, y0 + 1 lie in the image.
    const __m256i in_x0 = _mm256_cmpgt_epi32(ix0, _mm256_set1_epi32(-1));
    const __m256i in_x1 = _mm256_cmpgt_epi32(ixlast, ix0);
    const __m256i in_y0 = _mm256_cmpgt_epi32(iy0, _mm256_set1_epi32(-1));
    const __m256i in_y1 = _mm256_cmpgt_epi32(iylast, iy0);
    const __m256i k00 = _mm256_and_si256(iok, _mm256_and_si256(in_y0, in_x0));
    const __m256i k01 = _mm256_and_si256(iok, _mm256_and_si256(in_y0, in_x1));
    const __m256i k10 = _mm256_and_si256(iok, _mm256_and_si256(in_y1, in_x0));
    const __m256i k11 = _mm256_and_si256(iok, _mm256_and_si256(in_y1, in_x1));
    const __m256 m00 = _mm256_castsi256_ps(k00), m01 = _mm256_castsi256_ps(k01);
    const __m256 m10 = _mm256_castsi256_ps(k10), m11 = _mm256_castsi256_ps(k11);
    const BilinearWeights bw = bilinear_weights(fx, fy);
    const __m256 w00 = bw.w[0], w01 = bw.w[1], w10 = bw.w[2], w11 = bw.w[3];
    // The weight of the taps outside, which read the fill value; all of it
    // for positions that read nothing.
    __m256 outside = _mm256_add_ps(_mm256_andnot_ps(m00, w00), _mm256_andnot_ps(m01, w01));
    outside = _mm256_add_ps(outside, _mm256_andnot_ps(m10, w10));
    outside = _mm256_add_ps(outside, _mm256_andnot_ps(m11, w11));
    outside = _mm256_blendv_ps(one, outside, ok);
    const __m256i cx0 = _mm256_max_epi32(ix0, izero);
    const __m256i cx1 = _mm256_min_epi32(_mm256_add_epi32(ix0, ione), ixlast);
    const __m256i cy0 = _mm256_max_epi32(iy0, izero);
    const __m256i cy1 = _mm256_min_epi32(_mm256_add_epi32(iy0, ione), iylast);
    const __m256i o00 = plane_offsets(cx0, cy0, vsh, vsw), o01 = plane_offsets(cx1, cy0, vsh, vsw);
    const __m256i o10 = plane_offsets(cx0, cy1, vsh, vsw), o11 = plane_offsets(cx1, cy1, vsh, vsw);
    __m256i t00 = izero, t01 = izero, t10 = izero, t11 = izero;
    if constexpr (kBytes) {
      t00 = _mm256_mask_i32gather_epi32(izero, words, o00, k00, 1);
      t01 = _mm256_mask_i32gather_epi32(izero, words, o01, k01, 1);
      t10 = _mm256_mask_i32gather_epi32(izero, words, o10, k10, 1);
      t11 = _mm256_mask_i32gather_epi32(izero, words, o11, k11, 1);
    }
    for (int64_t c = 0; c < C; ++c) {
      __m256 acc = _mm256_mul_ps(outside, _mm256_set1_ps(fill[c]));
      if constexpr (kBytes) {
        acc = _mm256_fmadd_ps(w00, low_byte(t00, byte), acc);
        acc = _mm256_fmadd_ps(w01, low_byte(t01, byte), acc);
        acc = _mm256_fmadd_ps(w10, low_byte(t10, byte), acc);
        acc = _mm256_fmadd_ps(w11, low_byte(t11, byte), acc);
        acc = epilogue(acc, scale, shift, c);
        t00 = _mm256_srli_epi32(t00, 8);
        t01 = _mm256_srli_epi32(t01, 8);
        t10 = _mm256_srli_epi32(t10, 8);
        t11 = _mm256_srli_epi32(t11, 8);
      } else {
        const float* p = src + c * in_sc;
        acc = _mm256_fmadd_ps(w00, _mm256_mask_i32gather_ps(zero, p, o00, m00, 4), acc);
        acc = _mm256_fmadd_ps(w01, _mm256_mask_i32gather_ps(zero, p, o01, m01, 4), acc);
        acc = _mm256_fmadd_ps(w10, _mm256_mask_i32gather_ps(zero, p, o10, m10, 4), acc);
        acc = _mm256_fmadd_ps(w11, _mm256_mask_i32gather_ps(zero, p, o11, m11, 4), acc);
      }
      store_lanes(out + c * out_sc + u, n, acc);
    }
  }
}
#endif

// Strides and sizes of one call; outputs and output gradients are seen as
// (K, B, C, H', W') with out_sk = 0 when there is one view.
struct Plan {
  int64_t K, B, C, H, W, Ho, Wo;
  int64_t in_sb, in_sc, sh, sw;
  int64_t out_sk, out_sb, out_sc, out_sh, out_sw;
  Options opt;
};

Plan make_plan(const at::Tensor& images, const at::Tensor& out5, const Options& opt) {
  return {out5.size(0),
          images.size(0),
          images.size(1),
          images.size(2),
          images.size(3),
          out5.size(3),
          out5.size(4),
          images.stride(0),
          images.stride(1),
          images.stride(2),
          images.stride(3),
          out5.stride(0),
          out5.stride(1),
          out5.stride(2),
          out5.stride(3),
          out5.stride(4),
          opt};
}

// A 4-d output or gradient seen as one view of 5 dimensions.
at::Tensor as_views(const at::Tensor& t) { return t.dim() == 4 ? t.unsqueeze(0) : t; }

// Per-channel values applied to every result: the fill value, and for the
// normalising warp a scale and shift (result = value * scale + shift).
template <typename coord_t>
struct Epilogue {
  std::vector<coord_t> fill, scale, shift;
  bool affine = false;
};

template <typename out_t, typename coord_t>
inline out_t finish(coord_t acc, int64_t c, const Epilogue<coord_t>& ep) {
  if (ep.affine) {
    acc = acc * ep.scale[c] + ep.shift[c];
  }
  return store_as<out_t>(acc);
}

template <typename coord_t>
inline bool is_identity(const InverseAffine<coord_t>& m) {
  return m.a == 1 && m.b == 0 && m.c == 0 && m.d == 0 && m.e == 1 && m.f == 0;
}

// Elements from a sample's first to its last, or 0 for strides that are not
// all non-negative (then nothing is prefetched).
int64_t sample_extent(const Plan& p) {
  if (p.C == 0 || p.H == 0 || p.W == 0 || p.in_sc < 0 || p.sh < 0 || p.sw < 0) {
    return 0;
  }
  return (p.C - 1) * p.in_sc + (p.H - 1) * p.sh + (p.W - 1) * p.sw + 1;
}

// Asks for the `part`-th of `parts` equal shares of a sample's bytes. A
// rotated or sheared row reads its image along a slant that the hardware
// prefetchers do not follow, so every first touch of a line would wait on
// memory; fetching the next sample share by share while this one is warped
// makes those first touches hits.
inline void prefetch_share(const void* sample, int64_t bytes, int64_t part, int64_t parts) {
#if defined(__GNUC__)
  const char* base = static_cast<const char*>(sample);
  constexpr int64_t kLine = 64;
  for (int64_t i = bytes * part / parts; i < bytes * (part + 1) / parts; i += kLine) {
    __builtin_prefetch(base + i, 0, 2);
  }
#else
  (void)sample, (void)bytes, (void)part, (void)parts;
#endif
}

template <typename in_t, typename out_t>
void forward_kernel(const at::Tensor& images, const at::Tensor& matrices, const Plan& p,
                    const Epilogue<acc_t<in_t>>& ep, out_t* dst) {
  using coord_t = acc_t<in_t>;
  const auto inv = inverses<coord_t>(matrices);
  const in_t* in = images.const_data_ptr<in_t>();
  const Options opt = p.opt;
  const int64_t C = p.C, H = p.H, W = p.W, Ho = p.Ho, Wo = p.Wo;
  const int64_t sh = p.sh, sw = p.sw, in_sc = p.in_sc;
  const int64_t out_sc = p.out_sc, out_sw = p.out_sw;
  const bool bilinear = opt.mode == Interp::Bilinear;
  // channels_last input: all channels of a tap are adjacent, so each pixel
  // is finished across its channels before the next one.
  const bool pixel_major = in_sc == 1 && C > 1;
  const coord_t* fill = ep.fill.data();
#ifdef INVFAST_X86_AVX2
  // The vector path: float rows of unit stride, plane offsets within int32.
  constexpr bool kFloats = std::is_same_v<in_t, float> && std::is_same_v<out_t, float>;
  const bool vector_rows = kFloats && !ep.affine && cpu_has_avx2() && out_sw == 1 && H > 0 &&
                           W > 0 && sh >= 0 && sw >= 0 && in_sc >= 0 &&
                           (H - 1) * sh + (W - 1) * sw < std::numeric_limits<int32_t>::max();
  // uint8 channels-last pixels to float planes: every channel of a tap in one
  // 32-bit gather, which may read up to 3 bytes past the tap's channels.
  constexpr bool kBytesToFloat = std::is_same_v<in_t, uint8_t> && std::is_same_v<out_t, float>;
  const bool vector_bytes = kBytesToFloat && cpu_has_avx2() && out_sw == 1 && in_sc == 1 &&
                            C >= 1 && C <= 4 && sw >= C && sh >= 0 && p.in_sb >= 0 && H > 0 &&
                            W > 0 &&
                            (H - 1) * sh + (W - 1) * sw + 4 < std::numeric_limits<int32_t>::max();
  // Bytes from the first element of the images to the end of the last one.
  const int64_t images_end =
      (p.B - 1) * p.in_sb + (C - 1) * in_sc + (H - 1) * sh + (W - 1) * sw + 1;
  // The rows of sample b that the byte gathers may use: all of them, or all
  // but the last where a 4-byte read at the last pixel would pass the end of
  // the images; 0 when neither is safe.
  const auto byte_rows = [&](int64_t b) -> int64_t {
    for (int64_t rows = H; rows >= std::max<int64_t>(H - 1, 1); --rows) {
      if (b * p.in_sb + (rows - 1) * sh + (W - 1) * sw + 4 <= images_end) {
        return rows;
      }
    }
    return 0;
  };
  std::vector<float> byte_scale(C, 1.f), byte_shift(C, 0.f);
  if (ep.affine) {
    byte_scale.assign(ep.scale.begin(), ep.scale.end());
    byte_shift.assign(ep.shift.begin(), ep.shift.end());
  }
#endif

  const int64_t sample_bytes = sample_extent(p) * static_cast<int64_t>(sizeof(in_t));

  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, Wo * C * p.K));
  at::parallel_for(0, p.B * Ho, grain, [&](int64_t begin, int64_t end) {
    Chunk<coord_t> ch;
    Footprint<coord_t> fps[kChunk];
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / Ho, v = row % Ho;
      const in_t* src = in + b * p.in_sb;
      if (b + 1 < p.B) {
        prefetch_share(in + (b + 1) * p.in_sb, sample_bytes, v, Ho);
      }
      // Every view of this row while the sample's image is in cache.
      for (int64_t k = 0; k < p.K; ++k) {
        const auto& m = inv[k * p.B + b];
        out_t* o = dst + k * p.out_sk + b * p.out_sb + v * p.out_sh;
        const auto put = [&](int64_t u, int64_t c, coord_t acc) {
          o[c * out_sc + u * out_sw] = finish<out_t>(acc, c, ep);
        };

        // Columns [u_begin, u_end) in chunks, for every dtype, layout and mode.
        const auto span = [&](int64_t u_begin, int64_t u_end) {
          if (opt.mode == Interp::Bicubic) {
            for (int64_t u = u_begin; u < u_end; ++u) {
              coord_t x, y;
              source_position(m, u, v, x, y);
              const auto fp = cubic_footprint(x, y, H, W, sh, sw, opt.padding, opt.align_corners);
              for (int64_t c = 0; c < C; ++c) {
                put(u, c, sample_cubic(src + c * in_sc, fp, fill[c]));
              }
            }
            return;
          }
          for (int64_t u0 = u_begin; u0 < u_end; u0 += kChunk) {
            const int64_t n = std::min(kChunk, u_end - u0);
            if (bilinear) {
              locate_chunk(m, u0, n, v, H, W, sh, sw, opt, ch);
            } else {
              ch.all_interior = false;
              std::fill(ch.kind, ch.kind + n, kGeneral);
            }
            if (!ch.all_interior) {
              for (int64_t j = 0; j < n; ++j) {
                if (ch.kind[j] == kGeneral) {
                  coord_t x, y;
                  source_position(m, u0 + j, v, x, y);
                  fps[j] = footprint(x, y, H, W, sh, sw, opt.mode, opt.padding, opt.align_corners);
                }
              }
            }
            const auto value = [&](int64_t j, int64_t c) -> coord_t {
              const in_t* plane = src + c * in_sc;
              const uint8_t kind = ch.kind[j];
              if (kind == kInterior) {
                return sample_interior(plane + ch.offset[j], ch, j, sh, sw);
              }
              return kind == kOutside ? fill[c] : sample_linear(plane, fps[j], fill[c]);
            };
            if (pixel_major) {
              for (int64_t j = 0; j < n; ++j) {
                for (int64_t c = 0; c < C; ++c) {
                  put(u0 + j, c, value(j, c));
                }
              }
              continue;
            }
            for (int64_t c = 0; c < C; ++c) {
              if (ch.all_interior) {
                const in_t* plane = src + c * in_sc;
                for (int64_t j = 0; j < n; ++j) {
                  put(u0 + j, c, sample_interior(plane + ch.offset[j], ch, j, sh, sw));
                }
                continue;
              }
              for (int64_t j = 0; j < n; ++j) {
                put(u0 + j, c, value(j, c));
              }
            }
          }
        };

        // NOTE: an identity matrix (a sample that was not transformed) copies
        // the pixels it covers; every mode would read exactly them anyway.
        if (is_identity(m)) {
          const int64_t n = v < H ? std::min(W, Wo) : 0;
          const in_t* line = src + v * sh;
          if (pixel_major) {
            for (int64_t u = 0; u < n; ++u) {
              for (int64_t c = 0; c < C; ++c) {
                put(u, c, static_cast<coord_t>(line[u * sw + c * in_sc]));
              }
            }
          } else {
            for (int64_t c = 0; c < C; ++c) {
              for (int64_t u = 0; u < n; ++u) {
                put(u, c, static_cast<coord_t>(line[u * sw + c * in_sc]));
              }
            }
          }
          span(n, Wo);
          continue;
        }

#ifdef INVFAST_X86_AVX2
        if constexpr (kBytesToFloat) {
          const int64_t rows = vector_bytes && opt.mode != Interp::Bicubic ? byte_rows(b) : 0;
          if (rows > 0) {
            const float vf = static_cast<float>(v);
            const float rx = m.b * vf + m.c, ry = m.e * vf + m.f;
            int64_t lo, hi;
            interior_columns(m.a, rx, m.d, ry, rows, W, Wo, lo, hi);
            // The edges in vectors too, where every row of the image is safe
            // to gather from and the padding is not reflection.
            const bool vector_edges = rows == H && opt.padding != Padding::Reflection;
            const bool border = opt.padding == Padding::Border;
            const auto edges = [&](int64_t u_begin, int64_t u_end) {
              if (!vector_edges) {
                span(u_begin, u_end);
              } else if (bilinear) {
                edge_run_avx2<true>(src, C, in_sc, sh, sw, H, W, border, m.a, rx, m.d, ry, u_begin,
                                    u_end, fill, byte_scale.data(), byte_shift.data(), o, out_sc);
              } else {
                edge_run_avx2<false>(src, C, in_sc, sh, sw, H, W, border, m.a, rx, m.d, ry, u_begin,
                                     u_end, fill, byte_scale.data(), byte_shift.data(), o, out_sc);
              }
            };
            edges(0, lo);
            const auto run = bilinear ? interior_run_u8_avx2<true> : interior_run_u8_avx2<false>;
            const int64_t done = run(src, C, sh, sw, rows, W, m.a, rx, m.d, ry, lo, hi,
                                     byte_scale.data(), byte_shift.data(), o, out_sc);
            edges(done, Wo);
            continue;
          }
        }
        if constexpr (kFloats) {
          if (vector_rows && opt.mode != Interp::Bicubic) {
            const float vf = static_cast<float>(v);
            const float rx = m.b * vf + m.c, ry = m.e * vf + m.f;
            int64_t lo, hi;
            interior_columns(m.a, rx, m.d, ry, H, W, Wo, lo, hi);
            // Reflection keeps the scalar code for the columns near the edges.
            const auto edges = [&](int64_t u_begin, int64_t u_end) {
              if (opt.padding == Padding::Reflection) {
                span(u_begin, u_end);
              } else if (bilinear) {
                edge_run_avx2<true>(src, C, in_sc, sh, sw, H, W, opt.padding == Padding::Border,
                                    m.a, rx, m.d, ry, u_begin, u_end, fill, nullptr, nullptr, o,
                                    out_sc);
              } else {
                edge_run_avx2<false>(src, C, in_sc, sh, sw, H, W, opt.padding == Padding::Border,
                                     m.a, rx, m.d, ry, u_begin, u_end, fill, nullptr, nullptr, o,
                                     out_sc);
              }
            };
            edges(0, lo);
            const int64_t done = bilinear
                                     ? interior_run_avx2<true>(src, C, in_sc, sh, sw, H, W, m.a, rx,
                                                               m.d, ry, lo, hi, o, out_sc)
                                     : interior_run_avx2<false>(src, C, in_sc, sh, sw, H, W, m.a,
                                                                rx, m.d, ry, lo, hi, o, out_sc);
            edges(done, Wo);
            continue;
          }
        }
#endif
        span(0, Wo);
      }
    }
  });
}

// d loss / d images: one (b, c) plane per task, views and output pixels in a
// fixed order, so the result does not depend on the number of threads.
template <typename coord_t>
void backward_images_kernel(const at::Tensor& grad5, const at::Tensor& matrices, const Plan& p,
                            at::Tensor& grad_in) {
  const auto inv = inverses<coord_t>(matrices);
  const int64_t C = p.C, H = p.H, W = p.W;
  const coord_t* g = grad5.const_data_ptr<coord_t>();
  coord_t* gi = grad_in.mutable_data_ptr<coord_t>();
  const Options opt = p.opt;
  // grad_in is freshly allocated and contiguous.
  const int64_t gi_sh = W, gi_sw = 1;

  at::parallel_for(0, p.B * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t b = plane / C, c = plane % C;
      coord_t* dst = gi + plane * H * W;
      for (int64_t k = 0; k < p.K; ++k) {
        const auto& m = inv[k * p.B + b];
        const coord_t* gp = g + k * p.out_sk + b * p.out_sb + c * p.out_sc;
        for (int64_t v = 0; v < p.Ho; ++v) {
          for (int64_t u = 0; u < p.Wo; ++u) {
            coord_t x, y;
            source_position(m, u, v, x, y);
            const coord_t go = gp[v * p.out_sh + u * p.out_sw];
            if (opt.mode == Interp::Bicubic) {
              const auto fp =
                  cubic_footprint(x, y, H, W, gi_sh, gi_sw, opt.padding, opt.align_corners);
              if (!fp.valid) {
                continue;
              }
              for (int j = 0; j < 4; ++j) {
                for (int i = 0; i < 4; ++i) {
                  if (fp.ox[i] >= 0 && fp.oy[j] >= 0) {
                    dst[fp.oy[j] + fp.ox[i]] += fp.wy[j] * fp.wx[i] * go;
                  }
                }
              }
              continue;
            }
            const auto fp =
                footprint(x, y, H, W, gi_sh, gi_sw, opt.mode, opt.padding, opt.align_corners);
            for (int t = 0; t < 4; ++t) {
              if (fp.offset[t] >= 0) {
                dst[fp.offset[t]] += fp.weight[t] * go;
              }
            }
          }
        }
      }
    }
  });
}

// Per matrix, S = sum over output pixels of g (x, y, 1)^T with g = d loss /
// d source position; per-row partial sums in parallel, added up in row order.
template <typename in_t>
at::Tensor backward_matrices_kernel(const at::Tensor& images, const at::Tensor& grad5,
                                    const at::Tensor& matrices, const Plan& p,
                                    const std::vector<double>& fills) {
  using coord_t = acc_t<in_t>;
  const auto inv = inverses<coord_t>(matrices);
  const in_t* in = images.const_data_ptr<in_t>();
  const coord_t* g = grad5.const_data_ptr<coord_t>();
  const Options opt = p.opt;
  const int64_t rows = p.K * p.B * p.Ho;
  std::vector<double> partial(rows * 6, 0.0);
  std::vector<coord_t> fill(fills.begin(), fills.end());

  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t kb = row / p.Ho, v = row % p.Ho;
      const int64_t k = kb / p.B, b = kb % p.B;
      const auto& m = inv[kb];
      const in_t* src = in + b * p.in_sb;
      const coord_t* gp = g + k * p.out_sk + b * p.out_sb + v * p.out_sh;
      double* acc = partial.data() + row * 6;
      for (int64_t u = 0; u < p.Wo; ++u) {
        coord_t x, y;
        source_position(m, u, v, x, y);
        if (!finite(x) || !finite(y)) {
          continue;
        }
        double gx = 0.0, gy = 0.0;
        for (int64_t c = 0; c < p.C; ++c) {
          coord_t dx, dy;
          position_grad(src + c * p.in_sc, x, y, p.H, p.W, p.sh, p.sw, opt.mode, opt.padding,
                        opt.align_corners, fill[c], dx, dy);
          const double go = gp[c * p.out_sc + u * p.out_sw];
          gx += go * dx;
          gy += go * dy;
        }
        add_inverse_grad(acc, x, y, gx, gy);
      }
    }
  });

  at::Tensor sums = at::zeros({p.K * p.B, 2, 3}, at::kDouble);
  double* s = sums.mutable_data_ptr<double>();
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t kb = row / p.Ho;
    for (int t = 0; t < 6; ++t) {
      s[kb * 6 + t] += partial[row * 6 + t];
    }
  }
  return sums;
}

// Runs the forward kernel into `out` (4-d or 5-d, any strides).
void run_forward(const char* op, const at::Tensor& images, const at::Tensor& matrices,
                 const Options& opt, const std::vector<double>& fills,
                 const std::vector<double>& scale, const std::vector<double>& shift,
                 at::Tensor& out) {
  const int64_t C = images.size(1);
  if (out.numel() == 0) {
    return;
  }
  const bool affine = !scale.empty();
  if (images.size(2) == 0 || images.size(3) == 0) {
    std::vector<double> value(C);
    for (int64_t c = 0; c < C; ++c) {
      value[c] = affine ? fills[c] * scale[c] + shift[c] : fills[c];
    }
    at::Tensor v = at::tensor(value, at::kDouble).view({C, 1, 1});
    if (out.scalar_type() == at::kByte) {
      v = v.round().clamp(0, 255).nan_to_num(0);
    }
    out.copy_(v.expand_as(out));
    return;
  }

  const at::Tensor mats = matrices_as_double(matrices);
  at::Tensor out5 = as_views(out);
  const Plan p = make_plan(images, out5, opt);
  dispatch_pair(op, images.scalar_type(), out.scalar_type(), [&](auto in_tag, auto out_tag) {
    using in_t = typename decltype(in_tag)::type;
    using out_t = typename decltype(out_tag)::type;
    using coord_t = acc_t<in_t>;
    Epilogue<coord_t> ep;
    ep.fill.assign(fills.begin(), fills.end());
    ep.affine = affine;
    ep.scale.assign(scale.begin(), scale.end());
    ep.shift.assign(shift.begin(), shift.end());
    forward_kernel<in_t, out_t>(images, mats, p, ep, static_cast<out_t*>(out5.data_ptr()));
  });
}

void affine_warp_out_cpu(const at::Tensor& images, const at::Tensor& matrices,
                         c10::string_view mode, c10::string_view padding_mode, bool align_corners,
                         c10::ArrayRef<double> fill, at::Tensor& out) {
  const char* op = "affine_warp";
  const auto call =
      check_out_call(op, images, matrices, mode, padding_mode, align_corners, fill, out);
  run_forward(op, images, matrices, call.opt, call.fills, {}, {}, out);
}

// Blocks of 32 MiB and more: glibc maps them anew on every allocation and
// unmaps them on free, whatever its adaptive threshold, so a fresh output of
// that size costs a page fault and a zeroed page every 4 KiB, on this kind of
// machine as much as the warp itself. Smaller ones are mostly reused.
constexpr int64_t kLargeOutputBytes = int64_t(32) << 20;

// Maps in the pages of a block the process has not touched yet, before the
// kernel writes it. Faulting it in page by page from inside the kernel costs
// more than the faults: zeroing each new page evicts the image rows the
// kernel is reading. MADV_POPULATE_WRITE maps a range in one call per thread
// instead. On kernels without it (before Linux 5.14) nothing happens and the
// pages are faulted in as before.
void populate(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
  constexpr int64_t kPage = 4096, kPerTask = int64_t(2) << 20;
  const auto begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + kPage - 1) & ~uintptr_t(kPage - 1);
  const uintptr_t last = (begin + bytes) & ~uintptr_t(kPage - 1);
  const int64_t pages = last > first ? static_cast<int64_t>(last - first) / kPage : 0;
  at::parallel_for(0, pages, kPerTask / kPage, [&](int64_t p0, int64_t p1) {
    // A hint: where it fails, the kernel faults the pages in itself.
    (void)madvise(reinterpret_cast<void*>(first + p0 * kPage), (p1 - p0) * kPage,
                  MADV_POPULATE_WRITE);
  });
#else
  (void)data, (void)bytes;
#endif
}

// The large output blocks that recent outputs freed, kept mapped for the next
// call of the same size: a training loop warps a batch of the same shape on
// every step, and each step's output dies about when the next is made.
// NOTE: at most kBlocks blocks and kBytes in all are held, the least recently
// freed go first; INVFAST_CPU_OUTPUT_CACHE=0 turns the cache off. The cache
// lives for the whole process (it is never destroyed, so that a tensor freed
// late at exit still finds it).
class OutputCache {
 public:
  static OutputCache& get() {
    static OutputCache* cache = new OutputCache();
    return *cache;
  }

  bool enabled() const { return enabled_; }

  // A block of at least `bytes`, 64-byte aligned, already mapped where it was
  // cached; nullptr when the allocation fails.
  void* take(int64_t bytes, int64_t& capacity) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // The smallest cached block that fits and wastes at most a quarter.
      auto best = blocks_.end();
      for (auto it = blocks_.begin(); it != blocks_.end(); ++it) {
        if (it->second >= bytes && it->second <= bytes + bytes / 4 &&
            (best == blocks_.end() || it->second < best->second)) {
          best = it;
        }
      }
      if (best != blocks_.end()) {
        void* data = best->first;
        capacity = best->second;
        held_ -= capacity;
        blocks_.erase(best);
        return data;
      }
    }
    capacity = (bytes + 63) / 64 * 64;
    void* data = std::aligned_alloc(64, static_cast<size_t>(capacity));
    if (data != nullptr) {
      populate(data, capacity);
    }
    return data;
  }

  void give(void* data, int64_t capacity) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (capacity <= kBytes) {
        blocks_.emplace_back(data, capacity);
        held_ += capacity;
        data = nullptr;
        while (blocks_.size() > kBlocks || held_ > kBytes) {
          std::free(blocks_.front().first);
          held_ -= blocks_.front().second;
          blocks_.erase(blocks_.begin());
        }
      }
    }
    std::free(data);
  }

 private:
  OutputCache() {
    const char* flag = std::getenv("INVFAST_CPU_OUTPUT_CACHE");
    enabled_ = flag == nullptr || std::strcmp(flag, "0") != 0;
  }

  static constexpr size_t kBlocks = 4;
  static constexpr int64_t kBytes = int64_t(1) << 30;
  bool enabled_;
  std::mutex mutex_;
  std::vector<std::pair<void*, int64_t>> blocks_;  // oldest first
  int64_t held_ = 0;
};

// A fresh output of the sizes, strides and options of `like` (a dense tensor
// just made for it): `like` itself below the large-block size, else a block
// from OutputCache that goes back to it when the output dies.
at::Tensor fresh_output(const at::Tensor& like) {
  const int64_t bytes = like.numel() * static_cast<int64_t>(like.element_size());
  if (bytes < kLargeOutputBytes) {
    return like;
  }
  OutputCache& cache = OutputCache::get();
  int64_t capacity = 0;
  void* data = cache.enabled() ? cache.take(bytes, capacity) : nullptr;
  if (data == nullptr) {
    populate(like.data_ptr(), bytes);
    return like;
  }
  return at::from_blob(
      data, like.sizes(), like.strides(),
      [capacity](void* p) { OutputCache::get().give(p, capacity); }, like.options());
}

at::Tensor affine_warp_cpu(const at::Tensor& images, const at::Tensor& matrices,
                           c10::string_view mode, c10::string_view padding_mode, bool align_corners,
                           c10::ArrayRef<double> fill, c10::IntArrayRef size,
                           std::optional<at::ScalarType> out_dtype) {
  const char* op = "affine_warp";
  const Views views = check_inputs(op, images, matrices);
  check_size(op, size);
  const auto dtype = output_dtype(op, images, out_dtype);

  at::Tensor out = fresh_output(empty_output(images, views, size, dtype));
  affine_warp_out_cpu(images, matrices, mode, padding_mode, align_corners, fill, out);
  return out;
}

void warp_normalize_out_cpu(const at::Tensor& images, const at::Tensor& matrices,
                            const at::Tensor& mean, const at::Tensor& std, c10::string_view mode,
                            c10::string_view padding_mode, bool align_corners,
                            c10::ArrayRef<double> fill, at::Tensor& out) {
  const char* op = "warp_normalize";
  const auto call = check_out_call(op, images, matrices, mode, padding_mode, align_corners, fill,
                                   out, &mean, &std);

  // result = (value / 255 - mean) / std = value * scale + shift.
  const at::Tensor m = mean.to(at::kDouble).contiguous(), s = std.to(at::kDouble).contiguous();
  const int64_t C = images.size(1);
  std::vector<double> scale(C), shift(C);
  for (int64_t c = 0; c < C; ++c) {
    scale[c] = 1.0 / (255.0 * s.const_data_ptr<double>()[c]);
    shift[c] = -m.const_data_ptr<double>()[c] / s.const_data_ptr<double>()[c];
  }
  run_forward(op, images, matrices, call.opt, call.fills, scale, shift, out);
}

at::Tensor warp_normalize_cpu(const at::Tensor& images, const at::Tensor& matrices,
                              const at::Tensor& mean, const at::Tensor& std, c10::string_view mode,
                              c10::string_view padding_mode, bool align_corners,
                              c10::ArrayRef<double> fill, c10::IntArrayRef size,
                              at::ScalarType out_dtype) {
  at::Tensor out = fresh_output(
      normalize_output("warp_normalize", images, matrices, mean, std, size, out_dtype));
  warp_normalize_out_cpu(images, matrices, mean, std, mode, padding_mode, align_corners, fill, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> affine_warp_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& images_opt,
    const at::Tensor& matrices, c10::string_view mode, c10::string_view padding_mode,
    bool align_corners, c10::ArrayRef<double> fill, c10::IntArrayRef input_size, bool images_grad) {
  const char* op = "affine_warp_backward";
  const Options opt = parse_options(op, mode, padding_mode, align_corners);
  check_size(op, input_size);
  const Views views = check_backward_args(op, grad_out, images_opt, matrices, input_size);

  // Gradients accumulate in float32 (float64 for float64) and are rounded once.
  const auto dtype = grad_out.scalar_type();
  const auto acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t B = grad_out.size(-4), C = grad_out.size(-3);
  const at::Tensor grad5 = as_views(grad_out.to(acc));
  at::Tensor grad_images = grad_out.new_empty({0});
  at::Tensor grad_matrices = matrices.new_empty({0});
  (void)views;

  if (images_grad) {
    at::Tensor gi = at::zeros({B, C, input_size[0], input_size[1]}, grad_out.options().dtype(acc));
    if (gi.numel() > 0 && grad5.numel() > 0) {
      const Plan p = make_plan(gi, grad5, opt);
      const at::Tensor mats = matrices_as_double(matrices);
      if (acc == at::kDouble) {
        backward_images_kernel<double>(grad5, mats, p, gi);
      } else {
        backward_images_kernel<float>(grad5, mats, p, gi);
      }
    }
    grad_images = gi.to(dtype);
  }

  if (images_opt.has_value()) {
    const at::Tensor& images = *images_opt;
    const auto fills = channel_fill(op, fill, C, opt.padding);
    at::Tensor sums = at::zeros({grad5.size(0) * B, 2, 3}, at::kDouble);
    if (images.numel() > 0 && grad5.numel() > 0) {
      const Plan p = make_plan(images, grad5, opt);
      const at::Tensor mats = matrices_as_double(matrices);
      const at::Tensor g = images.scalar_type() == at::kDouble ? grad5 : grad5.to(at::kFloat);
      AT_DISPATCH_FLOATING_TYPES_AND3(
          at::kHalf, at::kBFloat16, at::kByte, images.scalar_type(), "affine_warp_backward_cpu",
          [&] { sums = backward_matrices_kernel<scalar_t>(images, g, mats, p, fills); });
    }
    grad_matrices = matrix_grad_from_sums(sums, matrices);
  }
  return {grad_images, grad_matrices};
}

}  // namespace

TORCH_LIBRARY_IMPL(invfast, CPU, m) {
  m.impl("affine_warp", &affine_warp_cpu);
  m.impl("affine_warp_out", &affine_warp_out_cpu);
  m.impl("affine_warp_backward", &affine_warp_backward_cpu);
  m.impl("warp_normalize", &warp_normalize_cpu);
  m.impl("warp_normalize_out", &warp_normalize_out_cpu);
}

}  // namespace warp
}  // namespace invfast
