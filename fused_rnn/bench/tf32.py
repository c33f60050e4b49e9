"""TF32 for fp32 on CUDA: one switch for both sides, and the record of every related flag."""
import torch


def set_tf32(enabled):
    """Set cuBLAS (fused_rnn's GEMMs) and cuDNN (torch.nn's RNN) TF32 together."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)


def tf32_flags():
    """Every switch that decides whether fp32 CUDA math may use TF32, as set now."""
    return {"cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cuda.matmul.fp32_precision": torch.backends.cuda.matmul.fp32_precision,
            "cudnn.fp32_precision": torch.backends.cudnn.fp32_precision,
            "cudnn.rnn.fp32_precision": torch.backends.cudnn.rnn.fp32_precision}
