// Per-pixel arithmetic of the affine warp, shared by the CPU and CUDA kernels.
//
// A matrix M (2x3, or the top two rows of a 3x3) maps input pixel positions to
// output pixel positions; pixel centres sit at integer coordinates. An output
// pixel (u, v) therefore samples the input at M^-1 (u, v, 1). Everything below
// works in input pixel coordinates; nothing is normalised to [-1, 1].
#pragma once

#include <cmath>
#include <type_traits>

#include "../common.h"

namespace invfast {
namespace warp {

enum class Interp : int { Bilinear = 0, Nearest = 1, Bicubic = 2 };
enum class Padding : int { Zeros = 0, Border = 1, Reflection = 2, Fill = 3 };

struct Options {
  Interp mode;
  Padding padding;
  bool align_corners;
};

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

// Where a bicubic output pixel reads: 4 x 4 taps, separable. A tap whose
// row or column falls outside the image (after padding) has offset -1 and
// reads the fill value.
template <typename coord_t>
struct CubicFootprint {
  int64_t ox[4], oy[4];
  coord_t wx[4], wy[4];
  bool valid;
};

// Cubic convolution weights of the taps at floor(x) - 1 .. floor(x) + 2 for
// the fraction t, with A = -0.75 as grid_sample and OpenCV use.
template <typename coord_t>
INVFAST_HOST_DEVICE void cubic_weights(coord_t t, coord_t w[4]) {
  const coord_t A = coord_t(-0.75);
  const auto near = [A](coord_t x) { return ((A + 2) * x - (A + 3)) * x * x + 1; };
  const auto far = [A](coord_t x) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; };
  w[0] = far(t + 1);
  w[1] = near(t);
  w[2] = near(1 - t);
  w[3] = far(2 - t);
}

// d/dt of cubic_weights.
template <typename coord_t>
INVFAST_HOST_DEVICE void cubic_weights_grad(coord_t t, coord_t w[4]) {
  const coord_t A = coord_t(-0.75);
  const auto near = [A](coord_t x) { return (3 * (A + 2) * x - 2 * (A + 3)) * x; };
  const auto far = [A](coord_t x) { return (3 * A * x - 10 * A) * x + 8 * A; };
  w[0] = far(t + 1);
  w[1] = near(t);
  w[2] = -near(1 - t);
  w[3] = -far(2 - t);
}

// The tap index i after padding, as an element offset (or -1 when outside).
// NOTE: bicubic pads every tap index on its own, as grid_sample does, so
// border and reflection never read the fill value.
INVFAST_HOST_DEVICE int64_t cubic_tap(int64_t i, int64_t size, int64_t stride, Padding pad,
                                      bool align_corners) {
  if (pad == Padding::Border || pad == Padding::Reflection) {
    // Indices this far out are all equivalent to one a period away; keep the
    // floating-point reflection exact by staying in a small range.
    const double x = pad_coordinate<double>(static_cast<double>(i), size, pad, align_corners);
    i = static_cast<int64_t>(std::nearbyint(x));
  }
  return (i >= 0 && i < size) ? i * stride : int64_t(-1);
}

template <typename coord_t>
INVFAST_HOST_DEVICE CubicFootprint<coord_t> cubic_footprint(coord_t x, coord_t y, int64_t H,
                                                            int64_t W, int64_t stride_h,
                                                            int64_t stride_w, Padding pad,
                                                            bool align_corners) {
  CubicFootprint<coord_t> fp;
  fp.valid = false;
  // NOTE: non-finite positions read nothing (the fill value); positions more
  // than two pixels outside are reduced to two pixels outside first, which
  // reads the same taps for zeros and fill and keeps the integer conversion
  // in range for border and reflection only when the image is also near.
  if (!finite(x) || !finite(y)) {
    return fp;
  }
  const bool remaps = pad == Padding::Border || pad == Padding::Reflection;
  if (!remaps && !(x > coord_t(-2) && x < static_cast<coord_t>(W + 1) && y > coord_t(-2) &&
                   y < static_cast<coord_t>(H + 1))) {
    return fp;
  }
  if (remaps) {
    // Far positions: fold them into one period first (border: clamp) so the
    // index arithmetic stays small. The taps of a folded position equal the
    // original's because padding is periodic (reflection) or flat (border).
    const coord_t px = pad == Padding::Border
                           ? static_cast<coord_t>(2 * W + 4)
                           : static_cast<coord_t>(align_corners ? 2 * (W - 1) : 2 * W);
    const coord_t py = pad == Padding::Border
                           ? static_cast<coord_t>(2 * H + 4)
                           : static_cast<coord_t>(align_corners ? 2 * (H - 1) : 2 * H);
    const auto fold = [pad](coord_t v, coord_t period, int64_t size) {
      if (pad == Padding::Border) {
        const coord_t lo = coord_t(-3), hi = static_cast<coord_t>(size + 2);
        return v < lo ? lo : (v > hi ? hi : v);
      }
      if (period <= coord_t(0)) {
        return coord_t(0);
      }
      if (v > -period && v < 2 * period) {
        return v;
      }
      // NOTE: fmod is exact, so the fraction of v is kept.
      const coord_t r = std::fmod(v, period);
      return r < coord_t(0) ? r + period : r;
    };
    x = fold(x, px, W);
    y = fold(y, py, H);
  }
  const coord_t x0f = std::floor(x), y0f = std::floor(y);
  const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
  cubic_weights(x - x0f, fp.wx);
  cubic_weights(y - y0f, fp.wy);
  for (int i = 0; i < 4; ++i) {
    fp.ox[i] = cubic_tap(x0 - 1 + i, W, stride_w, pad, align_corners);
    fp.oy[i] = cubic_tap(y0 - 1 + i, H, stride_h, pad, align_corners);
  }
  fp.valid = true;
  return fp;
}

// One channel of a bicubic sample; taps outside read `fill`.
template <typename coord_t, typename scalar_t>
INVFAST_HOST_DEVICE coord_t sample_cubic(const scalar_t* plane, const CubicFootprint<coord_t>& fp,
                                         coord_t fill) {
  if (!fp.valid) {
    return fill;
  }
  coord_t acc = coord_t(0);
  for (int j = 0; j < 4; ++j) {
    coord_t row = coord_t(0);
    for (int i = 0; i < 4; ++i) {
      const coord_t v = (fp.ox[i] >= 0 && fp.oy[j] >= 0)
                            ? static_cast<coord_t>(plane[fp.oy[j] + fp.ox[i]])
                            : fill;
      row += fp.wx[i] * v;
    }
    acc += fp.wy[j] * row;
  }
  return acc;
}

// One channel of a nearest or bilinear sample; taps outside read `fill`.
template <typename coord_t, typename scalar_t>
INVFAST_HOST_DEVICE coord_t sample_linear(const scalar_t* plane, const Footprint<coord_t>& fp,
                                          coord_t fill) {
  coord_t acc = fp.outside * fill;
  for (int k = 0; k < 4; ++k) {
    if (fp.offset[k] >= 0) {
      acc += fp.weight[k] * static_cast<coord_t>(plane[fp.offset[k]]);
    }
  }
  return acc;
}

// Stores an fp32 (fp64) result in the output type.
// NOTE: integer output rounds to nearest (ties to even, as torch.round) and
// saturates to [0, 255]; NaN becomes 0. A plain cast would wrap or be undefined.
template <typename out_t, typename coord_t>
INVFAST_HOST_DEVICE out_t store_as(coord_t v) {
  if constexpr (std::is_same<out_t, uint8_t>::value) {
    v = v > coord_t(0) ? v : coord_t(0);
    v = v < coord_t(255) ? v : coord_t(255);
    return static_cast<uint8_t>(std::nearbyint(v));
  } else {
    return static_cast<out_t>(v);
  }
}

// Padding of one coordinate and its slope d pad(x) / dx (0 where clamped,
// -1 where mirrored), for the gradient with respect to the position.
template <typename coord_t>
INVFAST_HOST_DEVICE coord_t pad_coordinate_grad(coord_t x, int64_t size, Padding pad,
                                                bool align_corners, coord_t& slope) {
  slope = coord_t(1);
  const coord_t hi = static_cast<coord_t>(size - 1);
  const auto clip_grad = [&](coord_t v) {
    if (v <= coord_t(0)) {
      slope = coord_t(0);
      return coord_t(0);
    }
    if (v >= hi) {
      slope = coord_t(0);
      return hi;
    }
    return v;
  };
  const auto reflect_grad = [&](coord_t v, coord_t lo, coord_t top) {
    const coord_t span = top - lo;
    if (span <= coord_t(0)) {
      slope = coord_t(0);
      return coord_t(0);
    }
    const coord_t d = std::fmod(std::fabs(v - lo), 2 * span);
    const coord_t side = v < lo ? coord_t(-1) : coord_t(1);
    slope = d > span ? -side : side;
    return d > span ? lo + (2 * span - d) : lo + d;
  };
  if (pad == Padding::Border) {
    return clip_grad(x);
  }
  if (pad == Padding::Reflection) {
    if (align_corners) {
      return reflect_grad(x, coord_t(0), hi);
    }
    return clip_grad(reflect_grad(x, coord_t(-0.5), static_cast<coord_t>(size) - coord_t(0.5)));
  }
  return x;
}

// d value / d (x, y) at the unpadded source position (x, y) for one channel
// of a plane, taps outside reading `fill`. Nearest has no gradient.
template <typename coord_t, typename scalar_t>
INVFAST_HOST_DEVICE void position_grad(const scalar_t* plane, coord_t x, coord_t y, int64_t H,
                                       int64_t W, int64_t sh, int64_t sw, Interp mode, Padding pad,
                                       bool align_corners, coord_t fill, coord_t& gx, coord_t& gy) {
  gx = gy = coord_t(0);
  if (mode == Interp::Nearest || !finite(x) || !finite(y)) {
    return;
  }
  if (mode == Interp::Bicubic) {
    const auto fp = cubic_footprint(x, y, H, W, sh, sw, pad, align_corners);
    if (!fp.valid) {
      return;
    }
    coord_t dwx[4], dwy[4];
    cubic_weights_grad(x - std::floor(x), dwx);
    cubic_weights_grad(y - std::floor(y), dwy);
    for (int j = 0; j < 4; ++j) {
      for (int i = 0; i < 4; ++i) {
        const coord_t v = (fp.ox[i] >= 0 && fp.oy[j] >= 0)
                              ? static_cast<coord_t>(plane[fp.oy[j] + fp.ox[i]])
                              : fill;
        gx += dwx[i] * fp.wy[j] * v;
        gy += fp.wx[i] * dwy[j] * v;
      }
    }
    return;
  }
  coord_t sx, sy;
  x = pad_coordinate_grad(x, W, pad, align_corners, sx);
  y = pad_coordinate_grad(y, H, pad, align_corners, sy);
  if (!(x > coord_t(-1) && x < static_cast<coord_t>(W) && y > coord_t(-1) &&
        y < static_cast<coord_t>(H))) {
    return;
  }
  const coord_t x0f = std::floor(x), y0f = std::floor(y);
  const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
  const coord_t fx = x - x0f, fy = y - y0f;
  coord_t v[2][2];
  for (int j = 0; j < 2; ++j) {
    for (int i = 0; i < 2; ++i) {
      const int64_t xi = x0 + i, yj = y0 + j;
      v[j][i] = (xi >= 0 && xi < W && yj >= 0 && yj < H)
                    ? static_cast<coord_t>(plane[yj * sh + xi * sw])
                    : fill;
    }
  }
  gx = sx * ((1 - fy) * (v[0][1] - v[0][0]) + fy * (v[1][1] - v[1][0]));
  gy = sy * ((1 - fx) * (v[1][0] - v[0][0]) + fx * (v[1][1] - v[0][1]));
}

// One output pixel's share of d loss / d (inverse matrix): its source
// position is (x, y) = M^-1 (u, v, 1), and (gx, gy) the upstream gradient
// times d value / d (x, y), summed over channels. acc holds the six sums in
// the matrix's row order.
template <typename coord_t>
INVFAST_HOST_DEVICE void add_inverse_grad(double acc[6], coord_t x, coord_t y, double gx,
                                          double gy) {
  acc[0] += gx * x;
  acc[1] += gx * y;
  acc[2] += gx;
  acc[3] += gy * x;
  acc[4] += gy * y;
  acc[5] += gy;
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
