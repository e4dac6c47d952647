// PLACEHOLDER (development only): replaced by the loss family's bindings.
#include "cpu_bindings.h"
namespace ember::bind {
void bind_loss(pybind11::module_& m) { (void)m; }
}
