// The Python module stub of igc_kernels._C. Importing it loads this library, which runs the
// op registrations; there is no pybind glue. The CMake build (a plain C++ library) leaves this
// file out. PyMODINIT_FUNC exports the symbol despite -fvisibility=hidden.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
