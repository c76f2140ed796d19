// `advise_huge_pages`: the memory hint of alloc.h for a buffer allocated in Python (the
// output of a library op that is passed `out=`). Registered for every device (a no-op off
// the CPU); it changes no value.
#include <torch/library.h>

#include "cpu/alloc.h"

namespace snntorch_sparse {

TORCH_LIBRARY_IMPL(snntorch_sparse, CompositeExplicitAutograd, m) {
  m.impl("advise_huge_pages", [](const at::Tensor& t) { advise_huge_pages(t); });
}

}  // namespace snntorch_sparse
