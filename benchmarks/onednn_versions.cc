// Times resjax's oneDNN convolution code (resjax/kernels/onednn_conv.cc,
// included whole) on the convolutions of one ResNet-20 train step, CIFAR
// shapes, NHWC, float32. benchmarks/onednn_versions.py compiles this file once
// per oneDNN installation and runs the programs in alternation.
//
//   onednn_versions BATCH CALLS
//
// Prints one line "version MAJOR.MINOR.PATCH", then per conv shape and pass
// "name pass count ms checksum": the median milliseconds of CALLS calls (after
// two warm-up calls) and the sum of |output|, then "stream_ms MS": the median
// cost of one dnnl::stream construction (resjax builds one per call).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../resjax/kernels/onednn_conv.cc"

namespace {

struct Conv {
  const char* name;
  int64_t c, o, hw, stride, count;
  bool input_grad;  // The stem's input gradient is never asked for.
};

// ResNet-20 (n = 3, widths 16/32/64, option-A shortcuts): the stem, then per
// stage one (strided) first conv and five more at the stage's resolution.
const Conv kConvs[] = {
    {"stem_3to16_32x32", 3, 16, 32, 1, 1, false},
    {"s1_16_32x32", 16, 16, 32, 1, 6, true},
    {"s2in_16to32_s2", 16, 32, 32, 2, 1, true},
    {"s2_32_16x16", 32, 32, 16, 1, 5, true},
    {"s3in_32to64_s2", 32, 64, 16, 2, 1, true},
    {"s3_64_8x8", 64, 64, 8, 1, 5, true},
};
const char* kPasses[] = {"fwd", "bwd_data", "bwd_weights"};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Deterministic values in [-1, 1): the same inputs for every oneDNN version.
std::vector<float> Filled(int64_t size, uint32_t seed) {
  std::vector<float> v(size);
  for (float& f : v) {
    seed = seed * 1664525u + 1013904223u;
    f = static_cast<float>(seed >> 8) / static_cast<float>(1u << 23) - 1.0f;
  }
  return v;
}

double AbsSum(const std::vector<float>& v) {
  double s = 0;
  for (float f : v) s += std::fabs(f);
  return s;
}

double Ms(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s BATCH CALLS\n", argv[0]);
    return 2;
  }
  const int64_t batch = std::atoll(argv[1]);
  const int calls = std::atoi(argv[2]);
  const dnnl_version_t* v = dnnl_version();
  std::printf("version %d.%d.%d\n", v->major, v->minor, v->patch);
  for (const Conv& conv : kConvs) {
    const int64_t out = (conv.hw + 2 - 3) / conv.stride + 1;
    const std::vector<float> x = Filled(batch * conv.hw * conv.hw * conv.c, 1);
    const std::vector<float> w = Filled(9 * conv.c * conv.o, 2);
    const std::vector<float> dy = Filled(batch * out * out * conv.o, 3);
    std::vector<float> y(dy.size()), dx(x.size()), dw(w.size());
    for (int64_t kind = kForward; kind <= kBackwardWeights; ++kind) {
      if (kind == kBackwardData && !conv.input_grad) continue;
      Shape s{kind, batch, conv.hw, conv.hw, conv.c, 3, 3, conv.o, conv.stride, conv.stride,
              1, 1, 1, 1, 0};
      // Run's operands: (x, w, y), (dx, w, dy), (x, dw, dy); the output last.
      const bool fwd = kind == kForward, data = kind == kBackwardData;
      std::vector<float>& result = fwd ? y : data ? dx : dw;
      void* src = data ? dx.data() : const_cast<float*>(x.data());
      void* kernel = kind == kBackwardWeights ? dw.data() : const_cast<float*>(w.data());
      void* dst = fwd ? y.data() : const_cast<float*>(dy.data());
      std::vector<double> ms;
      for (int i = 0; i < calls + 2; ++i) {
        auto t0 = std::chrono::steady_clock::now();
        ffi::Error err = Run(s, src, kernel, dst);
        auto t1 = std::chrono::steady_clock::now();
        if (err.failure()) {
          std::fprintf(stderr, "%s %s: %s\n", conv.name, kPasses[kind], err.message().c_str());
          return 1;
        }
        if (i >= 2) ms.push_back(Ms(t0, t1));
      }
      std::printf("%s %s %lld %.4f %.6e\n", conv.name, kPasses[kind],
                  static_cast<long long>(conv.count), Median(ms), AbsSum(result));
    }
  }
  std::vector<double> stream_ms;
  for (int i = 0; i < 20; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    { dnnl::stream stream(Engine()); }
    stream_ms.push_back(Ms(t0, std::chrono::steady_clock::now()));
  }
  std::printf("stream_ms %.4f\n", Median(stream_ms));
  return 0;
}
