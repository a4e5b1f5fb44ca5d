// A CPU stand-in for the parts of CUDA that csrc/cuda/memory_read_cuda.cu uses, so that its
// kernels and host code run on CPU tensors in the test suite (tests/gpu/test_cuda_emulated.py) on
// machines without a GPU. Included by that file in place of the CUDA headers when
// MEMAE_CUDA_EMULATION is defined; never part of the installed package.
//
// Model: the blocks of a launch run one after another; the threads of a block are fibers
// on one OS thread, each running until it reaches __syncthreads, a warp-collective
// call or its end. That makes every barrier checkable: a barrier that not all threads of the
// block (or lanes of the warp) reach is reported instead of hanging. Threads between two
// barriers run round robin in index order or, with schedule "reverse", in reverse order, so a
// missing barrier shows up as a difference between the two orders. Round robin keeps the
// warps within one warp-collective call of each other; with "serial_warps" one warp runs to
// its next __syncthreads before the next warp starts, so that a race between a warp ahead and
// one behind (a buffer rewritten while another warp's WMMA calls still read it) shows too.
// Dynamic shared memory is filled with 0xFF bytes (NaN in every float type) at each block's
// start, as garbage would be, and a launch asking for more than 48 KiB of it must have raised
// the kernel's limit first, as on a GPU. WMMA fragments hold the whole 16 x 16 tile in every
// lane (the kernel never reads their elements), products are accumulated in float (and their
// multiply-adds counted), and pointers and strides are checked against WMMA's alignment rules
// and for being the same in every lane. A cp.async copy (cuda_pipeline.h) lands in shared
// memory when its thread waits for it, or (configurable) as soon as it is issued, and a
// thread that returns with copies it never waited for is an error. __syncthreads barriers are
// counted, for the tests of how many each kernel needs.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Blocks run one at a time, so a function-local static is exactly one block's variable.
#define __shared__ static
#define MEMAE_DYNAMIC_SHARED(name) char* const name = ::cuda_emulation::dynamic_shared()

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;
inline float __half2float(__half x) { return static_cast<float>(x); }
inline __half __float2half(float x) { return __half(x); }  // round to nearest even
inline float __bfloat162float(__nv_bfloat16 x) { return static_cast<float>(x); }
inline __nv_bfloat16 __float2bfloat16(float x) { return __nv_bfloat16(x); }

// CUDA's integer min/max device functions.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

namespace cuda_emulation {

// The emulated device, set from the tests (configure()).
struct Device {
  int multiprocessors = 132;
  int shared_optin_bytes = 232448;  // an H100's 227 KiB per block
  bool reverse_schedule = false;
  // cp.async copies land when issued instead of at their wait: where "late" shows a read
  // that comes before the wait, "early" shows a copy issued into a buffer still being read.
  bool early_copies = false;
  // One warp at a time runs until all its lanes wait at __syncthreads (or return): where the
  // round robin keeps warps within one collective call of each other, this lets one warp run
  // ahead of the rest through its WMMA calls, as a GPU may.
  bool serial_warps = false;
};
inline Device& device() {
  static Device d;
  return d;
}

// Multiply-adds of every WMMA product since the count was last reset (counted once per warp
// product), for the tests that check the cost model's unit counts.
inline uint64_t& wmma_multiply_adds() {
  static uint64_t count = 0;
  return count;
}

// __syncthreads barriers completed by every block since the count was last reset (the tests'
// barriers-per-chunk check).
inline uint64_t& block_barriers() {
  static uint64_t count = 0;
  return count;
}

// Switching between fibers: a few instructions on x86-64 (the callee-saved registers and the
// floating-point control words on the stack), ucontext elsewhere (a system call per switch).
#if defined(__x86_64__)
extern "C" void memae_cuda_emulation_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl memae_cuda_emulation_switch
  .type memae_cuda_emulation_switch, @function
memae_cuda_emulation_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size memae_cuda_emulation_switch, .-memae_cuda_emulation_switch
)");

struct Context {
  void* sp = nullptr;
};
inline void raw_switch(Context& from, Context& to) { memae_cuda_emulation_switch(&from.sp, to.sp); }
// A context that starts entry() on the stack [base, base + bytes); entry never returns.
inline void make_context(Context& context, char* base, size_t bytes, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(base + bytes) & ~uintptr_t(15);
  auto* slots = reinterpret_cast<uint64_t*>(top);
  slots[-1] = 0;                                     // entry's return address: none
  slots[-2] = reinterpret_cast<uint64_t>(entry);     // where the switch returns to
  for (int reg = 3; reg <= 8; ++reg) slots[-reg] = 0;  // rbp, rbx, r12-r15
  slots[-9] = 0x1F80 | (uint64_t(0x037F) << 32);     // default MXCSR and x87 control word
  context.sp = &slots[-9];
}
#else
struct Context {
  ucontext_t uc;
};
inline void raw_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
inline void make_context(Context& context, char* base, size_t bytes, void (*entry)()) {
  getcontext(&context.uc);
  context.uc.uc_stack.ss_sp = base;
  context.uc.uc_stack.ss_size = bytes;
  context.uc.uc_link = nullptr;
  makecontext(&context.uc, entry, 0);
}
#endif

// Under AddressSanitizer (tests/gpu/test_cuda_emulated.py's memory check) every switch is
// announced, so that it tracks which stack is live.
struct Stack {
  const void* bottom = nullptr;
  size_t size = 0;
};
inline void switch_stack(Context& from, Context& to, const Stack& to_stack, bool from_finished,
                         Stack* came_from) {
#if defined(__SANITIZE_ADDRESS__)
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(from_finished ? nullptr : &fake_stack, to_stack.bottom,
                                 to_stack.size);
  raw_switch(from, to);
  __sanitizer_finish_switch_fiber(fake_stack, came_from ? &came_from->bottom : nullptr,
                                  came_from ? &came_from->size : nullptr);
#else
  (void)to_stack, (void)from_finished, (void)came_from;
  raw_switch(from, to);
#endif
}
// A finished fiber's frames stay marked as live stack (it never returned): clear them before the
// memory is reused or freed.
inline void forget_stack(char* base, size_t bytes) {
#if defined(__SANITIZE_ADDRESS__)
  ASAN_UNPOISON_MEMORY_REGION(base, bytes);
#else
  (void)base, (void)bytes;
#endif
}
// The first thing a new fiber does (it was switched to from the scheduler's stack).
inline void started_on_new_stack(Stack* came_from) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &came_from->bottom, &came_from->size);
#else
  (void)came_from;
#endif
}

constexpr int kWarpSize = 32;
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kDefaultSharedLimit = 48 * 1024;

enum class State { Runnable, AtBlockBarrier, AtWarpBarrier, Done };

// One cp.async copy in flight: its source bytes as read at issue (the kernels' global inputs
// do not change during a launch), landing in shared memory only at a wait.
struct AsyncCopy {
  char* dst;
  std::array<char, 16> bytes;
  size_t size;
};

struct Fiber {
  Context context;
  Stack stack;
  State state = State::Runnable;
  dim3 thread_idx;
  uint64_t mma_calls = 0;
  std::vector<AsyncCopy> open_group;                 // issued since the last commit
  std::vector<std::vector<AsyncCopy>> committed;     // oldest first
};

// One block's execution state: its fibers, barriers and the lanes' exchange slots.
struct Block {
  std::vector<Fiber> fibers;
  Context scheduler;
  Stack scheduler_stack;
  int current = 0;
  int block_arrivals = 0;
  std::vector<int> warp_arrivals;
  std::vector<uint64_t> slots, pair_slots;  // one per thread: __shfl values, WMMA arguments
  // One 16 x 16 product per warp: the lane that gets there first computes it for all.
  std::vector<uint64_t> warp_mma_serial;
  std::vector<std::array<float, 256>> warp_mma_result;
  char* shared = nullptr;
  size_t shared_bytes = 0;
  uint64_t barriers = 0;  // __syncthreads completed in this block
  std::exception_ptr error;
  dim3 block_idx, block_dim, grid_dim;
};

inline Block*& running_block() {
  static Block* block = nullptr;
  return block;
}
inline Block& block() {
  TORCH_CHECK(running_block() != nullptr, "cuda_emulation: device code called outside a launch");
  return *running_block();
}
inline Fiber& fiber() { return block().fibers[block().current]; }

inline char* dynamic_shared() { return block().shared; }

inline int linear_thread() {
  const Block& b = block();
  const dim3& t = b.fibers[b.current].thread_idx;
  return static_cast<int>(t.x + b.block_dim.x * (t.y + b.block_dim.y * t.z));
}

inline void yield_to_scheduler(bool finished = false) {
  Block& b = block();
  Fiber& f = b.fibers[b.current];
  switch_stack(f.context, b.scheduler, b.scheduler_stack, finished, &b.scheduler_stack);
}

inline std::string where() {
  const Block& b = block();
  const dim3& t = b.fibers[b.current].thread_idx;
  return "block (" + std::to_string(b.block_idx.x) + ", " + std::to_string(b.block_idx.y) + ", " +
         std::to_string(b.block_idx.z) + ") thread " + std::to_string(t.x);
}

// __syncthreads: the last thread to arrive releases the others.
// counted: whether block_barriers() counts it (__syncthreads_or's second, internal barrier is
// not: on a GPU it is one barrier).
inline void sync_block(bool counted = true) {
  Block& b = block();
  if (++b.block_arrivals == static_cast<int>(b.fibers.size())) {
    b.block_arrivals = 0;
    if (counted) ++b.barriers;
    for (Fiber& f : b.fibers) {
      if (f.state == State::AtBlockBarrier) f.state = State::Runnable;
    }
    return;
  }
  fiber().state = State::AtBlockBarrier;
  yield_to_scheduler();
}

inline int warp_lanes(int warp) {
  const int threads = static_cast<int>(block().fibers.size());
  return std::min(kWarpSize, threads - warp * kWarpSize);
}

// The convergence point of a warp-collective call.
inline void sync_warp() {
  Block& b = block();
  const int warp = linear_thread() / kWarpSize;
  if (++b.warp_arrivals[warp] == warp_lanes(warp)) {
    b.warp_arrivals[warp] = 0;
    for (int lane = 0; lane < warp_lanes(warp); ++lane) {
      Fiber& f = b.fibers[warp * kWarpSize + lane];
      if (f.state == State::AtWarpBarrier) f.state = State::Runnable;
    }
    return;
  }
  fiber().state = State::AtWarpBarrier;
  yield_to_scheduler();
}

template <typename T>
T shfl_xor(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffled values are at most 8 bytes");
  Block& b = block();
  const int tid = linear_thread(), warp = tid / kWarpSize, lane = tid % kWarpSize;
  const unsigned full = warp_lanes(warp) == kWarpSize ? 0xffffffffu
                                                      : (1u << warp_lanes(warp)) - 1u;
  TORCH_CHECK(mask == full, "cuda_emulation: __shfl_xor_sync with mask ", mask,
              " (only full-warp shuffles are emulated) at ", where());
  const int source = lane ^ lane_mask;
  TORCH_CHECK(source < warp_lanes(warp), "cuda_emulation: __shfl_xor_sync from lane ", source,
              " outside the warp at ", where());
  std::memcpy(&b.slots[tid], &value, sizeof(T));
  sync_warp();
  T other;
  std::memcpy(&other, &b.slots[warp * kWarpSize + source], sizeof(T));
  sync_warp();  // the slots are reused by the next collective
  return other;
}

// Checks that every lane of the warp passes the same values to a collective call.
inline void check_warp_uniform(uint64_t first, uint64_t second, const char* what) {
  Block& b = block();
  const int tid = linear_thread(), warp = tid / kWarpSize;
  b.slots[tid] = first;
  b.pair_slots[tid] = second;
  sync_warp();
  bool uniform = true;
  for (int lane = 0; lane < warp_lanes(warp); ++lane) {
    const int other = warp * kWarpSize + lane;
    uniform = uniform && b.slots[other] == first && b.pair_slots[other] == second;
  }
  sync_warp();
  TORCH_CHECK(uniform, "cuda_emulation: lanes of a warp pass different arguments to ", what,
              " at ", where());
}

// Per-kernel dynamic shared memory limits set by cudaFuncSetAttribute.
inline std::map<const void*, size_t>& shared_limits() {
  static std::map<const void*, size_t> limits;
  return limits;
}

// The launch: every block in grid order, its threads as fibers.
struct Launch {
  dim3 grid, block_dim;
  size_t shared_bytes;
  const void* kernel;
};

template <typename Body>
struct FiberEntry {
  static Body* body;
  static void run() {
    Block& b = block();
    started_on_new_stack(&b.scheduler_stack);
    try {
      (*body)();
      const Fiber& self = b.fibers[b.current];
      bool pending = !self.open_group.empty();
      for (const auto& group : self.committed) pending = pending || !group.empty();
      TORCH_CHECK(!pending,
                  "cuda_emulation: thread returned with cp.async copies it never waited for at ",
                  where());
    } catch (...) {
      if (!b.error) b.error = std::current_exception();
    }
    b.fibers[b.current].state = State::Done;
    yield_to_scheduler(/*finished=*/true);
  }
};
template <typename Body>
Body* FiberEntry<Body>::body = nullptr;

// Runs body() as every thread of every block of the grid.
template <typename Body>
void run_grid(const Launch& launch, Body body) {
  const dim3& dim = launch.block_dim;
  const int threads = static_cast<int>(dim.x * dim.y * dim.z);
  TORCH_CHECK(threads >= 1 && threads <= 1024, "cuda_emulation: ", threads,
              " threads per block");
  TORCH_CHECK(launch.grid.x >= 1 && launch.grid.y >= 1 && launch.grid.z >= 1 &&
                  launch.grid.y < 65536 && launch.grid.z < 65536,
              "cuda_emulation: bad grid (", launch.grid.x, ", ", launch.grid.y, ", ",
              launch.grid.z, ")");
  size_t limit = kDefaultSharedLimit;
  const auto it = shared_limits().find(launch.kernel);
  if (it != shared_limits().end()) limit = it->second;
  TORCH_CHECK(launch.shared_bytes <= limit, "cuda_emulation: launch with ", launch.shared_bytes,
              " bytes of dynamic shared memory, but the kernel's limit is ", limit,
              " (cudaFuncSetAttribute raises it past 48 KiB)");

  std::unique_ptr<char[]> stacks(new char[kStackBytes * threads]);
  const size_t shared_alloc = std::max<size_t>(launch.shared_bytes, 1);
  std::unique_ptr<char, decltype(&std::free)> shared(
      static_cast<char*>(std::aligned_alloc(128, (shared_alloc + 127) / 128 * 128)), &std::free);
  Block b;
  b.block_dim = launch.block_dim;
  b.grid_dim = launch.grid;
  b.shared = shared.get();
  b.shared_bytes = launch.shared_bytes;
  b.fibers.resize(threads);
  b.warp_arrivals.assign((threads + kWarpSize - 1) / kWarpSize, 0);
  b.slots.assign(threads, 0);
  b.pair_slots.assign(threads, 0);
  b.warp_mma_serial.assign(b.warp_arrivals.size(), 0);
  b.warp_mma_result.resize(b.warp_arrivals.size());
  FiberEntry<Body>::body = &body;
  Block* const outer = running_block();
  TORCH_CHECK(outer == nullptr, "cuda_emulation: launch from device code");
  running_block() = &b;
  const bool reverse = device().reverse_schedule;
  const bool serial_warps = device().serial_warps;
  try {
    for (unsigned bz = 0; bz < launch.grid.z; ++bz)
      for (unsigned by = 0; by < launch.grid.y; ++by)
        for (unsigned bx = 0; bx < launch.grid.x; ++bx) {
          b.block_idx = dim3(bx, by, bz);
          std::memset(b.shared, 0xFF, launch.shared_bytes);
          b.block_arrivals = 0;
          b.barriers = 0;
          std::fill(b.warp_arrivals.begin(), b.warp_arrivals.end(), 0);
          std::fill(b.warp_mma_serial.begin(), b.warp_mma_serial.end(), 0);
          for (int t = 0; t < threads; ++t) {
            Fiber& f = b.fibers[t];
            f.state = State::Runnable;
            f.mma_calls = 0;
            f.open_group.clear();
            f.committed.clear();
            f.thread_idx = dim3(t % launch.block_dim.x,
                                (t / launch.block_dim.x) % launch.block_dim.y,
                                t / (launch.block_dim.x * launch.block_dim.y));
            f.stack = Stack{stacks.get() + kStackBytes * t, kStackBytes};
            forget_stack(stacks.get() + kStackBytes * t, kStackBytes);
            make_context(f.context, stacks.get() + kStackBytes * t, kStackBytes,
                         &FiberEntry<Body>::run);
          }
          // Round robin over the runnable threads until all are done.
          int done = 0;
          while (done < threads) {
            bool progressed = false;
            int running_warp = -1;  // serial_warps: the first warp with a runnable thread
            for (int i = 0; i < threads; ++i) {
              const int t = reverse ? threads - 1 - i : i;
              if (b.fibers[t].state != State::Runnable) continue;
              if (serial_warps) {
                if (running_warp < 0) running_warp = t / kWarpSize;
                if (t / kWarpSize != running_warp) continue;
              }
              b.current = t;
              switch_stack(b.scheduler, b.fibers[t].context, b.fibers[t].stack, false, nullptr);
              progressed = true;
              if (b.error) std::rethrow_exception(b.error);
              if (b.fibers[t].state == State::Done) ++done;
            }
            if (!progressed) {
              int at_block = 0, at_warp = 0;
              for (const Fiber& f : b.fibers) {
                at_block += f.state == State::AtBlockBarrier;
                at_warp += f.state == State::AtWarpBarrier;
              }
              TORCH_CHECK(false, "cuda_emulation: block (", bx, ", ", by, ", ", bz,
                          ") hangs: ", at_block, " threads wait in __syncthreads, ", at_warp,
                          " in a warp-collective call, ", done,
                          " have returned (a barrier not reached by every thread)");
            }
          }
          block_barriers() += b.barriers;
        }
  } catch (...) {
    running_block() = nullptr;
    forget_stack(stacks.get(), kStackBytes * threads);
    throw;
  }
  running_block() = nullptr;
  forget_stack(stacks.get(), kStackBytes * threads);
}

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block_dim, size_t shared_bytes,
            Args... args) {
  run_grid(Launch{grid, block_dim, shared_bytes, reinterpret_cast<const void*>(kernel)},
           [&]() { kernel(args...); });
}

}  // namespace cuda_emulation

#define threadIdx (::cuda_emulation::fiber().thread_idx)
#define blockIdx (::cuda_emulation::block().block_idx)
#define blockDim (::cuda_emulation::block().block_dim)
#define gridDim (::cuda_emulation::block().grid_dim)

inline void __syncthreads() { ::cuda_emulation::sync_block(); }

// Every thread's predicate, OR-ed over the block, returned to all once they have arrived.
inline int __syncthreads_or(int predicate) {
  ::cuda_emulation::Block& b = ::cuda_emulation::block();
  const int tid = ::cuda_emulation::linear_thread();
  b.slots[tid] = predicate != 0;
  ::cuda_emulation::sync_block();
  int any = 0;
  for (uint64_t slot : b.slots) any |= slot != 0;
  ::cuda_emulation::sync_block(false);  // the slots are reused by the next collective
  return any;
}

// Only the full-warp form, as the kernels use it.
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  const int warp = ::cuda_emulation::linear_thread() / ::cuda_emulation::kWarpSize;
  const unsigned full = ::cuda_emulation::warp_lanes(warp) == ::cuda_emulation::kWarpSize
                            ? 0xffffffffu
                            : (1u << ::cuda_emulation::warp_lanes(warp)) - 1u;
  TORCH_CHECK(mask == full, "cuda_emulation: __syncwarp with mask ", mask, " at ",
              ::cuda_emulation::where());
  ::cuda_emulation::sync_warp();
}

// ------------------------------------------------------------------------------- cp.async
// cuda_pipeline.h's primitives: a copy lands in shared memory only when its thread waits for
// its group, so a read before the wait (or, by another thread, before the wait and a barrier)
// sees the old bytes (0xFF poison at first); or, with Device::early_copies, at once, so that
// a copy into a buffer other threads have not finished reading changes what they read.
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

inline void __pipeline_memcpy_async(void* dst_shared, const void* src_global, size_t size_and_align,
                                    size_t zfill = 0) {
  ::cuda_emulation::Block& b = ::cuda_emulation::block();
  const auto dst = reinterpret_cast<uintptr_t>(dst_shared);
  const auto base = reinterpret_cast<uintptr_t>(b.shared);
  TORCH_CHECK(size_and_align == 4 || size_and_align == 8 || size_and_align == 16,
              "cuda_emulation: __pipeline_memcpy_async of ", size_and_align, " bytes at ",
              ::cuda_emulation::where());
  TORCH_CHECK(zfill <= size_and_align, "cuda_emulation: zfill past the copy at ",
              ::cuda_emulation::where());
  TORCH_CHECK(dst % size_and_align == 0 && reinterpret_cast<uintptr_t>(src_global) %
                                               size_and_align == 0,
              "cuda_emulation: __pipeline_memcpy_async pointers not ", size_and_align,
              "-byte aligned at ", ::cuda_emulation::where());
  TORCH_CHECK(dst >= base && dst + size_and_align <= base + b.shared_bytes,
              "cuda_emulation: __pipeline_memcpy_async destination outside dynamic shared "
              "memory at ", ::cuda_emulation::where());
  ::cuda_emulation::AsyncCopy copy{static_cast<char*>(dst_shared), {}, size_and_align};
  std::memcpy(copy.bytes.data(), src_global, size_and_align - zfill);
  std::memset(copy.bytes.data() + (size_and_align - zfill), 0, zfill);
  if (::cuda_emulation::device().early_copies) {
    std::memcpy(copy.dst, copy.bytes.data(), copy.size);
    copy.size = 0;  // landed; the group still has to be waited for
  }
  ::cuda_emulation::fiber().open_group.push_back(copy);
}

inline void __pipeline_commit() {
  ::cuda_emulation::Fiber& f = ::cuda_emulation::fiber();
  f.committed.push_back(std::move(f.open_group));
  f.open_group.clear();
}

// Lands every committed group but the newest `prior` (copies not yet committed stay pending).
inline void __pipeline_wait_prior(size_t prior) {
  ::cuda_emulation::Fiber& f = ::cuda_emulation::fiber();
  while (f.committed.size() > prior) {
    for (const ::cuda_emulation::AsyncCopy& copy : f.committed.front()) {
      std::memcpy(copy.dst, copy.bytes.data(), copy.size);
    }
    f.committed.erase(f.committed.begin());
  }
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  return ::cuda_emulation::shfl_xor(mask, value, lane_mask);
}

// ------------------------------------------------------------------------------------ WMMA
namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K>
struct FragmentShape;
template <int M, int N, int K>
struct FragmentShape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct FragmentShape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct FragmentShape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

// The whole tile in every lane, row-major.
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = FragmentShape<Use, M, N, K>::rows;
  static constexpr int cols = FragmentShape<Use, M, N, K>::cols;
  T tile[rows * cols];
};

inline void check_pointer_and_stride(const void* pointer, unsigned ldm, size_t element_bytes,
                                     const char* what) {
  TORCH_CHECK(reinterpret_cast<uintptr_t>(pointer) % 32 == 0, "cuda_emulation: ", what,
              " pointer not 256-bit aligned at ", ::cuda_emulation::where());
  TORCH_CHECK(ldm * element_bytes % 16 == 0, "cuda_emulation: ", what, " stride ", ldm,
              " elements is not a multiple of 16 bytes at ", ::cuda_emulation::where());
  ::cuda_emulation::check_warp_uniform(reinterpret_cast<uintptr_t>(pointer), ldm, what);
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& frag, const T* pointer, unsigned ldm) {
  check_pointer_and_stride(pointer, ldm, sizeof(T), "load_matrix_sync");
  using Frag = fragment<Use, M, N, K, T, Layout>;
  constexpr bool kRowMajor = std::is_same<Layout, row_major>::value;
  for (int r = 0; r < Frag::rows; ++r)
    for (int c = 0; c < Frag::cols; ++c)
      frag.tile[r * Frag::cols + c] = kRowMajor ? pointer[r * ldm + c] : pointer[r + c * ldm];
}

// An accumulator fragment from memory (the layout is an argument, as for stores).
template <int M, int N, int K, typename T>
void load_matrix_sync(fragment<accumulator, M, N, K, T>& frag, const T* pointer, unsigned ldm,
                      layout_t layout) {
  check_pointer_and_stride(pointer, ldm, sizeof(T), "load_matrix_sync");
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      frag.tile[r * N + c] = pointer[layout == mem_row_major ? r * ldm + c : r + c * ldm];
}

template <int M, int N, int K, typename T>
void store_matrix_sync(T* pointer, const fragment<accumulator, M, N, K, T>& frag, unsigned ldm,
                       layout_t layout) {
  check_pointer_and_stride(pointer, ldm, sizeof(T), "store_matrix_sync");
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      pointer[layout == mem_row_major ? r * ldm + c : r + c * ldm] = frag.tile[r * N + c];
}

template <int M, int N, int K, typename T>
void fill_fragment(fragment<accumulator, M, N, K, T>& frag, T value) {
  ::cuda_emulation::check_warp_uniform(0, 0, "fill_fragment");
  std::fill(frag.tile, frag.tile + M * N, value);
}

template <int M, int N, int K, typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, M, N, K, float>& d,
              const fragment<matrix_a, M, N, K, T, LayoutA>& a,
              const fragment<matrix_b, M, N, K, T, LayoutB>& b,
              const fragment<accumulator, M, N, K, float>& c) {
  static_assert(M * N <= 256, "the warp's result buffer holds 256 values");
  ::cuda_emulation::Block& blk = ::cuda_emulation::block();
  const int warp = ::cuda_emulation::linear_thread() / ::cuda_emulation::kWarpSize;
  const uint64_t serial = ++::cuda_emulation::fiber().mma_calls;
  ::cuda_emulation::sync_warp();  // every lane holds its a, b and c
  float* out = blk.warp_mma_result[warp].data();
  if (blk.warp_mma_serial[warp] != serial) {
    // Every lane holds the same fragments (loaded from the same, warp-uniform addresses).
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) {
        float sum = c.tile[i * N + j];
        for (int k = 0; k < K; ++k) {
          sum += static_cast<float>(a.tile[i * K + k]) * static_cast<float>(b.tile[k * N + j]);
        }
        out[i * N + j] = sum;
      }
    blk.warp_mma_serial[warp] = serial;
    ::cuda_emulation::wmma_multiply_adds() += uint64_t(M) * N * K;
  }
  std::copy(out, out + M * N, d.tile);
  ::cuda_emulation::sync_warp();  // the buffer is reused by the warp's next product
}

}  // namespace wmma
}  // namespace nvcuda

// ----------------------------------------------------------------------- host runtime API
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
using cudaStream_t = struct CUstream_st*;
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin, cudaDevAttrMultiProcessorCount };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };

inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int /*device*/) {
  *value = attr == cudaDevAttrMultiProcessorCount ? ::cuda_emulation::device().multiprocessors
                                                  : ::cuda_emulation::device().shared_optin_bytes;
  return cudaSuccess;
}
template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute, int value) {
  if (value < 0 || value > ::cuda_emulation::device().shared_optin_bytes) return 1;
  ::cuda_emulation::shared_limits()[reinterpret_cast<const void*>(kernel)] =
      static_cast<size_t>(value);
  return cudaSuccess;
}

#define C10_CUDA_CHECK(expr) \
  TORCH_CHECK((expr) == cudaSuccess, "cuda_emulation: " #expr " failed")

namespace c10 {
namespace cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
inline cudaStream_t getCurrentCUDAStream() { return nullptr; }
}  // namespace cuda
}  // namespace c10
