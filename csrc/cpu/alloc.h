// Outputs of the CPU kernels.
//
// A large output is written once and soon freed. glibc serves a block above its mmap
// threshold (at most 32 MiB) by a fresh mmap each time, so writing it costs mostly page
// faults — on the machine of docs/benchmarks.md more than the kernel's own work (SHD at
// B = 128: ~4 300 faults and a fifth of the step). So large outputs come from a cache of
// freed blocks (OutputCache, alloc.cpp) that a training loop, allocating the same sizes
// every step, reuses without faults; new blocks are advised transparent huge pages before
// their first write (fewer faults wherever THP is in "madvise" or "always" mode). Contents
// are uninitialised, as with at::empty.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

namespace snntorch_sparse {

// A buffer smaller than this is left to torch's allocator (glibc reuses such blocks, and
// one holds at most one whole huge page).
constexpr int64_t kLargeOutputBytes = int64_t(4) << 20;

void advise_huge_pages(const at::Tensor& t);

// A CPU tensor of at least kLargeOutputBytes from the cache of freed output blocks.
at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// Bytes held by the cache in blocks that no tensor uses; release_cached_outputs() frees
// them (python: snntorch_sparse.empty_cache()).
int64_t cached_output_bytes();
void release_cached_outputs();

// at::empty, from the cache for a large CPU buffer.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const int64_t bytes = c10::multiply_integers(sizes) * static_cast<int64_t>(options.dtype().itemsize());
  if (options.device().is_cpu() && bytes >= kLargeOutputBytes) return cached_empty(sizes, options);
  return at::empty(sizes, options);
}

// Zeros; a small buffer by memset on this thread (a parallel fill's start-up would cost more
// than the fill, and much more on a loaded machine).
inline at::Tensor zeros_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = empty_output(sizes, options);
  if (options.device().is_cpu() && static_cast<int64_t>(t.nbytes()) < kLargeOutputBytes) {
    if (t.nbytes()) std::memset(t.data_ptr(), 0, t.nbytes());
  } else {
    t.zero_();
  }
  return t;
}

}  // namespace snntorch_sparse
