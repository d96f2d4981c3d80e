// Unit tests of csrc/affine_warp/affine_warp_gather.h, the enumeration behind
// the deterministic CUDA image gradient: for every input pixel, the output
// pixels it lists must be exactly those whose footprint (the one the forward
// and the scattering backward use) reads it, with the same weight, once each.
#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "../../csrc/affine_warp/affine_warp_gather.h"
#include "harness.h"

using invfast::warp::cubic_footprint;
using invfast::warp::footprint;
using invfast::warp::Interp;
using invfast::warp::invert_affine;
using invfast::warp::Options;
using invfast::warp::Padding;
using invfast::warp::source_position;
using invfast::warp::gather::for_each_reader;

namespace {

struct Shape {
  int64_t H, W, Ho, Wo;
};

// (output pixel index) -> weight, per input pixel.
using Readers = std::vector<std::map<int64_t, double>>;

// The scatter: every output pixel's footprint, added into the input pixels it
// reads, as the atomic backward does. Repeated taps of one pixel add up.
template <typename coord_t>
Readers scatter(const double m[6], const Shape& s, const Options& opt) {
  Readers readers(s.H * s.W);
  const auto inv = invert_affine<coord_t>(m, 3);
  for (int64_t v = 0; v < s.Ho; ++v) {
    for (int64_t u = 0; u < s.Wo; ++u) {
      coord_t x, y;
      source_position(inv, u, v, x, y);
      const auto add = [&](int64_t offset, coord_t w) {
        readers[offset][v * s.Wo + u] += static_cast<double>(w);
      };
      if (opt.mode == Interp::Bicubic) {
        const auto fp =
            cubic_footprint(x, y, s.H, s.W, s.W, int64_t(1), opt.padding, opt.align_corners);
        if (!fp.valid) {
          continue;
        }
        for (int j = 0; j < 4; ++j) {
          for (int t = 0; t < 4; ++t) {
            if (fp.ox[t] >= 0 && fp.oy[j] >= 0) {
              add(fp.oy[j] + fp.ox[t], fp.wy[j] * fp.wx[t]);
            }
          }
        }
        continue;
      }
      const auto fp =
          footprint(x, y, s.H, s.W, s.W, int64_t(1), opt.mode, opt.padding, opt.align_corners);
      for (int t = 0; t < 4; ++t) {
        if (fp.offset[t] >= 0) {
          add(fp.offset[t], fp.weight[t]);
        }
      }
    }
  }
  return readers;
}

// Compares the gather's readers of the input pixels in [x0, x1) x [y0, y1)
// with the scatter's; `what` names the case in failures.
template <typename coord_t>
void check_pixels(const double m[6], const Shape& s, const Options& opt, int64_t x0, int64_t x1,
                  int64_t y0, int64_t y1, const std::string& what) {
  const Readers expected = scatter<coord_t>(m, s, opt);
  const double rtol = sizeof(coord_t) == 4 ? 1e-6 : 1e-12;
  int reported = 0;
  for (int64_t yi = y0; yi < y1; ++yi) {
    for (int64_t xi = x0; xi < x1; ++xi) {
      std::map<int64_t, double> got;
      bool twice = false;
      for_each_reader<coord_t>(m, xi, yi, s.H, s.W, s.Ho, s.Wo, opt,
                               [&](int64_t u, int64_t v, coord_t w) {
                                 twice = twice || got.count(v * s.Wo + u) > 0;
                                 got[v * s.Wo + u] = static_cast<double>(w);
                               });
      std::map<int64_t, double> want;
      for (const auto& [o, w] : expected[yi * s.W + xi]) {
        if (w != 0.0) {
          want[o] = w;
        }
      }
      bool same = !twice && got.size() == want.size();
      for (auto g = got.begin(), e = want.begin(); same && g != got.end(); ++g, ++e) {
        same = g->first == e->first && invfast_test::near(g->second, e->second, rtol, rtol);
      }
      if (!same && reported++ < 3) {
        invfast_test::fail(__FILE__, __LINE__,
                           what + ": pixel (" + std::to_string(xi) + ", " + std::to_string(yi) +
                               ") has " + std::to_string(got.size()) + " readers, expected " +
                               std::to_string(want.size()) + (twice ? ", one listed twice" : ""));
      }
    }
  }
}

// Rotation by `deg` about (cx, cy), zoom s, shear k, then a shift (tx, ty).
void affine(double deg, double s, double k, double cx, double cy, double tx, double ty,
            double m[6]) {
  const double r = deg * 3.14159265358979323846 / 180.0;
  const double c = std::cos(r) * s, n = std::sin(r) * s;
  const double a = c, b = n + k * c, d = -n, e = c - k * n;
  m[0] = a;
  m[1] = b;
  m[2] = cx + tx - (a * cx + b * cy);
  m[3] = d;
  m[4] = e;
  m[5] = cy + ty - (d * cx + e * cy);
}

const char* name(Interp mode) {
  return mode == Interp::Bilinear ? "bilinear" : mode == Interp::Nearest ? "nearest" : "bicubic";
}

const char* name(Padding pad) {
  switch (pad) {
    case Padding::Zeros:
      return "zeros";
    case Padding::Border:
      return "border";
    case Padding::Reflection:
      return "reflection";
    default:
      return "fill";
  }
}

template <typename coord_t>
void every_option(const double m[6], const Shape& s, const std::string& what) {
  for (Interp mode : {Interp::Bilinear, Interp::Nearest, Interp::Bicubic}) {
    for (Padding pad : {Padding::Zeros, Padding::Border, Padding::Reflection, Padding::Fill}) {
      for (bool ac : {false, true}) {
        const Options opt{mode, pad, ac};
        check_pixels<coord_t>(m, s, opt, 0, s.W, 0, s.H,
                              what + " " + name(mode) + " " + name(pad) +
                                  (ac ? " align_corners" : "") +
                                  (sizeof(coord_t) == 4 ? " float" : " double"));
      }
    }
  }
}

template <typename coord_t>
void typical_views() {
  const Shape s{13, 17, 11, 19};
  double m[6];
  const double cx = 8.0, cy = 6.0;
  struct View {
    const char* what;
    double deg, zoom, shear, tx, ty;
  };
  const View views[] = {
      {"identity", 0, 1, 0, 0, 0},        {"rotation", 30, 1, 0, 0.5, -1.25},
      {"right angle", 90, 1, 0, 0, 0},    {"zoom in", -17, 3.5, 0, 1, 2},
      {"zoom out", 12, 0.4, 0.2, -2, 1},  {"far zoom out", 5, 0.02, 0, 0, 0},
      {"shear", 0, 1.1, 0.6, 3, -2},      {"shifted away", 0, 1, 0, 60, 0},
      {"half pixel", 0, 1, 0, 0.5, -0.5},
  };
  for (const View& view : views) {
    affine(view.deg, view.zoom, view.shear, cx, cy, view.tx, view.ty, m);
    every_option<coord_t>(m, s, view.what);
  }
  // A horizontal flip and a vertical one (negative determinant).
  affine(0, 1, 0, cx, cy, 0, 0, m);
  m[0] = -1;
  m[2] = 2 * cx;
  every_option<coord_t>(m, s, "flip");
  // One-pixel axes.
  affine(20, 1.3, 0, 0, 0, 0.3, 0.2, m);
  every_option<coord_t>(m, Shape{1, 9, 4, 7}, "one row");
  every_option<coord_t>(m, Shape{9, 1, 7, 3}, "one column");
}

}  // namespace

TEST_CASE(gather_lists_the_scatters_readers_float) { typical_views<float>(); }

TEST_CASE(gather_lists_the_scatters_readers_double) { typical_views<double>(); }

TEST_CASE(gather_random_views) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> angle(-180, 180), zoom(-1.5, 1.5), shear(-0.5, 0.5),
      shift(-6, 6);
  double m[6];
  for (int trial = 0; trial < 12; ++trial) {
    affine(angle(rng), std::exp(zoom(rng)), shear(rng), 7.0, 5.0, shift(rng), shift(rng), m);
    every_option<float>(m, Shape{11, 15, 12, 10}, "random view " + std::to_string(trial));
  }
}

// A strong zoom far from the origin: float positions there are 0.004 apart
// and carry rounding errors of about as much, while one output pixel moves
// the position by far less. Every output pixel that its float position makes
// a reader must still be found (a search on exact positions misses some).
TEST_CASE(gather_float_positions_far_from_the_origin) {
  const Shape s{3, 140000, 3, 3000};
  // x = a u + b v + c, y = v / 2; m maps input to output.
  const double a = 0.000227628, b = 52631.810286, c = 5225.584133;
  const double m[6] = {1.0 / a, -b / a, -c / a, 0.0, 2.0, 0.0};
  for (Interp mode : {Interp::Bilinear, Interp::Nearest, Interp::Bicubic}) {
    for (Padding pad : {Padding::Zeros, Padding::Border, Padding::Reflection}) {
      const Options opt{mode, pad, false};
      check_pixels<float>(m, s, opt, 57852, 57862, 0, 3,
                          std::string("far zoom in ") + name(mode) + " " + name(pad));
    }
  }
}

// Reflection of positions many periods away, where the padding's own float
// arithmetic rounds by more than the default slack.
TEST_CASE(gather_reflection_many_periods_away) {
  const Shape s{5, 6, 4, 40};
  double m[6];
  // x = 52000.25 + 0.3 u, y = 0.9 v - 0.2.
  m[0] = 1.0 / 0.3;
  m[1] = 0.0;
  m[2] = -52000.25 / 0.3;
  m[3] = 0.0;
  m[4] = 1.0 / 0.9;
  m[5] = 0.2 / 0.9;
  for (Interp mode : {Interp::Bilinear, Interp::Bicubic}) {
    for (bool ac : {false, true}) {
      const Options opt{mode, Padding::Reflection, ac};
      check_pixels<float>(
          m, s, opt, 0, s.W, 0, s.H,
          std::string("reflection far away ") + name(mode) + (ac ? " align_corners" : ""));
    }
  }
}

TEST_CASE(gather_singular_view_reads_nothing) {
  const double m[6] = {1, 2, 0, 2, 4, 0};
  const Options opt{Interp::Bilinear, Padding::Zeros, false};
  int calls = 0;
  for_each_reader<float>(m, 1, 1, 4, 4, 4, 4, opt, [&](int64_t, int64_t, float) { ++calls; });
  CHECK_EQ(calls, 0);
}

// Matrices at the edge of double range: the search must stay in bounds and
// agree with the scatter (which reads nothing or little here).
TEST_CASE(gather_extreme_scales) {
  const Shape s{6, 7, 5, 4};
  for (double k : {1e-200, 1e-30, 1e30, 1e200}) {
    const double m[6] = {k, 0.0, 3.0, 0.0, k, -2.0};
    for (Padding pad : {Padding::Zeros, Padding::Border, Padding::Reflection}) {
      const Options opt{Interp::Bilinear, pad, false};
      check_pixels<float>(m, s, opt, 0, s.W, 0, s.H, "scale " + std::to_string(k));
      check_pixels<double>(m, s, opt, 0, s.W, 0, s.H, "scale " + std::to_string(k));
    }
  }
}
