"""Would int8 products help inference here? Times one spike-operand linear layer (binary spikes
[M, K] times a weight [K, N]) four ways on this CPU: float32 and bf16 matmul, and int8 x int8 ->
int32 with ``torch._int_mm`` (AVX512-VNNI / AMX-INT8 through oneDNN), the last both bare and end to
end (spikes cast to int8, per-output-channel weight scale and bias applied to the int32 result).
The spikes are exact in int8; the weights are not (symmetric per-channel int8), so the script also
prints the largest output error against float32, relative to the output's spread.

    python benchmarks/int8_probe.py --threads 2

Not part of any model path: a measurement for the issue-5 note (inference at 2.5x SpikingJelly
needs more products per second than the bf16 peak on the EPYC)."""

import argparse
import time

import torch


def _time(f, reps: int) -> float:
    for _ in range(3):
        f()
    t = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rate", type=float, default=0.2, help="spike rate of the input")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # (tokens = T*B*N, in, out): Spikformer-4-384 MLP fc1 / fc2 and q/k/v at T=4, batch 16, 8x8 tokens
    shapes = {"fc1 384->1536": (4096, 384, 1536), "fc2 1536->384": (4096, 1536, 384), "qkv 384->384": (4096, 384, 384)}
    print(f"{torch.get_num_threads()} threads; GFLOP/s (int8: GOP/s)")
    for name, (m, k, n) in shapes.items():
        s = (torch.rand(m, k) < args.rate).float()
        w = torch.randn(k, n) * 0.05
        bias = torch.randn(n) * 0.1
        flop = 2 * m * k * n
        ref = s @ w + bias
        scale = w.abs().amax(0) / 127.0                                  # per output channel
        wq = (w / scale).round().clamp(-127, 127).to(torch.int8)
        sb, wb = s.bfloat16(), w.bfloat16()
        si = s.to(torch.int8)

        def int8_end_to_end():
            return torch._int_mm(s.to(torch.int8), wq).float().mul_(scale).add_(bias)

        out = int8_end_to_end()
        err = ((out - ref).abs().max() / ref.std()).item()
        err_bf16 = (((sb @ wb).float() + bias - ref).abs().max() / ref.std()).item()
        row = {"fp32": _time(lambda: s @ w, args.reps), "bf16": _time(lambda: sb @ wb, args.reps),
               "int8": _time(lambda: torch._int_mm(si, wq), args.reps), "int8 e2e": _time(int8_end_to_end, args.reps)}
        print(f"{name:>15}: " + "  ".join(f"{k} {flop / v / 1e9:6.0f}" for k, v in row.items())
              + f"   max |err| / std: int8 {err:.4f}, bf16 {err_bf16:.4f}")


if __name__ == "__main__":
    main()
