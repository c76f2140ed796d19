// Operator schemas of the snntorch_sparse library. The math of every op is the
// function of the same name in snntorch_sparse/reference.py; CPU kernels live in
// cpu/, CUDA kernels in cuda/, autograd and fake tensors in snntorch_sparse/_ops.py.
#include <Python.h>
#include <torch/library.h>

// An empty Python module so that `import snntorch_sparse._C` loads the schemas and
// kernels below (registration happens as a side effect of loading the library).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&def);
}

TORCH_LIBRARY(snntorch_sparse, m) {
  // S = gamma*H(u) and the compact band {|u| < b_th} (bits + in-band u values).
  // shape/p are read only by the registered backward. b_th = inf: dense mode.
  m.def("spike(Tensor u, int shape, float p, float b_th, float gamma) -> (Tensor, Tensor, Tensor)");
  // gamma*g(u)*grad inside the band; dense [like grad] or compact [nnz].
  m.def("band_grad(Tensor grad, Tensor bits, Tensor vals, int shape, float p, float gamma, bool compact) -> Tensor");
  // Membrane sequence [T, M] of a LIF layer from its input current [T, M].
  m.def("lif_fwd(Tensor cur, Tensor mem0, Tensor beta, Tensor theta, int reset) -> Tensor");
  // Reverse scan Delta[t] = eps[t] + a[t+1]*Delta[t+1]; returns (Delta, dmem0).
  m.def("lif_bwd(Tensor eps, Tensor beta, Tensor rbits, int reset) -> (Tensor, Tensor)");
  // lif_bwd of eps = band_grad(grad_spk) + grad_mem (either may be None) in one pass: the
  // surrogate is evaluated only in the band, and no dense eps is formed. dmem_last: the
  // gradient a[T]*Delta[T] reaching the last membrane from later steps (sequence chunks).
  m.def("lif_bwd_band(Tensor? grad_spk, Tensor bits, Tensor vals, Tensor? grad_mem, Tensor? dmem_last, Tensor beta, Tensor rbits, int shape, float p, float gamma, int reset) -> (Tensor, Tensor)");
  // Synaptic (two-state) layer: current syn[t] = alpha*syn[t-1] + cur[t] (never reset) and
  // membrane [T, M] from the input current [T, M]; returns (syn, mem).
  m.def("syn_fwd(Tensor cur, Tensor syn0, Tensor mem0, Tensor alpha, Tensor beta, Tensor theta, int reset) -> (Tensor, Tensor)");
  // Reverse two-state scan of syn_fwd from the gradients into mem (eps_mem) and syn
  // (grad_syn, empty: none); returns (dcur, dsyn0, dmem0).
  m.def("syn_bwd(Tensor eps_mem, Tensor grad_syn, Tensor alpha, Tensor beta, Tensor rbits, int reset) -> (Tensor, Tensor, Tensor)");
  // The nonzeros of x [R, n_in] by column (CSC; empty outputs when denser than max_density).
  m.def("nonzero_csc(Tensor x, float max_density) -> (Tensor colptr, Tensor rows, Tensor xvals)");
  // Weight gradient (transposed) from the input nonzeros, CSC by input neuron.
  m.def("dw_spikes(Tensor delta, Tensor colptr, Tensor rows, Tensor xvals, int n_in) -> Tensor");
  // Weight gradient (transposed) from the active output set and input traces.
  m.def("dw_trace(Tensor rowptr, Tensor cols, Tensor eps_vals, Tensor colptr, Tensor rows, Tensor xvals, float beta, int T, int B, int n_out) -> Tensor");
  // dw_trace for a dense input x [T*B, n_in] (the same trace, read from x).
  m.def("dw_trace_dense(Tensor rowptr, Tensor cols, Tensor eps_vals, Tensor x, float beta, int T, int B, int n_out) -> Tensor");
  // Input gradient only where the upstream layer's band bit is set.
  m.def("dx_masked(Tensor delta, Tensor weight_t, Tensor bits) -> Tensor");
  // Event-driven fully connected forward: x [R, n_in] times weight_t [n_in, n_out] (+ bias)
  // summed over x's nonzeros only.
  m.def("linear_fwd_events(Tensor colptr, Tensor rows, Tensor xvals, Tensor weight_t, Tensor? bias, int R) -> Tensor");
  // A hidden fully connected LIF layer's forward from its compact input in one pass:
  // linear_fwd_events -> lif_fwd -> spike(U - theta) -> nonzero_csc of the spikes (CPU).
  m.def("linear_lif_events(Tensor colptr, Tensor rows, Tensor xvals, Tensor weight_t, Tensor? bias, Tensor mem0, Tensor beta, Tensor theta, int R, int reset, float b_th, float gamma, float max_density) -> (Tensor spk, Tensor bits, Tensor vals, Tensor mem_last, Tensor colptr_out, Tensor rows_out, Tensor xvals_out)");
  // Its backward in one pass for reset subtract/none (a[t] = beta), a compact input and no
  // membrane gradient: lif_bwd_band (dmem_last: as there) -> dw_spikes (+ bias gradient,
  // + dx_masked by up_bits), Delta never stored; returns (dW^T [n_in, n_out], d_bias or
  // [0], dx or [0], dmem0) (CPU).
  m.def("linear_lif_bwd(Tensor grad_spk, Tensor bits, Tensor vals, Tensor? dmem_last, Tensor beta, Tensor colptr, Tensor rows, Tensor xvals, Tensor weight_t, Tensor up_bits, int shape, float p, float gamma, bool need_x, bool need_b) -> (Tensor, Tensor, Tensor, Tensor)");
  // 2-D convolution: weight gradient [C_out, C_in/groups, kH, kW] from the input nonzeros
  // (CSC of x.reshape(R, C_in*H*W)), and the input gradient where the upstream band bit is set.
  m.def("conv_dw_spikes(Tensor delta, Tensor colptr, Tensor rows, Tensor xvals, int[] in_shape, int[] kernel, int[] stride, int[] padding, int[] dilation, int groups) -> Tensor");
  m.def("conv_dx_masked(Tensor delta, Tensor weight, Tensor bits, int[] in_shape, int[] stride, int[] padding, int[] dilation, int groups) -> Tensor");
  // Event-driven 2-D convolution: conv2d(x, weight) + bias summed over x's nonzeros only.
  m.def("conv_fwd_events(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation, int groups) -> Tensor");
  // A memory hint, no value changes: advise transparent huge pages for a large, fresh
  // CPU buffer before its first write (csrc/cpu/alloc.h).
  m.def("advise_huge_pages(Tensor t) -> ()");
}
