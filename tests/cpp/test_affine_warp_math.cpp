// Unit tests of csrc/affine_warp/affine_warp_math.h: the inverse map, the
// padding rules and the interpolation footprints that the CPU and CUDA warp
// kernels share.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "../../csrc/affine_warp/affine_warp_math.h"
#include "harness.h"

using invfast::warp::Footprint;
using invfast::warp::footprint;
using invfast::warp::Interp;
using invfast::warp::invert_affine;
using invfast::warp::pad_coordinate;
using invfast::warp::Padding;
using invfast::warp::reflect;
using invfast::warp::source_position;

namespace {

// Rotation by `deg` about (cx, cy), zoom s, then a shift (tx, ty); row-major 2x3.
void similarity(double deg, double s, double cx, double cy, double tx, double ty, double m[6]) {
  const double r = deg * 3.14159265358979323846 / 180.0, c = std::cos(r) * s, n = std::sin(r) * s;
  m[0] = c;
  m[1] = n;
  m[2] = cx + tx - (c * cx + n * cy);
  m[3] = -n;
  m[4] = c;
  m[5] = cy + ty - (-n * cx + c * cy);
}

double weight_sum(const Footprint<double>& fp) {
  double sum = fp.outside;
  for (int k = 0; k < 4; ++k) {
    sum += fp.weight[k];
  }
  return sum;
}

// Bilinear interpolation of a plane through a footprint; outside taps read `fill`.
double sample(const Footprint<double>& fp, const double* plane, double fill) {
  double acc = fp.outside * fill;
  for (int k = 0; k < 4; ++k) {
    if (fp.offset[k] >= 0) {
      acc += fp.weight[k] * plane[fp.offset[k]];
    }
  }
  return acc;
}

}  // namespace

TEST_CASE(inverse_undoes_the_map) {
  double m[6];
  similarity(37.0, 1.3, 15.5, 7.5, 2.0, -3.0, m);
  const auto inv = invert_affine<double>(m, 3);
  for (double u : {-4.0, 0.0, 3.0, 31.0}) {
    for (double v : {-1.0, 0.0, 9.0, 15.0}) {
      // Forward map of (u, v), then the inverse, gives (u, v) back.
      const double x = m[0] * u + m[1] * v + m[2], y = m[3] * u + m[4] * v + m[5];
      const double bu = inv.a * x + inv.b * y + inv.c, bv = inv.d * x + inv.e * y + inv.f;
      CHECK_NEAR(bu, u, 1e-12, 1e-12);
      CHECK_NEAR(bv, v, 1e-12, 1e-12);
    }
  }
}

TEST_CASE(inverse_reads_rows_of_a_3x3) {
  const float m[9] = {2.0f, 0.0f, 4.0f, 0.0f, 0.5f, -1.0f, 0.0f, 0.0f, 1.0f};
  const auto inv = invert_affine<float>(m, 3);
  CHECK_NEAR(inv.a, 0.5, 0, 1e-7);
  CHECK_NEAR(inv.c, -2.0, 0, 1e-7);
  CHECK_NEAR(inv.e, 2.0, 0, 1e-7);
  CHECK_NEAR(inv.f, 2.0, 0, 1e-7);
  CHECK_EQ(inv.b, 0.0f);
  CHECK_EQ(inv.d, 0.0f);
}

TEST_CASE(singular_matrix_gives_non_finite_inverse) {
  const double m[6] = {1.0, 2.0, 0.0, 2.0, 4.0, 0.0};
  const auto inv = invert_affine<double>(m, 3);
  CHECK(!std::isfinite(inv.a) || !std::isfinite(inv.e));
}

TEST_CASE(source_position_of_identity_and_shift) {
  const double identity[6] = {1, 0, 0, 0, 1, 0};
  const double shift[6] = {1, 0, 2, 0, 1, 3};
  double x, y;
  source_position(invert_affine<double>(identity, 3), 5, 7, x, y);
  CHECK_EQ(x, 5.0);
  CHECK_EQ(y, 7.0);
  // The matrix moves input pixels by (2, 3); output (5, 7) reads input (3, 4).
  source_position(invert_affine<double>(shift, 3), 5, 7, x, y);
  CHECK_EQ(x, 3.0);
  CHECK_EQ(y, 4.0);
}

TEST_CASE(reflect_mirrors_with_period_twice_the_span) {
  CHECK_EQ(reflect(2.5, 0.0, 4.0), 2.5);
  CHECK_EQ(reflect(-1.0, 0.0, 4.0), 1.0);
  CHECK_EQ(reflect(5.0, 0.0, 4.0), 3.0);
  CHECK_EQ(reflect(9.0, 0.0, 4.0), 1.0);
  CHECK_EQ(reflect(-9.0, 0.0, 4.0), 1.0);
  CHECK_EQ(reflect(0.25, -0.5, 3.5), 0.25);
  CHECK_EQ(reflect(-1.0, -0.5, 3.5), 0.0);
  CHECK_EQ(reflect(7.0, 3.0, 3.0), 0.0);  // an empty span
}

TEST_CASE(padding_rules_per_mode) {
  const int64_t W = 4;
  // border: clamps to the outer pixel centres
  CHECK_EQ(pad_coordinate(-2.5, W, Padding::Border, false), 0.0);
  CHECK_EQ(pad_coordinate(3.75, W, Padding::Border, false), 3.0);
  CHECK_EQ(pad_coordinate(1.25, W, Padding::Border, false), 1.25);
  // reflection about the pixel centres 0 and W - 1
  CHECK_EQ(pad_coordinate(-1.0, W, Padding::Reflection, true), 1.0);
  CHECK_EQ(pad_coordinate(4.0, W, Padding::Reflection, true), 2.0);
  // reflection about the edges -0.5 and W - 0.5, then clipped to the centres
  CHECK_EQ(pad_coordinate(-1.0, W, Padding::Reflection, false), 0.0);
  CHECK_EQ(pad_coordinate(4.0, W, Padding::Reflection, false), 3.0);
  CHECK_EQ(pad_coordinate(-0.25, W, Padding::Reflection, false), 0.0);
  CHECK_EQ(pad_coordinate(5.0, W, Padding::Reflection, false), 2.0);
  // zeros and fill leave the coordinate outside
  CHECK_EQ(pad_coordinate(-2.5, W, Padding::Zeros, false), -2.5);
  CHECK_EQ(pad_coordinate(9.0, W, Padding::Fill, true), 9.0);
}

TEST_CASE(bilinear_footprint_weights_and_offsets) {
  const int64_t H = 4, W = 5, sh = W, sw = 1;
  const auto fp = footprint(1.25, 2.5, H, W, sh, sw, Interp::Bilinear, Padding::Zeros, false);
  CHECK_EQ(fp.offset[0], 2 * sh + 1);
  CHECK_EQ(fp.offset[1], 2 * sh + 2);
  CHECK_EQ(fp.offset[2], 3 * sh + 1);
  CHECK_EQ(fp.offset[3], 3 * sh + 2);
  CHECK_NEAR(fp.weight[0], 0.375, 0, 1e-15);
  CHECK_NEAR(fp.weight[1], 0.125, 0, 1e-15);
  CHECK_NEAR(fp.weight[2], 0.375, 0, 1e-15);
  CHECK_NEAR(fp.weight[3], 0.125, 0, 1e-15);
  CHECK_EQ(fp.outside, 0.0);
}

TEST_CASE(integer_position_reads_one_pixel) {
  const auto fp = footprint(3.0, 1.0, 4, 5, 5, 1, Interp::Bilinear, Padding::Zeros, false);
  CHECK_EQ(fp.offset[0], 8);
  CHECK_EQ(fp.weight[0], 1.0);
  CHECK_EQ(fp.weight[1] + fp.weight[2] + fp.weight[3], 0.0);
  CHECK_EQ(fp.outside, 0.0);
}

TEST_CASE(channels_last_strides) {
  const int64_t C = 3, H = 4, W = 5;
  const auto fp = footprint(2.0, 3.0, H, W, W * C, C, Interp::Nearest, Padding::Zeros, false);
  CHECK_EQ(fp.offset[0], 3 * W * C + 2 * C);
}

TEST_CASE(taps_outside_are_skipped_and_counted) {
  // Half a pixel left of the image: the left taps fall outside.
  const auto fp = footprint(-0.5, 1.0, 4, 5, 5, 1, Interp::Bilinear, Padding::Zeros, false);
  CHECK_EQ(fp.offset[0], -1);
  CHECK_EQ(fp.weight[0], 0.0);
  CHECK_EQ(fp.offset[1], 5);
  CHECK_NEAR(fp.weight[1], 0.5, 0, 1e-15);
  CHECK_NEAR(fp.outside, 0.5, 0, 1e-15);
  CHECK_NEAR(weight_sum(fp), 1.0, 0, 1e-15);
}

TEST_CASE(far_huge_and_non_finite_positions_read_nothing) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  for (double x : {-1.0, 5.0, 1e30, -1e30, nan, inf, -inf}) {
    for (Padding pad : {Padding::Zeros, Padding::Fill}) {
      for (Interp mode : {Interp::Bilinear, Interp::Nearest}) {
        const auto fp = footprint(x, 1.0, 4, 5, 5, 1, mode, pad, false);
        for (int k = 0; k < 4; ++k) {
          CHECK_EQ(fp.offset[k], int64_t(-1));
        }
        CHECK_EQ(fp.outside, 1.0);
      }
    }
  }
  // Non-finite positions read nothing whatever the padding.
  const auto fp = footprint(nan, 1.0, 4, 5, 5, 1, Interp::Bilinear, Padding::Border, false);
  CHECK_EQ(fp.offset[0], int64_t(-1));
  CHECK_EQ(fp.outside, 1.0);
  // Border padding brings a huge but finite position back to the edge.
  const auto edge = footprint(1e30, 1.0, 4, 5, 5, 1, Interp::Bilinear, Padding::Border, false);
  CHECK_EQ(edge.offset[0], 5 + 4);
  CHECK_EQ(edge.outside, 0.0);
}

TEST_CASE(nearest_rounds_ties_to_even) {
  const auto a = footprint(1.5, 0.0, 1, 5, 5, 1, Interp::Nearest, Padding::Zeros, false);
  const auto b = footprint(2.5, 0.0, 1, 5, 5, 1, Interp::Nearest, Padding::Zeros, false);
  const auto c = footprint(2.6, 0.0, 1, 5, 5, 1, Interp::Nearest, Padding::Zeros, false);
  CHECK_EQ(a.offset[0], 2);
  CHECK_EQ(b.offset[0], 2);
  CHECK_EQ(c.offset[0], 3);
}

TEST_CASE(bilinear_reproduces_linear_functions) {
  // Interpolating f(x, y) = 0.5 x - 2 y + 3 anywhere inside the pixel centres
  // gives f exactly, up to rounding; weights are non-negative and sum to 1.
  const int64_t H = 6, W = 7;
  double plane[H * W];
  for (int64_t y = 0; y < H; ++y) {
    for (int64_t x = 0; x < W; ++x) {
      plane[y * W + x] = 0.5 * x - 2.0 * y + 3.0;
    }
  }
  std::mt19937 rng(1234);
  std::uniform_real_distribution<double> ux(0.0, W - 1.0), uy(0.0, H - 1.0);
  for (int i = 0; i < 1000; ++i) {
    const double x = ux(rng), y = uy(rng);
    for (Padding pad : {Padding::Zeros, Padding::Border, Padding::Reflection}) {
      const auto fp = footprint(x, y, H, W, W, 1, Interp::Bilinear, pad, true);
      for (int k = 0; k < 4; ++k) {
        CHECK(fp.weight[k] >= 0.0);
      }
      CHECK_NEAR(weight_sum(fp), 1.0, 1e-12, 0);
      CHECK_NEAR(sample(fp, plane, 0.0), 0.5 * x - 2.0 * y + 3.0, 1e-12, 1e-12);
    }
  }
}

TEST_CASE(weights_sum_to_one_everywhere_in_float) {
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> u(-3.0f, 10.0f);
  for (int i = 0; i < 2000; ++i) {
    const float x = u(rng), y = u(rng);
    for (Padding pad : {Padding::Zeros, Padding::Border, Padding::Reflection, Padding::Fill}) {
      for (bool ac : {false, true}) {
        const auto fp = footprint(x, y, 5, 8, 8, 1, Interp::Bilinear, pad, ac);
        float sum = fp.outside;
        for (int k = 0; k < 4; ++k) {
          sum += fp.weight[k];
          CHECK(fp.offset[k] >= -1 && fp.offset[k] < 5 * 8);
          CHECK(fp.offset[k] >= 0 || fp.weight[k] == 0.0f);
        }
        CHECK_NEAR(sum, 1.0, 1e-6, 0);
      }
    }
  }
}
