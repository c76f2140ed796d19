// Pieces shared by the CPU scan kernels (lif.cpp, synaptic.cpp): per-neuron recurrences
// over [T, M] tensors, run in blocks of neurons split over threads.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "common.h"
#include "cpu/checks.h"

namespace snntorch_sparse {

// Neurons per block: one row slice is 4 KiB in float64, so a block's working set of a
// few rows stays in L1.
constexpr int64_t kScanBlock = 512;

// Run block(m0, m1) over [0, M) in blocks of at most kScanBlock neurons, in parallel.
template <typename F>
void for_each_block(int64_t M, const F& block) {
  at::parallel_for(0, M, kScanBlock, [&](int64_t b, int64_t e) {
    for (int64_t m0 = b; m0 < e; m0 += kScanBlock) block(m0, std::min(e, m0 + kScanBlock));
  });
}

// U[t] from U[t-1] (`prev`) and I[t] (`c`), in the expression order of reference.lif_fwd
// (snnTorch's Leaky), so float64 is bit-identical (as long as the compiler does not fuse
// multiply-adds: -ffp-contract=off). GCC vectorises the reset's select only with
// -fno-trapping-math, as torch is built.
template <typename T, int64_t R>
inline T lif_update(T prev, T c, T be, T th) {
  const T r = prev - th > T(0) ? T(1) : T(0);
  if constexpr (R == SUBTRACT) {
    return be * prev + c - r * th;
  } else if constexpr (R == ZERO) {
    return be * ((T(1) - r) * prev) + c;
  } else {
    return be * prev + c;
  }
}

// A per-neuron vector: 1-D of length M, the dtype of the sequence.
inline void check_vec(const at::Tensor& t, const at::Tensor& like, int64_t M, const char* op,
                      const char* name, const char* like_name) {
  check_float(t, op, name);
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": `", name, "` must have the dtype of `",
              like_name, "` (", like.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == M, op, ": `", name, "` must have shape [M] = [", M,
              "], got ", t.sizes());
}

inline void check_reset(int64_t reset, const char* op) {
  TORCH_CHECK(reset >= SUBTRACT && reset <= NONE, op,
              ": `reset` must be 0 (subtract), 1 (zero) or 2 (none), got ", reset);
}

// Packed reset flags over [T, M], as the zero reset reads them.
inline void check_rbits(const at::Tensor& rbits, int64_t steps, int64_t M, const char* op) {
  TORCH_CHECK(rbits.device().is_cpu(), op, ": `rbits` must be a CPU tensor, got ", rbits.device());
  TORCH_CHECK(rbits.scalar_type() == at::kInt, op, ": `rbits` must be int32, got ",
              rbits.scalar_type());
  TORCH_CHECK(rbits.dim() == 1 && rbits.numel() == (steps * M + 31) / 32, op,
              ": reset=zero needs `rbits` of ceil(T*M/32) = ", (steps * M + 31) / 32,
              " int32 words, got shape ", rbits.sizes());
}

// Call f(j) for every set bit k0 + j, j in [0, n), of the packed bits: the few neurons
// that fired, so a reset costs nothing where none did.
template <typename F>
void for_each_set_bit(const int32_t* bits, int64_t k0, int64_t n, const F& f) {
  const int64_t k1 = k0 + n;
  for (int64_t w = k0 >> 5; w < (k1 + 31) >> 5; ++w) {
    // keep the bits of this word that fall in [k0, k1)
    const int64_t lo = std::max<int64_t>(k0 - w * 32, 0), hi = std::min<int64_t>(k1 - w * 32, 32);
    const uint32_t mask = (hi == 32 ? ~0u : (1u << hi) - 1u) & ~((1u << lo) - 1u);
    for (uint32_t word = static_cast<uint32_t>(bits[w]) & mask; word; word &= word - 1)
      f(w * 32 + __builtin_ctz(word) - k0);
  }
}

}  // namespace snntorch_sparse
