// CUDA kernels of the affine warp: one thread per output pixel, which loops
// over the K views of its sample (one launch for all of them), computes each
// source footprint once and applies it to every channel. Each thread inverts
// its matrices itself, so no inverse is stored and nothing syncs.
//
// The image gradient scatters with atomics by default; under
// torch.use_deterministic_algorithms(True) it gathers instead: one thread per
// input pixel enumerates, in a fixed order, the output pixels whose footprint
// can cover it, so the result is the same bit for bit on every run.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "affine_warp.h"

namespace invfast {
namespace warp {
namespace {

constexpr int kThreads = 256;

struct Geometry {
  int64_t K, B, C, H, W, Ho, Wo;
  int64_t mat_rows;
  int64_t in_sb, in_sc, in_sh, in_sw;
  int64_t out_sk, out_sb, out_sc, out_sh, out_sw;
};

// `out5` is the output (or output gradient) seen as (K, B, C, H', W').
Geometry geometry(const at::Tensor& in, const at::Tensor& out5, const at::Tensor& mats) {
  return {out5.size(0),   in.size(0),    in.size(1),     in.size(2),     in.size(3),
          out5.size(3),   out5.size(4),  mats.size(1),   in.stride(0),   in.stride(1),
          in.stride(2),   in.stride(3),  out5.stride(0), out5.stride(1), out5.stride(2),
          out5.stride(3), out5.stride(4)};
}

at::Tensor as_views(const at::Tensor& t) { return t.dim() == 4 ? t.unsqueeze(0) : t; }

unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 30));
}

// Per-channel values passed by value: fill (one value, or one per channel up
// to kMaxFillChannels), and for the normalising warp a scale and shift per
// channel in device memory (result = value * scale + shift).
// NOTE: fill is kept in double and cast to the kernel's coordinate type where
// it is read, so that float64 images get the fill value the CPU kernel uses.
struct Epilogue {
  double fill[kMaxFillChannels];
  int per_channel;
  const float* scale;
  const float* shift;
};

Epilogue make_epilogue(const char* op, const std::vector<double>& fills, int64_t C) {
  Epilogue ep{};
  bool uniform = true;
  for (int64_t c = 1; c < C; ++c) {
    uniform = uniform && fills[c] == fills[0];
  }
  TORCH_CHECK(uniform || C <= kMaxFillChannels, op, ": a per-channel fill takes at most ",
              kMaxFillChannels, " channels on CUDA, got ", C);
  ep.per_channel = uniform ? 0 : 1;
  for (int64_t c = 0; c < (uniform ? std::min<int64_t>(C, 1) : C); ++c) {
    ep.fill[c] = fills[c];
  }
  return ep;
}

template <typename coord_t>
__device__ __forceinline__ bool is_identity(const InverseAffine<coord_t>& m) {
  return m.a == 1 && m.b == 0 && m.c == 0 && m.d == 0 && m.e == 1 && m.f == 0;
}

template <typename in_t, typename out_t>
__global__ void forward_kernel(const in_t* __restrict__ in, const double* __restrict__ mats,
                               out_t* __restrict__ out, int64_t n, Geometry g, Options opt,
                               Epilogue ep) {
  using coord_t = acc_t<in_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t u = i % g.Wo;
    const int64_t v = (i / g.Wo) % g.Ho;
    const int64_t b = i / (g.Wo * g.Ho);
    const in_t* src = in + b * g.in_sb;
    for (int64_t k = 0; k < g.K; ++k) {
      const auto inv = invert_affine<coord_t>(mats + (k * g.B + b) * g.mat_rows * 3, 3);
      out_t* dst = out + k * g.out_sk + b * g.out_sb + v * g.out_sh + u * g.out_sw;
      const auto put = [&](int64_t c, coord_t acc) {
        if (ep.scale != nullptr) {
          acc = acc * static_cast<coord_t>(ep.scale[c]) + static_cast<coord_t>(ep.shift[c]);
        }
        dst[c * g.out_sc] = store_as<out_t>(acc);
      };
      const auto fill = [&](int64_t c) {
        return static_cast<coord_t>(ep.fill[ep.per_channel ? c : 0]);
      };
      // NOTE: an identity matrix (a sample that was not transformed) copies.
      if (is_identity(inv) && u < g.W && v < g.H) {
        for (int64_t c = 0; c < g.C; ++c) {
          put(c, static_cast<coord_t>(src[c * g.in_sc + v * g.in_sh + u * g.in_sw]));
        }
        continue;
      }
      coord_t x, y;
      source_position(inv, u, v, x, y);
      if (opt.mode == Interp::Bicubic) {
        const auto fp =
            cubic_footprint(x, y, g.H, g.W, g.in_sh, g.in_sw, opt.padding, opt.align_corners);
        for (int64_t c = 0; c < g.C; ++c) {
          put(c, sample_cubic(src + c * g.in_sc, fp, fill(c)));
        }
        continue;
      }
      const auto fp =
          footprint(x, y, g.H, g.W, g.in_sh, g.in_sw, opt.mode, opt.padding, opt.align_corners);
      for (int64_t c = 0; c < g.C; ++c) {
        put(c, sample_linear(src + c * g.in_sc, fp, fill(c)));
      }
    }
  }
}

// grad_in is a contiguous float32 (float64 for double) buffer; taps of
// neighbouring output pixels overlap, hence the atomics.
template <typename coord_t>
__global__ void backward_atomic_kernel(const coord_t* __restrict__ grad_out,
                                       const double* __restrict__ mats, coord_t* grad_in, int64_t n,
                                       Geometry g, Options opt) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t u = i % g.Wo;
    const int64_t v = (i / g.Wo) % g.Ho;
    const int64_t b = i / (g.Wo * g.Ho);
    coord_t* gi = grad_in + b * g.C * g.H * g.W;
    for (int64_t k = 0; k < g.K; ++k) {
      const auto inv = invert_affine<coord_t>(mats + (k * g.B + b) * g.mat_rows * 3, 3);
      coord_t x, y;
      source_position(inv, u, v, x, y);
      const coord_t* go = grad_out + k * g.out_sk + b * g.out_sb + v * g.out_sh + u * g.out_sw;
      if (opt.mode == Interp::Bicubic) {
        const auto fp =
            cubic_footprint(x, y, g.H, g.W, g.W, int64_t(1), opt.padding, opt.align_corners);
        if (!fp.valid) {
          continue;
        }
        for (int64_t c = 0; c < g.C; ++c) {
          const coord_t gv = go[c * g.out_sc];
          for (int j = 0; j < 4; ++j) {
            for (int t = 0; t < 4; ++t) {
              if (fp.ox[t] >= 0 && fp.oy[j] >= 0) {
                atomicAdd(gi + c * g.H * g.W + fp.oy[j] + fp.ox[t], fp.wy[j] * fp.wx[t] * gv);
              }
            }
          }
        }
        continue;
      }
      const auto fp =
          footprint(x, y, g.H, g.W, g.W, int64_t(1), opt.mode, opt.padding, opt.align_corners);
      for (int64_t c = 0; c < g.C; ++c) {
        const coord_t gv = go[c * g.out_sc];
#pragma unroll
        for (int t = 0; t < 4; ++t) {
          if (fp.offset[t] >= 0) {
            atomicAdd(gi + c * g.H * g.W + fp.offset[t], fp.weight[t] * gv);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Deterministic (gather) image gradient.

constexpr int kMaxPeriods = 8;
constexpr int kMaxIntervals = 2 * (kMaxPeriods + 3);

// Disjoint, sorted intervals of raw (unpadded) source coordinates whose
// footprint can include pixel i of an axis of `size` pixels, within [rlo, rhi].
// A superset is enough: every candidate is checked against its real footprint;
// what matters is that the intervals do not overlap, so that no output pixel
// is counted twice.
__device__ int tap_preimage(int64_t i, int64_t size, Interp mode, Padding pad, bool ac, double rlo,
                            double rhi, double* lo, double* hi) {
  const double eps = 1e-3;
  const bool cubic = mode == Interp::Bicubic;
  const double w = cubic ? 2.0 : 0.0;
  const double last = static_cast<double>(size - 1);
  double a, b;  // the padded coordinates (linear) or tap indices (cubic) that reach i
  if (cubic) {
    a = b = static_cast<double>(i);
  } else {
    a = i - 1.0;
    b = i + 1.0;
  }
  int n = 0;
  const auto push = [&](double l, double h) {
    l = fmax(l - eps, rlo);
    h = fmin(h + eps, rhi);
    if (l <= h && n < kMaxIntervals) {
      lo[n] = l;
      hi[n] = h;
      ++n;
    }
  };
  if (pad == Padding::Zeros || pad == Padding::Fill) {
    push(a - w, b + w);
  } else if (pad == Padding::Border) {
    // Positions beyond an edge read the edge pixel.
    push(i == 0 ? rlo : a - w, i == size - 1 ? rhi : b + w);
  } else if (size == 1) {
    push(rlo, rhi);
  } else {
    // Reflection: period P, mirror image m(x) of a padded interval [a, b].
    double P, mirror_at;
    if (ac) {
      P = 2.0 * last;
      mirror_at = 0.0;  // x -> -x
      if (!cubic) {
        a = fmax(a, 0.0);
        b = fmin(b, last);
      }
    } else {
      P = 2.0 * size;
      mirror_at = -0.5;  // x -> -1 - x
      if (!cubic) {
        a = a < 0.0 ? -0.5 : a;
        b = b > last ? size - 0.5 : b;
      }
    }
    const double ma = 2 * mirror_at - b, mb = 2 * mirror_at - a;
    const double n0 = floor((rlo - fmax(b, mb) - w) / P) - 1;
    const double n1 = ceil((rhi - fmin(a, ma) + w) / P) + 1;
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
      hi[m - 1] = fmax(hi[m - 1], hi[s]);
    } else {
      lo[m] = lo[s];
      hi[m] = hi[s];
      ++m;
    }
  }
  return m;
}

// The u range [u0, u1] of output row v where s u + r lies in [l, h] (widened by one pixel).
__device__ __forceinline__ void solve_row(double s, double r, double l, double h, double& u0,
                                          double& u1) {
  if (fabs(s) < 1e-12) {
    if (!(r >= l - 1e-6 && r <= h + 1e-6)) {
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
  u0 = fmax(u0, t0 - 1.0);
  u1 = fmin(u1, t1 + 1.0);
}

template <typename coord_t>
__device__ __forceinline__ coord_t tap_weight(coord_t x, coord_t y, int64_t xi, int64_t yi,
                                              const Geometry& g, const Options& opt) {
  const int64_t target = yi * g.W + xi;
  coord_t w = 0;
  if (opt.mode == Interp::Bicubic) {
    const auto fp =
        cubic_footprint(x, y, g.H, g.W, g.W, int64_t(1), opt.padding, opt.align_corners);
    if (fp.valid) {
      for (int j = 0; j < 4; ++j) {
        for (int t = 0; t < 4; ++t) {
          if (fp.oy[j] == yi * g.W && fp.ox[t] == xi) {
            w += fp.wy[j] * fp.wx[t];
          }
        }
      }
    }
    return w;
  }
  const auto fp =
      footprint(x, y, g.H, g.W, g.W, int64_t(1), opt.mode, opt.padding, opt.align_corners);
  for (int t = 0; t < 4; ++t) {
    if (fp.offset[t] == target) {
      w += fp.weight[t];
    }
  }
  return w;
}

constexpr int kGatherChannels = 4;

template <typename coord_t>
__global__ void backward_gather_kernel(const coord_t* __restrict__ grad_out,
                                       const double* __restrict__ mats,
                                       coord_t* __restrict__ grad_in, int64_t n, Geometry g,
                                       Options opt) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t xi = i % g.W;
    const int64_t yi = (i / g.W) % g.H;
    const int64_t b = i / (g.W * g.H);
    for (int64_t c0 = 0; c0 < g.C; c0 += kGatherChannels) {
      const int nc = static_cast<int>(g.C - c0 < kGatherChannels ? g.C - c0 : kGatherChannels);
      coord_t acc[kGatherChannels] = {};
      for (int64_t k = 0; k < g.K; ++k) {
        const double* m = mats + (k * g.B + b) * g.mat_rows * 3;
        const auto inv = invert_affine<coord_t>(m, 3);
        const auto invd = invert_affine<double>(m, 3);
        if (!(isfinite(invd.a) && isfinite(invd.b) && isfinite(invd.c) && isfinite(invd.d) &&
              isfinite(invd.e) && isfinite(invd.f))) {
          continue;  // such a view reads nothing
        }
        // Range of raw source positions over the output image (its corners).
        double xr[2] = {1e300, -1e300}, yr[2] = {1e300, -1e300};
        for (int cu = 0; cu < 2; ++cu) {
          for (int cv = 0; cv < 2; ++cv) {
            const double u = cu ? g.Wo - 1.0 : 0.0, v = cv ? g.Ho - 1.0 : 0.0;
            const double x = invd.a * u + invd.b * v + invd.c;
            const double y = invd.d * u + invd.e * v + invd.f;
            xr[0] = fmin(xr[0], x - 1.0);
            xr[1] = fmax(xr[1], x + 1.0);
            yr[0] = fmin(yr[0], y - 1.0);
            yr[1] = fmax(yr[1], y + 1.0);
          }
        }
        double xlo[kMaxIntervals], xhi[kMaxIntervals], ylo[kMaxIntervals], yhi[kMaxIntervals];
        const int nx =
            tap_preimage(xi, g.W, opt.mode, opt.padding, opt.align_corners, xr[0], xr[1], xlo, xhi);
        const int ny =
            tap_preimage(yi, g.H, opt.mode, opt.padding, opt.align_corners, yr[0], yr[1], ylo, yhi);
        const coord_t* go = grad_out + k * g.out_sk + b * g.out_sb + c0 * g.out_sc;
        for (int iy = 0; iy < ny; ++iy) {
          for (int ix = 0; ix < nx; ++ix) {
            // Rows reached by the rectangle [xlo, xhi] x [ylo, yhi]: map its corners forward.
            double vmin = 1e300, vmax = -1e300;
            for (int cx = 0; cx < 2; ++cx) {
              for (int cy = 0; cy < 2; ++cy) {
                const double x = cx ? xhi[ix] : xlo[ix], y = cy ? yhi[iy] : ylo[iy];
                const double v = m[3] * x + m[4] * y + m[5];
                vmin = fmin(vmin, v);
                vmax = fmax(vmax, v);
              }
            }
            const int64_t v0 = static_cast<int64_t>(fmax(ceil(vmin) - 1.0, 0.0));
            const int64_t v1 = static_cast<int64_t>(fmin(floor(vmax) + 1.0, g.Ho - 1.0));
            for (int64_t v = v0; v <= v1; ++v) {
              double u0 = 0.0, u1 = g.Wo - 1.0;
              solve_row(invd.a, invd.b * v + invd.c, xlo[ix], xhi[ix], u0, u1);
              solve_row(invd.d, invd.e * v + invd.f, ylo[iy], yhi[iy], u0, u1);
              if (u0 > u1) {
                continue;
              }
              const int64_t ua = static_cast<int64_t>(ceil(u0)), ub = static_cast<int64_t>(u1);
              for (int64_t u = ua; u <= ub; ++u) {
                coord_t x, y;
                source_position(inv, u, v, x, y);
                // NOTE: the intervals are disjoint, so each output pixel is
                // accepted for at most one of them.
                const double xd = x, yd = y;
                if (!(xd >= xlo[ix] && xd <= xhi[ix] && yd >= ylo[iy] && yd <= yhi[iy])) {
                  continue;
                }
                const coord_t w = tap_weight(x, y, xi, yi, g, opt);
                if (w != coord_t(0)) {
                  const coord_t* gp = go + v * g.out_sh + u * g.out_sw;
                  for (int c = 0; c < nc; ++c) {
                    acc[c] += w * gp[c * g.out_sc];
                  }
                }
              }
            }
          }
        }
      }
      for (int c = 0; c < nc; ++c) {
        grad_in[((b * g.C + c0 + c) * g.H + yi) * g.W + xi] = acc[c];
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Matrix gradient: one block per (view, sample, output row); a fixed-order
// tree reduction in shared memory gives per-row sums of g (x, y, 1)^T.

constexpr int kRowThreads = 128;

template <typename in_t>
__global__ void backward_matrices_kernel(const in_t* __restrict__ in,
                                         const acc_t<in_t>* __restrict__ grad_out,
                                         const double* __restrict__ mats,
                                         double* __restrict__ partial, int64_t rows, Geometry g,
                                         Options opt, Epilogue ep) {
  using coord_t = acc_t<in_t>;
  __shared__ double red[6][kRowThreads];
  // NOTE: rows (K * B * H') may pass the grid's 2^31 - 1 blocks, so blocks
  // stride over them; the loop is uniform across the block, so every thread
  // reaches each __syncthreads.
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t kb = row / g.Ho, v = row % g.Ho;
    const int64_t k = kb / g.B, b = kb % g.B;
    const auto inv = invert_affine<coord_t>(mats + kb * g.mat_rows * 3, 3);
    const in_t* src = in + b * g.in_sb;
    const coord_t* gp = grad_out + k * g.out_sk + b * g.out_sb + v * g.out_sh;
    double acc[6] = {0, 0, 0, 0, 0, 0};
    for (int64_t u = threadIdx.x; u < g.Wo; u += blockDim.x) {
      coord_t x, y;
      source_position(inv, u, v, x, y);
      if (!finite(x) || !finite(y)) {
        continue;
      }
      double gx = 0.0, gy = 0.0;
      for (int64_t c = 0; c < g.C; ++c) {
        coord_t dx, dy;
        const coord_t fill = static_cast<coord_t>(ep.fill[ep.per_channel ? c : 0]);
        position_grad(src + c * g.in_sc, x, y, g.H, g.W, g.in_sh, g.in_sw, opt.mode, opt.padding,
                      opt.align_corners, fill, dx, dy);
        const double go = gp[c * g.out_sc + u * g.out_sw];
        gx += go * dx;
        gy += go * dy;
      }
      add_inverse_grad(acc, x, y, gx, gy);
    }
    for (int t = 0; t < 6; ++t) {
      red[t][threadIdx.x] = acc[t];
    }
    __syncthreads();
    for (int s = kRowThreads / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) {
        for (int t = 0; t < 6; ++t) {
          red[t][threadIdx.x] += red[t][threadIdx.x + s];
        }
      }
      __syncthreads();
    }
    if (threadIdx.x < 6) {
      partial[row * 6 + threadIdx.x] = red[threadIdx.x][0];
    }
    // The next row overwrites red[t][0], which threads 1 to 5 may still be reading.
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------
// Launchers.

void run_forward(const char* op, const at::Tensor& images, const at::Tensor& matrices,
                 const Options& opt, const std::vector<double>& fills, const at::Tensor& scale,
                 const at::Tensor& shift, at::Tensor& out) {
  const int64_t C = images.size(1);
  if (out.numel() == 0) {
    return;
  }
  Epilogue ep = make_epilogue(op, fills, C);
  if (scale.defined()) {
    ep.scale = scale.const_data_ptr<float>();
    ep.shift = shift.const_data_ptr<float>();
  }
  if (images.size(2) == 0 || images.size(3) == 0) {
    at::Tensor v = at::tensor(fills, at::kDouble).view({C, 1, 1}).to(out.device());
    if (scale.defined()) {
      v = v * scale.view({C, 1, 1}) + shift.view({C, 1, 1});
    }
    if (out.scalar_type() == at::kByte) {
      v = v.round().clamp(0, 255).nan_to_num(0);
    }
    out.copy_(v.expand_as(out));
    return;
  }

  const at::Tensor mats = matrices_as_double(matrices);
  at::Tensor out5 = as_views(out);
  const Geometry g = geometry(images, out5, mats);
  const int64_t n = g.B * g.Ho * g.Wo;
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_pair(op, images.scalar_type(), out.scalar_type(), [&](auto in_tag, auto out_tag) {
    using in_t = typename decltype(in_tag)::type;
    using out_t = typename decltype(out_tag)::type;
    forward_kernel<in_t, out_t><<<blocks_for(n), kThreads, 0, stream>>>(
        images.const_data_ptr<in_t>(), mats.const_data_ptr<double>(),
        static_cast<out_t*>(out5.data_ptr()), n, g, opt, ep);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void affine_warp_out_cuda(const at::Tensor& images, const at::Tensor& matrices,
                          c10::string_view mode, c10::string_view padding_mode, bool align_corners,
                          c10::ArrayRef<double> fill, at::Tensor& out) {
  const char* op = "affine_warp";
  const auto call =
      check_out_call(op, images, matrices, mode, padding_mode, align_corners, fill, out);

  c10::cuda::CUDAGuard guard(images.device());
  run_forward(op, images, matrices, call.opt, call.fills, at::Tensor(), at::Tensor(), out);
}

at::Tensor affine_warp_cuda(const at::Tensor& images, const at::Tensor& matrices,
                            c10::string_view mode, c10::string_view padding_mode,
                            bool align_corners, c10::ArrayRef<double> fill, c10::IntArrayRef size,
                            std::optional<at::ScalarType> out_dtype) {
  const char* op = "affine_warp";
  const Views views = check_inputs(op, images, matrices);
  check_size(op, size);
  const auto dtype = output_dtype(op, images, out_dtype);

  c10::cuda::CUDAGuard guard(images.device());
  at::Tensor out = empty_output(images, views, size, dtype);
  affine_warp_out_cuda(images, matrices, mode, padding_mode, align_corners, fill, out);
  return out;
}

void warp_normalize_out_cuda(const at::Tensor& images, const at::Tensor& matrices,
                             const at::Tensor& mean, const at::Tensor& std, c10::string_view mode,
                             c10::string_view padding_mode, bool align_corners,
                             c10::ArrayRef<double> fill, at::Tensor& out) {
  const char* op = "warp_normalize";
  const auto call = check_out_call(op, images, matrices, mode, padding_mode, align_corners, fill,
                                   out, &mean, &std);

  c10::cuda::CUDAGuard guard(images.device());
  // result = (value / 255 - mean) / std = value * scale + shift, formed on the
  // device (no host sync, capturable in a CUDA graph).
  const at::Tensor s = std.to(at::kDouble), m = mean.to(at::kDouble);
  const at::Tensor scale = (1.0 / (255.0 * s)).to(at::kFloat).contiguous();
  const at::Tensor shift = (-m / s).to(at::kFloat).contiguous();
  run_forward(op, images, matrices, call.opt, call.fills, scale, shift, out);
}

at::Tensor warp_normalize_cuda(const at::Tensor& images, const at::Tensor& matrices,
                               const at::Tensor& mean, const at::Tensor& std, c10::string_view mode,
                               c10::string_view padding_mode, bool align_corners,
                               c10::ArrayRef<double> fill, c10::IntArrayRef size,
                               at::ScalarType out_dtype) {
  c10::cuda::CUDAGuard guard(images.device());
  at::Tensor out = normalize_output("warp_normalize", images, matrices, mean, std, size, out_dtype);
  warp_normalize_out_cuda(images, matrices, mean, std, mode, padding_mode, align_corners, fill,
                          out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> affine_warp_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& images_opt,
    const at::Tensor& matrices, c10::string_view mode, c10::string_view padding_mode,
    bool align_corners, c10::ArrayRef<double> fill, c10::IntArrayRef input_size, bool images_grad) {
  const char* op = "affine_warp_backward";
  const Options opt = parse_options(op, mode, padding_mode, align_corners);
  check_size(op, input_size);
  check_backward_args(op, grad_out, images_opt, matrices, input_size);

  c10::cuda::CUDAGuard guard(grad_out.device());

  const auto dtype = grad_out.scalar_type();
  const auto acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t B = grad_out.size(-4), C = grad_out.size(-3);
  const at::Tensor grad5 = as_views(grad_out.to(acc));
  const at::Tensor mats = matrices_as_double(matrices);
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor grad_images = grad_out.new_empty({0});
  at::Tensor grad_matrices = matrices.new_empty({0});

  if (images_grad) {
    at::Tensor gi = at::zeros({B, C, input_size[0], input_size[1]}, grad_out.options().dtype(acc));
    if (gi.numel() > 0 && grad5.numel() > 0) {
      const Geometry g = geometry(gi, grad5, mats);
      const bool deterministic = at::globalContext().deterministicAlgorithms();
      AT_DISPATCH_FLOATING_TYPES(acc, "affine_warp_backward_cuda", [&] {
        if (deterministic) {
          const int64_t n = B * input_size[0] * input_size[1];
          backward_gather_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
              grad5.const_data_ptr<scalar_t>(), mats.const_data_ptr<double>(),
              gi.mutable_data_ptr<scalar_t>(), n, g, opt);
        } else {
          const int64_t n = B * g.Ho * g.Wo;
          backward_atomic_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
              grad5.const_data_ptr<scalar_t>(), mats.const_data_ptr<double>(),
              gi.mutable_data_ptr<scalar_t>(), n, g, opt);
        }
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    grad_images = gi.to(dtype);
  }

  if (images_opt.has_value()) {
    const at::Tensor& images = *images_opt;
    const auto fills = channel_fill(op, fill, C, opt.padding);
    const Epilogue ep = make_epilogue(op, fills, C);
    at::Tensor sums = at::zeros({grad5.size(0) * B, 2, 3}, mats.options());
    if (images.numel() > 0 && grad5.numel() > 0) {
      const Geometry g = geometry(images, grad5, mats);
      const int64_t rows = g.K * g.B * g.Ho;
      at::Tensor partial = at::empty({rows, 6}, mats.options());
      const auto row_blocks = static_cast<unsigned int>(std::min<int64_t>(rows, 1 << 30));
      const at::Tensor gf = images.scalar_type() == at::kDouble ? grad5 : grad5.to(at::kFloat);
      AT_DISPATCH_FLOATING_TYPES_AND3(
          at::kHalf, at::kBFloat16, at::kByte, images.scalar_type(), "affine_warp_backward_cuda",
          [&] {
            backward_matrices_kernel<scalar_t><<<row_blocks, kRowThreads, 0, stream>>>(
                images.const_data_ptr<scalar_t>(), gf.const_data_ptr<acc_t<scalar_t>>(),
                mats.const_data_ptr<double>(), partial.mutable_data_ptr<double>(), rows, g, opt,
                ep);
          });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      sums = partial.view({g.K * g.B, g.Ho, 2, 3}).sum(1);
    }
    grad_matrices = matrix_grad_from_sums(sums, matrices);
  }
  return {grad_images, grad_matrices};
}

}  // namespace

TORCH_LIBRARY_IMPL(invfast, CUDA, m) {
  m.impl("affine_warp", &affine_warp_cuda);
  m.impl("affine_warp_out", &affine_warp_out_cuda);
  m.impl("affine_warp_backward", &affine_warp_backward_cuda);
  m.impl("warp_normalize", &warp_normalize_cuda);
  m.impl("warp_normalize_out", &warp_normalize_out_cuda);
}

}  // namespace warp
}  // namespace invfast
