// Thin torch binding of batch_norm.cu: tensors in, raw pointers out. Built on a GPU machine by
// bnbook.kernels.cuda.load() with torch.utils.cpp_extension.load. The arguments were checked in
// Python (bnbook.validation) and the tensors allocated there; this file only re-checks what
// would corrupt memory if wrong (devices, dtypes, sizes), makes the input's device current and
// launches on that device's current stream.

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <cstdint>
#include <optional>
#include <vector>

extern "C" int bnbook_bn_forward(int dtype, const void* x, void* y, int64_t B, int64_t C,
                                 int64_t S, int64_t sb, int64_t sc, int64_t ss, int64_t n_splits,
                                 const float* weight, const float* bias, float* running_mean,
                                 float* running_var, float* mean, float* scale, float* invstd,
                                 float* workspace, int training, float momentum, float eps,
                                 void* stream);
extern "C" int bnbook_bn_backward(int dtype, const void* x, const void* dy, void* dx, int64_t B,
                                  int64_t C, int64_t S, int64_t sb, int64_t sc, int64_t ss,
                                  int64_t n_splits, const float* weight, const float* mean,
                                  const float* invstd, float* dweight, float* dbias,
                                  float* workspace, int training, void* stream);
extern "C" const char* bnbook_error_string(int code);

namespace {

int dtype_code(const torch::Tensor& x) {
  switch (x.scalar_type()) {
    case torch::kFloat: return 0;
    case torch::kHalf: return 1;
    case torch::kBFloat16: return 2;
    default: TORCH_CHECK(false, "input must be float32, float16 or bfloat16");
  }
  return -1;
}

// A float32 (C,) or workspace tensor on x's device, or nothing.
void check_f32(const torch::Tensor& x, const torch::Tensor& t, const char* name, int64_t numel) {
  TORCH_CHECK(t.device() == x.device(), name, " is on ", t.device(), ", input on ", x.device());
  TORCH_CHECK(t.scalar_type() == torch::kFloat, name, " must be float32");
  TORCH_CHECK(t.is_contiguous() && t.numel() >= numel, name, " must be contiguous with at least ",
              numel, " elements");
}

float* ptr(const torch::Tensor& x, const std::optional<torch::Tensor>& t, const char* name,
           int64_t numel) {
  if (!t.has_value()) return nullptr;
  check_f32(x, *t, name, numel);
  return t->data_ptr<float>();
}

void check_view(const torch::Tensor& x, const std::vector<int64_t>& view, int64_t n_splits) {
  TORCH_CHECK(x.is_cuda(), "input must be a CUDA tensor, got one on ", x.device());
  TORCH_CHECK(view.size() == 6, "view must be (B, C, S, sb, sc, ss)");
  TORCH_CHECK(view[0] * view[1] * view[2] == x.numel(), "view does not match input's size");
  TORCH_CHECK(n_splits >= 1, "n_splits must be >= 1");
}

void check(int code) { TORCH_CHECK(code == 0, "CUDA error: ", bnbook_error_string(code)); }

void* current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

void forward(torch::Tensor x, torch::Tensor y, std::optional<torch::Tensor> weight,
             std::optional<torch::Tensor> bias, std::optional<torch::Tensor> running_mean,
             std::optional<torch::Tensor> running_var, torch::Tensor mean, torch::Tensor scale,
             torch::Tensor invstd, torch::Tensor workspace, std::vector<int64_t> view,
             int64_t n_splits, bool training, double momentum, double eps) {
  check_view(x, view, n_splits);
  // Launch on input's device (and its current stream), whatever device is current.
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const int64_t C = view[1];
  TORCH_CHECK(y.device() == x.device() && y.sizes() == x.sizes() && y.strides() == x.strides()
                  && y.scalar_type() == x.scalar_type(), "y must be like input");
  check_f32(x, mean, "mean", C);
  check_f32(x, scale, "scale", C);
  check_f32(x, invstd, "invstd", C);
  check_f32(x, workspace, "workspace", training ? 3 * n_splits * C : 0);
  check(bnbook_bn_forward(dtype_code(x), x.data_ptr(), y.data_ptr(), view[0], view[1], view[2],
                          view[3], view[4], view[5], n_splits, ptr(x, weight, "weight", C),
                          ptr(x, bias, "bias", C), ptr(x, running_mean, "running_mean", C),
                          ptr(x, running_var, "running_var", C), mean.data_ptr<float>(),
                          scale.data_ptr<float>(), invstd.data_ptr<float>(),
                          workspace.data_ptr<float>(), training, static_cast<float>(momentum),
                          static_cast<float>(eps), current_stream()));
}

void backward(torch::Tensor x, torch::Tensor dy, torch::Tensor dx,
              std::optional<torch::Tensor> weight, torch::Tensor mean, torch::Tensor invstd,
              torch::Tensor dweight, torch::Tensor dbias, torch::Tensor workspace,
              std::vector<int64_t> view, int64_t n_splits, bool training) {
  check_view(x, view, n_splits);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const int64_t C = view[1];
  for (const torch::Tensor* t : {&dy, &dx}) {
    TORCH_CHECK(t->device() == x.device() && t->sizes() == x.sizes()
                    && t->strides() == x.strides() && t->scalar_type() == x.scalar_type(),
                "dy and dx must be like input");
  }
  check_f32(x, mean, "mean", C);
  check_f32(x, invstd, "invstd", C);
  check_f32(x, dweight, "dweight", C);
  check_f32(x, dbias, "dbias", C);
  check_f32(x, workspace, "workspace", 2 * n_splits * C + 3 * C);
  check(bnbook_bn_backward(dtype_code(x), x.data_ptr(), dy.data_ptr(), dx.data_ptr(), view[0],
                           view[1], view[2], view[3], view[4], view[5], n_splits,
                           ptr(x, weight, "weight", C), mean.data_ptr<float>(),
                           invstd.data_ptr<float>(), dweight.data_ptr<float>(),
                           dbias.data_ptr<float>(), workspace.data_ptr<float>(), training,
                           current_stream()));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "BatchNorm forward (statistics, running update, normalise)");
  m.def("backward", &backward, "BatchNorm backward (sums, dweight, dbias, dx)");
}
