// The image gradient of the affine warp as a gather: for one input pixel,
// every output pixel whose footprint reads it, each exactly once and in a
// fixed order, so that summing over them gives the same bits on every run
// with no atomics. The deterministic CUDA backward runs one thread per input
// pixel over this; it is host code too, so that the C++ tests check the
// enumeration against a scatter of the very same footprints.
//
// The search runs in double on the inverse map, while the kernels compute
// positions in coord_t (float for every storage type but double): every bound
// is widened by the rounding error of a coord_t position, and each candidate
// is then accepted or not on its coord_t position, the one its footprint uses.
#pragma once

#include <cmath>

#include "affine_warp_math.h"

namespace invfast {
namespace warp {
namespace gather {

// Reflection has a period; an axis that the output sees over more periods
// than this is searched as one interval.
constexpr int kMaxPeriods = 8;
constexpr int kMaxIntervals = 2 * (kMaxPeriods + 3);

template <typename coord_t>
INVFAST_HOST_DEVICE double unit_roundoff() {
  return sizeof(coord_t) < sizeof(double) ? 5.9604644775390625e-08 : 1.1102230246251565e-16;
}

// Disjoint, sorted intervals of raw (unpadded) source coordinates along an
// axis of `size` pixels whose footprint can include pixel i, clipped to
// [rlo, rhi]. A superset is enough, since every candidate is checked against
// its real footprint; what matters is that no true reader is left out and
// that the intervals do not overlap, so that no output pixel is counted
// twice. `slack` widens each interval before they are merged; it must cover
// the rounding of the padding arithmetic (reflection) at these magnitudes.
INVFAST_HOST_DEVICE int tap_preimage(int64_t i, int64_t size, const Options& opt, double rlo,
                                     double rhi, double slack, double* lo, double* hi) {
  const bool cubic = opt.mode == Interp::Bicubic;
  const double w = cubic ? 2.0 : 0.0;
  const double last = static_cast<double>(size - 1);
  // The padded coordinates (nearest, bilinear) or tap indices (bicubic)
  // whose footprint reaches i: [a, b], widened by w for bicubic.
  double a, b;
  if (cubic) {
    a = b = static_cast<double>(i);
  } else {
    a = i - 1.0;
    b = i + 1.0;
  }
  int n = 0;
  const auto push = [&](double l, double h) {
    l = std::fmax(l - slack, rlo);
    h = std::fmin(h + slack, rhi);
    if (l <= h && n < kMaxIntervals) {
      lo[n] = l;
      hi[n] = h;
      ++n;
    }
  };
  if (opt.padding == Padding::Zeros || opt.padding == Padding::Fill) {
    push(a - w, b + w);
  } else if (opt.padding == Padding::Border) {
    // Positions beyond an edge read the edge pixel.
    push(i == 0 ? rlo : a - w, i == size - 1 ? rhi : b + w);
  } else if (size == 1) {
    push(rlo, rhi);
  } else {
    // Reflection: period P; the mirror image of [a, b] is [ma, mb].
    double P, mirror_at;
    if (opt.align_corners) {
      P = 2.0 * last;
      mirror_at = 0.0;  // x -> -x
      if (!cubic) {
        a = std::fmax(a, 0.0);
        b = std::fmin(b, last);
      }
    } else {
      P = 2.0 * size;
      mirror_at = -0.5;  // x -> -1 - x
      if (!cubic) {
        // Reflected positions in [-0.5, 0] and [size - 1, size - 0.5] are
        // clamped onto the edge pixels.
        a = a < 0.0 ? -0.5 : a;
        b = b > last ? size - 0.5 : b;
      }
    }
    const double ma = 2 * mirror_at - b, mb = 2 * mirror_at - a;
    const double n0 = std::floor((rlo - std::fmax(b, mb) - w - slack) / P) - 1;
    const double n1 = std::ceil((rhi - std::fmin(a, ma) + w + slack) / P) + 1;
    if (n1 - n0 > kMaxPeriods) {
      push(rlo, rhi);  // far zoomed out: one interval over everything
    } else {
      for (double k = n0; k <= n1; k += 1.0) {
        push(a + k * P - w, b + k * P + w);
        push(ma + k * P - w, mb + k * P + w);
      }
    }
  }
  // Sort (insertion: n is small) and merge overlapping intervals.
  for (int s = 1; s < n; ++s) {
    const double l = lo[s], h = hi[s];
    int t = s - 1;
    while (t >= 0 && lo[t] > l) {
      lo[t + 1] = lo[t];
      hi[t + 1] = hi[t];
      --t;
    }
    lo[t + 1] = l;
    hi[t + 1] = h;
  }
  int m = 0;
  for (int s = 0; s < n; ++s) {
    if (m > 0 && lo[s] <= hi[m - 1]) {
      hi[m - 1] = std::fmax(hi[m - 1], hi[s]);
    } else {
      lo[m] = lo[s];
      hi[m] = hi[s];
      ++m;
    }
  }
  return m;
}

// Narrows [u0, u1] to the u of an output row where s u + r lies in [l, h],
// widened by one pixel; leaves it empty (u0 > u1) when there are none.
INVFAST_HOST_DEVICE void solve_row(double s, double r, double l, double h, double& u0, double& u1) {
  if (std::fabs(s) < 1e-12) {
    if (!(r >= l && r <= h)) {
      u0 = 1.0;
      u1 = 0.0;
    }
    return;
  }
  double t0 = (l - r) / s, t1 = (h - r) / s;
  if (t0 > t1) {
    const double t = t0;
    t0 = t1;
    t1 = t;
  }
  u0 = std::fmax(u0, t0 - 1.0);
  u1 = std::fmin(u1, t1 + 1.0);
}

// The weight with which the footprint of the position (x, y) reads pixel
// (xi, yi) of an H x W plane: the sum over its taps that land there (with
// reflection, several can).
template <typename coord_t>
INVFAST_HOST_DEVICE coord_t tap_weight(coord_t x, coord_t y, int64_t xi, int64_t yi, int64_t H,
                                       int64_t W, const Options& opt) {
  coord_t w = 0;
  if (opt.mode == Interp::Bicubic) {
    const auto fp = cubic_footprint(x, y, H, W, W, int64_t(1), opt.padding, opt.align_corners);
    if (fp.valid) {
      for (int j = 0; j < 4; ++j) {
        for (int t = 0; t < 4; ++t) {
          if (fp.oy[j] == yi * W && fp.ox[t] == xi) {
            w += fp.wy[j] * fp.wx[t];
          }
        }
      }
    }
    return w;
  }
  const auto fp = footprint(x, y, H, W, W, int64_t(1), opt.mode, opt.padding, opt.align_corners);
  const int64_t target = yi * W + xi;
  for (int t = 0; t < 4; ++t) {
    if (fp.offset[t] == target) {
      w += fp.weight[t];
    }
  }
  return w;
}

// Calls visit(u, v, w) for every output pixel (u, v) of an Ho x Wo view whose
// footprint reads input pixel (xi, yi) of an H x W plane with a non-zero
// weight w, once each, in an order fixed by the arguments alone. `m` is the
// view's matrix (row-major, rows 3 apart), which maps input to output.
template <typename coord_t, typename Visit>
INVFAST_HOST_DEVICE void for_each_reader(const double* m, int64_t xi, int64_t yi, int64_t H,
                                         int64_t W, int64_t Ho, int64_t Wo, const Options& opt,
                                         Visit&& visit) {
  const auto inv = invert_affine<coord_t>(m, 3);
  const auto invd = invert_affine<double>(m, 3);
  if (!(finite(invd.a) && finite(invd.b) && finite(invd.c) && finite(invd.d) && finite(invd.e) &&
        finite(invd.f))) {
    return;  // such a view reads nothing
  }
  // How far a coord_t position (source_position) can be from the exact one:
  // the rounding of the coefficients and of the two products and sums.
  const double ulp = 8 * unit_roundoff<coord_t>();
  const double umax = static_cast<double>(Wo), vmax = static_cast<double>(Ho);
  const double tol_x =
      ulp * (std::fabs(invd.a) * umax + std::fabs(invd.b) * vmax + std::fabs(invd.c) + 1.0);
  const double tol_y =
      ulp * (std::fabs(invd.d) * umax + std::fabs(invd.e) * vmax + std::fabs(invd.f) + 1.0);
  // The range of raw source positions over the output image (its corners).
  double xr[2] = {HUGE_VAL, -HUGE_VAL}, yr[2] = {HUGE_VAL, -HUGE_VAL};
  for (int cu = 0; cu < 2; ++cu) {
    for (int cv = 0; cv < 2; ++cv) {
      const double u = cu ? Wo - 1.0 : 0.0, v = cv ? Ho - 1.0 : 0.0;
      const double x = invd.a * u + invd.b * v + invd.c;
      const double y = invd.d * u + invd.e * v + invd.f;
      xr[0] = std::fmin(xr[0], x - 1.0 - tol_x);
      xr[1] = std::fmax(xr[1], x + 1.0 + tol_x);
      yr[0] = std::fmin(yr[0], y - 1.0 - tol_y);
      yr[1] = std::fmax(yr[1], y + 1.0 + tol_y);
    }
  }
  // The padding's own rounding, at the magnitude of these positions.
  const double slack_x =
      1e-3 + ulp * (std::fmax(std::fabs(xr[0]), std::fabs(xr[1])) + static_cast<double>(W));
  const double slack_y =
      1e-3 + ulp * (std::fmax(std::fabs(yr[0]), std::fabs(yr[1])) + static_cast<double>(H));
  double xlo[kMaxIntervals], xhi[kMaxIntervals], ylo[kMaxIntervals], yhi[kMaxIntervals];
  const int nx = tap_preimage(xi, W, opt, xr[0], xr[1], slack_x, xlo, xhi);
  const int ny = tap_preimage(yi, H, opt, yr[0], yr[1], slack_y, ylo, yhi);
  for (int iy = 0; iy < ny; ++iy) {
    for (int ix = 0; ix < nx; ++ix) {
      // The search box: the rectangle widened by the position error.
      const double bx0 = xlo[ix] - tol_x, bx1 = xhi[ix] + tol_x;
      const double by0 = ylo[iy] - tol_y, by1 = yhi[iy] + tol_y;
      // The output rows it reaches: map its corners forward.
      double v_lo = HUGE_VAL, v_hi = -HUGE_VAL;
      for (int cx = 0; cx < 2; ++cx) {
        for (int cy = 0; cy < 2; ++cy) {
          const double x = cx ? bx1 : bx0, y = cy ? by1 : by0;
          const double v = m[3] * x + m[4] * y + m[5];
          v_lo = std::fmin(v_lo, v);
          v_hi = std::fmax(v_hi, v);
        }
      }
      // Clamped into [-1, Ho] before the conversion, which huge or NaN
      // values would make undefined.
      const int64_t v0 =
          static_cast<int64_t>(std::fmin(std::fmax(std::ceil(v_lo) - 1.0, 0.0), double(Ho)));
      const int64_t v1 =
          static_cast<int64_t>(std::fmax(std::fmin(std::floor(v_hi) + 1.0, Ho - 1.0), -1.0));
      for (int64_t v = v0; v <= v1; ++v) {
        double u0 = 0.0, u1 = Wo - 1.0;
        solve_row(invd.a, invd.b * v + invd.c, bx0, bx1, u0, u1);
        solve_row(invd.d, invd.e * v + invd.f, by0, by1, u0, u1);
        if (u0 > u1) {
          continue;
        }
        const int64_t ua = static_cast<int64_t>(std::ceil(u0));
        const int64_t ub = static_cast<int64_t>(std::floor(u1));
        for (int64_t u = ua; u <= ub; ++u) {
          coord_t x, y;
          source_position(inv, u, v, x, y);
          // The rectangles are disjoint, so each output pixel is accepted
          // for at most one of them: on the position its footprint uses.
          const double xd = x, yd = y;
          if (!(xd >= xlo[ix] && xd <= xhi[ix] && yd >= ylo[iy] && yd <= yhi[iy])) {
            continue;
          }
          const coord_t w = tap_weight(x, y, xi, yi, H, W, opt);
          if (w != coord_t(0)) {
            visit(u, v, w);
          }
        }
      }
    }
  }
}

}  // namespace gather
}  // namespace warp
}  // namespace invfast
