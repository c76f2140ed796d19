// Outputs of the CPU kernels.
//
// A large output is written once and soon freed. glibc serves such a block by a fresh
// mmap, so writing it costs mostly page faults (~0.5 ms per MB with 4 KiB pages on the
// machine of docs/benchmarks.md: more than the kernel's own work). Advising transparent
// huge pages before the first write makes that ~5x cheaper wherever THP is in "madvise"
// (the common default) or "always" mode; elsewhere the advice is ignored. Contents are
// uninitialised, as with at::empty.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace snntorch_sparse {

// A buffer smaller than this gains little (it holds at most one whole huge page).
constexpr int64_t kHugeAdviceMinBytes = int64_t(4) << 20;

inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t huge = uintptr_t(1) << 21;
  if (!t.device().is_cpu() || static_cast<int64_t>(t.nbytes()) < kHugeAdviceMinBytes) return;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (p + huge - 1) & ~(huge - 1);  // whole huge pages inside t only
  const uintptr_t end = (p + t.nbytes()) & ~(huge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

// at::empty, with huge pages advised for a large CPU buffer.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  advise_huge_pages(t);
  return t;
}

inline at::Tensor zeros_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return empty_output(sizes, options).zero_();
}

}  // namespace snntorch_sparse
