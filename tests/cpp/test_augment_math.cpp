// Unit tests of csrc/augment/augment_math.h: the counter-based hash and the
// per-sample matrix that the CPU and CUDA sampling kernels share.
#include <cmath>
#include <cstdint>
#include <limits>

#include "../../csrc/augment/augment_math.h"
#include "harness.h"

using invfast::augment::AffineRanges;
using invfast::augment::angle_index;
using invfast::augment::counter_draw;
using invfast::augment::counter_key;
using invfast::augment::kDraws;
using invfast::augment::mix64;
using invfast::augment::random_affine;
using invfast::augment::sample_state;

namespace {

// Ranges that draw the identity: no rotation, shift, zoom, shear, flip or crop.
AffineRanges identity_ranges(int64_t H, int64_t W) {
  AffineRanges r{};
  r.scale[0] = r.scale[1] = 1.0;
  r.p = 1.0;
  r.H = r.Ho = H;
  r.W = r.Wo = W;
  return r;
}

void fill(double* u, double value) {
  for (int k = 0; k < kDraws; ++k) {
    u[k] = value;
  }
}

}  // namespace

TEST_CASE(mix_is_splitmix64) {
  // The first two outputs of splitmix64 seeded with 0: its state advances by
  // the golden gamma before each mix.
  CHECK_EQ(mix64(0), 0xE220A8397B1DCDAFULL);
  CHECK_EQ(mix64(0x9E3779B97F4A7C15ULL), 0x6E789E6AA1B965F4ULL);
}

TEST_CASE(draws_have_24_bits_in_unit_interval) {
  const uint64_t key = counter_key(7, 3);
  double sum = 0.0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const double u = counter_draw(sample_state(key, static_cast<uint64_t>(i)), i % 14);
    CHECK(u >= 0.0 && u < 1.0);
    CHECK_EQ(u * 16777216.0, std::floor(u * 16777216.0));
    sum += u;
  }
  CHECK_NEAR(sum / n, 0.5, 0.01, 0);
  // The key mixes seed and step: neither is a shift of the other.
  CHECK(counter_key(7, 3) != counter_key(8, 2));
  CHECK(counter_key(7, 3) != counter_key(7, 4));
}

TEST_CASE(angle_index_stays_in_the_list) {
  CHECK_EQ(angle_index(0.0, 4), 0);
  CHECK_EQ(angle_index(0.26, 4), 1);
  CHECK_EQ(angle_index(0.9999, 4), 3);
  CHECK_EQ(angle_index(1.0, 4), 3);
  CHECK_EQ(angle_index(7.5, 4), 3);
  CHECK_EQ(angle_index(-0.5, 4), 0);
  CHECK_EQ(angle_index(std::numeric_limits<double>::quiet_NaN(), 4), 0);
  CHECK_EQ(angle_index(0.7, 1), 0);
}

TEST_CASE(default_ranges_give_the_identity) {
  double u[kDraws], m[6];
  fill(u, 0.5);
  random_affine(identity_ranges(9, 12), u, 0.0, m);
  const double expected[6] = {1, 0, 0, 0, 1, 0};
  for (int k = 0; k < 6; ++k) {
    CHECK_EQ(m[k], expected[k]);
  }
}

TEST_CASE(flips_mirror_about_the_centre) {
  AffineRanges r = identity_ranges(9, 12);
  r.hflip = 1.0;
  r.vflip = 1.0;
  double u[kDraws], m[6];
  fill(u, 0.5);
  random_affine(r, u, 0.0, m);
  // x -> 11 - x, y -> 8 - y.
  CHECK_EQ(m[0], -1.0);
  CHECK_EQ(m[2], 11.0);
  CHECK_EQ(m[4], -1.0);
  CHECK_EQ(m[5], 8.0);
  CHECK_EQ(m[1], 0.0);
  CHECK_EQ(m[3], 0.0);
}

TEST_CASE(rotation_shift_and_zoom) {
  AffineRanges r = identity_ranges(11, 11);
  r.degrees[0] = 0.0;
  r.degrees[1] = 180.0;  // u = 0.5 draws 90
  r.has_angles = true;
  r.translate[0] = 0.5;  // u = 0.75 shifts by (2 u - 1) 0.5 W = 2.75
  r.scale[0] = 2.0;
  r.scale[1] = 2.0;
  double u[kDraws], m[6];
  fill(u, 0.5);
  u[2] = 0.75;
  random_affine(r, u, -180.0, m);  // 90 - 180 = -90 degrees
  // Counter-clockwise on screen by -90 is [[0, -1], [1, 0]], times 2.
  CHECK_NEAR(m[0], 0.0, 1e-12, 0);
  CHECK_NEAR(m[1], -2.0, 0, 1e-12);
  CHECK_NEAR(m[3], 2.0, 0, 1e-12);
  CHECK_NEAR(m[4], 0.0, 1e-12, 0);
  // The centre (5, 5) maps to itself plus the shift.
  CHECK_NEAR(m[0] * 5 + m[1] * 5 + m[2], 5.0 + 2.75, 1e-12, 1e-12);
  CHECK_NEAR(m[3] * 5 + m[4] * 5 + m[5], 5.0, 1e-12, 1e-12);
}

TEST_CASE(skipped_samples_get_the_identity) {
  AffineRanges r = identity_ranges(9, 12);
  r.degrees[0] = 10.0;
  r.degrees[1] = 20.0;
  r.p = 0.3;
  double u[kDraws], m[6];
  fill(u, 0.5);
  random_affine(r, u, 0.0, m);
  CHECK_EQ(m[0], 1.0);
  CHECK_EQ(m[1], 0.0);
  CHECK_EQ(m[2], 0.0);
  u[invfast::augment::kApply] = 0.2;
  random_affine(r, u, 0.0, m);
  CHECK(m[1] != 0.0);
}

TEST_CASE(crop_fills_the_output) {
  AffineRanges r = identity_ranges(40, 60);
  r.Ho = 16;
  r.Wo = 16;
  r.crop = true;
  r.crop_scale[0] = r.crop_scale[1] = 0.25;  // a 600-pixel box, ratio 1: 24.49...
  double u[kDraws], m[6];
  fill(u, 0.0);  // at the top left corner
  random_affine(r, u, 0.0, m);
  const double side = std::sqrt(0.25 * 40 * 60);
  CHECK_NEAR(m[0], 16 / side, 0, 1e-12);
  CHECK_NEAR(m[4], 16 / side, 0, 1e-12);
  // The box's outer edges, x = -0.5 and x = side - 0.5, land on the output's.
  CHECK_NEAR(m[0] * -0.5 + m[2], -0.5, 1e-12, 0);
  CHECK_NEAR(m[0] * (side - 0.5) + m[2], 15.5, 1e-12, 0);
  // A box wider than the image is clamped to its width.
  r.log_ratio[0] = r.log_ratio[1] = std::log(20.0);
  random_affine(r, u, 0.0, m);
  CHECK_NEAR(m[0], 16.0 / 60.0, 0, 1e-12);
}
