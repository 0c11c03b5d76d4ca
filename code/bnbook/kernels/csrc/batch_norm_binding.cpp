// Thin torch binding of batch_norm.cu: tensors in, raw pointers out. Built on a GPU machine by
// bnbook.kernels.cuda.load() with torch.utils.cpp_extension.load. Every allocation and every
// check of shapes and dtypes happens in Python; the stream arrives as an integer handle, so this
// file needs no CUDA header.

#include <torch/extension.h>

#include <cstdint>
#include <optional>

extern "C" int bnbook_bn_forward(int dtype, const void* x, void* y, int64_t B, int64_t C,
                                 int64_t S, int64_t sb, int64_t sc, int64_t ss, int n_splits,
                                 const float* weight, const float* bias, float* running_mean,
                                 float* running_var, float* mean, float* scale, float* invstd,
                                 float* workspace, int training, float momentum, float eps,
                                 void* stream);
extern "C" int bnbook_bn_backward(int dtype, const void* x, const void* dy, void* dx, int64_t B,
                                  int64_t C, int64_t S, int64_t sb, int64_t sc, int64_t ss,
                                  int n_splits, const float* weight, const float* mean,
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

float* ptr(const std::optional<torch::Tensor>& t) {
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

void check(int code) { TORCH_CHECK(code == 0, "CUDA error: ", bnbook_error_string(code)); }

void forward(torch::Tensor x, torch::Tensor y, std::optional<torch::Tensor> weight,
             std::optional<torch::Tensor> bias, std::optional<torch::Tensor> running_mean,
             std::optional<torch::Tensor> running_var, torch::Tensor mean, torch::Tensor scale,
             torch::Tensor invstd, torch::Tensor workspace, std::vector<int64_t> view,
             int64_t n_splits, bool training, double momentum, double eps, int64_t stream) {
  TORCH_CHECK(view.size() == 6, "view must be (B, C, S, sb, sc, ss)");
  check(bnbook_bn_forward(dtype_code(x), x.data_ptr(), y.data_ptr(), view[0], view[1], view[2],
                          view[3], view[4], view[5], static_cast<int>(n_splits), ptr(weight),
                          ptr(bias), ptr(running_mean), ptr(running_var),
                          mean.data_ptr<float>(), scale.data_ptr<float>(),
                          invstd.data_ptr<float>(), workspace.data_ptr<float>(), training,
                          static_cast<float>(momentum), static_cast<float>(eps),
                          reinterpret_cast<void*>(stream)));
}

void backward(torch::Tensor x, torch::Tensor dy, torch::Tensor dx,
              std::optional<torch::Tensor> weight, torch::Tensor mean, torch::Tensor invstd,
              torch::Tensor dweight, torch::Tensor dbias, torch::Tensor workspace,
              std::vector<int64_t> view, int64_t n_splits, bool training, int64_t stream) {
  TORCH_CHECK(view.size() == 6, "view must be (B, C, S, sb, sc, ss)");
  check(bnbook_bn_backward(dtype_code(x), x.data_ptr(), dy.data_ptr(), dx.data_ptr(), view[0],
                           view[1], view[2], view[3], view[4], view[5],
                           static_cast<int>(n_splits), ptr(weight), mean.data_ptr<float>(),
                           invstd.data_ptr<float>(), dweight.data_ptr<float>(),
                           dbias.data_ptr<float>(), workspace.data_ptr<float>(), training,
                           reinterpret_cast<void*>(stream)));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "BatchNorm forward (statistics, running update, normalise)");
  m.def("backward", &backward, "BatchNorm backward (sums, dweight, dbias, dx)");
}
