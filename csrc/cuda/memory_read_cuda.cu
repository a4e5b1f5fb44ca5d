// CUDA kernels of memae_fused::memory_read_fwd / memory_read_bwd (docs/algorithm.md).
//
// Every kernel owns kRows rows (queries, or memory slots for the memory-major backward) and a
// chunk of kCols output channels (grid.y), and sweeps the other side in tiles of kSweep. Per
// tile it computes the logits S = A B^T (and in the backward G = g mv^T) over C in chunks of
// kChunkK, applies the per-element math of memory_math.h in shared memory, and accumulates
// O += P V with P the kRows x kSweep tile just computed. Tile products run on tensor cores
// (WMMA, fp32 accumulation) for float16/bfloat16 and on FFMA for float32/float64. Tiles come
// in by 16-byte cp.async copies where their rows are whole 16-byte vectors (element loads
// otherwise), the logits chunks double-buffered (logits_tiles).
//   forward:        lam > 0: sweep 1 online max m and sum l; sweep 2 w = exp((s - m) -
//                   log l), h, read += h mv and the entropy's sums; read /= max(S, eps).
//                   lam = 0: one sweep, read += p mv with p = exp(s - m) rescaled when the
//                   running max m grows (online softmax), read /= l.
//   query-major:    per query row, X += w (dw - c) mk and Y += w mk, R' = sum w (dw - c) /
//                   sum w, so d zq = scale (X - R' Y) in one sweep (c = 0). lam = 0 shifts
//                   by c = D, which makes R' zero but for D's rounding: R' = 0, X alone.
//   memory-major:   per memory slot, d mk += scale w ((dw - c) - R') zq and d mv += a g over
//                   the queries, with each query's L, S, D, R' known: no atomics,
//                   deterministic.
// Matrix work per (query, slot), in Q N C products (bench/costs.py): lam = 0 forward 2,
// backward 3 + 4; lam > 0 forward 3, backward 4 + 4. A C wider than kCols costs one
// redundant logits pass per extra column chunk (two in each backward kernel).
// Few rows to own (few queries, or few slots for the memory-major kernel) would leave SMs
// idle, so the swept side is then split across grid.z (plan_splits) and combined after: the
// forward's L from the splits' maxima and sums, its read and row sums, the query-major X, Y
// and R sums (small combine kernels, one CTA per query), the memory-major gradient slices.
#include <ATen/ATen.h>
#include <torch/library.h>

#ifdef MEMAE_CUDA_EMULATION
// The test suite's CPU stand-in for CUDA (tests/gpu/cuda_emulation), which runs this file's
// kernels and host code on CPU tensors.
#include "cuda_emulation.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: it needs cuSPARSE headers
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_pipeline.h>
#include <mma.h>
#define MEMAE_DYNAMIC_SHARED(name) extern __shared__ __align__(128) char name[]
#endif

#include <algorithm>
#include <limits>
#include <tuple>

#include "memory_math.h"
#include "memory_read_common.h"

namespace memae_fused {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRows = 32;     // owned rows per CTA
constexpr int kSweep = 64;    // swept rows per tile
constexpr int kChunkK = 32;   // channels per logits chunk
constexpr int kGroup = 8;     // threads per row in the element-wise phase
constexpr int kPerThread = kSweep / kGroup;
static_assert(kRows * kGroup == kThreads, "one row per group of kGroup threads");

// ------------------------------------------------------------------ types and conversions

template <typename T>
struct Native {
  using type = T;
};
template <>
struct Native<at::Half> {
  using type = __half;
};
template <>
struct Native<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
struct Convert;
template <>
struct Convert<float> {
  using acc_t = float;
  __device__ static float to_acc(float x) { return x; }
  __device__ static float from_acc(float x) { return x; }
};
template <>
struct Convert<double> {
  using acc_t = double;
  __device__ static double to_acc(double x) { return x; }
  __device__ static double from_acc(double x) { return x; }
};
template <>
struct Convert<__half> {
  using acc_t = float;
  __device__ static float to_acc(__half x) { return __half2float(x); }
  __device__ static __half from_acc(float x) { return __float2half(x); }
};
template <>
struct Convert<__nv_bfloat16> {
  using acc_t = float;
  __device__ static float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 from_acc(float x) { return __float2bfloat16(x); }
};

// Row padding of shared tiles: 16 bytes (keeps WMMA's ldm rules and breaks bank conflicts).
template <typename T>
constexpr int pad_of() {
  return 16 / static_cast<int>(sizeof(T));
}

template <typename T>
__device__ __forceinline__ T group_sum(T v) {
#pragma unroll
  for (int offset = 1; offset < kGroup; offset *= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
template <typename T>
__device__ __forceinline__ T group_max(T v) {
#pragma unroll
  for (int offset = 1; offset < kGroup; offset *= 2) {
    const T other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = other > v ? other : v;
  }
  return v;
}

// -------------------------------------------------------------------------- tile engines
// An engine holds per-thread accumulators for the logits tile (kRows x kSweep) and for an
// output tile (kRows x kCols), and multiplies shared-memory tiles into them:
//   mma_nt: S += A B^T, A (kRows x kChunkK) and B (kSweep x kChunkK) row-major;
//   mma_nn: O += P V, P (kRows x kSweep) and V (kSweep x kCols) row-major.

// float32/float64 on CUDA cores: thread (ty, tx) of a 16 x 16 grid owns rows 2ty, 2ty + 1
// and columns tx + 16j.
template <typename T, int kCols>
struct FmaEngine {
  using acc_t = T;
  using p_t = T;
  static constexpr int kSCols = kSweep / 16;
  static constexpr int kOCols = kCols / 16;
  struct SAcc {
    acc_t v[2][kSCols];
  };
  struct OAcc {
    acc_t v[2][kOCols];
  };

  __device__ static void zero(SAcc& acc) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < kSCols; ++j) acc.v[i][j] = acc_t(0);
  }
  __device__ static void zero(OAcc& acc) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < kOCols; ++j) acc.v[i][j] = acc_t(0);
  }
  __device__ static void mma_nt(SAcc& acc, const T* a, int lda, const T* b, int ldb) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll 4
    for (int k = 0; k < kChunkK; ++k) {
      acc_t av[2], bv[kSCols];
#pragma unroll
      for (int i = 0; i < 2; ++i) av[i] = a[(2 * ty + i) * lda + k];
#pragma unroll
      for (int j = 0; j < kSCols; ++j) bv[j] = b[(tx + 16 * j) * ldb + k];
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < kSCols; ++j) acc.v[i][j] += av[i] * bv[j];
    }
  }
  __device__ static void mma_nn(OAcc& acc, const p_t* p, int ldp, const T* v, int ldv) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll 4
    for (int k = 0; k < kSweep; ++k) {
      acc_t pv[2], vv[kOCols];
#pragma unroll
      for (int i = 0; i < 2; ++i) pv[i] = p[(2 * ty + i) * ldp + k];
#pragma unroll
      for (int j = 0; j < kOCols; ++j) vv[j] = v[k * ldv + tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < kOCols; ++j) acc.v[i][j] += pv[i] * vv[j];
    }
  }
  // O row r *= factor[r] (online softmax); registers only, scratch unused.
  __device__ static void scale_rows(OAcc& acc, const acc_t* factor, acc_t* /*scratch*/,
                                    int /*ld*/) {
    const int ty = threadIdx.x / 16;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < kOCols; ++j) acc.v[i][j] *= factor[2 * ty + i];
  }
  __device__ static void store(const SAcc& acc, acc_t* s, int lds) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < kSCols; ++j) s[(2 * ty + i) * lds + tx + 16 * j] = acc.v[i][j];
  }
  __device__ static void store(const OAcc& acc, acc_t* o, int ldo) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < kOCols; ++j) o[(2 * ty + i) * ldo + tx + 16 * j] = acc.v[i][j];
  }
};
static_assert(kRows == 2 * 16, "FmaEngine maps 2 rows to each of 16 thread rows");

// float16/bfloat16 on tensor cores: 16 x 16 x 16 WMMA tiles, fp32 accumulators; warp w
// owns logits fragment w and output fragments w, w + kWarps, ...
template <typename T, int kCols>
struct WmmaEngine {
  using acc_t = float;
  using p_t = T;
  static constexpr int kSFragCols = kSweep / 16;
  static constexpr int kOFragCols = kCols / 16;
  static constexpr int kOFrags = (kRows / 16) * kOFragCols / kWarps;
  static_assert((kRows / 16) * kSFragCols == kWarps, "one logits fragment per warp");
  static_assert((kRows / 16) * kOFragCols % kWarps == 0, "output fragments split evenly");
  using Acc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
  using FragA = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, T,
                                       nvcuda::wmma::row_major>;
  using FragBt = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, T,
                                        nvcuda::wmma::col_major>;
  using FragB = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, T,
                                       nvcuda::wmma::row_major>;
  struct SAcc {
    Acc f;
  };
  struct OAcc {
    Acc f[kOFrags];
  };

  __device__ static int warp() { return threadIdx.x / 32; }
  __device__ static void zero(SAcc& acc) { nvcuda::wmma::fill_fragment(acc.f, 0.0f); }
  __device__ static void zero(OAcc& acc) {
#pragma unroll
    for (int i = 0; i < kOFrags; ++i) nvcuda::wmma::fill_fragment(acc.f[i], 0.0f);
  }
  __device__ static void mma_nt(SAcc& acc, const T* a, int lda, const T* b, int ldb) {
    const int row = warp() / kSFragCols, col = warp() % kSFragCols;
#pragma unroll
    for (int k = 0; k < kChunkK; k += 16) {
      FragA fa;
      FragBt fb;
      nvcuda::wmma::load_matrix_sync(fa, a + row * 16 * lda + k, lda);
      nvcuda::wmma::load_matrix_sync(fb, b + col * 16 * ldb + k, ldb);  // B^T, column-major
      nvcuda::wmma::mma_sync(acc.f, fa, fb, acc.f);
    }
  }
  __device__ static void mma_nn(OAcc& acc, const p_t* p, int ldp, const T* v, int ldv) {
#pragma unroll
    for (int i = 0; i < kOFrags; ++i) {
      const int frag = warp() + kWarps * i;
      const int row = frag / kOFragCols, col = frag % kOFragCols;
#pragma unroll
      for (int k = 0; k < kSweep; k += 16) {
        FragA fa;
        FragB fb;
        nvcuda::wmma::load_matrix_sync(fa, p + row * 16 * ldp + k, ldp);
        nvcuda::wmma::load_matrix_sync(fb, v + k * ldv + col * 16, ldv);
        nvcuda::wmma::mma_sync(acc.f[i], fa, fb, acc.f[i]);
      }
    }
  }
  // O row r *= factor[r] (online softmax). A fragment's element-to-row map is not part of
  // WMMA's contract, so each warp passes its fragments, one after another, through its own
  // 16 x 16 place in scratch (a kRows x kSweep tile, stride ld: warp w's logits fragment's).
  __device__ static void scale_rows(OAcc& acc, const float* factor, float* scratch, int ld) {
    const int lane = threadIdx.x % 32;
    float* tile = scratch + (warp() / kSFragCols) * 16 * ld + (warp() % kSFragCols) * 16;
#pragma unroll
    for (int i = 0; i < kOFrags; ++i) {
      const int row = (warp() + kWarps * i) / kOFragCols;
      nvcuda::wmma::store_matrix_sync(tile, acc.f[i], ld, nvcuda::wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 16 * 16; e += 32) {
        tile[(e / 16) * ld + e % 16] *= factor[row * 16 + e / 16];
      }
      __syncwarp();
      nvcuda::wmma::load_matrix_sync(acc.f[i], tile, ld, nvcuda::wmma::mem_row_major);
      __syncwarp();  // the next fragment's store reuses the place
    }
  }
  __device__ static void store(const SAcc& acc, float* s, int lds) {
    const int row = warp() / kSFragCols, col = warp() % kSFragCols;
    nvcuda::wmma::store_matrix_sync(s + row * 16 * lds + col * 16, acc.f, lds,
                                    nvcuda::wmma::mem_row_major);
  }
  __device__ static void store(const OAcc& acc, float* o, int ldo) {
#pragma unroll
    for (int i = 0; i < kOFrags; ++i) {
      const int frag = warp() + kWarps * i;
      const int row = frag / kOFragCols, col = frag % kOFragCols;
      nvcuda::wmma::store_matrix_sync(o + row * 16 * ldo + col * 16, acc.f[i], ldo,
                                      nvcuda::wmma::mem_row_major);
    }
  }
};

template <typename T>
struct EngineFor {
  using type = FmaEngine<T, 128>;
};
template <>
struct EngineFor<double> {
  using type = FmaEngine<double, 64>;  // keeps shared memory under the A100's 163 KiB
};
// 16-bit tiles take 256 output channels, so that C = 256 (the usual width) is one column
// chunk: every extra chunk repeats the logits products (forward 3 -> 5 units of Q N C work,
// backward 8 -> 12 at C = 256). Shared memory stays under 100 KiB; float32 keeps 128, whose
// 256-wide tiles would need ~170 KiB, over an A100's limit.
template <>
struct EngineFor<__half> {
  using type = WmmaEngine<__half, 256>;
};
template <>
struct EngineFor<__nv_bfloat16> {
  using type = WmmaEngine<__nv_bfloat16, 256>;
};

template <typename Engine>
struct EngineCols;
template <typename T, int kC>
struct EngineCols<FmaEngine<T, kC>> {
  static constexpr int value = kC;
};
template <typename T, int kC>
struct EngineCols<WmmaEngine<T, kC>> {
  static constexpr int value = kC;
};

// ------------------------------------------------------------------------ shared memory
// kOps = 1 (forward) or 2 (backward: two logits tiles, two P tiles, two output tiles).
// The logits chunk buffers (kStages of them, double-buffered but in float64, whose second
// stage would take the backward past an A100's 163 KiB), the V tiles and the epilogue staging
// share one region.
constexpr size_t align128(size_t bytes) { return (bytes + 127) / 128 * 128; }

template <typename scalar_t, int kOps>
struct Layout {
  using Engine = typename EngineFor<scalar_t>::type;
  using acc_t = typename Engine::acc_t;
  using p_t = typename Engine::p_t;
  static constexpr int kCols = EngineCols<Engine>::value;
  static constexpr int kStages = sizeof(scalar_t) == 8 ? 1 : 2;
  static constexpr int kLdK = kChunkK + pad_of<scalar_t>();
  static constexpr int kLdV = kCols + pad_of<scalar_t>();
  static constexpr int kLdS = kSweep + pad_of<acc_t>();
  static constexpr int kLdP = kSweep + pad_of<p_t>();
  static constexpr int kLdO = kCols + pad_of<acc_t>();
  // Sub-buffers, each 128-byte aligned.
  static constexpr size_t kChunkA = align128(sizeof(scalar_t) * kRows * kLdK);
  static constexpr size_t kChunkB = align128(sizeof(scalar_t) * kSweep * kLdK);
  static constexpr size_t kVTile = align128(sizeof(scalar_t) * kSweep * kLdV);
  static constexpr size_t kStage = align128(sizeof(acc_t) * kRows * kLdO);
  static constexpr size_t kSTile = align128(sizeof(acc_t) * kRows * kLdS);
  static constexpr size_t kPTile = align128(sizeof(p_t) * kRows * kLdP);
  static constexpr size_t kChunks = kChunkA + kChunkB;  // one op's chunk pair
  static constexpr size_t kShared = std::max(
      {kStages * kOps * kChunks, kOps * kVTile, kOps * kStage});
  static constexpr size_t kSOffset = kShared;
  static constexpr size_t kPOffset = kSOffset + kOps * kSTile;
  static constexpr size_t kStatsOffset = kPOffset + kOps * kPTile;
  static constexpr int kStatsCount = 5 * kSweep;  // per-row or per-column values
  // The forward keeps its owned query rows, every channel, for the whole sweep when C <=
  // kResidentCols, so that the logits chunks copy the swept rows alone (16-bit: 17 KiB,
  // float32: 33 KiB; float64 and the backward, whose two owned operands would double it,
  // copy both sides per chunk).
  static constexpr int kResidentCols = kOps == 1 && sizeof(scalar_t) <= 4 ? 256 : 0;
  static constexpr int kLdR = kResidentCols + pad_of<scalar_t>();
  static constexpr size_t kResidentOffset =
      kStatsOffset + align128(sizeof(acc_t) * kStatsCount);
  static constexpr size_t kBytes =
      kResidentOffset + (kResidentCols ? align128(sizeof(scalar_t) * kRows * kLdR) : 0);

  char* base;
  __device__ scalar_t* chunk_a(int op, int stage) const {
    return reinterpret_cast<scalar_t*>(base + (stage * kOps + op) * kChunks);
  }
  __device__ scalar_t* chunk_b(int op, int stage) const {
    return reinterpret_cast<scalar_t*>(base + (stage * kOps + op) * kChunks + kChunkA);
  }
  __device__ scalar_t* v_tile(int op) const {
    return reinterpret_cast<scalar_t*>(base + op * kVTile);
  }
  __device__ acc_t* stage(int op) const { return reinterpret_cast<acc_t*>(base + op * kStage); }
  __device__ acc_t* s_tile(int op) const {
    return reinterpret_cast<acc_t*>(base + kSOffset + op * kSTile);
  }
  __device__ p_t* p_tile(int op) const {
    return reinterpret_cast<p_t*>(base + kPOffset + op * kPTile);
  }
  __device__ acc_t* stats(int index) const {
    return reinterpret_cast<acc_t*>(base + kStatsOffset) + index * kSweep;
  }
  __device__ scalar_t* resident() const {
    return reinterpret_cast<scalar_t*>(base + kResidentOffset);
  }
};

// Starts copying rows [row0, row0 + rows) x columns [col0, col0 + cols) of a row-major
// (num_rows x num_cols) matrix into shared memory (stride ldd), zero outside the matrix. Where
// the matrix's rows are whole 16-byte vectors (num_cols a multiple of 16 bytes, src aligned),
// each thread issues 16-byte cp.async copies (cols, col0 and ldd are multiples of a vector, so
// a vector is all inside or all outside the matrix); else plain loads of one element. Either
// way the caller commits, waits (__pipeline_wait_prior) and syncs before the tile is read.
// Both loops stay rolled: unrolled, the copies' addresses took up to 255 registers (sm_90),
// and the kernel's allocation is the larger of the two paths'.
template <typename T>
__device__ void copy_tile_async(T* dst, int ldd, const T* src, int num_rows, int num_cols,
                                int row0, int col0, int rows, int cols) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  if (num_cols % kVec != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0) {
    const T zero = Convert<T>::from_acc(0.0f);
#pragma unroll 1
    for (int idx = threadIdx.x; idx < rows * cols; idx += kThreads) {
      const int r = idx / cols, c = idx % cols;
      const int gr = row0 + r, gc = col0 + c;
      dst[r * ldd + c] = (gr < num_rows && gc < num_cols)
                             ? src[static_cast<int64_t>(gr) * num_cols + gc] : zero;
    }
    return;
  }
  const int vectors = cols / kVec;
#pragma unroll 1
  for (int idx = threadIdx.x; idx < rows * vectors; idx += kThreads) {
    const int r = idx / vectors, c = idx % vectors * kVec;
    const int gr = row0 + r, gc = col0 + c;
    T* to = dst + r * ldd + c;
    if (gr < num_rows && gc < num_cols) {
      __pipeline_memcpy_async(to, src + static_cast<int64_t>(gr) * num_cols + gc, 16);
    } else {
      *reinterpret_cast<uint4*>(to) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

// Chunk [k0, k0 + kChunkK) of every op's A and B rows into the given stage, as one group.
// With resident rows (resident_rows), the A rows are not copied.
template <typename scalar_t, int kOps>
__device__ void issue_chunk(const Layout<scalar_t, kOps>& smem, const scalar_t* const* a,
                            int a_rows, int a0, const scalar_t* const* b, int b_rows, int b0,
                            int channels, int k0, int stage, bool resident) {
  using L = Layout<scalar_t, kOps>;
#pragma unroll
  for (int op = 0; op < kOps; ++op) {
    if (!resident) {
      copy_tile_async(smem.chunk_a(op, stage), L::kLdK, a[op], a_rows, channels, a0, k0, kRows,
                      kChunkK);
    }
    copy_tile_async(smem.chunk_b(op, stage), L::kLdK, b[op], b_rows, channels, b0, k0, kSweep,
                    kChunkK);
  }
  __pipeline_commit();
}

// The forward's owned rows a[a0:a0+kRows] into the resident tile when they fit (see
// Layout::kResidentCols), zero-padded to whole chunks; their copy lands with the first
// chunk's. Returns whether they are resident (uniform over the block).
template <typename scalar_t>
__device__ bool resident_rows(const Layout<scalar_t, 1>& smem, const scalar_t* a, int a_rows,
                              int a0, int channels) {
  using L = Layout<scalar_t, 1>;
  if (L::kResidentCols == 0 || channels == 0 || channels > L::kResidentCols) return false;
  const int cols = (channels + kChunkK - 1) / kChunkK * kChunkK;
  copy_tile_async(smem.resident(), L::kLdR, a, a_rows, channels, a0, 0, kRows, cols);
  __pipeline_commit();
  return true;
}

// S[op] = A_op[a0:a0+kRows] B_op[b0:b0+kSweep]^T over all C channels, for op < kOps, with
// one barrier per channel chunk: chunk k + 1 is copied (cp.async) while chunk k multiplies.
// The barrier that opens chunk k both publishes it and tells every thread that chunk k - 1's
// stage, the one chunk k + 1 goes to, has been read. With one stage (float64) the next chunk
// is copied after a second barrier. The first copy needs a barrier after any earlier reader
// of the shared region (the callers end every tile with one). With `resident`, A comes from
// the resident tile. Ends with the tiles stored; the caller syncs before reading them.
template <typename scalar_t, int kOps>
__device__ void logits_tiles(const Layout<scalar_t, kOps>& smem, const scalar_t* const* a,
                             int a_rows, int a0, const scalar_t* const* b, int b_rows, int b0,
                             int channels, bool resident = false) {
  using Engine = typename Layout<scalar_t, kOps>::Engine;
  using L = Layout<scalar_t, kOps>;
  typename Engine::SAcc acc[kOps];
#pragma unroll
  for (int op = 0; op < kOps; ++op) Engine::zero(acc[op]);
  resident = L::kResidentCols > 0 && resident;  // a constant where there is no resident tile
  const int chunks = (channels + kChunkK - 1) / kChunkK;
  if (chunks > 0) issue_chunk(smem, a, a_rows, a0, b, b_rows, b0, channels, 0, 0, resident);
  for (int chunk = 0; chunk < chunks; ++chunk) {
    const int stage = chunk % L::kStages;
    __pipeline_wait_prior(0);
    __syncthreads();
    if (L::kStages > 1 && chunk + 1 < chunks) {
      issue_chunk(smem, a, a_rows, a0, b, b_rows, b0, channels, (chunk + 1) * kChunkK,
                  (chunk + 1) % L::kStages, resident);
    }
#pragma unroll
    for (int op = 0; op < kOps; ++op) {
      const scalar_t* a_tile = resident ? smem.resident() + chunk * kChunkK
                                        : smem.chunk_a(op, stage);
      Engine::mma_nt(acc[op], a_tile, resident ? L::kLdR : L::kLdK, smem.chunk_b(op, stage),
                     L::kLdK);
    }
    if (L::kStages == 1 && chunk + 1 < chunks) {
      __syncthreads();  // the one stage is rewritten
      issue_chunk(smem, a, a_rows, a0, b, b_rows, b0, channels, (chunk + 1) * kChunkK, 0,
                  resident);
    }
  }
#pragma unroll
  for (int op = 0; op < kOps; ++op) Engine::store(acc[op], smem.s_tile(op), L::kLdS);
}

// ------------------------------------------------------------------------------ forward
// lam > 0, unsplit: each CTA sweeps all slots twice and writes the finished rows. Split over
// N (few queries): memory_read_row_max_sum_kernel writes each split's running max and sum, the
// host combines them into L (stats[0]), memory_read_fwd_kernel<kSplit = true> writes each
// split's unnormalised read and row sums, and memory_read_fwd_combine_kernel finishes the rows.
// lam = 0: memory_read_fwd_online_kernel sweeps once (online softmax); split, each split keeps
// its own max and memory_read_fwd_online_combine_kernel rescales them to the top one.

template <typename scalar_t>
struct FwdArgs {
  using acc_t = typename Convert<scalar_t>::acc_t;
  const scalar_t *zq, *mk, *mv;
  scalar_t *read, *entropy;
  acc_t* stats;  // (3, Q); with kSplit, stats[0] (L) is an input
  int num_queries, num_slots, channels;
  acc_t scale, lam;
  int num_splits, slots_per_split;  // grid.z sweeps slots [z, z + 1) * slots_per_split
  acc_t *part_max, *part_sum;       // (splits, Q): each split's max m and sum l
  const acc_t* row_max_logl;        // (2, Q): the combined m and log l, input of kSplit
  acc_t* part_acc;                  // (splits, Q, C): sweep 2's unnormalised read
  acc_t* part_rows;                 // (3, splits, Q): sweep 2's row sums (lam = 0: P alone)
};

// The rows [begin, end) that grid.z sweeps. per_split is a multiple of kSweep, so only the
// last split has a partial tile, and its tail is the end of the matrix (zero-filled).
struct SweepRange {
  int begin, end;
};
__device__ __forceinline__ SweepRange sweep_range(int length, int per_split) {
  const int begin = blockIdx.z * per_split;
  return SweepRange{begin, min(length, begin + per_split)};
}

// Sweep 1 over range: running max and sum of exp of the row's scaled logits.
template <typename scalar_t>
__device__ void row_max_sum(const Layout<scalar_t, 1>& smem, const FwdArgs<scalar_t>& args,
                            int q0, SweepRange range, bool resident,
                            typename Convert<scalar_t>::acc_t& run_max,
                            typename Convert<scalar_t>::acc_t& run_sum) {
  using L = Layout<scalar_t, 1>;
  using acc_t = typename L::acc_t;
  const int row = threadIdx.x / kGroup, lane = threadIdx.x % kGroup;
  const scalar_t* a_ops[1] = {args.zq};
  const scalar_t* b_ops[1] = {args.mk};
  const acc_t* s_tile = smem.s_tile(0);
  run_max = -std::numeric_limits<acc_t>::infinity();
  run_sum = 0;
  for (int n0 = range.begin; n0 < range.end; n0 += kSweep) {
    logits_tiles<scalar_t, 1>(smem, a_ops, args.num_queries, q0, b_ops, args.num_slots, n0,
                              args.channels, resident);
    __syncthreads();
    acc_t tile_max = -std::numeric_limits<acc_t>::infinity();
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      const int col = lane + kGroup * k;
      if (n0 + col < range.end) {
        const acc_t s = args.scale * s_tile[row * L::kLdS + col];
        tile_max = s > tile_max ? s : tile_max;
      }
    }
    tile_max = group_max(tile_max);  // finite: every tile has a valid column
    const acc_t new_max = tile_max > run_max ? tile_max : run_max;
    acc_t tile_sum = 0;
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      const int col = lane + kGroup * k;
      if (n0 + col < range.end) {
        tile_sum += math::exp_(args.scale * s_tile[row * L::kLdS + col] - new_max);
      }
    }
    run_sum = run_sum * math::exp_(run_max - new_max) + group_sum(tile_sum);
    run_max = new_max;
    __syncthreads();  // s_tile is rewritten by the next tile
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    memory_read_row_max_sum_kernel(FwdArgs<scalar_t> args) {
  using L = Layout<scalar_t, 1>;
  using acc_t = typename L::acc_t;
  MEMAE_DYNAMIC_SHARED(shared_bytes);
  const L smem{shared_bytes};
  const int q0 = blockIdx.x * kRows;
  const int row = threadIdx.x / kGroup, lane = threadIdx.x % kGroup;
  acc_t run_max, run_sum;
  const bool resident = resident_rows(smem, args.zq, args.num_queries, q0, args.channels);
  row_max_sum(smem, args, q0, sweep_range(args.num_slots, args.slots_per_split), resident,
              run_max, run_sum);
  if (lane == 0 && q0 + row < args.num_queries) {
    const int64_t at = static_cast<int64_t>(blockIdx.z) * args.num_queries + q0 + row;
    args.part_max[at] = run_max;
    args.part_sum[at] = run_sum;
  }
}

template <typename scalar_t, bool kSplit>
__global__ void __launch_bounds__(kThreads) memory_read_fwd_kernel(FwdArgs<scalar_t> args) {
  using L = Layout<scalar_t, 1>;
  using Engine = typename L::Engine;
  using acc_t = typename L::acc_t;
  using p_t = typename L::p_t;
  MEMAE_DYNAMIC_SHARED(shared_bytes);
  const L smem{shared_bytes};
  const int q0 = blockIdx.x * kRows, c0 = blockIdx.y * L::kCols;
  const int row = threadIdx.x / kGroup, lane = threadIdx.x % kGroup;
  const int q = q0 + row;
  const bool row_valid = q < args.num_queries;
  const SweepRange range =
      kSplit ? sweep_range(args.num_slots, args.slots_per_split) : SweepRange{0, args.num_slots};
  const scalar_t* a_ops[1] = {args.zq};
  const scalar_t* b_ops[1] = {args.mk};
  const acc_t* s_tile = smem.s_tile(0);

  const bool resident = resident_rows(smem, args.zq, args.num_queries, q0, args.channels);
  // w = exp((s - m) - log l), not exp(s - L): L = m + log l rounded (|L| up to ~1/tau) would
  // cost every weight ulp(L)/2 relative error, and near one-hot rows' entropy far more.
  acc_t row_max, row_log_l;
  if (kSplit) {
    row_max = row_valid ? args.row_max_logl[q] : acc_t(0);
    row_log_l = row_valid ? args.row_max_logl[int64_t(args.num_queries) + q] : acc_t(0);
  } else {
    acc_t run_sum;
    row_max_sum(smem, args, q0, range, resident, row_max, run_sum);
    row_log_l = math::log_(run_sum);
  }

  // Sweep 2: weights, read accumulation and the row's entropy terms.
  typename Engine::OAcc out;
  Engine::zero(out);
  acc_t sum_a = 0, sum_b = 0, num_kept = 0;  // sum h, sum h log h
  p_t* p_tile = smem.p_tile(0);
  for (int n0 = range.begin; n0 < range.end; n0 += kSweep) {
    logits_tiles<scalar_t, 1>(smem, a_ops, args.num_queries, q0, b_ops, args.num_slots, n0,
                              args.channels, resident);
    __syncthreads();
    // The V tile's copy runs during the element-wise phase (the chunk buffers it reuses are
    // read: the barrier above).
    copy_tile_async(smem.v_tile(0), L::kLdV, args.mv, args.num_slots, args.channels, n0, c0,
                    kSweep, L::kCols);
    __pipeline_commit();
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      const int col = lane + kGroup * k;
      acc_t p = 0;
      if (row_valid && n0 + col < range.end) {
        const acc_t w =
            math::exp_((args.scale * s_tile[row * L::kLdS + col] - row_max) - row_log_l);
        p = math::shrink(w, args.lam);
        sum_a += p;
        sum_b += math::h_log_h(p);
        num_kept += p > acc_t(0) ? acc_t(1) : acc_t(0);
      }
      p_tile[row * L::kLdP + col] = Convert<p_t>::from_acc(p);
    }
    __pipeline_wait_prior(0);
    __syncthreads();
    Engine::mma_nn(out, p_tile, L::kLdP, smem.v_tile(0), L::kLdV);
    __syncthreads();  // p_tile and the V tile are rewritten next tile
  }

  sum_a = group_sum(sum_a);
  sum_b = group_sum(sum_b);
  num_kept = group_sum(num_kept);
  acc_t* row_scale = smem.stats(0);
  if (kSplit) {
    if (lane == 0 && row_valid && blockIdx.y == 0) {
      const int64_t plane = static_cast<int64_t>(args.num_splits) * args.num_queries;
      const int64_t at = static_cast<int64_t>(blockIdx.z) * args.num_queries + q;
      args.part_rows[at] = sum_a;
      args.part_rows[plane + at] = sum_b;
      args.part_rows[2 * plane + at] = num_kept;
    }
  } else {
    const math::RowResult<acc_t> result = math::finish_shrunk_row(sum_a, sum_b, num_kept);
    if (lane == 0) {
      row_scale[row] = result.inv_sum;
      if (row_valid && blockIdx.y == 0) {
        args.entropy[q] = Convert<scalar_t>::from_acc(result.entropy);
        args.stats[q] = row_max + row_log_l;
        args.stats[int64_t(args.num_queries) + q] = sum_a;
        args.stats[2 * int64_t(args.num_queries) + q] = result.a_prime;
      }
    }
  }
  acc_t* stage = smem.stage(0);
  Engine::store(out, stage, L::kLdO);
  __syncthreads();
  for (int idx = threadIdx.x; idx < kRows * L::kCols; idx += kThreads) {
    const int r = idx / L::kCols, c = idx % L::kCols;
    if (q0 + r < args.num_queries && c0 + c < args.channels) {
      if (kSplit) {
        args.part_acc[(static_cast<int64_t>(blockIdx.z) * args.num_queries + q0 + r) *
                          args.channels + c0 + c] = stage[r * L::kLdO + c];
      } else {
        args.read[static_cast<int64_t>(q0 + r) * args.channels + c0 + c] =
            Convert<scalar_t>::from_acc(stage[r * L::kLdO + c] * row_scale[r]);
      }
    }
  }
}

// lam = 0: the row's entropy and A' = 1 (stats[2]) less the entropy output's rounding, so
// that the backward's D = g.read + gamma (entropy - A') takes the entropy unrounded: with
// R' = 0 a 16-bit entropy's rounding (~0.01 at log N ~ 5) would reach d zq as D's error.
template <typename scalar_t>
__device__ void finish_online_entropy(const FwdArgs<scalar_t>& args, int q,
                                      typename Convert<scalar_t>::acc_t entropy) {
  const scalar_t rounded = Convert<scalar_t>::from_acc(entropy);
  args.entropy[q] = rounded;
  args.stats[2 * int64_t(args.num_queries) + q] =
      1 - (entropy - Convert<scalar_t>::to_acc(rounded));
}

// lam = 0 in one sweep, FlashAttention's online softmax: per row a running max m, l = sum p
// and O = sum p mv with p = exp(s - m), and P = sum p (s - m) for the entropy, -sum w log w =
// log l - P / l (the reference's -sum w log(w + eps) differs by less than N eps), all scaled by
// alpha = exp(m_old - m_new) when m grows; O only on tiles where some row's max grew (WMMA
// rescales through the spent logits tile). A' is 1 (the reference's eps terms nearly cancel
// the entropy's in D) less the entropy output's rounding (finish_online_entropy).
// Unsplit writes the rows; split writes its m, l, P and unnormalised O.
template <typename scalar_t, bool kSplit>
__global__ void __launch_bounds__(kThreads)
    memory_read_fwd_online_kernel(FwdArgs<scalar_t> args) {
  using L = Layout<scalar_t, 1>;
  using Engine = typename L::Engine;
  using acc_t = typename L::acc_t;
  using p_t = typename L::p_t;
  MEMAE_DYNAMIC_SHARED(shared_bytes);
  const L smem{shared_bytes};
  const int q0 = blockIdx.x * kRows, c0 = blockIdx.y * L::kCols;
  const int row = threadIdx.x / kGroup, lane = threadIdx.x % kGroup;
  const int q = q0 + row;
  const bool row_valid = q < args.num_queries;
  const SweepRange range =
      kSplit ? sweep_range(args.num_slots, args.slots_per_split) : SweepRange{0, args.num_slots};
  const scalar_t* a_ops[1] = {args.zq};
  const scalar_t* b_ops[1] = {args.mk};
  const acc_t* s_tile = smem.s_tile(0);
  p_t* p_tile = smem.p_tile(0);
  acc_t* row_alpha = smem.stats(0);
  const bool resident = resident_rows(smem, args.zq, args.num_queries, q0, args.channels);

  typename Engine::OAcc out;
  Engine::zero(out);
  acc_t run_max = -std::numeric_limits<acc_t>::infinity(), run_sum = 0, run_p = 0;
  for (int n0 = range.begin; n0 < range.end; n0 += kSweep) {
    logits_tiles<scalar_t, 1>(smem, a_ops, args.num_queries, q0, b_ops, args.num_slots, n0,
                              args.channels, resident);
    __syncthreads();
    copy_tile_async(smem.v_tile(0), L::kLdV, args.mv, args.num_slots, args.channels, n0, c0,
                    kSweep, L::kCols);
    __pipeline_commit();
    acc_t tile_max = -std::numeric_limits<acc_t>::infinity();
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      const int col = lane + kGroup * k;
      if (n0 + col < range.end) {
        const acc_t s = args.scale * s_tile[row * L::kLdS + col];
        tile_max = s > tile_max ? s : tile_max;
      }
    }
    tile_max = group_max(tile_max);  // finite: every tile has a valid column
    const acc_t new_max = tile_max > run_max ? tile_max : run_max;
    acc_t tile_sum = 0, tile_p = 0;
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      const int col = lane + kGroup * k;
      acc_t p = 0;
      if (row_valid && n0 + col < range.end) {
        const acc_t shifted = args.scale * s_tile[row * L::kLdS + col] - new_max;
        p = math::exp_(shifted);
        tile_sum += p;
        tile_p += p * shifted;
      }
      p_tile[row * L::kLdP + col] = Convert<p_t>::from_acc(p);
    }
    tile_sum = group_sum(tile_sum);
    tile_p = group_sum(tile_p);
    // The first tile (l = 0, m = -inf) has nothing to rescale; the guard keeps inf * 0 out.
    const bool grew = run_sum > acc_t(0) && new_max > run_max;
    const acc_t alpha = grew ? math::exp_(run_max - new_max) : acc_t(1);
    run_p = grew ? alpha * (run_p + (run_max - new_max) * run_sum) + tile_p : run_p + tile_p;
    run_sum = run_sum * alpha + tile_sum;
    run_max = new_max;
    if (lane == 0) row_alpha[row] = alpha;
    __pipeline_wait_prior(0);
    // One barrier publishes the V tile, P and alpha, and frees the logits tile, through which
    // the WMMA engine rescales (each warp in its own part, no further barrier).
    if (__syncthreads_or(grew)) Engine::scale_rows(out, row_alpha, smem.s_tile(0), L::kLdS);
    Engine::mma_nn(out, p_tile, L::kLdP, smem.v_tile(0), L::kLdV);
    __syncthreads();  // p_tile, row_alpha and the V tile are rewritten next tile
  }

  acc_t* row_scale = smem.stats(1);
  if (kSplit) {
    if (lane == 0 && row_valid && blockIdx.y == 0) {
      const int64_t at = static_cast<int64_t>(blockIdx.z) * args.num_queries + q;
      args.part_max[at] = run_max;
      args.part_sum[at] = run_sum;
      args.part_rows[at] = run_p;
    }
  } else if (lane == 0) {
    // Rows past Q (p = 0, so l = 0) get inf; the epilogue writes rows below Q only.
    row_scale[row] = acc_t(1) / run_sum;
    if (row_valid && blockIdx.y == 0) {
      const acc_t log_l = math::log_(run_sum);
      args.stats[q] = run_max + log_l;
      args.stats[int64_t(args.num_queries) + q] = acc_t(1);
      finish_online_entropy(args, q, log_l - run_p / run_sum);
    }
  }
  acc_t* stage = smem.stage(0);
  Engine::store(out, stage, L::kLdO);
  __syncthreads();
  for (int idx = threadIdx.x; idx < kRows * L::kCols; idx += kThreads) {
    const int r = idx / L::kCols, c = idx % L::kCols;
    if (q0 + r < args.num_queries && c0 + c < args.channels) {
      if (kSplit) {
        args.part_acc[(static_cast<int64_t>(blockIdx.z) * args.num_queries + q0 + r) *
                          args.channels + c0 + c] = stage[r * L::kLdO + c];
      } else {
        args.read[static_cast<int64_t>(q0 + r) * args.channels + c0 + c] =
            Convert<scalar_t>::from_acc(stage[r * L::kLdO + c] * row_scale[r]);
      }
    }
  }
}

constexpr int kCombineThreads = 128;

// One CTA per query row: adds the splits' row sums and reads (in split order, so the result
// is deterministic) and finishes the row like the unsplit kernel.
template <typename scalar_t>
__global__ void __launch_bounds__(kCombineThreads)
    memory_read_fwd_combine_kernel(FwdArgs<scalar_t> args) {
  using acc_t = typename Convert<scalar_t>::acc_t;
  __shared__ acc_t inv_sum;
  const int q = blockIdx.x;
  const int64_t plane = static_cast<int64_t>(args.num_splits) * args.num_queries;
  if (threadIdx.x == 0) {
    acc_t sum_a = 0, sum_b = 0, num_kept = 0;
    for (int split = 0; split < args.num_splits; ++split) {
      const int64_t at = static_cast<int64_t>(split) * args.num_queries + q;
      sum_a += args.part_rows[at];
      sum_b += args.part_rows[plane + at];
      num_kept += args.part_rows[2 * plane + at];
    }
    const math::RowResult<acc_t> result = math::finish_shrunk_row(sum_a, sum_b, num_kept);
    args.entropy[q] = Convert<scalar_t>::from_acc(result.entropy);
    args.stats[int64_t(args.num_queries) + q] = sum_a;
    args.stats[2 * int64_t(args.num_queries) + q] = result.a_prime;
    inv_sum = result.inv_sum;
  }
  __syncthreads();
  const int64_t split_stride = static_cast<int64_t>(args.num_queries) * args.channels;
  for (int c = threadIdx.x; c < args.channels; c += kCombineThreads) {
    const int64_t at = static_cast<int64_t>(q) * args.channels + c;
    acc_t total = 0;
    for (int split = 0; split < args.num_splits; ++split) {
      total += args.part_acc[split * split_stride + at];
    }
    args.read[at] = Convert<scalar_t>::from_acc(total * inv_sum);
  }
}

// One CTA per query row: the online splits' m_k, l_k, P_k and O_k rescaled to m = max m_k
// (l = sum l_k exp(m_k - m), P likewise with its shift), added in split order.
template <typename scalar_t>
__global__ void __launch_bounds__(kCombineThreads)
    memory_read_fwd_online_combine_kernel(FwdArgs<scalar_t> args) {
  using acc_t = typename Convert<scalar_t>::acc_t;
  __shared__ acc_t top, inv_sum;
  const int q = blockIdx.x;
  const auto at = [&](int split) { return static_cast<int64_t>(split) * args.num_queries + q; };
  if (threadIdx.x == 0) {
    acc_t m = -std::numeric_limits<acc_t>::infinity();
    for (int split = 0; split < args.num_splits; ++split) {
      m = args.part_max[at(split)] > m ? args.part_max[at(split)] : m;
    }
    acc_t l = 0, p = 0;
    for (int split = 0; split < args.num_splits; ++split) {
      const acc_t shift = args.part_max[at(split)] - m, factor = math::exp_(shift);
      l += factor * args.part_sum[at(split)];
      p += factor * (args.part_rows[at(split)] + shift * args.part_sum[at(split)]);
    }
    const acc_t log_l = math::log_(l);
    args.stats[q] = m + log_l;
    args.stats[int64_t(args.num_queries) + q] = acc_t(1);
    finish_online_entropy(args, q, log_l - p / l);
    top = m;
    inv_sum = acc_t(1) / l;
  }
  __syncthreads();
  const int64_t split_stride = static_cast<int64_t>(args.num_queries) * args.channels;
  for (int c = threadIdx.x; c < args.channels; c += kCombineThreads) {
    const int64_t out_at = static_cast<int64_t>(q) * args.channels + c;
    acc_t total = 0;
    for (int split = 0; split < args.num_splits; ++split) {
      total += math::exp_(args.part_max[at(split)] - top) *
               args.part_acc[split * split_stride + out_at];
    }
    args.read[out_at] = Convert<scalar_t>::from_acc(total * inv_sum);
  }
}

// --------------------------------------------------------------------- backward, queries
// Split over N like the forward: each split writes its X, Y, sum w (dw - c) and sum w, and
// memory_read_bwd_combine_kernel finishes R' and d zq.

template <typename scalar_t>
struct BwdArgs {
  using acc_t = typename Convert<scalar_t>::acc_t;
  const scalar_t *zq, *mk, *mv, *grad_read, *grad_entropy, *read, *entropy;
  const acc_t* stats;  // (3, Q)
  acc_t* row_r;        // (Q): R' of each query row (R - c), written by the query-major kernel
  acc_t* row_d;        // (Q): D of each query row, likewise
  acc_t* grad_zq;      // (Q, C)
  acc_t *grad_mk, *grad_mv;  // (query splits, N, C): summed by the host when split
  int num_queries, num_slots, channels;
  acc_t scale, lam;
  bool shrinking;
  int num_splits, slots_per_split;  // query-major kernel: grid.z's share of the slots
  int queries_per_split;            // memory-major kernel: grid.z's share of the queries
  acc_t *part_x, *part_y;           // (splits, Q, C)
  acc_t *part_p, *part_w;           // (splits, Q): sum w (dw - c) and sum w
};

// kShrinking (lam > 0): d zq = scale (X - R' Y) with R' from the sweep's sums. lam = 0 takes
// R' = 0 and accumulates X alone (one product fewer): with the shift c = D, R' is zero but
// for D's rounding (D takes the rounded read; the entropy comes unrounded through A'), as
// FlashAttention takes its D from the rounded output.
template <typename scalar_t, bool kSplit, bool kShrinking>
__global__ void __launch_bounds__(kThreads) memory_read_bwd_query_kernel(BwdArgs<scalar_t> args) {
  using L = Layout<scalar_t, 2>;
  using Engine = typename L::Engine;
  using acc_t = typename L::acc_t;
  using p_t = typename L::p_t;
  MEMAE_DYNAMIC_SHARED(shared_bytes);
  const L smem{shared_bytes};
  const int q0 = blockIdx.x * kRows, c0 = blockIdx.y * L::kCols;
  const int row = threadIdx.x / kGroup, lane = threadIdx.x % kGroup;
  const int q = q0 + row;
  const bool row_valid = q < args.num_queries;
  const SweepRange range =
      kSplit ? sweep_range(args.num_slots, args.slots_per_split) : SweepRange{0, args.num_slots};

  // The row's constants: D needs g . read.
  acc_t g_dot_read = 0;
  for (int c = lane; row_valid && c < args.channels; c += kGroup) {
    const int64_t at = static_cast<int64_t>(q) * args.channels + c;
    g_dot_read += Convert<scalar_t>::to_acc(args.grad_read[at]) *
                  Convert<scalar_t>::to_acc(args.read[at]);
  }
  g_dot_read = group_sum(g_dot_read);  // outside the branch: the whole warp must shuffle
  math::RowGrad<acc_t> row_grad{0, 1, 0, 0};
  if (row_valid) {
    const int64_t plane = args.num_queries;
    row_grad = math::make_row_grad<acc_t>(
        args.stats[q], args.stats[plane + q], Convert<scalar_t>::to_acc(args.entropy[q]),
        args.stats[2 * plane + q], Convert<scalar_t>::to_acc(args.grad_entropy[q]), g_dot_read);
  }
  const bool with_entropy = row_grad.gamma != acc_t(0);
  const acc_t shift = kShrinking ? acc_t(0) : row_grad.d;  // ~R, see the file comment

  const scalar_t* a_ops[2] = {args.zq, args.grad_read};
  const scalar_t* b_ops[2] = {args.mk, args.mv};
  typename Engine::OAcc x_acc, y_acc;
  Engine::zero(x_acc);
  if (kShrinking) Engine::zero(y_acc);
  acc_t sum_p = 0, sum_w = 0;
  for (int n0 = range.begin; n0 < range.end; n0 += kSweep) {
    logits_tiles<scalar_t, 2>(smem, a_ops, args.num_queries, q0, b_ops, args.num_slots, n0,
                              args.channels);
    __syncthreads();
    copy_tile_async(smem.v_tile(0), L::kLdV, args.mk, args.num_slots, args.channels, n0, c0,
                    kSweep, L::kCols);
    __pipeline_commit();
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      const int col = lane + kGroup * k;
      acc_t p = 0, w = 0;
      if (row_valid && n0 + col < range.end) {
        const math::SlotGrad<acc_t> slot = math::slot_grad(
            row_grad, args.lam, kShrinking, with_entropy,
            args.scale * smem.s_tile(0)[row * L::kLdS + col], smem.s_tile(1)[row * L::kLdS + col]);
        w = slot.w;
        p = slot.w * (slot.dw - shift);
      }
      sum_p += p;
      sum_w += w;
      smem.p_tile(0)[row * L::kLdP + col] = Convert<p_t>::from_acc(p);
      if (kShrinking) smem.p_tile(1)[row * L::kLdP + col] = Convert<p_t>::from_acc(w);
    }
    __pipeline_wait_prior(0);
    __syncthreads();
    Engine::mma_nn(x_acc, smem.p_tile(0), L::kLdP, smem.v_tile(0), L::kLdV);
    if (kShrinking) Engine::mma_nn(y_acc, smem.p_tile(1), L::kLdP, smem.v_tile(0), L::kLdV);
    __syncthreads();
  }

  if (kShrinking) {
    sum_p = group_sum(sum_p);
    sum_w = group_sum(sum_w);
  }
  acc_t* row_r = smem.stats(0);
  if (kSplit) {
    if (lane == 0 && row_valid && blockIdx.y == 0) {
      const int64_t at = static_cast<int64_t>(blockIdx.z) * args.num_queries + q;
      if (kShrinking) {
        args.part_p[at] = sum_p;
        args.part_w[at] = sum_w;
      }
      if (blockIdx.z == 0) args.row_d[q] = row_grad.d;
    }
  } else {
    const acc_t r_shifted = kShrinking && row_valid ? math::finish_r(sum_p, sum_w) : acc_t(0);
    if (lane == 0) {
      row_r[row] = r_shifted;
      if (row_valid && blockIdx.y == 0) {
        args.row_r[q] = r_shifted;
        args.row_d[q] = row_grad.d;
      }
    }
  }
  Engine::store(x_acc, smem.stage(0), L::kLdO);
  if (kShrinking) Engine::store(y_acc, smem.stage(1), L::kLdO);
  __syncthreads();
  for (int idx = threadIdx.x; idx < kRows * L::kCols; idx += kThreads) {
    const int r = idx / L::kCols, c = idx % L::kCols;
    if (q0 + r < args.num_queries && c0 + c < args.channels) {
      const int s = r * L::kLdO + c;
      if (kSplit) {
        const int64_t at = (static_cast<int64_t>(blockIdx.z) * args.num_queries + q0 + r) *
                               args.channels + c0 + c;
        args.part_x[at] = smem.stage(0)[s];
        if (kShrinking) args.part_y[at] = smem.stage(1)[s];
      } else {
        const acc_t x = smem.stage(0)[s];
        args.grad_zq[static_cast<int64_t>(q0 + r) * args.channels + c0 + c] =
            args.scale * (kShrinking ? x - row_r[r] * smem.stage(1)[s] : x);
      }
    }
  }
}

// One CTA per query row: R' from the splits' sums (lam > 0; else 0), then d zq =
// scale (X - R' Y), adding the splits in order (deterministic).
template <typename scalar_t>
__global__ void __launch_bounds__(kCombineThreads)
    memory_read_bwd_combine_kernel(BwdArgs<scalar_t> args) {
  using acc_t = typename Convert<scalar_t>::acc_t;
  __shared__ acc_t r_shifted;
  const int q = blockIdx.x;
  if (threadIdx.x == 0) {
    acc_t r = 0;
    if (args.shrinking) {
      acc_t sum_p = 0, sum_w = 0;
      for (int split = 0; split < args.num_splits; ++split) {
        const int64_t at = static_cast<int64_t>(split) * args.num_queries + q;
        sum_p += args.part_p[at];
        sum_w += args.part_w[at];
      }
      r = math::finish_r(sum_p, sum_w);
    }
    args.row_r[q] = r;
    r_shifted = r;
  }
  __syncthreads();
  const int64_t split_stride = static_cast<int64_t>(args.num_queries) * args.channels;
  for (int c = threadIdx.x; c < args.channels; c += kCombineThreads) {
    const int64_t at = static_cast<int64_t>(q) * args.channels + c;
    acc_t x = 0, y = 0;
    for (int split = 0; split < args.num_splits; ++split) {
      x += args.part_x[split * split_stride + at];
      if (args.shrinking) y += args.part_y[split * split_stride + at];
    }
    args.grad_zq[at] = args.scale * (args.shrinking ? x - r_shifted * y : x);
  }
}

// ---------------------------------------------------------------------- backward, memory
// Split over the queries when slots are few: grid.z writes its own (N, C) slice of
// grad_mk/grad_mv, which the host adds up.

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) memory_read_bwd_memory_kernel(BwdArgs<scalar_t> args) {
  using L = Layout<scalar_t, 2>;
  using Engine = typename L::Engine;
  using acc_t = typename L::acc_t;
  using p_t = typename L::p_t;
  MEMAE_DYNAMIC_SHARED(shared_bytes);
  const L smem{shared_bytes};
  const int n0 = blockIdx.x * kRows, c0 = blockIdx.y * L::kCols;
  const int row = threadIdx.x / kGroup, lane = threadIdx.x % kGroup;
  const bool row_valid = n0 + row < args.num_slots;
  const SweepRange range = sweep_range(args.num_queries, args.queries_per_split);
  acc_t *col_lse = smem.stats(0), *col_inv_sum = smem.stats(1), *col_d = smem.stats(2),
        *col_gamma = smem.stats(3), *col_r = smem.stats(4);

  // Rows are memory slots, columns queries: S = mk zq^T, G = mv g^T.
  const scalar_t* a_ops[2] = {args.mk, args.mv};
  const scalar_t* b_ops[2] = {args.zq, args.grad_read};
  typename Engine::OAcc key_acc, value_acc;
  Engine::zero(key_acc);
  Engine::zero(value_acc);
  for (int q0 = range.begin; q0 < range.end; q0 += kSweep) {
    // The tile's per-query constants (visible after the syncs inside logits_tiles).
    for (int j = threadIdx.x; j < kSweep; j += kThreads) {
      const int q = q0 + j;
      if (q < range.end) {
        const acc_t sum_h = args.stats[int64_t(args.num_queries) + q];
        col_lse[j] = args.stats[q];
        col_inv_sum[j] = acc_t(1) / (sum_h > acc_t(math::kSumEps) ? sum_h : acc_t(math::kSumEps));
        col_d[j] = args.row_d[q];
        col_gamma[j] = Convert<scalar_t>::to_acc(args.grad_entropy[q]);
        col_r[j] = args.row_r[q];
      } else {
        col_lse[j] = col_d[j] = col_gamma[j] = col_r[j] = acc_t(0);
        col_inv_sum[j] = acc_t(1);
      }
    }
    logits_tiles<scalar_t, 2>(smem, a_ops, args.num_slots, n0, b_ops, args.num_queries, q0,
                              args.channels);
    __syncthreads();
    copy_tile_async(smem.v_tile(0), L::kLdV, args.zq, args.num_queries, args.channels, q0, c0,
                    kSweep, L::kCols);
    copy_tile_async(smem.v_tile(1), L::kLdV, args.grad_read, args.num_queries, args.channels,
                    q0, c0, kSweep, L::kCols);
    __pipeline_commit();
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      const int col = lane + kGroup * k;
      acc_t ds = 0, a = 0;
      if (row_valid && q0 + col < range.end) {
        const math::RowGrad<acc_t> query_grad{col_lse[col], col_inv_sum[col], col_d[col],
                                              col_gamma[col]};
        const math::SlotGrad<acc_t> slot = math::slot_grad(
            query_grad, args.lam, args.shrinking, query_grad.gamma != acc_t(0),
            args.scale * smem.s_tile(0)[row * L::kLdS + col], smem.s_tile(1)[row * L::kLdS + col]);
        // (dw - c) - R', as in the query-major sweep: adding c = D back into R' first
        // would round away the small residual R' is for lam = 0.
        const acc_t shift = args.shrinking ? acc_t(0) : col_d[col];
        ds = slot.w * ((slot.dw - shift) - col_r[col]);
        a = slot.a;
      }
      smem.p_tile(0)[row * L::kLdP + col] = Convert<p_t>::from_acc(ds);
      smem.p_tile(1)[row * L::kLdP + col] = Convert<p_t>::from_acc(a);
    }
    __pipeline_wait_prior(0);
    __syncthreads();
    Engine::mma_nn(key_acc, smem.p_tile(0), L::kLdP, smem.v_tile(0), L::kLdV);
    Engine::mma_nn(value_acc, smem.p_tile(1), L::kLdP, smem.v_tile(1), L::kLdV);
    __syncthreads();  // tiles and per-query constants are rewritten next tile
  }

  Engine::store(key_acc, smem.stage(0), L::kLdO);
  Engine::store(value_acc, smem.stage(1), L::kLdO);
  __syncthreads();
  const int64_t slice = static_cast<int64_t>(blockIdx.z) * args.num_slots * args.channels;
  for (int idx = threadIdx.x; idx < kRows * L::kCols; idx += kThreads) {
    const int r = idx / L::kCols, c = idx % L::kCols;
    if (n0 + r < args.num_slots && c0 + c < args.channels) {
      const int s = r * L::kLdO + c;
      const int64_t at = slice + static_cast<int64_t>(n0 + r) * args.channels + c0 + c;
      args.grad_mk[at] = args.scale * smem.stage(0)[s];
      args.grad_mv[at] = smem.stage(1)[s];
    }
  }
}

// ------------------------------------------------------------------------------- host

// The tiles take up to ~135 KiB of shared memory (float64 backward): sm_80 and sm_90 allow
// more, but sm_86/sm_89 allow 99 KiB per block, where the launch would fail obscurely.
template <typename Kernel>
void set_shared_memory(Kernel kernel, size_t bytes, at::ScalarType dtype, const char* pass) {
  int device = 0, limit = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(bytes <= static_cast<size_t>(limit), "memory_read (CUDA): the ", dtype, " ", pass,
              " kernel needs ", bytes, " bytes of shared memory per block but this GPU allows ",
              limit, "; use backend=\"triton\" on it");
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
}

template <typename T>
struct Identity {
  using type = T;
};

// kernel<<<grid, block, shared_bytes, stream>>>(args...), checked; under the test suite's
// emulation, the same launch on the CPU.
template <typename... Params>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                   cudaStream_t stream, typename Identity<Params>::type... args) {
#ifdef MEMAE_CUDA_EMULATION
  (void)stream;
  cuda_emulation::launch(kernel, grid, block, shared_bytes, args...);
#else
  kernel<<<grid, block, shared_bytes, stream>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

bool on_kernel_device(const at::Tensor& t) {
#ifdef MEMAE_CUDA_EMULATION
  return t.is_cpu();
#else
  return t.is_cuda();
#endif
}

int checked_int(int64_t value, const char* what) {
  TORCH_CHECK(value < (int64_t(1) << 31), "memory_read (CUDA): ", what, " = ", value,
              " does not fit in int32");
  return static_cast<int>(value);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// How a sweep of `length` rows is split across grid.z: enough splits that num_ctas * splits
// reaches two CTAs per SM (each CTA holds ~50-100 KiB of shared memory), in whole kSweep tiles.
struct SplitPlan {
  int splits, per_split;
};

SplitPlan plan_splits(int64_t num_ctas, int64_t length, const at::Tensor& on) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, on.get_device()));
  const int64_t target = 2 * static_cast<int64_t>(sms);
  const int64_t tiles = ceil_div(length, kSweep);
  const int64_t wanted = num_ctas >= target ? 1 : std::min(tiles, ceil_div(target, num_ctas));
  const int64_t per_split = ceil_div(tiles, std::max<int64_t>(wanted, 1)) * kSweep;
  return SplitPlan{static_cast<int>(ceil_div(length, per_split)), static_cast<int>(per_split)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> memory_read_fwd_cuda(
    const at::Tensor& query, const at::Tensor& memory, double shrink_thres, bool cosine,
    double temperature) {
  check_forward_args(query, memory, shrink_thres, temperature);
  TORCH_CHECK(on_kernel_device(query), "memory_read_fwd_cuda: expected CUDA tensors");
  const c10::cuda::CUDAGuard device_guard(query.device());
  const auto dtype = query.scalar_type();
  const auto acc = accumulate_type(dtype);
  const int64_t num_queries = query.size(0), channels = query.size(1);
  at::Tensor read = at::empty({num_queries, channels}, query.options());
  at::Tensor entropy = at::empty({num_queries}, query.options());
  at::Tensor stats = at::empty({3, num_queries}, query.options().dtype(acc));
  if (num_queries == 0) return std::make_tuple(read, entropy, stats);
  const Operands ops = make_operands(query, memory, cosine, dtype);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "memory_read_fwd_cuda", [&] {
    using native_t = typename Native<scalar_t>::type;
    using L = Layout<native_t, 1>;
    using acc_t = typename Convert<native_t>::acc_t;
    FwdArgs<native_t> args{};
    args.zq = reinterpret_cast<const native_t*>(ops.zq.data_ptr<scalar_t>());
    args.mk = reinterpret_cast<const native_t*>(ops.mk.data_ptr<scalar_t>());
    args.mv = reinterpret_cast<const native_t*>(ops.mv.data_ptr<scalar_t>());
    args.read = reinterpret_cast<native_t*>(read.data_ptr<scalar_t>());
    args.entropy = reinterpret_cast<native_t*>(entropy.data_ptr<scalar_t>());
    args.stats = stats.data_ptr<acc_t>();
    args.num_queries = checked_int(num_queries, "Q");
    args.num_slots = checked_int(memory.size(0), "N");
    args.channels = checked_int(channels, "C");
    args.scale = acc_t(1.0 / temperature);
    args.lam = acc_t(shrink_thres);
    const bool shrinking = shrink_thres > 0;
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const int64_t q_blocks = ceil_div(num_queries, kRows);
    const int64_t col_chunks = std::max<int64_t>(1, ceil_div(channels, L::kCols));  // C = 0 too
    const SplitPlan plan = plan_splits(q_blocks * col_chunks, memory.size(0), query);
    args.num_splits = plan.splits;
    args.slots_per_split = plan.per_split;
    const dim3 grid(q_blocks, col_chunks, plan.splits);
    if (plan.splits == 1) {
      const auto kernel = shrinking ? memory_read_fwd_kernel<native_t, false>
                                    : memory_read_fwd_online_kernel<native_t, false>;
      set_shared_memory(kernel, L::kBytes, dtype, "forward");
      launch_kernel(kernel, grid, kThreads, L::kBytes, stream, args);
      return;
    }
    const auto acc_options = query.options().dtype(acc);
    at::Tensor part_max = at::empty({plan.splits, num_queries}, acc_options);
    at::Tensor part_sum = at::empty({plan.splits, num_queries}, acc_options);
    at::Tensor part_acc = at::empty({plan.splits, num_queries, channels}, acc_options);
    at::Tensor part_rows = at::empty({shrinking ? 3 : 1, plan.splits, num_queries}, acc_options);
    args.part_max = part_max.data_ptr<acc_t>();
    args.part_sum = part_sum.data_ptr<acc_t>();
    args.part_acc = part_acc.data_ptr<acc_t>();
    args.part_rows = part_rows.data_ptr<acc_t>();
    if (!shrinking) {
      set_shared_memory(memory_read_fwd_online_kernel<native_t, true>, L::kBytes, dtype,
                        "forward");
      launch_kernel(memory_read_fwd_online_kernel<native_t, true>, grid, kThreads, L::kBytes,
                    stream, args);
      launch_kernel(memory_read_fwd_online_combine_kernel<native_t>, num_queries,
                    kCombineThreads, 0, stream, args);
      return;
    }
    set_shared_memory(memory_read_row_max_sum_kernel<native_t>, L::kBytes, dtype, "forward");
    launch_kernel(memory_read_row_max_sum_kernel<native_t>, dim3(q_blocks, 1, plan.splits),
                  kThreads, L::kBytes, stream, args);
    // m = max over the splits, log l = log sum_splits l_k exp(m_k - m); L = m + log l.
    at::Tensor row_max_logl = at::empty({2, num_queries}, acc_options);
    at::Tensor top = row_max_logl[0], log_l = row_max_logl[1];
    top.copy_(part_max.amax(0));
    log_l.copy_((part_sum * (part_max - top).exp()).sum(0).log());
    stats[0].copy_(top + log_l);
    args.row_max_logl = row_max_logl.data_ptr<acc_t>();
    set_shared_memory(memory_read_fwd_kernel<native_t, true>, L::kBytes, dtype, "forward");
    launch_kernel(memory_read_fwd_kernel<native_t, true>, grid, kThreads, L::kBytes, stream,
                  args);
    launch_kernel(memory_read_fwd_combine_kernel<native_t>, num_queries, kCombineThreads, 0,
                  stream, args);
  });
  return std::make_tuple(read, entropy, stats);
}

std::tuple<at::Tensor, at::Tensor> memory_read_bwd_cuda(
    const at::Tensor& grad_read, const at::Tensor& grad_entropy, const at::Tensor& query,
    const at::Tensor& memory, const at::Tensor& read, const at::Tensor& entropy,
    const at::Tensor& stats, double shrink_thres, bool cosine, double temperature) {
  check_forward_args(query, memory, shrink_thres, temperature);
  check_backward_args(grad_read, grad_entropy, query, read, entropy, stats);
  TORCH_CHECK(on_kernel_device(query), "memory_read_bwd_cuda: expected CUDA tensors");
  const c10::cuda::CUDAGuard device_guard(query.device());
  const auto dtype = query.scalar_type();
  const auto acc = accumulate_type(dtype);
  const int64_t num_queries = query.size(0), num_slots = memory.size(0);
  const int64_t channels = query.size(1);
  if (num_queries == 0) {
    return std::make_tuple(at::zeros_like(query), at::zeros_like(memory));
  }
  const Operands ops = make_operands(query, memory, cosine, dtype);
  const auto in_dtype = [&](const at::Tensor& t) { return t.to(dtype).contiguous(); };
  const at::Tensor g = in_dtype(grad_read), gamma = in_dtype(grad_entropy);
  const at::Tensor read_c = in_dtype(read), entropy_c = in_dtype(entropy);
  const at::Tensor stats_c = stats.to(acc).contiguous();
  const auto acc_options = query.options().dtype(acc);
  at::Tensor grad_zq = at::empty({num_queries, channels}, acc_options);
  at::Tensor row_r = at::empty({num_queries}, acc_options);
  at::Tensor row_d = at::empty({num_queries}, acc_options);
  at::Tensor grad_mk, grad_mv;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "memory_read_bwd_cuda", [&] {
    using native_t = typename Native<scalar_t>::type;
    using L = Layout<native_t, 2>;
    using acc_t = typename Convert<native_t>::acc_t;
    const auto ptr = [](const at::Tensor& t) {
      return reinterpret_cast<const native_t*>(t.data_ptr<scalar_t>());
    };
    BwdArgs<native_t> args{};
    args.zq = ptr(ops.zq);
    args.mk = ptr(ops.mk);
    args.mv = ptr(ops.mv);
    args.grad_read = ptr(g);
    args.grad_entropy = ptr(gamma);
    args.read = ptr(read_c);
    args.entropy = ptr(entropy_c);
    args.stats = stats_c.data_ptr<acc_t>();
    args.row_r = row_r.data_ptr<acc_t>();
    args.row_d = row_d.data_ptr<acc_t>();
    args.grad_zq = grad_zq.data_ptr<acc_t>();
    args.num_queries = checked_int(num_queries, "Q");
    args.num_slots = checked_int(num_slots, "N");
    args.channels = checked_int(channels, "C");
    args.scale = acc_t(1.0 / temperature);
    args.lam = acc_t(shrink_thres);
    args.shrinking = shrink_thres > 0;
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const int64_t col_chunks = std::max<int64_t>(1, ceil_div(channels, L::kCols));  // C = 0 too

    // Query-major first: it writes the R and D that the memory-major kernel reads.
    const int64_t q_blocks = ceil_div(num_queries, kRows);
    const SplitPlan slot_plan = plan_splits(q_blocks * col_chunks, num_slots, query);
    args.num_splits = slot_plan.splits;
    args.slots_per_split = slot_plan.per_split;
    const dim3 grid(q_blocks, col_chunks, slot_plan.splits);
    const auto kernel = [&](bool split) {
      using Kernel = void (*)(BwdArgs<native_t>);
      const Kernel kernels[2][2] = {
          {memory_read_bwd_query_kernel<native_t, false, false>,
           memory_read_bwd_query_kernel<native_t, false, true>},
          {memory_read_bwd_query_kernel<native_t, true, false>,
           memory_read_bwd_query_kernel<native_t, true, true>}};
      return kernels[split][args.shrinking];
    };
    at::Tensor part_x, part_y, part_p, part_w;
    if (slot_plan.splits == 1) {
      set_shared_memory(kernel(false), L::kBytes, dtype, "backward");
      launch_kernel(kernel(false), grid, kThreads, L::kBytes, stream, args);
    } else {
      part_x = at::empty({slot_plan.splits, num_queries, channels}, acc_options);
      args.part_x = part_x.data_ptr<acc_t>();
      if (args.shrinking) {  // lam = 0 takes R' = 0 and needs X alone
        part_y = at::empty({slot_plan.splits, num_queries, channels}, acc_options);
        part_p = at::empty({slot_plan.splits, num_queries}, acc_options);
        part_w = at::empty({slot_plan.splits, num_queries}, acc_options);
        args.part_y = part_y.data_ptr<acc_t>();
        args.part_p = part_p.data_ptr<acc_t>();
        args.part_w = part_w.data_ptr<acc_t>();
      }
      set_shared_memory(kernel(true), L::kBytes, dtype, "backward");
      launch_kernel(kernel(true), grid, kThreads, L::kBytes, stream, args);
      launch_kernel(memory_read_bwd_combine_kernel<native_t>, num_queries, kCombineThreads, 0,
                    stream, args);
    }

    const int64_t n_blocks = ceil_div(num_slots, kRows);
    const SplitPlan query_plan = plan_splits(n_blocks * col_chunks, num_queries, query);
    args.queries_per_split = query_plan.per_split;
    grad_mk = at::empty({query_plan.splits, num_slots, channels}, acc_options);
    grad_mv = at::empty({query_plan.splits, num_slots, channels}, acc_options);
    args.grad_mk = grad_mk.data_ptr<acc_t>();
    args.grad_mv = grad_mv.data_ptr<acc_t>();
    set_shared_memory(memory_read_bwd_memory_kernel<native_t>, L::kBytes, dtype, "backward");
    launch_kernel(memory_read_bwd_memory_kernel<native_t>,
                  dim3(n_blocks, col_chunks, query_plan.splits), kThreads, L::kBytes, stream,
                  args);
  });
  // The query splits' slices, added by ATen's (deterministic) reduction.
  grad_mk = grad_mk.size(0) == 1 ? grad_mk[0] : grad_mk.sum(0);
  grad_mv = grad_mv.size(0) == 1 ? grad_mv[0] : grad_mv.sum(0);
  if (!cosine) return std::make_tuple(grad_zq.to(dtype), (grad_mk + grad_mv).to(dtype));
  const at::Tensor query_acc = query.to(acc), memory_acc = memory.to(acc);
  at::Tensor grad_query = normalize_rows_backward(query_acc, normalize_rows(query_acc), grad_zq);
  at::Tensor grad_memory =
      normalize_rows_backward(memory_acc, normalize_rows(memory_acc), grad_mk) + grad_mv;
  return std::make_tuple(grad_query.to(dtype), grad_memory.to(dtype));
}

}  // namespace

#ifndef MEMAE_CUDA_EMULATION
TORCH_LIBRARY_IMPL(memae_fused, CUDA, m) {
  m.impl("memory_read_fwd", &memory_read_fwd_cuda);
  m.impl("memory_read_bwd", &memory_read_bwd_cuda);
}
#endif

}  // namespace memae_fused
