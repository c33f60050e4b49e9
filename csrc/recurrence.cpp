// Argument checks shared by every op (forward and backward, CPU and CUDA), and the buffers
// the driver allocates.
#include "recurrence.h"

#include <c10/util/accumulate.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <utility>

namespace fused_rnn {

bool& poison_new_buffers() {
  static bool poison = false;
  return poison;
}

namespace {

// Blocks of new_buffer's CPU tensors, kept when their tensor dies for the next buffer of the
// same size (a training loop asks for the same sizes every step), up to kMaxKeptBytes in all.
// Tensors may die on any thread, so the pool is locked; it is never destroyed, as tensors
// may outlive static destruction.
class BlockPool {
 public:
  static constexpr size_t kMinPooledBytes = size_t{256} << 10;
  static constexpr size_t kMaxKeptBytes = size_t{256} << 20;

  static BlockPool& get() {
    static BlockPool* pool = new BlockPool;
    return *pool;
  }

  Tensor tensor(at::IntArrayRef shape, const at::TensorOptions& opts) {
    const size_t bytes = static_cast<size_t>(c10::multiply_integers(shape)) * opts.dtype().itemsize();
    void* block = take(bytes);
    return at::from_blob(block, shape, [bytes](void* p) { BlockPool::get().give(p, bytes); }, opts);
  }

  int64_t kept_bytes() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(kept_);
  }

  void release() {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [bytes, block] : free_) std::free(block);
    free_.clear();
    kept_ = 0;
  }

 private:
  void* take(size_t bytes) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      const auto it = free_.find(bytes);
      if (it != free_.end()) {
        void* block = it->second;
        free_.erase(it);
        kept_ -= bytes;
        return block;
      }
    }
    void* block = nullptr;
    if (posix_memalign(&block, 64, bytes) != 0) throw std::bad_alloc();
    return block;
  }

  void give(void* block, size_t bytes) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (kept_ + bytes <= kMaxKeptBytes) {
        free_.emplace(bytes, block);
        kept_ += bytes;
        return;
      }
    }
    std::free(block);
  }

  std::mutex mutex_;
  std::unordered_multimap<size_t, void*> free_;
  size_t kept_ = 0;
};

}  // namespace

Tensor new_buffer(at::IntArrayRef shape, const at::TensorOptions& opts) {
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(shape)) * opts.dtype().itemsize();
  Tensor t = opts.device().is_cpu() && bytes >= BlockPool::kMinPooledBytes ? BlockPool::get().tensor(shape, opts)
                                                                           : at::empty(shape, opts);
  if (poison_new_buffers()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

namespace {
std::array<Tensor, static_cast<size_t>(Scratch::kCount)>& scratch_blocks() {
  thread_local std::array<Tensor, static_cast<size_t>(Scratch::kCount)> blocks;
  return blocks;
}
}  // namespace

Tensor scratch_buffer(Scratch slot, at::IntArrayRef shape, const at::TensorOptions& opts) {
  if (opts.device().type() != at::kCPU) return new_buffer(shape, opts);
  const int64_t numel = c10::multiply_integers(shape);
  const int64_t bytes = numel * static_cast<int64_t>(opts.dtype().itemsize());
  Tensor& block = scratch_blocks()[static_cast<size_t>(slot)];
  if (!block.defined() || block.numel() < bytes) {
    block = Tensor();  // give the old block back before taking the larger one
    block = at::empty({bytes}, opts.dtype(at::kByte));
  }
  Tensor t = block.narrow(0, 0, bytes).view(opts.dtype().toScalarType()).view(shape);
  if (poison_new_buffers()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

int64_t scratch_bytes() {
  int64_t total = BlockPool::get().kept_bytes();
  for (const Tensor& block : scratch_blocks()) total += block.defined() ? block.numel() : 0;
  return total;
}

void release_scratch() {
  for (Tensor& block : scratch_blocks()) block = Tensor();
  BlockPool::get().release();
}

namespace {

void check_same(const char* op, const char* name, const Tensor& t, const Tensor& input) {
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": expected ", name, " to have dtype ", input.scalar_type(),
              " (the dtype of input), but got ", t.scalar_type());
  TORCH_CHECK(t.device() == input.device(), op, ": expected ", name, " to be on ", input.device(),
              " (the device of input), but got ", t.device());
}

// `meaning` says where the expected sizes come from, so that the message names the argument
// that disagrees as well, e.g. "[4 * hidden_size, input_size] (input_size from input)".
void check_shape(const char* op, const char* name, const Tensor& t, at::IntArrayRef expected, const char* meaning) {
  TORCH_CHECK(t.sizes() == expected, op, ": expected ", name, " of shape ", expected, " = ", meaning, ", but got ",
              t.sizes());
}

}  // namespace

namespace {

void check_input_rank(const char* op, const Tensor& input, bool packed) {
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op, ": expected a floating-point input, but got ",
              input.scalar_type());
  if (packed) {
    TORCH_CHECK(input.dim() == 2, op,
                ": expected packed input (with batch_sizes) to be 2-D [rows, input_size], but got ", input.dim(),
                "-D input of shape ", input.sizes());
  } else {
    TORCH_CHECK(input.dim() == 3, op,
                ": expected input to be 3-D [T, B, input_size] (or 2-D packed data with batch_sizes), but got ",
                input.dim(), "-D input of shape ", input.sizes());
    TORCH_CHECK(input.size(0) > 0, op, ": expected input to have at least one time step, but got T = 0");
  }
}

// A layer-normalized cell's weights: all of them or none (ln_weight_ih and ln_weight_hh
// [gates * hidden]; the LSTM's ln_weight_c and ln_bias_c [hidden] too).
void check_layer_norm_weights(const char* op, bool has_cell_state, const Tensor& input, const LayerWeights& w,
                              const Sizes& s) {
  const int64_t gh = w.w_hh.size(0);
  std::vector<std::pair<const char*, const OptTensor*>> names = {{"ln_weight_ih", &w.ln_ih},
                                                                 {"ln_weight_hh", &w.ln_hh}};
  if (has_cell_state) names.insert(names.end(), {{"ln_weight_c", &w.ln_c}, {"ln_bias_c", &w.ln_bias_c}});
  TORCH_CHECK(has_cell_state || (!w.ln_c && !w.ln_bias_c), op, ": ln_weight_c and ln_bias_c are only taken by lstm");
  const bool any = std::any_of(names.begin(), names.end(), [](const auto& n) { return n.second->has_value(); });
  for (const auto& [name, t] : names) {
    TORCH_CHECK(
        t->has_value() || !any, op, ": a layer-normalized cell takes ",
        has_cell_state ? "ln_weight_ih, ln_weight_hh, ln_weight_c and ln_bias_c" : "ln_weight_ih and ln_weight_hh",
        " together, but ", name, " is None");
    if (!t->has_value()) continue;
    check_same(op, name, **t, input);
    const bool per_gate = std::string(name) == "ln_weight_ih" || std::string(name) == "ln_weight_hh";
    check_shape(op, name, **t, {per_gate ? gh : s.hidden},
                per_gate ? "[gates * hidden_size] (from weight_hh)" : "[hidden_size] (from weight_hh)");
  }
}

// Checks the weights against the input and each other; sets s.input, s.hidden and s.state.
void check_weights(const char* op, int gates, bool has_cell_state, const Tensor& input, const LayerWeights& w,
                   Sizes* s) {
  s->input = input.size(-1);
  TORCH_CHECK(w.w_hh.dim() == 2 && w.w_hh.size(0) % gates == 0 && w.w_hh.size(0) > 0, op,
              ": expected weight_hh to be 2-D [", gates, " * hidden_size, state_size], but got shape ", w.w_hh.sizes());
  s->hidden = w.w_hh.size(0) / gates;
  s->state = w.w_hh.size(1);
  const int64_t gh = gates * s->hidden;
  check_same(op, "weight_ih", w.w_ih, input);
  check_same(op, "weight_hh", w.w_hh, input);
  check_shape(op, "weight_ih", w.w_ih, {gh, s->input},
              "[gates * hidden_size, input_size] (hidden_size from weight_hh, input_size from input)");
  for (const auto& [name, bias] : {std::pair{"bias_ih", &w.b_ih}, std::pair{"bias_hh", &w.b_hh}}) {
    if (!bias->has_value()) continue;
    check_same(op, name, **bias, input);
    check_shape(op, name, **bias, {gh}, "[gates * hidden_size] (hidden_size from weight_hh)");
  }
  if (w.w_hr) {
    TORCH_CHECK(has_cell_state, op, ": weight_hr (projection) is only supported by lstm");
    check_same(op, "weight_hr", *w.w_hr, input);
    check_shape(op, "weight_hr", *w.w_hr, {s->state, s->hidden},
                "[proj_size, hidden_size] (both from weight_hh: [4 * hidden_size, proj_size])");
  } else {
    TORCH_CHECK(s->state == s->hidden, op, ": expected weight_hh of shape [", gh, ", ", s->hidden,
                "] (no projection), but got ", w.w_hh.sizes());
  }
  if (w.w_ch) {
    TORCH_CHECK(has_cell_state, op, ": weight_ch (peephole) is only supported by lstm");
    check_same(op, "weight_ch", *w.w_ch, input);
    check_shape(op, "weight_ch", *w.w_ch, {3 * s->hidden}, "[3 * hidden_size] (hidden_size from weight_hh)");
  }
  check_layer_norm_weights(op, has_cell_state, input, w, *s);
}

// The rows of every step of packed input, in time order; sets s.steps and s.batch.
std::vector<StepRows> packed_steps(const char* op, const Tensor& input, const Tensor& bs, Sizes* s) {
  TORCH_CHECK(bs.device().is_cpu() && bs.scalar_type() == at::kLong && bs.dim() == 1, op,
              ": expected batch_sizes to be a 1-D int64 CPU tensor, but got a ", bs.dim(), "-D ", bs.scalar_type(),
              " tensor on ", bs.device());
  TORCH_CHECK(bs.numel() > 0, op, ": expected batch_sizes to have at least one time step, but got none");
  const Tensor bsc = bs.contiguous();
  const int64_t* b = bsc.data_ptr<int64_t>();
  std::vector<StepRows> steps;
  int64_t offset = 0;
  for (int64_t t = 0; t < bs.numel(); ++t) {
    TORCH_CHECK(b[t] > 0, op, ": expected batch_sizes to be positive, but batch_sizes[", t, "] = ", b[t]);
    TORCH_CHECK(t == 0 || b[t] <= b[t - 1], op, ": expected batch_sizes to be non-increasing, but batch_sizes[", t,
                "] = ", b[t], " > batch_sizes[", t - 1, "] = ", b[t - 1]);
    // Compared before adding, so that a hostile sum cannot overflow int64 past this check.
    TORCH_CHECK(b[t] <= input.size(0) - offset, op, ": batch_sizes sum to more than the ", input.size(0),
                " rows of the packed input (by batch_sizes[", t, "] = ", b[t], ")");
    steps.push_back({offset, b[t]});
    offset += b[t];
  }
  TORCH_CHECK(offset == input.size(0), op, ": batch_sizes sum to ", offset, " but the packed input has ", input.size(0),
              " rows");
  s->steps = bs.numel();
  s->batch = b[0];
  return steps;
}

// The initial states h0 [batch, state] and, for LSTM, c0 [batch, hidden].
void check_states(const char* op, bool has_cell_state, const Tensor& input, const Tensor& h0, const OptTensor& c0,
                  const Sizes& s) {
  check_same(op, "h0", h0, input);
  check_shape(op, "h0", h0, {s.batch, s.state}, "[batch, state_size] (batch from input, state_size from weight_hh)");
  if (has_cell_state) {
    TORCH_CHECK(c0.has_value(), op, ": c0 is required");
    check_same(op, "c0", *c0, input);
    check_shape(op, "c0", *c0, {s.batch, s.hidden},
                "[batch, hidden_size] (batch from input, hidden_size from weight_hh)");
  }
}

}  // namespace

Sizes check_layer_args(const char* op, int gates, bool has_cell_state, const Tensor& input,
                       const OptTensor& batch_sizes, const Tensor& h0, const OptTensor& c0, const LayerWeights& w,
                       std::vector<StepRows>* steps) {
  Sizes s{};
  check_input_rank(op, input, batch_sizes.has_value());
  check_weights(op, gates, has_cell_state, input, w, &s);
  if (batch_sizes.has_value()) {
    *steps = packed_steps(op, input, *batch_sizes, &s);
  } else {
    s.steps = input.size(0);
    s.batch = input.size(1);
    steps->clear();
    for (int64_t t = 0; t < s.steps; ++t) steps->push_back({t * s.batch, s.batch});
  }
  check_states(op, has_cell_state, input, h0, c0, s);
  return s;
}

Sizes check_step_args(const char* op, int gates, bool has_cell_state, const Tensor& input, const Tensor& h,
                      const OptTensor& c, const LayerWeights& w) {
  Sizes s{};
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op, ": expected a floating-point input, but got ",
              input.scalar_type());
  TORCH_CHECK(input.dim() == 2, op, ": expected input to be 2-D [batch, input_size], but got ", input.dim(),
              "-D input of shape ", input.sizes());
  check_weights(op, gates, has_cell_state, input, w, &s);
  s.steps = 1;
  s.batch = input.size(0);
  check_states(op, has_cell_state, input, h, c, s);
  return s;
}

}  // namespace fused_rnn
