// PLACEHOLDER (development only): replaced by the activation family's bindings.
#include "cpu_bindings.h"
namespace ember::bind {
void bind_activation(pybind11::module_& m) { (void)m; }
}
