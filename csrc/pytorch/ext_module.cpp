// Python module entry point of mmlstride._ext. Importing the module loads the
// shared library, whose static initialisers register the mmlstride ops with
// PyTorch's dispatcher; the module itself exposes nothing.
#include <Python.h>

extern "C" {
PyObject* PyInit__ext(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_ext", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
