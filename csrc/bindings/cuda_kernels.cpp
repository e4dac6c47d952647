// The CUDA kernel families' bindings, one bind_cuda_<family> per csrc/bindings/cuda_<family>.cpp.
#include "cuda_bindings.h"

namespace ember::bind {

void bind_cuda_kernels(pybind11::module_& m) {
  bind_cuda_gemm(m);
}

}  // namespace ember::bind
