// Registers the CUDA impls of the fused_rnn ops: the op bodies of op_impls.h over the CUDA
// Device (cuda_device.h). Compiled only when the extension is built with CUDA (setup.py adds
// it with csrc/cuda/*.cu); `make cuda-check` syntax-checks it everywhere.
#include <torch/library.h>

#include "cuda_device.h"
#include "op_impls.h"

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) { FUSED_RNN_REGISTER_IMPLS(m, fused_rnn::CudaDevice); }
