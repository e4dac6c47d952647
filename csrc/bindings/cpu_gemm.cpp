// PLACEHOLDER (development only): replaced by the gemm family's bindings.
#include "cpu_bindings.h"
namespace ember::bind {
void bind_gemm(pybind11::module_& m) { (void)m; }
}
