// 2-D convolution for XLA's CPU backend through the XLA FFI, computed by oneDNN.
//
// Three handlers, float32, images NHWC, kernels HWIO, no bias, no groups, no
// dilation; integer attributes stride_h, stride_w, pad_top, pad_bottom,
// pad_left, pad_right:
//
//   resjax_onednn_conv_fwd          y[N,OH,OW,O]  = conv(x[N,H,W,C], w[KH,KW,C,O])
//   resjax_onednn_conv_bwd_data     dx[N,H,W,C]   from dy[N,OH,OW,O], w
//   resjax_onednn_conv_bwd_weights  dw[KH,KW,C,O] from x, dy
//
// and one that is not oneDNN's: resjax_materialize, y = x for any dtype and
// shape (the result aliases the operand), a call XLA cannot fuse through.
//
// Activations stay NHWC (as PyTorch's channels-last path keeps them); kernels
// are reordered to and from the blocked layout oneDNN picks for the shape
// (small tensors). Primitives and reorders are built once per shape and
// thread count and cached behind a mutex; scratchpads are per calling thread.
// oneDNN runs its own OpenMP threads; resjax_onednn_set_threads(n > 0) makes
// every later call use n of them.

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

extern "C" {
void omp_set_num_threads(int);
int omp_get_max_threads(void);
}

namespace ffi = xla::ffi;

namespace {

using dims = dnnl::memory::dims;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

enum Kind : int64_t { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

struct Shape {
  int64_t kind, n, h, w, c, kh, kw, o, sh, sw, pt, pb, pl, pr, threads;
  bool operator==(const Shape& b) const { return std::memcmp(this, &b, sizeof(Shape)) == 0; }
  int64_t oh() const { return (h + pt + pb - kh) / sh + 1; }
  int64_t ow() const { return (w + pl + pr - kw) / sw + 1; }
};

struct ShapeHash {
  size_t operator()(const Shape& s) const {
    const int64_t* p = reinterpret_cast<const int64_t*>(&s);
    size_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof(Shape) / sizeof(int64_t); ++i) {
      h = (h ^ static_cast<size_t>(p[i])) * 1099511628211ull;
    }
    return h;
  }
};

// One cached convolution: the primitive, its kernel layout and, where that
// layout is not HWIO, the reorder between the two.
struct Entry {
  dnnl::primitive conv;
  dnnl::memory::desc kernel;       // The layout the primitive reads / writes.
  dnnl::memory::desc kernel_hwio;  // The caller's layout.
  bool reorder_kernel = false;
  dnnl::reorder to_primitive, from_primitive;
  dnnl::memory::desc src, dst, scratch;
};

dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

std::atomic<int> g_threads{0};

std::unique_ptr<Entry> Build(const Shape& s) {
  dnnl::engine& eng = Engine();
  const dims src_dims = {s.n, s.c, s.h, s.w};
  const dims dst_dims = {s.n, s.o, s.oh(), s.ow()};
  const dims w_dims = {s.o, s.c, s.kh, s.kw};
  const dims strides = {s.sh, s.sw}, pad_l = {s.pt, s.pl}, pad_r = {s.pb, s.pr};
  const dnnl::memory::desc src(src_dims, dt::f32, tag::nhwc);
  const dnnl::memory::desc dst(dst_dims, dt::f32, tag::nhwc);
  const dnnl::memory::desc w_any(w_dims, dt::f32, tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);

  auto entry = std::make_unique<Entry>();
  entry->kernel_hwio = dnnl::memory::desc(w_dims, dt::f32, tag::hwio);
  entry->src = src;
  entry->dst = dst;
  auto fwd = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, w_any,
      dst, strides, pad_l, pad_r, attr);
  if (s.kind == kForward) {
    entry->conv = dnnl::convolution_forward(fwd);
    entry->kernel = fwd.weights_desc();
    entry->scratch = fwd.scratchpad_desc();
  } else if (s.kind == kBackwardData) {
    auto bwd = dnnl::convolution_backward_data::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, src, w_any, dst, strides, pad_l, pad_r, fwd,
        attr);
    entry->conv = dnnl::convolution_backward_data(bwd);
    entry->kernel = bwd.weights_desc();
    entry->scratch = bwd.scratchpad_desc();
  } else {
    auto bwd = dnnl::convolution_backward_weights::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, src, w_any, dst, strides, pad_l, pad_r, fwd,
        attr);
    entry->conv = dnnl::convolution_backward_weights(bwd);
    entry->kernel = bwd.diff_weights_desc();
    entry->scratch = bwd.scratchpad_desc();
  }
  entry->reorder_kernel = entry->kernel != entry->kernel_hwio;
  if (entry->reorder_kernel) {
    if (s.kind == kBackwardWeights) {
      entry->from_primitive = dnnl::reorder(
          dnnl::reorder::primitive_desc(eng, entry->kernel, eng, entry->kernel_hwio));
    } else {
      entry->to_primitive = dnnl::reorder(
          dnnl::reorder::primitive_desc(eng, entry->kernel_hwio, eng, entry->kernel));
    }
  }
  return entry;
}

const Entry& Lookup(const Shape& s) {
  static std::mutex mu;
  static auto* cache = new std::unordered_map<Shape, std::unique_ptr<Entry>, ShapeHash>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(s);
  if (it == cache->end()) it = cache->emplace(s, Build(s)).first;
  return *it->second;
}

// A 64-byte aligned per-thread buffer that only grows.
struct Scratch {
  void* ptr = nullptr;
  size_t size = 0;
  ~Scratch() { std::free(ptr); }
  void* Get(size_t bytes) {
    if (bytes > size) {
      std::free(ptr);
      size = (bytes + 63) / 64 * 64;
      ptr = std::aligned_alloc(64, size);
    }
    return ptr;
  }
};

ffi::Error Run(Shape s, void* src, void* kernel, void* dst) {
  try {
    int threads = g_threads.load(std::memory_order_relaxed);
    if (threads > 0 && omp_get_max_threads() != threads) omp_set_num_threads(threads);
    s.threads = omp_get_max_threads();
    const Entry& e = Lookup(s);
    dnnl::engine& eng = Engine();
    dnnl::stream stream(eng);
    thread_local Scratch scratch_buf, kernel_buf;
    dnnl::memory scratch(e.scratch, eng, scratch_buf.Get(e.scratch.get_size()));
    dnnl::memory src_m(e.src, eng, src), dst_m(e.dst, eng, dst);
    dnnl::memory user_kernel(e.kernel_hwio, eng, kernel);
    dnnl::memory kernel_m = user_kernel;
    if (e.reorder_kernel) {
      kernel_m = dnnl::memory(e.kernel, eng, kernel_buf.Get(e.kernel.get_size()));
      if (s.kind != kBackwardWeights) e.to_primitive.execute(stream, user_kernel, kernel_m);
    }
    if (s.kind == kForward) {
      e.conv.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, kernel_m},
                              {DNNL_ARG_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else if (s.kind == kBackwardData) {
      e.conv.execute(stream, {{DNNL_ARG_DIFF_SRC, src_m}, {DNNL_ARG_WEIGHTS, kernel_m},
                              {DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      e.conv.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_DIFF_WEIGHTS, kernel_m},
                              {DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
      if (e.reorder_kernel) e.from_primitive.execute(stream, kernel_m, user_kernel);
    }
    stream.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("oneDNN convolution failed: ") + err.what());
  } catch (const std::exception& err) {
    return ffi::Error::Internal(std::string("oneDNN convolution failed: ") + err.what());
  }
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

ffi::Error CheckRank(const char* name, size_t rank) {
  if (rank != 4) return ffi::Error::InvalidArgument(std::string(name) + " must have rank 4");
  return ffi::Error::Success();
}

#define RESJAX_CHECK(expr)       \
  do {                           \
    ffi::Error err_ = (expr);    \
    if (err_.failure()) return err_; \
  } while (0)

ffi::Error Forward(F32 x, F32 w, F32Out y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                   int64_t pl, int64_t pr) {
  auto xd = x.dimensions(), wd = w.dimensions();
  RESJAX_CHECK(CheckRank("x", xd.size()));
  RESJAX_CHECK(CheckRank("w", wd.size()));
  if (wd[2] != xd[3]) return ffi::Error::InvalidArgument("kernel input channels != x channels");
  Shape s{kForward, xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], sh, sw, pt, pb, pl, pr, 0};
  return Run(s, x.untyped_data(), w.untyped_data(), y->untyped_data());
}

ffi::Error BackwardData(F32 dy, F32 w, F32Out dx, int64_t sh, int64_t sw, int64_t pt,
                        int64_t pb, int64_t pl, int64_t pr) {
  auto xd = dx->dimensions(), wd = w.dimensions();
  RESJAX_CHECK(CheckRank("dx", xd.size()));
  RESJAX_CHECK(CheckRank("w", wd.size()));
  Shape s{kBackwardData, xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], sh, sw, pt, pb, pl,
          pr, 0};
  return Run(s, dx->untyped_data(), w.untyped_data(), dy.untyped_data());
}

ffi::Error BackwardWeights(F32 x, F32 dy, F32Out dw, int64_t sh, int64_t sw, int64_t pt,
                           int64_t pb, int64_t pl, int64_t pr) {
  auto xd = x.dimensions(), wd = dw->dimensions();
  RESJAX_CHECK(CheckRank("x", xd.size()));
  RESJAX_CHECK(CheckRank("dw", wd.size()));
  Shape s{kBackwardWeights, xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], sh, sw, pt, pb,
          pl, pr, 0};
  return Run(s, x.untyped_data(), dw->untyped_data(), dy.untyped_data());
}

// y = x as an opaque call: XLA writes x to memory once for all its readers
// instead of fusing (and so recomputing) the elementwise ops that make it into
// each of them. The result aliases the operand, so nothing is copied here.
ffi::Error Materialize(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  if (y->untyped_data() != x.untyped_data()) {
    std::memcpy(y->untyped_data(), x.untyped_data(), x.size_bytes());
  }
  return ffi::Error::Success();
}

}  // namespace

#define RESJAX_BIND(first, second)                                           \
  ffi::Ffi::Bind()                                                           \
      .Arg<F32>()                                                            \
      .Arg<F32>()                                                            \
      .Ret<F32>()                                                            \
      .Attr<int64_t>("stride_h")                                             \
      .Attr<int64_t>("stride_w")                                             \
      .Attr<int64_t>("pad_top")                                              \
      .Attr<int64_t>("pad_bottom")                                           \
      .Attr<int64_t>("pad_left")                                             \
      .Attr<int64_t>("pad_right")

XLA_FFI_DEFINE_HANDLER_SYMBOL(resjax_onednn_conv_fwd, Forward, RESJAX_BIND(x, w));
XLA_FFI_DEFINE_HANDLER_SYMBOL(resjax_onednn_conv_bwd_data, BackwardData, RESJAX_BIND(dy, w));
XLA_FFI_DEFINE_HANDLER_SYMBOL(resjax_onednn_conv_bwd_weights, BackwardWeights,
                              RESJAX_BIND(x, dy));
XLA_FFI_DEFINE_HANDLER_SYMBOL(resjax_materialize, Materialize,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());

#ifndef RESJAX_JAXLIB_VERSION
#define RESJAX_JAXLIB_VERSION ""
#endif

extern "C" {
// The jaxlib whose FFI headers this library was compiled against ("" if unknown).
__attribute__((visibility("default"))) const char* resjax_onednn_jaxlib_version(void) {
  return RESJAX_JAXLIB_VERSION;
}
// n > 0: every later call runs on n OpenMP threads; 0: OpenMP's default.
__attribute__((visibility("default"))) void resjax_onednn_set_threads(int n) {
  g_threads.store(n < 0 ? 0 : n);
}
// The oneDNN version this library runs with, as major * 10000 + minor * 100 + patch.
__attribute__((visibility("default"))) int resjax_onednn_version(void) {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}
}
