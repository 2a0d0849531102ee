"""Can this machine run the installed llama.cpp? Evaluates a 64-token prompt on the demo GGUF.

Exit 0: yes. Killed by SIGILL or SIGSEGV: the library uses instructions this CPU reports but faults on (seen on
VMs that list AMX in /proc/cpuinfo: llama.cpp's ``-march=native`` build then runs AMX tile kernels that trap,
as SIGILL on some and as SIGSEGV inside ``ggml_backend_amx_mul_mat`` on others);
``scripts/install.sh`` rebuilds llama-cpp-python without AMX when that happens.
"""

from __future__ import annotations

from llama_cpp import Llama

from registry.demo import demo_gguf


def main() -> None:
    llm = Llama(str(demo_gguf()), n_ctx=256, n_batch=64, n_threads=1, verbose=False)
    llm.eval(llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 8)[:64])
    llm.close()


if __name__ == "__main__":
    main()
