// CPU kernels of the affine warp: forward parallel over (batch, output row),
// backward parallel over (batch, channel) planes so that no two threads add
// into the same gradient element.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

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
  const int64_t B = m.size(0), rows = m.size(1);
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
inline scalar_t sample_footprint(const scalar_t* plane, const Footprint<coord_t>& fp,
                                 coord_t fill) {
  coord_t acc = fp.outside * fill;
  for (int k = 0; k < 4; ++k) {
    if (fp.offset[k] >= 0) {
      acc += fp.weight[k] * static_cast<coord_t>(plane[fp.offset[k]]);
    }
  }
  return static_cast<scalar_t>(acc);
}

template <typename scalar_t, typename coord_t>
inline scalar_t sample_interior(const scalar_t* p, const Chunk<coord_t>& ch, int64_t j, int64_t sh,
                                int64_t sw) {
  // Same order of operations as sample_footprint, so both paths agree bitwise.
  coord_t acc = ch.w[0][j] * static_cast<coord_t>(p[0]);
  acc += ch.w[1][j] * static_cast<coord_t>(p[sw]);
  acc += ch.w[2][j] * static_cast<coord_t>(p[sh]);
  acc += ch.w[3][j] * static_cast<coord_t>(p[sh + sw]);
  return static_cast<scalar_t>(acc);
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

// Samples output columns [lo, hi) of one row, eight at a time, for float
// images whose plane offsets fit in int32, into a row with unit stride. The
// columns must come from `interior_columns`; indices are clamped all the same,
// so that no rounding can ever read outside the plane. Returns the first
// column left for the scalar code.
template <bool kBilinear>
__attribute__((target("avx2,fma"))) int64_t interior_run_avx2(
    const float* src, int64_t C, int64_t in_sc, int64_t sh, int64_t sw, int64_t H, int64_t W,
    float a, float rx, float d, float ry, int64_t lo, int64_t hi, float* out, int64_t out_sc) {
  const __m256 lane = _mm256_setr_ps(0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f);
  const __m256 va = _mm256_set1_ps(a), vd = _mm256_set1_ps(d);
  const __m256 vrx = _mm256_set1_ps(rx), vry = _mm256_set1_ps(ry);
  const __m256i zero = _mm256_setzero_si256();
  const int last = kBilinear ? 2 : 1;
  const __m256i xmax = _mm256_set1_epi32(static_cast<int>(std::max<int64_t>(W - last, 0)));
  const __m256i ymax = _mm256_set1_epi32(static_cast<int>(std::max<int64_t>(H - last, 0)));
  const __m256i vsh = _mm256_set1_epi32(static_cast<int>(sh));
  const __m256i vsw = _mm256_set1_epi32(static_cast<int>(sw));
  const int64_t sd = sh + sw;
  int64_t u = lo;
  for (; u + 8 <= hi; u += 8) {
    const __m256 uf = _mm256_add_ps(_mm256_set1_ps(static_cast<float>(u)), lane);
    const __m256 x = _mm256_fmadd_ps(va, uf, vrx);
    const __m256 y = _mm256_fmadd_ps(vd, uf, vry);
    const int mode = kBilinear ? _MM_FROUND_TO_NEG_INF : _MM_FROUND_TO_NEAREST_INT;
    const __m256 xf = _mm256_round_ps(x, mode | _MM_FROUND_NO_EXC);
    const __m256 yf = _mm256_round_ps(y, mode | _MM_FROUND_NO_EXC);
    __m256i ix = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvttps_epi32(xf), zero), xmax);
    __m256i iy = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvttps_epi32(yf), zero), ymax);
    const __m256i idx = _mm256_add_epi32(_mm256_mullo_epi32(iy, vsh), _mm256_mullo_epi32(ix, vsw));
    const __m256 fx = _mm256_sub_ps(x, xf), fy = _mm256_sub_ps(y, yf);
    for (int64_t c = 0; c < C; ++c) {
      const float* p = src + c * in_sc;
      __m256 r;
      if (kBilinear) {
        const __m256 v00 = _mm256_i32gather_ps(p, idx, 4);
        const __m256 v01 = _mm256_i32gather_ps(p + sw, idx, 4);
        const __m256 v10 = _mm256_i32gather_ps(p + sh, idx, 4);
        const __m256 v11 = _mm256_i32gather_ps(p + sd, idx, 4);
        const __m256 top = _mm256_fmadd_ps(fx, _mm256_sub_ps(v01, v00), v00);
        const __m256 bottom = _mm256_fmadd_ps(fx, _mm256_sub_ps(v11, v10), v10);
        r = _mm256_fmadd_ps(fy, _mm256_sub_ps(bottom, top), top);
      } else {
        r = _mm256_i32gather_ps(p, idx, 4);
      }
      _mm256_storeu_ps(out + c * out_sc + u, r);
    }
  }
  return u;
}
#endif

template <typename scalar_t>
void forward_kernel(const at::Tensor& images, const at::Tensor& matrices, const Options& opt,
                    at::Tensor& out) {
  using coord_t = acc_t<scalar_t>;
  const auto inv = inverses<coord_t>(matrices);
  const int64_t C = images.size(1), H = images.size(2), W = images.size(3);
  const int64_t Ho = out.size(2), Wo = out.size(3);
  const int64_t in_sb = images.stride(0), in_sc = images.stride(1);
  const int64_t sh = images.stride(2), sw = images.stride(3);
  const int64_t out_sb = out.stride(0), out_sc = out.stride(1);
  const int64_t out_sh = out.stride(2), out_sw = out.stride(3);
  const scalar_t* in = images.const_data_ptr<scalar_t>();
  scalar_t* dst = out.mutable_data_ptr<scalar_t>();
  const coord_t fill = static_cast<coord_t>(opt.fill);
  const bool bilinear = opt.mode == Interp::Bilinear;
  const scalar_t fill_value = static_cast<scalar_t>(fill);
#ifdef INVFAST_X86_AVX2
  // The vector path: float rows of unit stride, plane offsets within int32.
  const bool vector_rows = std::is_same_v<scalar_t, float> && cpu_has_avx2() && out_sw == 1 &&
                           H > 0 && W > 0 && sh >= 0 && sw >= 0 &&
                           (H - 1) * sh + (W - 1) * sw < std::numeric_limits<int32_t>::max();
#endif

  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, Wo * C));
  at::parallel_for(0, out.size(0) * Ho, grain, [&](int64_t begin, int64_t end) {
    Chunk<coord_t> ch;
    Footprint<coord_t> fps[kChunk];
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / Ho, v = row % Ho;
      const scalar_t* src = in + b * in_sb;
      scalar_t* o = dst + b * out_sb + v * out_sh;
      // Columns [u_begin, u_end) in chunks, for every dtype, layout and mode.
      const auto span = [&](int64_t u_begin, int64_t u_end) {
        for (int64_t u0 = u_begin; u0 < u_end; u0 += kChunk) {
          const int64_t n = std::min(kChunk, u_end - u0);
          if (bilinear) {
            locate_chunk(inv[b], u0, n, v, H, W, sh, sw, opt, ch);
          } else {
            ch.all_interior = false;
            std::fill(ch.kind, ch.kind + n, kGeneral);
          }
          if (!ch.all_interior) {
            for (int64_t j = 0; j < n; ++j) {
              if (ch.kind[j] == kGeneral) {
                coord_t x, y;
                source_position(inv[b], u0 + j, v, x, y);
                fps[j] = footprint(x, y, H, W, sh, sw, opt.mode, opt.padding, opt.align_corners);
              }
            }
          }
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t* plane = src + c * in_sc;
            scalar_t* oc = o + c * out_sc + u0 * out_sw;
            if (ch.all_interior) {
              for (int64_t j = 0; j < n; ++j) {
                oc[j * out_sw] = sample_interior(plane + ch.offset[j], ch, j, sh, sw);
              }
              continue;
            }
            for (int64_t j = 0; j < n; ++j) {
              const uint8_t kind = ch.kind[j];
              oc[j * out_sw] =
                  kind == kInterior
                      ? sample_interior(plane + ch.offset[j], ch, j, sh, sw)
                      : (kind == kOutside ? fill_value
                                          : sample_footprint<scalar_t>(plane, fps[j], fill));
            }
          }
        }
      };

#ifdef INVFAST_X86_AVX2
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (vector_rows) {
          const auto& m = inv[b];
          const float vf = static_cast<float>(v);
          const float rx = m.b * vf + m.c, ry = m.e * vf + m.f;
          int64_t lo, hi;
          interior_columns(m.a, rx, m.d, ry, H, W, Wo, lo, hi);
          span(0, lo);
          const int64_t done = bilinear ? interior_run_avx2<true>(src, C, in_sc, sh, sw, H, W, m.a,
                                                                  rx, m.d, ry, lo, hi, o, out_sc)
                                        : interior_run_avx2<false>(src, C, in_sc, sh, sw, H, W, m.a,
                                                                   rx, m.d, ry, lo, hi, o, out_sc);
          span(done, Wo);
          continue;
        }
      }
#endif
      span(0, Wo);
    }
  });
}

template <typename scalar_t, typename grad_t>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& matrices, const Options& opt,
                     at::Tensor& grad_in) {
  using coord_t = acc_t<scalar_t>;
  const auto inv = inverses<coord_t>(matrices);
  const int64_t C = grad_in.size(1), H = grad_in.size(2), W = grad_in.size(3);
  const int64_t Ho = grad_out.size(2), Wo = grad_out.size(3);
  const int64_t g_sb = grad_out.stride(0), g_sc = grad_out.stride(1);
  const int64_t g_sh = grad_out.stride(2), g_sw = grad_out.stride(3);
  // grad_in is freshly allocated and contiguous.
  const int64_t gi_sh = W, gi_sw = 1;
  const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
  grad_t* gi = grad_in.mutable_data_ptr<grad_t>();

  at::parallel_for(0, grad_in.size(0) * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t b = plane / C, c = plane % C;
      const scalar_t* gp = g + b * g_sb + c * g_sc;
      grad_t* dst = gi + plane * H * W;
      for (int64_t v = 0; v < Ho; ++v) {
        for (int64_t u = 0; u < Wo; ++u) {
          coord_t x, y;
          source_position(inv[b], u, v, x, y);
          const auto fp =
              footprint(x, y, H, W, gi_sh, gi_sw, opt.mode, opt.padding, opt.align_corners);
          const coord_t go = static_cast<coord_t>(gp[v * g_sh + u * g_sw]);
          for (int k = 0; k < 4; ++k) {
            if (fp.offset[k] >= 0) {
              dst[fp.offset[k]] += static_cast<grad_t>(fp.weight[k] * go);
            }
          }
        }
      }
    }
  });
}

void affine_warp_out_cpu(const at::Tensor& images, const at::Tensor& matrices,
                         c10::string_view mode, c10::string_view padding_mode, bool align_corners,
                         double fill, at::Tensor& out) {
  const char* op = "affine_warp";
  check_inputs(op, images, matrices);
  const Options opt = parse_options(mode, padding_mode, align_corners, fill);
  check_out(op, images, {out.size(2), out.size(3)}, out);

  if (out.numel() == 0) {
    return;
  }
  if (images.size(2) == 0 || images.size(3) == 0) {
    out.fill_(opt.fill);
    return;
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "affine_warp_cpu",
                                  [&] { forward_kernel<scalar_t>(images, matrices, opt, out); });
}

at::Tensor affine_warp_cpu(const at::Tensor& images, const at::Tensor& matrices,
                           c10::string_view mode, c10::string_view padding_mode, bool align_corners,
                           double fill, c10::IntArrayRef size) {
  check_inputs("affine_warp", images, matrices);
  check_size("affine_warp", size);

  at::Tensor out = empty_output(images, size);
  affine_warp_out_cpu(images, matrices, mode, padding_mode, align_corners, fill, out);
  return out;
}

at::Tensor affine_warp_backward_cpu(const at::Tensor& grad_out, const at::Tensor& matrices,
                                    c10::string_view mode, c10::string_view padding_mode,
                                    bool align_corners, c10::IntArrayRef input_size) {
  const char* op = "affine_warp_backward";
  check_inputs(op, grad_out, matrices);
  const Options opt = parse_options(mode, padding_mode, align_corners, 0.0);
  check_size(op, input_size);

  // Half and bfloat16 gradients accumulate in float32 and are rounded once.
  const auto dtype = grad_out.scalar_type();
  const auto acc_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_in = at::zeros({grad_out.size(0), grad_out.size(1), input_size[0], input_size[1]},
                                 grad_out.options().dtype(acc_dtype));
  if (grad_out.numel() == 0 || grad_in.numel() == 0) {
    return grad_in.to(dtype);
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "affine_warp_backward_cpu", [&] {
    backward_kernel<scalar_t, acc_t<scalar_t>>(grad_out, matrices, opt, grad_in);
  });
  return grad_in.to(dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(invfast, CPU, m) {
  m.impl("affine_warp", &affine_warp_cpu);
  m.impl("affine_warp_out", &affine_warp_out_cpu);
  m.impl("affine_warp_backward", &affine_warp_backward_cpu);
}

}  // namespace warp
}  // namespace invfast
