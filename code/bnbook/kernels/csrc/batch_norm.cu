// Batch Normalization in CUDA C++: forward (train and eval) and backward.
//
// The same plan as the Triton kernels (bnbook/kernels/triton_bn.py), written by hand:
//   * the input is a strided (B, C, S) view: "S-inner" (NCHW, S contiguous) or "C-inner"
//     (channels_last and (N, C): B == 1, C contiguous, rows along S);
//   * statistics: each thread loads a tile of kTile elements into registers, takes its mean and
//     then the sum of squared deviations from that mean (two passes over registers, no memory
//     traffic), and merges the tile into its running (n, mean, M2) with Chan's rule; threads,
//     blocks and splits are merged with the same rule. There is no E[x^2] - E[x]^2, and no shift
//     by one element either: both cancel when the spread is small against the distance to the
//     mean (of the data, or of the shift);
//   * normalise with a per-channel scale = weight * inv_std: no per-element division;
//   * backward: the sums (dy, dy * (x - mean)), then dx = k * (dy - a - (x - mean) * b).
//
// Every kernel walks its work with grid-stride loops and every launch goes through grid_2d(), so
// no grid dimension ever exceeds the hardware's limits (65,535 for y and z) however large
// N * H * W is: a grid only sets how much runs at once, never what gets done.
//
// This file includes no torch header (raw pointers, float32 statistics), so it compiles with
// nvcc alone; batch_norm_binding.cpp hands torch tensors to the two extern "C" entry points.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace {

constexpr int kThreads = 256;   // threads per block
constexpr int kLanesC = 32;     // C-inner: channels per block (one warp wide: 128-byte loads)
constexpr int kRowsC = kThreads / kLanesC;  // C-inner: rows walked at once by a block
constexpr int kTile = 8;        // elements per thread per tile of the statistics
constexpr int64_t kMaxGridX = 2147483647;   // gridDim.x limit (2^31 - 1)
constexpr int64_t kMaxGridYZ = 65535;       // gridDim.y and gridDim.z limit

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// (count, mean, M2) of a set; merged with Chan et al.'s parallel rule.
struct Moments {
  float n, mean, m2;
};

__device__ __forceinline__ Moments chan_merge(Moments a, Moments b) {
  const float n = a.n + b.n;
  if (b.n == 0.f) return a;
  if (a.n == 0.f) return b;
  const float delta = b.mean - a.mean;
  const float frac_b = b.n / n;
  return Moments{n, a.mean + delta * frac_b, a.m2 + b.m2 + delta * delta * a.n * frac_b};
}

// Two-pass moments of the first `count` of kTile values held in registers.
__device__ __forceinline__ Moments tile_moments(const float (&v)[kTile], int count) {
  if (count == 0) return Moments{0.f, 0.f, 0.f};
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < kTile; ++k) sum += k < count ? v[k] : 0.f;
  const float mean = sum / static_cast<float>(count);  // one division per tile
  float m2 = 0.f;
#pragma unroll
  for (int k = 0; k < kTile; ++k) {
    const float d = k < count ? v[k] - mean : 0.f;
    m2 += d * d;
  }
  return Moments{static_cast<float>(count), mean, m2};
}

// Position (b, s) of element e = b * S + s of a channel, advanced by a fixed step without a
// division per element: one division when the walker is made, none afterwards.
struct PlaneWalker {
  int64_t b, s, db, ds, S;
  __device__ PlaneWalker(int64_t e, int64_t step, int64_t S_) : S(S_) {
    b = e / S;
    s = e - b * S;
    db = step / S;
    ds = step - db * S;
  }
  __device__ __forceinline__ void advance() {
    b += db;
    s += ds;
    if (s >= S) {
      s -= S;
      ++b;
    }
  }
};

// Chan-merge the blockDim.x * blockDim.y moments in smem down to smem[0] (S-inner: one channel
// per block) -- a tree over the flat thread index.
__device__ Moments block_merge(Moments m, Moments* smem) {
  const int tid = threadIdx.x;
  smem[tid] = m;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (tid < half) smem[tid] = chan_merge(smem[tid], smem[tid + half]);
    __syncthreads();
  }
  const Moments r = smem[0];
  __syncthreads();  // smem is reused by the next channel of the grid-stride loop
  return r;
}

// ---- forward: partial statistics -----------------------------------------------------------

// S-inner. grid (channels, splits), both grid-strided; split k owns the elements
// [k * per_split, (k + 1) * per_split) of each channel's B * S, in (b, s) order.
template <typename T>
__global__ void stats_s_inner(const T* __restrict__ x, int64_t B, int64_t C, int64_t S,
                              int64_t sb, int64_t sc, int64_t n_splits, int64_t per_split,
                              float* part_n, float* part_mean, float* part_m2) {
  __shared__ Moments smem[kThreads];
  const int64_t step = blockDim.x;
  for (int64_t split = blockIdx.y; split < n_splits; split += gridDim.y) {
    const int64_t e_begin = split * per_split;
    const int64_t e_end = min(e_begin + per_split, B * S);
    for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
      const T* xc = x + c * sc;
      Moments m{0.f, 0.f, 0.f};
      int64_t e = e_begin + threadIdx.x;
      PlaneWalker w(e, step, S);
      while (e < e_end) {
        float v[kTile];
        int count = 0;
#pragma unroll
        for (int k = 0; k < kTile; ++k) {
          v[k] = 0.f;
          if (e < e_end) {
            v[k] = to_float(xc[w.b * sb + w.s]);
            ++count;
          }
          e += step;
          w.advance();
        }
        m = chan_merge(m, tile_moments(v, count));
      }
      m = block_merge(m, smem);
      if (threadIdx.x == 0) {
        part_n[split * C + c] = m.n;
        part_mean[split * C + c] = m.mean;
        part_m2[split * C + c] = m.m2;
      }
    }
  }
}

// C-inner. grid (channel blocks of 32, splits), block (32, 8), both grid-strided; split k owns
// rows [k * per_split, (k + 1) * per_split); row stride ss.
template <typename T>
__global__ void stats_c_inner(const T* __restrict__ x, int64_t C, int64_t R, int64_t ss,
                              int64_t n_splits, int64_t per_split, float* part_n,
                              float* part_mean, float* part_m2) {
  __shared__ Moments smem[kRowsC][kLanesC];
  const int64_t n_cblocks = (C + kLanesC - 1) / kLanesC;
  for (int64_t split = blockIdx.y; split < n_splits; split += gridDim.y) {
    const int64_t r_begin = split * per_split;
    const int64_t r_end = min(r_begin + per_split, R);
    for (int64_t cb = blockIdx.x; cb < n_cblocks; cb += gridDim.x) {
      const int64_t c = cb * kLanesC + threadIdx.x;
      const bool valid = c < C;
      Moments m{0.f, 0.f, 0.f};
      if (valid) {
        for (int64_t r = r_begin + threadIdx.y; r < r_end; r += kRowsC * kTile) {
          float v[kTile];
          int count = 0;
#pragma unroll
          for (int k = 0; k < kTile; ++k) {
            const int64_t rk = r + k * kRowsC;
            v[k] = rk < r_end ? to_float(x[rk * ss + c]) : 0.f;
            count += rk < r_end;
          }
          m = chan_merge(m, tile_moments(v, count));
        }
      }
      smem[threadIdx.y][threadIdx.x] = m;
      __syncthreads();
      if (threadIdx.y == 0 && valid) {
        for (int k = 1; k < kRowsC; ++k) m = chan_merge(m, smem[k][threadIdx.x]);
        part_n[split * C + c] = m.n;
        part_mean[split * C + c] = m.mean;
        part_m2[split * C + c] = m.m2;
      }
      __syncthreads();  // smem is reused by the next channel block
    }
  }
}

// ---- forward: finalize (one thread per channel, grid-strided) --------------------------------

__global__ void finalize_forward(const float* part_n, const float* part_mean,
                                 const float* part_m2, int64_t n_splits, int64_t C,
                                 float* running_mean, float* running_var, const float* weight,
                                 float* mean_out, float* scale_out, float* invstd_out,
                                 int training, float momentum, float eps) {
  for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < C;
       c += (int64_t)gridDim.x * blockDim.x) {
    float mean, var;
    if (training) {
      Moments m{0.f, 0.f, 0.f};
      for (int64_t k = 0; k < n_splits; ++k)
        m = chan_merge(m, Moments{part_n[k * C + c], part_mean[k * C + c], part_m2[k * C + c]});
      mean = m.mean;
      var = m.n > 0.f ? m.m2 / m.n : 0.f;  // biased: used to normalise
      if (running_mean != nullptr) {
        const float unbiased = m.m2 / fmaxf(m.n - 1.f, 1.f);  // the running variance's estimate
        running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * mean;
        running_var[c] = (1.f - momentum) * running_var[c] + momentum * unbiased;
      }
    } else {
      mean = running_mean[c];
      var = running_var[c];
    }
    const float inv_std = rsqrtf(var + eps);
    mean_out[c] = mean;
    invstd_out[c] = inv_std;
    scale_out[c] = (weight != nullptr ? weight[c] : 1.f) * inv_std;
  }
}

// ---- forward: normalise ----------------------------------------------------------------------

// S-inner. grid (planes, chunks of S), both grid-strided: plane = b * C + c.
template <typename T>
__global__ void normalize_s_inner(const T* __restrict__ x, T* __restrict__ y, int64_t B,
                                  int64_t C, int64_t S, int64_t sb, int64_t sc,
                                  const float* mean, const float* scale, const float* bias) {
  for (int64_t plane = blockIdx.x; plane < B * C; plane += gridDim.x) {
    const int64_t c = plane % C, b = plane / C;  // one division per plane
    const float m = mean[c], k = scale[c], beta = bias != nullptr ? bias[c] : 0.f;
    const int64_t base = b * sb + c * sc;
    for (int64_t s = blockIdx.y * (int64_t)blockDim.x + threadIdx.x; s < S;
         s += (int64_t)gridDim.y * blockDim.x)
      y[base + s] = from_float<T>((to_float(x[base + s]) - m) * k + beta);
  }
}

// C-inner. grid (channel blocks, row chunks), block (32, 8), both grid-strided.
template <typename T>
__global__ void normalize_c_inner(const T* __restrict__ x, T* __restrict__ y, int64_t C,
                                  int64_t R, int64_t ss, const float* mean, const float* scale,
                                  const float* bias) {
  const int64_t n_cblocks = (C + kLanesC - 1) / kLanesC;
  for (int64_t cb = blockIdx.x; cb < n_cblocks; cb += gridDim.x) {
    const int64_t c = cb * kLanesC + threadIdx.x;
    if (c >= C) continue;
    const float m = mean[c], k = scale[c], beta = bias != nullptr ? bias[c] : 0.f;
    for (int64_t r = blockIdx.y * (int64_t)kRowsC + threadIdx.y; r < R;
         r += (int64_t)gridDim.y * kRowsC)
      y[r * ss + c] = from_float<T>((to_float(x[r * ss + c]) - m) * k + beta);
  }
}

// ---- backward --------------------------------------------------------------------------------

// S-inner sums of dy and dy * (x - mean), split by elements as stats_s_inner.
template <typename T>
__global__ void grad_sums_s_inner(const T* __restrict__ x, const T* __restrict__ dy, int64_t B,
                                  int64_t C, int64_t S, int64_t sb, int64_t sc, int64_t n_splits,
                                  int64_t per_split, const float* mean, float* part_dy,
                                  float* part_dy_xmu) {
  __shared__ float smem[2][kThreads];
  const int64_t step = blockDim.x;
  for (int64_t split = blockIdx.y; split < n_splits; split += gridDim.y) {
    const int64_t e_begin = split * per_split;
    const int64_t e_end = min(e_begin + per_split, B * S);
    for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
      const float m = mean[c];
      float s_dy = 0.f, s_dy_xmu = 0.f;
      int64_t e = e_begin + threadIdx.x;
      for (PlaneWalker w(e, step, S); e < e_end; e += step, w.advance()) {
        const int64_t i = w.b * sb + c * sc + w.s;
        const float g = to_float(dy[i]);
        s_dy += g;
        s_dy_xmu += g * (to_float(x[i]) - m);  // centred: no mean-sized products
      }
      smem[0][threadIdx.x] = s_dy;
      smem[1][threadIdx.x] = s_dy_xmu;
      __syncthreads();
      for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) {
          smem[0][threadIdx.x] += smem[0][threadIdx.x + half];
          smem[1][threadIdx.x] += smem[1][threadIdx.x + half];
        }
        __syncthreads();
      }
      if (threadIdx.x == 0) {
        part_dy[split * C + c] = smem[0][0];
        part_dy_xmu[split * C + c] = smem[1][0];
      }
      __syncthreads();
    }
  }
}

template <typename T>
__global__ void grad_sums_c_inner(const T* __restrict__ x, const T* __restrict__ dy, int64_t C,
                                  int64_t R, int64_t ss, int64_t n_splits, int64_t per_split,
                                  const float* mean, float* part_dy, float* part_dy_xmu) {
  __shared__ float smem[2][kRowsC][kLanesC];
  const int64_t n_cblocks = (C + kLanesC - 1) / kLanesC;
  for (int64_t split = blockIdx.y; split < n_splits; split += gridDim.y) {
    const int64_t r_begin = split * per_split;
    const int64_t r_end = min(r_begin + per_split, R);
    for (int64_t cb = blockIdx.x; cb < n_cblocks; cb += gridDim.x) {
      const int64_t c = cb * kLanesC + threadIdx.x;
      const bool valid = c < C;
      float s_dy = 0.f, s_dy_xmu = 0.f;
      if (valid) {
        const float m = mean[c];
        for (int64_t r = r_begin + threadIdx.y; r < r_end; r += kRowsC) {
          const float g = to_float(dy[r * ss + c]);
          s_dy += g;
          s_dy_xmu += g * (to_float(x[r * ss + c]) - m);
        }
      }
      smem[0][threadIdx.y][threadIdx.x] = s_dy;
      smem[1][threadIdx.y][threadIdx.x] = s_dy_xmu;
      __syncthreads();
      if (threadIdx.y == 0 && valid) {
        float a = 0.f, b = 0.f;
        for (int k = 0; k < kRowsC; ++k) {
          a += smem[0][k][threadIdx.x];
          b += smem[1][k][threadIdx.x];
        }
        part_dy[split * C + c] = a;
        part_dy_xmu[split * C + c] = b;
      }
      __syncthreads();
    }
  }
}

// dweight, dbias, and the coefficients of dx = k * (dy - a - (x - mean) * b), per channel.
__global__ void finalize_backward(const float* part_dy, const float* part_dy_xmu,
                                  int64_t n_splits, int64_t C, float inv_n, const float* weight,
                                  const float* invstd, float* dweight, float* dbias,
                                  float* coef_k, float* coef_a, float* coef_b, int training) {
  for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < C;
       c += (int64_t)gridDim.x * blockDim.x) {
    float s_dy = 0.f, s_dy_xmu = 0.f;
    for (int64_t k = 0; k < n_splits; ++k) {
      s_dy += part_dy[k * C + c];
      s_dy_xmu += part_dy_xmu[k * C + c];
    }
    const float inv_std = invstd[c];
    const float s_dy_xhat = s_dy_xmu * inv_std;
    dweight[c] = s_dy_xhat;
    dbias[c] = s_dy;
    coef_k[c] = (weight != nullptr ? weight[c] : 1.f) * inv_std;
    coef_a[c] = training ? s_dy * inv_n : 0.f;
    coef_b[c] = training ? s_dy_xhat * inv_n * inv_std : 0.f;
  }
}

template <typename T>
__global__ void grad_input_s_inner(const T* __restrict__ x, const T* __restrict__ dy,
                                   T* __restrict__ dx, int64_t B, int64_t C, int64_t S,
                                   int64_t sb, int64_t sc, const float* mean,
                                   const float* coef_k, const float* coef_a,
                                   const float* coef_b) {
  for (int64_t plane = blockIdx.x; plane < B * C; plane += gridDim.x) {
    const int64_t c = plane % C, b = plane / C;
    const float m = mean[c], k = coef_k[c], a = coef_a[c], bb = coef_b[c];
    const int64_t base = b * sb + c * sc;
    for (int64_t s = blockIdx.y * (int64_t)blockDim.x + threadIdx.x; s < S;
         s += (int64_t)gridDim.y * blockDim.x) {
      const float xmu = to_float(x[base + s]) - m;
      dx[base + s] = from_float<T>(k * (to_float(dy[base + s]) - a - xmu * bb));
    }
  }
}

template <typename T>
__global__ void grad_input_c_inner(const T* __restrict__ x, const T* __restrict__ dy,
                                   T* __restrict__ dx, int64_t C, int64_t R, int64_t ss,
                                   const float* mean, const float* coef_k, const float* coef_a,
                                   const float* coef_b) {
  const int64_t n_cblocks = (C + kLanesC - 1) / kLanesC;
  for (int64_t cb = blockIdx.x; cb < n_cblocks; cb += gridDim.x) {
    const int64_t c = cb * kLanesC + threadIdx.x;
    if (c >= C) continue;
    const float m = mean[c], k = coef_k[c], a = coef_a[c], bb = coef_b[c];
    for (int64_t r = blockIdx.y * (int64_t)kRowsC + threadIdx.y; r < R;
         r += (int64_t)gridDim.y * kRowsC) {
      const float xmu = to_float(x[r * ss + c]) - m;
      dx[r * ss + c] = from_float<T>(k * (to_float(dy[r * ss + c]) - a - xmu * bb));
    }
  }
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The one way a grid is made here: x capped at 2^31 - 1, y at 65,535 (each at least 1). The
// kernels' grid-stride loops cover whatever the cap leaves out.
dim3 grid_2d(int64_t x, int64_t y = 1) {
  const int64_t gx = x < 1 ? 1 : (x > kMaxGridX ? kMaxGridX : x);
  const int64_t gy = y < 1 ? 1 : (y > kMaxGridYZ ? kMaxGridYZ : y);
  return dim3(static_cast<unsigned int>(gx), static_cast<unsigned int>(gy));
}

// Enough blocks to fill a large GPU several times over; more only adds scheduling.
constexpr int64_t kMaxBlocksX = 65535;

template <typename T>
cudaError_t forward_impl(const void* xv, void* yv, int64_t B, int64_t C, int64_t S, int64_t sb,
                         int64_t sc, int64_t ss, int64_t n_splits, const float* weight,
                         const float* bias, float* running_mean, float* running_var,
                         float* mean, float* scale, float* invstd, float* workspace,
                         int training, float momentum, float eps, cudaStream_t stream) {
  const T* x = static_cast<const T*>(xv);
  T* y = static_cast<T*>(yv);
  const bool s_inner = ss == 1;
  float* part_n = workspace;  // workspace: 3 * n_splits * C floats
  float* part_mean = workspace + n_splits * C;
  float* part_m2 = workspace + 2 * n_splits * C;
  if (training) {
    if (s_inner) {
      const dim3 grid = grid_2d(std::min(C, kMaxBlocksX), n_splits);
      stats_s_inner<T><<<grid, kThreads, 0, stream>>>(
          x, B, C, S, sb, sc, n_splits, cdiv(B * S, n_splits), part_n, part_mean, part_m2);
    } else {
      const dim3 grid = grid_2d(std::min(cdiv(C, kLanesC), kMaxBlocksX), n_splits);
      stats_c_inner<T><<<grid, dim3(kLanesC, kRowsC), 0, stream>>>(
          x, C, S, ss, n_splits, cdiv(S, n_splits), part_n, part_mean, part_m2);
    }
  }
  const dim3 per_channel = grid_2d(std::min(cdiv(C, kThreads), kMaxBlocksX));
  finalize_forward<<<per_channel, kThreads, 0, stream>>>(
      part_n, part_mean, part_m2, n_splits, C, running_mean, running_var, weight, mean, scale,
      invstd, training, momentum, eps);
  if (s_inner) {
    const dim3 grid = grid_2d(std::min(B * C, kMaxBlocksX), cdiv(S, kThreads * 4));
    normalize_s_inner<T><<<grid, kThreads, 0, stream>>>(x, y, B, C, S, sb, sc, mean, scale,
                                                        bias);
  } else {
    const dim3 grid = grid_2d(std::min(cdiv(C, kLanesC), kMaxBlocksX), cdiv(S, kRowsC * 8));
    normalize_c_inner<T><<<grid, dim3(kLanesC, kRowsC), 0, stream>>>(x, y, C, S, ss, mean,
                                                                     scale, bias);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_impl(const void* xv, const void* dyv, void* dxv, int64_t B, int64_t C,
                          int64_t S, int64_t sb, int64_t sc, int64_t ss, int64_t n_splits,
                          const float* weight, const float* mean, const float* invstd,
                          float* dweight, float* dbias, float* workspace, int training,
                          cudaStream_t stream) {
  const T* x = static_cast<const T*>(xv);
  const T* dy = static_cast<const T*>(dyv);
  T* dx = static_cast<T*>(dxv);
  const bool s_inner = ss == 1;
  float* part_dy = workspace;  // workspace: 2 * n_splits * C + 3 * C floats
  float* part_dy_xmu = workspace + n_splits * C;
  float* coef = workspace + 2 * n_splits * C;
  if (s_inner) {
    const dim3 grid = grid_2d(std::min(C, kMaxBlocksX), n_splits);
    grad_sums_s_inner<T><<<grid, kThreads, 0, stream>>>(
        x, dy, B, C, S, sb, sc, n_splits, cdiv(B * S, n_splits), mean, part_dy, part_dy_xmu);
  } else {
    const dim3 grid = grid_2d(std::min(cdiv(C, kLanesC), kMaxBlocksX), n_splits);
    grad_sums_c_inner<T><<<grid, dim3(kLanesC, kRowsC), 0, stream>>>(
        x, dy, C, S, ss, n_splits, cdiv(S, n_splits), mean, part_dy, part_dy_xmu);
  }
  const float inv_n = 1.f / static_cast<float>(B * S);
  const dim3 per_channel = grid_2d(std::min(cdiv(C, kThreads), kMaxBlocksX));
  finalize_backward<<<per_channel, kThreads, 0, stream>>>(
      part_dy, part_dy_xmu, n_splits, C, inv_n, weight, invstd, dweight, dbias, coef, coef + C,
      coef + 2 * C, training);
  if (s_inner) {
    const dim3 grid = grid_2d(std::min(B * C, kMaxBlocksX), cdiv(S, kThreads * 4));
    grad_input_s_inner<T><<<grid, kThreads, 0, stream>>>(x, dy, dx, B, C, S, sb, sc, mean, coef,
                                                         coef + C, coef + 2 * C);
  } else {
    const dim3 grid = grid_2d(std::min(cdiv(C, kLanesC), kMaxBlocksX), cdiv(S, kRowsC * 8));
    grad_input_c_inner<T><<<grid, dim3(kLanesC, kRowsC), 0, stream>>>(
        x, dy, dx, C, S, ss, mean, coef, coef + C, coef + 2 * C);
  }
  return cudaGetLastError();
}

}  // namespace

// dtype: 0 float32, 1 float16, 2 bfloat16. Layout: ss == 1 (S-inner) or sc == 1 with B == 1.
// Statistics, weight, bias and running statistics are float32. n_splits >= 1 (any size: the
// kernels grid-stride over splits). Returns a cudaError_t.
extern "C" int bnbook_bn_forward(int dtype, const void* x, void* y, int64_t B, int64_t C,
                                 int64_t S, int64_t sb, int64_t sc, int64_t ss, int64_t n_splits,
                                 const float* weight, const float* bias, float* running_mean,
                                 float* running_var, float* mean, float* scale, float* invstd,
                                 float* workspace, int training, float momentum, float eps,
                                 void* stream) {
  if (n_splits < 1 || B < 1 || C < 1 || S < 1) return static_cast<int>(cudaErrorInvalidValue);
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: return forward_impl<float>(x, y, B, C, S, sb, sc, ss, n_splits, weight, bias,
                                       running_mean, running_var, mean, scale, invstd,
                                       workspace, training, momentum, eps, st);
    case 1: return forward_impl<__half>(x, y, B, C, S, sb, sc, ss, n_splits, weight, bias,
                                        running_mean, running_var, mean, scale, invstd,
                                        workspace, training, momentum, eps, st);
    case 2: return forward_impl<__nv_bfloat16>(x, y, B, C, S, sb, sc, ss, n_splits, weight,
                                               bias, running_mean, running_var, mean, scale,
                                               invstd, workspace, training, momentum, eps, st);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

extern "C" int bnbook_bn_backward(int dtype, const void* x, const void* dy, void* dx, int64_t B,
                                  int64_t C, int64_t S, int64_t sb, int64_t sc, int64_t ss,
                                  int64_t n_splits, const float* weight, const float* mean,
                                  const float* invstd, float* dweight, float* dbias,
                                  float* workspace, int training, void* stream) {
  if (n_splits < 1 || B < 1 || C < 1 || S < 1) return static_cast<int>(cudaErrorInvalidValue);
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: return backward_impl<float>(x, dy, dx, B, C, S, sb, sc, ss, n_splits, weight, mean,
                                        invstd, dweight, dbias, workspace, training, st);
    case 1: return backward_impl<__half>(x, dy, dx, B, C, S, sb, sc, ss, n_splits, weight, mean,
                                         invstd, dweight, dbias, workspace, training, st);
    case 2: return backward_impl<__nv_bfloat16>(x, dy, dx, B, C, S, sb, sc, ss, n_splits,
                                                weight, mean, invstd, dweight, dbias, workspace,
                                                training, st);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

extern "C" const char* bnbook_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}
