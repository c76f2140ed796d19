// The output cache of alloc.h and the ops that expose it: `advise_huge_pages` (the memory
// hint for a buffer allocated in Python; a no-op off the CPU, it changes no value),
// `cached_output_bytes` and `release_cached_outputs`.
#include <torch/library.h>

#include <cstdlib>
#include <map>
#include <mutex>

#include "cpu/alloc.h"
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace snntorch_sparse {
namespace {

constexpr int64_t kHugePage = int64_t(1) << 21;

void advise_range(void* p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t begin = (a + kHugePage - 1) & ~uintptr_t(kHugePage - 1);  // whole huge pages only
  const uintptr_t end = (a + bytes) & ~uintptr_t(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

// Freed output blocks by size (multiples of a huge page), reused for outputs of the same
// rounded size. Idle blocks are capped at an eighth of the machine's memory: beyond it the
// oldest-freed go back to the system. Thread-safe (outputs are freed on autograd's threads).
class OutputCache {
 public:
  // A block of `bytes` (a size class), of which the caller will write `used`.
  void* take(int64_t bytes, int64_t used) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = idle_.find(bytes);
      if (it != idle_.end()) {
        void* p = it->second.ptr;
        idle_.erase(it);
        idle_bytes_ -= bytes;
        return p;
      }
    }
    void* p = std::aligned_alloc(kHugePage, bytes);
    TORCH_CHECK(p, "snntorch_sparse: out of memory allocating a ", bytes, "-byte output");
    // Huge pages for the whole ones the first use writes: advising the class's rounded-up
    // tail too would make a block resident up to 2 MiB beyond what is written.
    advise_range(p, used);
    return p;
  }

  void give(void* p, int64_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    idle_.emplace(bytes, Block{p, ++clock_});
    idle_bytes_ += bytes;
    while (idle_bytes_ > limit_) {  // free the block freed longest ago
      auto oldest = idle_.begin();
      for (auto it = idle_.begin(); it != idle_.end(); ++it)
        if (it->second.freed < oldest->second.freed) oldest = it;
      idle_bytes_ -= oldest->first;
      std::free(oldest->second.ptr);
      idle_.erase(oldest);
    }
  }

  int64_t idle_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return idle_bytes_;
  }

  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& kv : idle_) std::free(kv.second.ptr);
    idle_.clear();
    idle_bytes_ = 0;
  }

 private:
  struct Block {
    void* ptr;
    uint64_t freed;
  };
  static int64_t memory_limit() {
#if defined(__linux__)
    const long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && size > 0) return static_cast<int64_t>(pages) * size / 8;
#endif
    return int64_t(1) << 30;
  }
  std::mutex mutex_;
  std::multimap<int64_t, Block> idle_;
  int64_t idle_bytes_ = 0;
  uint64_t clock_ = 0;
  const int64_t limit_ = memory_limit();
};

// Never destroyed: tensors may still be freed while the process exits.
OutputCache& cache() {
  static OutputCache* c = new OutputCache();
  return *c;
}

}  // namespace

void advise_huge_pages(const at::Tensor& t) {
  if (t.device().is_cpu() && static_cast<int64_t>(t.nbytes()) >= kLargeOutputBytes)
    advise_range(t.data_ptr(), static_cast<int64_t>(t.nbytes()));
}

at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const int64_t bytes = c10::multiply_integers(sizes) * static_cast<int64_t>(options.dtype().itemsize());
  const int64_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = cache().take(rounded, bytes);
  return at::from_blob(p, sizes, [rounded](void* q) { cache().give(q, rounded); },
                       options.device(at::kCPU));
}

int64_t cached_output_bytes() { return cache().idle_bytes(); }

void release_cached_outputs() { cache().release(); }

TORCH_LIBRARY_IMPL(snntorch_sparse, CompositeExplicitAutograd, m) {
  m.impl("advise_huge_pages", [](const at::Tensor& t) { advise_huge_pages(t); });
}

TORCH_LIBRARY_FRAGMENT(snntorch_sparse, m) {
  m.def("cached_output_bytes() -> int", &cached_output_bytes);
  m.def("release_cached_outputs() -> ()", &release_cached_outputs);
}

}  // namespace snntorch_sparse
