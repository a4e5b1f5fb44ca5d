// csrc/cuda/memory_read_cuda.cu compiled for the CPU against cuda_emulation.h: its host
// functions, with every kernel launch emulated, as a Python module for the test suite.
#define MEMAE_CUDA_EMULATION
#include "memory_read_cuda.cu"

#include <torch/extension.h>

#include <string>

// Kernels with the bugs the emulation is there to catch, for tests of the emulation itself.
namespace emulation_self_test {

__global__ void divergent_barrier_kernel() {
  if (threadIdx.x < 128) __syncthreads();
}

__global__ void misaligned_wmma_kernel() {
  MEMAE_DYNAMIC_SHARED(shared_bytes);
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::row_major> a;
  nvcuda::wmma::load_matrix_sync(a, reinterpret_cast<const __half*>(shared_bytes) + 1, 16);
}

// Each thread reads the slot its neighbour writes, with no barrier in between.
__global__ void missing_barrier_kernel(int* out) {
  MEMAE_DYNAMIC_SHARED(shared_bytes);
  int* slots = reinterpret_cast<int*>(shared_bytes);
  slots[threadIdx.x] = static_cast<int>(threadIdx.x) + 1;
  out[threadIdx.x] = slots[(threadIdx.x + 1) % blockDim.x];
}

// Each warp writes its slots in four steps, one warp-collective call apart, then reads the
// other warp's slots with no __syncthreads in between: a warp that runs ahead sees what the
// other has not written yet.
__global__ void warp_ahead_kernel(int* out) {
  MEMAE_DYNAMIC_SHARED(shared_bytes);
  int* slots = reinterpret_cast<int*>(shared_bytes);
  for (int step = 1; step <= 4; ++step) {
    slots[threadIdx.x] = step;
    __syncwarp();
  }
  out[threadIdx.x] = slots[(threadIdx.x + 32) % 64];
}

// Copies its input into shared memory with cp.async and reads it back: after waiting for the
// copy (order 0), before waiting (1), or without ever waiting (2).
__global__ void async_copy_kernel(const int* in, int* out, int order) {
  MEMAE_DYNAMIC_SHARED(shared_bytes);
  int* slots = reinterpret_cast<int*>(shared_bytes);
  __pipeline_memcpy_async(slots + threadIdx.x, in + threadIdx.x, sizeof(int));
  __pipeline_commit();
  if (order == 0) __pipeline_wait_prior(0);
  out[threadIdx.x] = slots[threadIdx.x];
  if (order == 1) __pipeline_wait_prior(0);
}

// Writes one element past the end of its output.
__global__ void out_of_bounds_kernel(int* out) { out[threadIdx.x + 1] = 1; }

at::Tensor run(const std::string& name) {
  at::Tensor out = at::zeros({64}, at::kInt);
  if (name == "divergent_barrier") {
    cuda_emulation::launch(divergent_barrier_kernel, dim3(1), dim3(256), 0);
  } else if (name == "misaligned_wmma") {
    cuda_emulation::launch(misaligned_wmma_kernel, dim3(1), dim3(32), 1024);
  } else if (name == "missing_barrier") {
    cuda_emulation::launch(missing_barrier_kernel, dim3(1), dim3(64), 64 * sizeof(int),
                           out.data_ptr<int>());
  } else if (name == "warp_ahead") {
    cuda_emulation::launch(warp_ahead_kernel, dim3(1), dim3(64), 64 * sizeof(int),
                           out.data_ptr<int>());
  } else if (name == "async_copy" || name == "async_copy_read_early" ||
             name == "async_copy_never_waited") {
    const at::Tensor in = at::arange(1, 65, at::kInt);
    const int order = name == "async_copy" ? 0 : name == "async_copy_read_early" ? 1 : 2;
    cuda_emulation::launch(async_copy_kernel, dim3(1), dim3(64), 64 * sizeof(int),
                           in.data_ptr<int>(), out.data_ptr<int>(), order);
  } else if (name == "out_of_bounds") {
    cuda_emulation::launch(out_of_bounds_kernel, dim3(1), dim3(64), 0, out.data_ptr<int>());
  } else {
    TORCH_CHECK(false, "self_test: unknown case ", name);
  }
  return out;
}

}  // namespace emulation_self_test

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("memory_read_fwd", &memae_fused::memory_read_fwd_cuda);
  m.def("memory_read_bwd", &memae_fused::memory_read_bwd_cuda);
  m.def(
      "configure",
      [](int multiprocessors, int shared_optin_bytes, bool reverse_schedule,
         bool early_copies, bool serial_warps) {
        auto& device = cuda_emulation::device();
        device.multiprocessors = multiprocessors;
        device.shared_optin_bytes = shared_optin_bytes;
        device.reverse_schedule = reverse_schedule;
        device.early_copies = early_copies;
        device.serial_warps = serial_warps;
      },
      "Sets the emulated device: SM count (which decides the splits), the opt-in shared "
      "memory per block, the order threads run in between barriers (reversed or not; warps "
      "round robin or one at a time), and whether cp.async copies land when issued (else "
      "when waited for).",
      pybind11::arg("multiprocessors"), pybind11::arg("shared_optin_bytes"),
      pybind11::arg("reverse_schedule"), pybind11::arg("early_copies") = false,
      pybind11::arg("serial_warps") = false);
  // The emulation's counters, read and (with reset=True) started again.
  const auto def_counter = [&m](const char* name, uint64_t& (*counter)(), const char* doc) {
    m.def(
        name,
        [counter](bool reset) {
          const uint64_t count = counter();
          if (reset) counter() = 0;
          return count;
        },
        doc, pybind11::arg("reset") = false);
  };
  def_counter("wmma_multiply_adds", &cuda_emulation::wmma_multiply_adds,
              "The multiply-adds of the WMMA products run since the last reset.");
  def_counter("block_barriers", &cuda_emulation::block_barriers,
              "The __syncthreads barriers every block has passed since the last reset, summed.");
  m.def("self_test", &emulation_self_test::run,
        "Runs one of the test kernels: divergent_barrier, misaligned_wmma, out_of_bounds (for "
        "AddressSanitizer), missing_barrier (whose output depends on the schedule), "
        "async_copy (a cp.async copy read after its wait), async_copy_read_early (read "
        "before it) or async_copy_never_waited.");
}
