"""`python -m fused_rnn info | bench [options] | demo [options]`."""
import sys

USAGE = "usage: python -m fused_rnn {info,bench,demo} [options]  (bench/demo: --help for options)"


def info():
    import torch

    import fused_rnn
    from fused_rnn import _ops

    print(f"fused_rnn {fused_rnn.__version__}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    archs = _ops._C.cuda_archs or "-"
    print(f"CUDA kernels built: {'yes' if _ops._C.has_cuda else 'no'} (archs: {archs})")
    print(f"CPU threads: {torch.get_num_threads()}, ATen CPU capability: {torch.backends.cpu.get_cpu_capability()}, "
          f"fused_rnn CPU kernels: {_ops._C.cpu_level} ({_ops._C.__name__})")
    devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    print("devices: " + ", ".join(devices))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "info":
        info()
        return 0
    if command == "bench":
        from fused_rnn import bench

        return bench.main(rest)
    if command == "demo":
        from fused_rnn.seq2seq import demo

        return demo.main(rest)
    print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
