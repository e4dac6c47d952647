// PLACEHOLDER (development only): replaced by the optim family's bindings.
#include "cpu_bindings.h"
namespace ember::bind {
void bind_optim(pybind11::module_& m) { (void)m; }
}
