// Batch Normalization in CUDA C++: forward (train and eval) and backward.
//
// The same plan as the Triton kernels (bnbook/kernels/triton_bn.py), written by hand:
//   * the input is a strided (B, C, S) view: "S-inner" (NCHW, S contiguous) or "C-inner"
//     (channels_last and (N, C): B == 1, C contiguous, rows along S);
//   * statistics: each thread keeps shifted sums (x - K, K = the channel's first element), turns
//     them into (n, mean, M2) once, and threads, blocks and splits are merged with Chan's rule;
//   * normalise with a per-channel scale = weight * inv_std: no per-element division;
//   * backward: the sums (dy, dy * (x - mean)), then dx = k * (dy - a - (x - mean) * b).
//
// This file includes no torch header (raw pointers, float32 statistics), so it compiles with
// nvcc alone; batch_norm_binding.cpp hands torch tensors to the two extern "C" entry points.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace {

constexpr int kThreads = 256;   // threads per block
constexpr int kLanesC = 32;     // C-inner: channels per block (one warp wide: 128-byte loads)
constexpr int kRowsC = kThreads / kLanesC;  // C-inner: rows walked at once by a block

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
  Moments r;
  r.n = a.n + b.n;
  if (r.n == 0.f) return a;
  const float delta = b.mean - a.mean;
  const float frac_b = b.n / r.n;
  r.mean = a.mean + delta * frac_b;
  r.m2 = a.m2 + b.m2 + delta * delta * a.n * frac_b;
  return r;
}

// Shifted sums -> moments: sum(d) and sum(d^2) with d = x - shift, shift near the mean, so the
// subtraction sum(d^2) - sum(d)^2 / n does not cancel (unlike E[x^2] - E[x]^2 on raw x).
__device__ __forceinline__ Moments from_shifted(float n, float sd, float sdd, float shift) {
  if (n == 0.f) return Moments{0.f, 0.f, 0.f};
  const float md = sd / n;  // one division per thread, not per element
  return Moments{n, shift + md, fmaxf(sdd - sd * md, 0.f)};
}

// ---- forward: partial statistics -----------------------------------------------------------

// S-inner. grid (C, n_splits); the split walks planes b in [b0, b1) of channel c.
template <typename T>
__global__ void stats_s_inner(const T* __restrict__ x, int64_t B, int64_t C, int64_t S,
                              int64_t sb, int64_t sc, int64_t planes_per_split,
                              float* part_n, float* part_mean, float* part_m2) {
  const int64_t c = blockIdx.x, split = blockIdx.y;
  const int64_t b0 = split * planes_per_split;
  const int64_t b1 = min(b0 + planes_per_split, B);
  const float shift = to_float(x[c * sc]);  // the channel's first element: close to its mean
  float n = 0.f, sd = 0.f, sdd = 0.f;
  for (int64_t b = b0; b < b1; ++b) {
    const T* plane = x + b * sb + c * sc;
    for (int64_t s = threadIdx.x; s < S; s += blockDim.x) {
      const float d = to_float(plane[s]) - shift;
      n += 1.f;
      sd += d;
      sdd += d * d;
    }
  }
  Moments m = from_shifted(n, sd, sdd, shift);
  __shared__ Moments smem[kThreads];
  smem[threadIdx.x] = m;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {  // tree of Chan merges
    if (threadIdx.x < half) smem[threadIdx.x] = chan_merge(smem[threadIdx.x],
                                                           smem[threadIdx.x + half]);
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    part_n[split * C + c] = smem[0].n;
    part_mean[split * C + c] = smem[0].mean;
    part_m2[split * C + c] = smem[0].m2;
  }
}

// C-inner. grid (ceil(C / 32), n_splits), block (32, 8); rows r in [r0, r1), row stride ss.
template <typename T>
__global__ void stats_c_inner(const T* __restrict__ x, int64_t C, int64_t R, int64_t ss,
                              int64_t rows_per_split, float* part_n, float* part_mean,
                              float* part_m2) {
  const int64_t c = blockIdx.x * kLanesC + threadIdx.x, split = blockIdx.y;
  const int64_t r0 = split * rows_per_split;
  const int64_t r1 = min(r0 + rows_per_split, R);
  const bool valid = c < C;
  const float shift = valid ? to_float(x[c]) : 0.f;
  float n = 0.f, sd = 0.f, sdd = 0.f;
  if (valid) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowsC) {
      const float d = to_float(x[r * ss + c]) - shift;
      n += 1.f;
      sd += d;
      sdd += d * d;
    }
  }
  __shared__ Moments smem[kRowsC][kLanesC];
  smem[threadIdx.y][threadIdx.x] = from_shifted(n, sd, sdd, shift);
  __syncthreads();
  if (threadIdx.y == 0 && valid) {
    Moments m = smem[0][threadIdx.x];
    for (int k = 1; k < kRowsC; ++k) m = chan_merge(m, smem[k][threadIdx.x]);
    part_n[split * C + c] = m.n;
    part_mean[split * C + c] = m.mean;
    part_m2[split * C + c] = m.m2;
  }
}

// ---- forward: finalize (one thread per channel) ----------------------------------------------

__global__ void finalize_forward(const float* part_n, const float* part_mean,
                                 const float* part_m2, int n_splits, int64_t C,
                                 float* running_mean, float* running_var, const float* weight,
                                 float* mean_out, float* scale_out, float* invstd_out,
                                 int training, float momentum, float eps) {
  const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (c >= C) return;
  float mean, var;
  if (training) {
    Moments m{0.f, 0.f, 0.f};
    for (int k = 0; k < n_splits; ++k)
      m = chan_merge(m, Moments{part_n[k * C + c], part_mean[k * C + c], part_m2[k * C + c]});
    mean = m.mean;
    var = m.m2 / m.n;  // biased: used to normalise
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

// ---- forward: normalise ----------------------------------------------------------------------

// S-inner. grid (B * C, ceil(S / (256 * 4))): one (b, c) plane per blockIdx.x.
template <typename T>
__global__ void normalize_s_inner(const T* __restrict__ x, T* __restrict__ y, int64_t C,
                                  int64_t S, int64_t sb, int64_t sc, const float* mean,
                                  const float* scale, const float* bias) {
  const int64_t plane = blockIdx.x;
  const int64_t c = plane % C, b = plane / C;  // one division per block
  const float m = mean[c], k = scale[c], beta = bias != nullptr ? bias[c] : 0.f;
  const int64_t base = b * sb + c * sc;
  const int64_t chunk = (int64_t)blockDim.x * 4;
  for (int64_t s = blockIdx.y * chunk + threadIdx.x; s < min(S, (blockIdx.y + 1) * chunk);
       s += blockDim.x)
    y[base + s] = from_float<T>((to_float(x[base + s]) - m) * k + beta);
}

// C-inner. grid (ceil(C / 32), ceil(R / 64)), block (32, 8).
template <typename T>
__global__ void normalize_c_inner(const T* __restrict__ x, T* __restrict__ y, int64_t C,
                                  int64_t R, int64_t ss, const float* mean, const float* scale,
                                  const float* bias) {
  const int64_t c = blockIdx.x * kLanesC + threadIdx.x;
  if (c >= C) return;
  const float m = mean[c], k = scale[c], beta = bias != nullptr ? bias[c] : 0.f;
  const int64_t r0 = blockIdx.y * (int64_t)(kRowsC * 8);
  const int64_t r1 = min(r0 + kRowsC * 8, R);
  for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowsC)
    y[r * ss + c] = from_float<T>((to_float(x[r * ss + c]) - m) * k + beta);
}

// ---- backward --------------------------------------------------------------------------------

template <typename T>
__global__ void grad_sums_s_inner(const T* __restrict__ x, const T* __restrict__ dy, int64_t B,
                                  int64_t C, int64_t S, int64_t sb, int64_t sc,
                                  int64_t planes_per_split, const float* mean, float* part_dy,
                                  float* part_dy_xmu) {
  const int64_t c = blockIdx.x, split = blockIdx.y;
  const int64_t b0 = split * planes_per_split;
  const int64_t b1 = min(b0 + planes_per_split, B);
  const float m = mean[c];
  float s_dy = 0.f, s_dy_xmu = 0.f;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t base = b * sb + c * sc;
    for (int64_t s = threadIdx.x; s < S; s += blockDim.x) {
      const float g = to_float(dy[base + s]);
      s_dy += g;
      s_dy_xmu += g * (to_float(x[base + s]) - m);  // centred: no mean-sized products
    }
  }
  __shared__ float smem[2][kThreads];
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
}

template <typename T>
__global__ void grad_sums_c_inner(const T* __restrict__ x, const T* __restrict__ dy, int64_t C,
                                  int64_t R, int64_t ss, int64_t rows_per_split,
                                  const float* mean, float* part_dy, float* part_dy_xmu) {
  const int64_t c = blockIdx.x * kLanesC + threadIdx.x, split = blockIdx.y;
  const int64_t r0 = split * rows_per_split;
  const int64_t r1 = min(r0 + rows_per_split, R);
  const bool valid = c < C;
  float s_dy = 0.f, s_dy_xmu = 0.f;
  if (valid) {
    const float m = mean[c];
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowsC) {
      const float g = to_float(dy[r * ss + c]);
      s_dy += g;
      s_dy_xmu += g * (to_float(x[r * ss + c]) - m);
    }
  }
  __shared__ float smem[2][kRowsC][kLanesC];
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
}

// dweight, dbias, and the coefficients of dx = k * (dy - a - (x - mean) * b), per channel.
__global__ void finalize_backward(const float* part_dy, const float* part_dy_xmu, int n_splits,
                                  int64_t C, float inv_n, const float* weight,
                                  const float* invstd, float* dweight, float* dbias,
                                  float* coef_k, float* coef_a, float* coef_b, int training) {
  const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (c >= C) return;
  float s_dy = 0.f, s_dy_xmu = 0.f;
  for (int k = 0; k < n_splits; ++k) {
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

template <typename T>
__global__ void grad_input_s_inner(const T* __restrict__ x, const T* __restrict__ dy,
                                   T* __restrict__ dx, int64_t C, int64_t S, int64_t sb,
                                   int64_t sc, const float* mean, const float* coef_k,
                                   const float* coef_a, const float* coef_b) {
  const int64_t plane = blockIdx.x;
  const int64_t c = plane % C, b = plane / C;
  const float m = mean[c], k = coef_k[c], a = coef_a[c], bb = coef_b[c];
  const int64_t base = b * sb + c * sc;
  const int64_t chunk = (int64_t)blockDim.x * 4;
  for (int64_t s = blockIdx.y * chunk + threadIdx.x; s < min(S, (blockIdx.y + 1) * chunk);
       s += blockDim.x) {
    const float xmu = to_float(x[base + s]) - m;
    dx[base + s] = from_float<T>(k * (to_float(dy[base + s]) - a - xmu * bb));
  }
}

template <typename T>
__global__ void grad_input_c_inner(const T* __restrict__ x, const T* __restrict__ dy,
                                   T* __restrict__ dx, int64_t C, int64_t R, int64_t ss,
                                   const float* mean, const float* coef_k, const float* coef_a,
                                   const float* coef_b) {
  const int64_t c = blockIdx.x * kLanesC + threadIdx.x;
  if (c >= C) return;
  const float m = mean[c], k = coef_k[c], a = coef_a[c], bb = coef_b[c];
  const int64_t r0 = blockIdx.y * (int64_t)(kRowsC * 8);
  const int64_t r1 = min(r0 + kRowsC * 8, R);
  for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowsC) {
    const float xmu = to_float(x[r * ss + c]) - m;
    dx[r * ss + c] = from_float<T>(k * (to_float(dy[r * ss + c]) - a - xmu * bb));
  }
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
cudaError_t forward_impl(const void* xv, void* yv, int64_t B, int64_t C, int64_t S, int64_t sb,
                         int64_t sc, int64_t ss, int n_splits, const float* weight,
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
      const int64_t per = cdiv(B, n_splits);
      stats_s_inner<T><<<dim3(C, n_splits), kThreads, 0, stream>>>(
          x, B, C, S, sb, sc, per, part_n, part_mean, part_m2);
    } else {
      const int64_t per = cdiv(S, n_splits);
      stats_c_inner<T><<<dim3(cdiv(C, kLanesC), n_splits), dim3(kLanesC, kRowsC), 0, stream>>>(
          x, C, S, ss, per, part_n, part_mean, part_m2);
    }
  }
  finalize_forward<<<cdiv(C, kThreads), kThreads, 0, stream>>>(
      part_n, part_mean, part_m2, n_splits, C, running_mean, running_var, weight, mean, scale,
      invstd, training, momentum, eps);
  if (s_inner) {
    normalize_s_inner<T><<<dim3(B * C, cdiv(S, kThreads * 4)), kThreads, 0, stream>>>(
        x, y, C, S, sb, sc, mean, scale, bias);
  } else {
    normalize_c_inner<T><<<dim3(cdiv(C, kLanesC), cdiv(S, kRowsC * 8)), dim3(kLanesC, kRowsC),
                           0, stream>>>(x, y, C, S, ss, mean, scale, bias);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_impl(const void* xv, const void* dyv, void* dxv, int64_t B, int64_t C,
                          int64_t S, int64_t sb, int64_t sc, int64_t ss, int n_splits,
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
    grad_sums_s_inner<T><<<dim3(C, n_splits), kThreads, 0, stream>>>(
        x, dy, B, C, S, sb, sc, cdiv(B, n_splits), mean, part_dy, part_dy_xmu);
  } else {
    grad_sums_c_inner<T><<<dim3(cdiv(C, kLanesC), n_splits), dim3(kLanesC, kRowsC), 0,
                           stream>>>(x, dy, C, S, ss, cdiv(S, n_splits), mean, part_dy,
                                     part_dy_xmu);
  }
  const float inv_n = 1.f / static_cast<float>(B * S);
  finalize_backward<<<cdiv(C, kThreads), kThreads, 0, stream>>>(
      part_dy, part_dy_xmu, n_splits, C, inv_n, weight, invstd, dweight, dbias, coef, coef + C,
      coef + 2 * C, training);
  if (s_inner) {
    grad_input_s_inner<T><<<dim3(B * C, cdiv(S, kThreads * 4)), kThreads, 0, stream>>>(
        x, dy, dx, C, S, sb, sc, mean, coef, coef + C, coef + 2 * C);
  } else {
    grad_input_c_inner<T><<<dim3(cdiv(C, kLanesC), cdiv(S, kRowsC * 8)), dim3(kLanesC, kRowsC),
                            0, stream>>>(x, dy, dx, C, S, ss, mean, coef, coef + C,
                                         coef + 2 * C);
  }
  return cudaGetLastError();
}

}  // namespace

// dtype: 0 float32, 1 float16, 2 bfloat16. Layout: ss == 1 (S-inner) or sc == 1 with B == 1.
// Statistics, weight, bias and running statistics are float32. Returns a cudaError_t.
extern "C" int bnbook_bn_forward(int dtype, const void* x, void* y, int64_t B, int64_t C,
                                 int64_t S, int64_t sb, int64_t sc, int64_t ss, int n_splits,
                                 const float* weight, const float* bias, float* running_mean,
                                 float* running_var, float* mean, float* scale, float* invstd,
                                 float* workspace, int training, float momentum, float eps,
                                 void* stream) {
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
                                  int n_splits, const float* weight, const float* mean,
                                  const float* invstd, float* dweight, float* dbias,
                                  float* workspace, int training, void* stream) {
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
