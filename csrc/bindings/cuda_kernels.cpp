// The CUDA kernel families' bindings, one bind_cuda_<family> per csrc/bindings/cuda_<family>.cpp.
#include "cuda_bindings.h"

namespace ember::bind {

void bind_cuda_kernels(pybind11::module_& m) {
  bind_cuda_gemm(m);
  bind_cuda_loss(m);
  bind_cuda_elementwise(m);
  bind_cuda_dropout(m);
  bind_cuda_optim(m);
}

}  // namespace ember::bind
