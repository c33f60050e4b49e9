// Host-side check of csrc/cuda/pointwise.cu that needs no GPU (run by `make cuda-check`): the
// cell math through VectorIO (16 bytes of units per thread) must give what ScalarIO gives,
// element for element, for every cell, forward and backward, in float, double, half and
// bfloat16; and vector_aligned must refuse misaligned pointers, strides and H. The IO policies
// and step_element are __host__ __device__, so the host runs the same code a thread would.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../csrc/cuda/pointwise.cu"

namespace fused_rnn {
namespace {

int failures = 0;

void expect(bool ok, const char* what, const char* cell, const char* type) {
  if (!ok) {
    std::printf("FAIL %s: %s %s\n", what, cell, type);
    ++failures;
  }
}

// A buffer of n elements, 16-byte aligned, with random values of moderate size.
template <class T>
struct Buffer {
  std::vector<T> data;
  explicit Buffer(int64_t n, std::mt19937& rng) : data(n + 16) {
    std::uniform_real_distribution<float> u(-1.5f, 1.5f);
    for (auto& v : data) v = Convert<T>::out(static_cast<typename Compute<T>::type>(u(rng)));
  }
  T* ptr() {
    auto addr = reinterpret_cast<std::uintptr_t>(data.data());
    return data.data() + ((16 - addr % 16) % 16) / sizeof(T);
  }
};

// Runs one pass over [rows, hidden] on the host with IO, the way step_kernel does.
template <class Cell, class IO, class Args>
void host_pass(const Args& a) {
  const IO io;
  for (int64_t b = 0; b < a.rows; ++b) {
    for (int64_t g = 0; g < a.hidden / IO::kLanes; ++g) step_element<Cell, typename IO::V>(a, b, g * IO::kLanes, io);
  }
}

template <class T>
double value(T v) {
  return static_cast<double>(Convert<T>::in(v));
}

// Every buffer the two passes wrote is the same.
template <class T>
bool same(std::vector<Buffer<T>>& x, std::vector<Buffer<T>>& y) {
  for (size_t i = 0; i < x.size(); ++i) {
    for (size_t k = 0; k < x[i].data.size(); ++k) {
      const double p = value(x[i].data[k]), q = value(y[i].data[k]);
      if (!(std::fabs(p - q) <= 1e-6 * (1.0 + std::fabs(q)))) return false;
    }
  }
  return true;
}

template <class Cell, class T>
void check_cell(const char* type) {
  constexpr int64_t rows = 3, H = 2 * VectorIO<T>::kLanes, G = Cell::kGates, W = 8 * H;
  std::mt19937 rng(7);
  // x_gates, h_gates, bias_ih, bias_hh, h_state, c_state, h_out, ws, and backward's
  // grad_h, grad_h_state, grad_c_state, d_gates_x, d_gates_h; the same values in both copies.
  std::vector<Buffer<T>> scalar, vector;
  for (int i = 0; i < 13; ++i) scalar.emplace_back(rows * W, rng);
  vector = scalar;

  auto forward = [&](std::vector<Buffer<T>>& m) {
    ForwardStep<T> a;
    a.rows = rows;
    a.hidden = H;
    a.x_gates = m[0].ptr();
    a.x_stride = G * H;
    a.h_gates = m[1].ptr();
    a.h_stride = G * H;
    a.bias_ih = m[2].ptr();
    a.bias_hh = m[3].ptr();
    a.h_state = m[4].ptr();
    a.h_state_stride = H;
    a.c_state = m[5].ptr();
    a.h_out = m[6].ptr();
    a.h_out_stride = H;
    a.ws = m[7].ptr();
    a.ws_stride = W;
    a.h_prev_save = m[7].ptr() + Cell::kWorkspace * H;
    return a;
  };
  auto backward = [&](std::vector<Buffer<T>>& m) {
    BackwardStep<T> a;
    a.rows = rows;
    a.hidden = H;
    a.grad_h = m[8].ptr();
    a.grad_h_stride = H;
    a.grad_h_state = m[9].ptr();
    a.grad_h_state_stride = H;
    a.grad_c_state = m[10].ptr();
    a.ws = m[7].ptr();
    a.ws_stride = W;
    a.h_prev = m[7].ptr() + Cell::kWorkspace * H;
    a.h_prev_stride = W;
    a.d_gates_x = m[11].ptr();
    a.d_gates_h = m[12].ptr();
    a.d_gates_stride = G * H;
    return a;
  };

  const ForwardStep<T> fwd = forward(vector);
  expect(vector_aligned(fwd), "aligned forward step refused", Cell::kName, type);
  host_pass<Cell, ScalarIO<T>>(forward(scalar));
  host_pass<Cell, VectorIO<T>>(fwd);
  expect(same(scalar, vector), "forward: vector != scalar", Cell::kName, type);
  const BackwardStep<T> bwd = backward(vector);
  expect(vector_aligned(bwd), "aligned backward step refused", Cell::kName, type);
  host_pass<Cell, ScalarIO<T>>(backward(scalar));
  host_pass<Cell, VectorIO<T>>(bwd);
  expect(same(scalar, vector), "backward: vector != scalar", Cell::kName, type);

  ForwardStep<T> off = fwd;
  off.bias_ih = fwd.bias_ih + 1;  // a user's bias that is a view at an odd offset
  expect(!vector_aligned(off), "misaligned pointer accepted", Cell::kName, type);
  off = fwd;
  off.x_stride = G * H + 1;
  expect(!vector_aligned(off), "misaligned stride accepted", Cell::kName, type);
  off = fwd;
  off.hidden = H - 1;
  expect(!vector_aligned(off), "H not a multiple of the lanes accepted", Cell::kName, type);
}

template <class T>
void check_type(const char* type) {
  check_cell<LstmCell, T>(type);
  check_cell<GruCell, T>(type);
  check_cell<RnnTanhCell, T>(type);
  check_cell<RnnReluCell, T>(type);
}

}  // namespace
}  // namespace fused_rnn

int main() {
  using namespace fused_rnn;
  check_type<float>("float");
  check_type<double>("double");
  check_type<__half>("half");
  check_type<__nv_bfloat16>("bfloat16");
  if (failures == 0)
    std::printf("cuda host check: VectorIO == ScalarIO for 4 cells x 4 types, alignment checks hold\n");
  return failures == 0 ? 0 : 1;
}
