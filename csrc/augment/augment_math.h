// Per-sample arithmetic of RandomAffine's parameter sampling, shared by the
// CPU and CUDA kernels.
//
// Counter-based uniforms: a pure integer hash of (seed, step, sample id, draw)
// with splitmix64's finaliser,
//
//   key    = mix(mix(seed) + step)
//   z      = mix(mix(id + key) + draw * golden)
//   u      = (z >> 40) * 2^-24                     (24 random bits, exact in float)
//
// all modulo 2^64, so every device gives the same bits.
//
// Matrices: 14 uniforms per sample become one (2, 3) matrix that flips,
// scales, shears, rotates and shifts about the output's centre, after an
// optional random resized crop, or the identity with probability 1 - p. The
// arithmetic follows invfast.reference.augment.random_affine_matrices
// operation by operation, in double.
#pragma once

#include <cmath>
#include <cstdint>

#include "../common.h"

namespace invfast {
namespace augment {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

// Uniforms per sample, and which column each draw reads.
constexpr int kDraws = 14;
enum Column : int {
  kAngle = 0,
  kAngleChoice = 1,
  kShiftX = 2,
  kShiftY = 3,
  kScale = 4,
  kShearX = 5,
  kShearY = 6,
  kHFlip = 7,
  kVFlip = 8,
  kApply = 9,
  kCropArea = 10,
  kCropRatio = 11,
  kCropX = 12,
  kCropY = 13,
};

INVFAST_HOST_DEVICE uint64_t mix64(uint64_t z) {
  z += kGolden;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

INVFAST_HOST_DEVICE uint64_t counter_key(uint64_t seed, uint64_t step) {
  return mix64(mix64(seed) + step);
}

// The hash state of one sample, from which its draws follow.
INVFAST_HOST_DEVICE uint64_t sample_state(uint64_t key, uint64_t id) { return mix64(id + key); }

INVFAST_HOST_DEVICE double counter_draw(uint64_t state, uint64_t draw) {
  const uint64_t z = mix64(state + draw * kGolden);
  return static_cast<double>(z >> 40) * (1.0 / 16777216.0);
}

// The ranges of one RandomAffine. An absent range is the one that always
// draws the default: degrees and shears (0, 0), scale (1, 1), translate (0, 0).
// NOTE: those draw the default exactly (lo + 0 * u is lo for finite u, and
// c + -0.0 is c), so absent and zero ranges give the same bits.
struct AffineRanges {
  double degrees[2];
  double translate[2];  // largest shift as a fraction of the output's W and H
  double scale[2];
  double shear_x[2];
  double shear_y[2];
  double hflip, vflip, p;
  bool has_angles;  // add a choice from a list of angles to the degrees draw
  bool crop;
  double crop_scale[2];
  double log_ratio[2];  // log of the crop's aspect ratio range
  int64_t H, W;         // input size, for the crop
  int64_t Ho, Wo;       // output size
};

INVFAST_HOST_DEVICE double draw_range(const double range[2], double u) {
  return range[0] + (range[1] - range[0]) * u;
}

// Which of n angles a uniform picks. NOTE: clamped to [0, n - 1] in double
// before the conversion, so a uniform outside [0, 1) (or NaN, which picks 0)
// never indexes outside the list.
INVFAST_HOST_DEVICE int64_t angle_index(double u, int64_t n) {
  const double x = u * static_cast<double>(n);
  if (!(x >= 1.0)) {
    return 0;
  }
  return x >= static_cast<double>(n - 1) ? n - 1 : static_cast<int64_t>(x);
}

// Side of a crop, clamped to the image's. NOTE: NaN stays NaN, as torch.clamp keeps it.
INVFAST_HOST_DEVICE double clamp_side(double side, double limit) {
  return side > limit ? limit : side;
}

// One sample's (2, 3) matrix, row-major into m. `u` holds its kDraws
// uniforms, `angle_choice` the picked entry of the angle list (unused
// without one).
INVFAST_HOST_DEVICE void random_affine(const AffineRanges& r, const double* u, double angle_choice,
                                       double* m) {
  constexpr double kDegToRad = 3.14159265358979323846 / 180.0;
  const double Wo = static_cast<double>(r.Wo), Ho = static_cast<double>(r.Ho);

  double angle = draw_range(r.degrees, u[kAngle]);
  if (r.has_angles) {
    angle = angle + angle_choice;
  }
  const double tx = (2.0 * u[kShiftX] - 1.0) * (r.translate[0] * Wo);
  const double ty = (2.0 * u[kShiftY] - 1.0) * (r.translate[1] * Ho);
  const double scale = draw_range(r.scale, u[kScale]);
  const double shx = std::tan(draw_range(r.shear_x, u[kShearX]) * kDegToRad);
  const double shy = std::tan(draw_range(r.shear_y, u[kShearY]) * kDegToRad);
  const double flip = u[kHFlip] < r.hflip ? -1.0 : 1.0;
  const double vf = u[kVFlip] < r.vflip ? -1.0 : 1.0;

  // Linear part L = R(angle) @ Shear @ diag(scale * flip, scale * vf), with R
  // = [[cos, sin], [-sin, cos]] (counter-clockwise on screen, y pointing down),
  // then t = c + shift - L c keeps the output's centre c fixed.
  const double rad = angle * kDegToRad;
  const double cs = std::cos(rad), sn = std::sin(rad);
  const double s00 = scale * flip, s01 = scale * shx * vf;
  const double s10 = scale * shy * flip, s11 = scale * vf;
  const double cx = (Wo - 1.0) / 2.0, cy = (Ho - 1.0) / 2.0;
  double a[6];
  a[0] = cs * s00 + sn * s10;
  a[1] = cs * s01 + sn * s11;
  a[3] = -sn * s00 + cs * s10;
  a[4] = -sn * s01 + cs * s11;
  a[2] = cx + tx - (a[0] * cx + a[1] * cy);
  a[5] = cy + ty - (a[3] * cx + a[4] * cy);

  if (r.crop) {
    // The crop box (x0, y0, w, h) of the input fills the output: output pixel
    // centre u reads input x = x0 + (u + 0.5) w / Wo - 0.5.
    const double area = (r.crop_scale[0] + (r.crop_scale[1] - r.crop_scale[0]) * u[kCropArea]) *
                        static_cast<double>(r.H * r.W);
    const double ratio = std::exp(draw_range(r.log_ratio, u[kCropRatio]));
    const double W = static_cast<double>(r.W), H = static_cast<double>(r.H);
    const double w = clamp_side(std::sqrt(area * ratio), W);
    const double h = clamp_side(std::sqrt(area / ratio), H);
    const double x0 = (W - w) * u[kCropX];
    const double y0 = (H - h) * u[kCropY];
    const double sx = Wo / w, sy = Ho / h;
    const double c[9] = {
        sx,  0.0, (0.5 - x0) * sx - 0.5,  //
        0.0, sy,  (0.5 - y0) * sy - 0.5,  //
        0.0, 0.0, 1.0,
    };
    // The crop first, then the affine map: rows of A @ C with A's last row
    // [0, 0, 1]. Every term is kept, as the 3x3 product of the reference does.
    for (int i = 0; i < 2; ++i) {
      const double a0 = a[3 * i], a1 = a[3 * i + 1], a2 = a[3 * i + 2];
      for (int j = 0; j < 3; ++j) {
        m[3 * i + j] = a0 * c[j] + a1 * c[3 + j] + a2 * c[6 + j];
      }
    }
  } else {
    for (int k = 0; k < 6; ++k) {
      m[k] = a[k];
    }
  }

  if (r.p < 1.0 && !(u[kApply] < r.p)) {
    m[0] = 1.0;
    m[1] = 0.0;
    m[2] = 0.0;
    m[3] = 0.0;
    m[4] = 1.0;
    m[5] = 0.0;
  }
}

// Sample b's matrix, as float32, from row b of the (B, 14) uniforms u with
// strides (s0, s1) and the list of n_angles angles to choose from.
INVFAST_HOST_DEVICE void random_affine_sample(const AffineRanges& r, const double* u, int64_t s0,
                                              int64_t s1, int64_t b, const double* angles,
                                              int64_t n_angles, float* out) {
  double col[kDraws];
  for (int k = 0; k < kDraws; ++k) {
    col[k] = u[b * s0 + k * s1];
  }
  const double choice = r.has_angles ? angles[angle_index(col[kAngleChoice], n_angles)] : 0.0;
  double m[6];
  random_affine(r, col, choice, m);
  for (int k = 0; k < 6; ++k) {
    out[b * 6 + k] = static_cast<float>(m[k]);
  }
}

}  // namespace augment
}  // namespace invfast
