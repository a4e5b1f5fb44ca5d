// Schemas of the memae_fused ops, defined once; kernels register per dispatch key in
// csrc/cpu and csrc/cuda. Autograd and fake kernels are attached from Python
// (memae_fused/_ops_cpp.py).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing memae_fused._C loads this library and so runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(memae_fused, m) {
  m.def(
      "memory_read_fwd(Tensor query, Tensor memory, float shrink_thres, bool cosine, "
      "float temperature) -> (Tensor read, Tensor entropy, Tensor stats)");
  m.def(
      "memory_read_bwd(Tensor grad_read, Tensor grad_entropy, Tensor query, Tensor memory, "
      "Tensor read, Tensor entropy, Tensor stats, float shrink_thres, bool cosine, "
      "float temperature) -> (Tensor grad_query, Tensor grad_memory)");
}
