// PLACEHOLDER (development only): replaced by the dropout family's bindings.
#include "cpu_bindings.h"
namespace ember::bind {
void bind_dropout(pybind11::module_& m) { (void)m; }
}
