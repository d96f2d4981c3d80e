// Per-pixel arithmetic of the affine warp, shared by the CPU and CUDA kernels.
//
// A matrix M (2x3, or the top two rows of a 3x3) maps input pixel positions to
// output pixel positions; pixel centres sit at integer coordinates. An output
// pixel (u, v) therefore samples the input at M^-1 (u, v, 1). Everything below
// works in input pixel coordinates; nothing is normalised to [-1, 1].
#pragma once

#include <cmath>

#include "../common.h"

namespace invfast {
namespace warp {

enum class Interp : int { Bilinear = 0, Nearest = 1 };
enum class Padding : int { Zeros = 0, Border = 1, Reflection = 2, Fill = 3 };

// The inverse map, input position = (a u + b v + c, d u + e v + f).
template <typename coord_t>
struct InverseAffine {
  coord_t a, b, c, d, e, f;
};

// Inverts the affine part of a row-major matrix whose rows are `row_stride`
// elements apart. The determinant and the inverse are formed in double.
// NOTE: a singular or non-finite matrix gives a non-finite inverse; such
// coordinates are caught in `footprint` and never used as an index.
template <typename coord_t, typename scalar_t>
INVFAST_HOST_DEVICE InverseAffine<coord_t> invert_affine(const scalar_t* m, int64_t row_stride) {
  const double m00 = m[0], m01 = m[1], m02 = m[2];
  const double m10 = m[row_stride], m11 = m[row_stride + 1], m12 = m[row_stride + 2];
  const double r = 1.0 / (m00 * m11 - m01 * m10);
  const double a = m11 * r, b = -m01 * r, d = -m10 * r, e = m00 * r;
  return {
      static_cast<coord_t>(a), static_cast<coord_t>(b), static_cast<coord_t>(-(a * m02 + b * m12)),
      static_cast<coord_t>(d), static_cast<coord_t>(e), static_cast<coord_t>(-(d * m02 + e * m12))};
}

// Mirrors x into [lo, hi] with period 2 (hi - lo).
template <typename coord_t>
INVFAST_HOST_DEVICE coord_t reflect(coord_t x, coord_t lo, coord_t hi) {
  const coord_t span = hi - lo;
  if (span <= coord_t(0)) {
    return coord_t(0);
  }
  const coord_t d = std::fmod(std::fabs(x - lo), 2 * span);
  return lo + (d > span ? 2 * span - d : d);
}

// Clamps x to [0, size - 1]. NOTE: written so that a NaN would become 0, but
// non-finite coordinates never reach here (see `footprint`).
template <typename coord_t>
INVFAST_HOST_DEVICE coord_t clip(coord_t x, int64_t size) {
  const coord_t hi = static_cast<coord_t>(size - 1);
  x = x > coord_t(0) ? x : coord_t(0);
  return x < hi ? x : hi;
}

// Applies the padding rule to one coordinate, as grid_sample does in pixel
// space: border clamps, reflection mirrors about the outer pixel centres
// (align_corners) or the image edges (otherwise), zeros and fill leave the
// coordinate alone and let the taps fall outside.
template <typename coord_t>
INVFAST_HOST_DEVICE coord_t pad_coordinate(coord_t x, int64_t size, Padding pad,
                                           bool align_corners) {
  if (pad == Padding::Border) {
    return clip(x, size);
  }
  if (pad == Padding::Reflection) {
    if (align_corners) {
      return reflect(x, coord_t(0), static_cast<coord_t>(size - 1));
    }
    return clip(reflect(x, coord_t(-0.5), static_cast<coord_t>(size) - coord_t(0.5)), size);
  }
  return x;
}

// Where one output pixel reads the input: up to four taps, each an element
// offset into an (H, W) plane and a weight. Taps outside the image have
// offset -1 and weight 0 and must be skipped, never read; their weight is
// gathered in `outside`, which the caller multiplies by the fill value.
template <typename coord_t>
struct Footprint {
  int64_t offset[4];
  coord_t weight[4];
  coord_t outside;
};

template <typename coord_t>
INVFAST_HOST_DEVICE bool finite(coord_t x) {
  // NaN fails both comparisons; so do the infinities.
  return x > -HUGE_VAL && x < HUGE_VAL;
}

// Footprint of the input position (x, y) in an H x W plane with strides
// (stride_h, stride_w).
template <typename coord_t>
INVFAST_HOST_DEVICE Footprint<coord_t> footprint(coord_t x, coord_t y, int64_t H, int64_t W,
                                                 int64_t stride_h, int64_t stride_w, Interp mode,
                                                 Padding pad, bool align_corners) {
  Footprint<coord_t> fp;
  for (int k = 0; k < 4; ++k) {
    fp.offset[k] = -1;
    fp.weight[k] = coord_t(0);
  }
  fp.outside = coord_t(1);

  // NOTE: a non-finite position (from a singular or non-finite matrix) reads
  // nothing; the output pixel takes the fill value (0 unless padding is fill).
  if (!finite(x) || !finite(y)) {
    return fp;
  }
  x = pad_coordinate(x, W, pad, align_corners);
  y = pad_coordinate(y, H, pad, align_corners);
  // Positions this far out touch no pixel; testing before the integer
  // conversion keeps huge coordinates (1e30) from overflowing it.
  if (!(x > coord_t(-1) && x < static_cast<coord_t>(W) && y > coord_t(-1) &&
        y < static_cast<coord_t>(H))) {
    return fp;
  }

  if (mode == Interp::Nearest) {
    // NOTE: ties round to even, as grid_sample and OpenCV's nearest do.
    const int64_t ix = static_cast<int64_t>(std::nearbyint(x));
    const int64_t iy = static_cast<int64_t>(std::nearbyint(y));
    if (ix >= 0 && ix < W && iy >= 0 && iy < H) {
      fp.offset[0] = iy * stride_h + ix * stride_w;
      fp.weight[0] = coord_t(1);
      fp.outside = coord_t(0);
    }
    return fp;
  }

  const coord_t x0f = std::floor(x), y0f = std::floor(y);
  const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
  const coord_t fx = x - x0f, fy = y - y0f;
  const coord_t wx[2] = {coord_t(1) - fx, fx};
  const coord_t wy[2] = {coord_t(1) - fy, fy};
  fp.outside = coord_t(0);
  for (int j = 0; j < 2; ++j) {
    for (int i = 0; i < 2; ++i) {
      const int k = 2 * j + i;
      const int64_t xi = x0 + i, yj = y0 + j;
      const coord_t w = wy[j] * wx[i];
      if (xi >= 0 && xi < W && yj >= 0 && yj < H) {
        fp.offset[k] = yj * stride_h + xi * stride_w;
        fp.weight[k] = w;
      } else {
        fp.outside += w;
      }
    }
  }
  return fp;
}

// Input position sampled by output pixel (u, v).
template <typename coord_t>
INVFAST_HOST_DEVICE void source_position(const InverseAffine<coord_t>& m, int64_t u, int64_t v,
                                         coord_t& x, coord_t& y) {
  const coord_t uf = static_cast<coord_t>(u), vf = static_cast<coord_t>(v);
  x = m.a * uf + (m.b * vf + m.c);
  y = m.d * uf + (m.e * vf + m.f);
}

}  // namespace warp
}  // namespace invfast
