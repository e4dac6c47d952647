// PLACEHOLDER (development only): the CUDA kernel families' bindings go here.
#include "cuda_bindings.h"
namespace ember::bind {
void bind_cuda_kernels(pybind11::module_& m) { (void)m; }
}
