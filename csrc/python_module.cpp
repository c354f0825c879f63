// The Python module stub of igc_kernels._C. Importing it loads this library, which runs the
// op registrations; there is no pybind glue. The CMake build (a plain C++ library) leaves this
// file out.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
