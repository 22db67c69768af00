"""Benchmark evaluation scoring + ranking against the plain matrix-product floor.

Builds random unit-norm embeddings at real sizes (COCO 5K by default: 5,000 images x 36 regions
x 1,024; 25,000 captions of ~13.5 tokens), then times in the same run:

* scoring: ``lib.evaluation.score_matrix`` (the path ``eval.py`` uses) + ranking/recall metrics;
* floor: the plain matrix products of the same shapes and precision (regions x all tokens),
  i.e. the FLOPs that any fine-grained scorer must spend, with nothing else.

    python scripts/benchmark_eval.py                                  # COCO 5K, cuda if present
    python scripts/benchmark_eval.py --n_img 1000 --device cpu        # F30K test size on CPU
"""

from __future__ import annotations

import argparse
import copy
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.evaluation import PackedSequences, recall_metrics, score_matrix  # noqa: E402
from lib.evaluation.scoring import block_budget  # noqa: E402
from lib.masking import l2norm  # noqa: E402
from lib.precision import (  # noqa: E402
    cuda_out_dtype_works,
    matmul_mode,
    resolve_device,
    storage_dtype,
)
from lib.similarity import CODINGS, POOLINGS, Similarity  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_embeddings(args, device, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    n_cap = args.n_img * 5
    # caption lengths 8..19 (mean 13.5), as WordPiece captions of COCO
    lengths = torch.randint(8, 20, (n_cap,), generator=g)
    images = torch.empty(args.n_img, args.regions, args.dim, dtype=dtype, device=device)
    for i in range(0, args.n_img, 500):  # generate in slices to keep host memory small
        block = torch.randn(min(500, args.n_img - i), args.regions, args.dim, generator=g)
        images[i:i + 500] = l2norm(block).to(device, dtype)
    tokens = torch.empty(int(lengths.sum()), args.dim, dtype=dtype, device=device)
    for t in range(0, len(tokens), 100_000):
        block = torch.randn(min(100_000, len(tokens) - t), args.dim, generator=g)
        tokens[t:t + 100_000] = l2norm(block).to(device, dtype)
    img_lens = torch.full((args.n_img,), args.regions, device=device)
    return images, img_lens, PackedSequences(tokens, lengths.to(device))


def reference_error(sim, images, img_lens, captions, sims, n_img=50, n_cap=250):
    """Largest difference between a corner of ``sims`` and the same scores computed in float32
    on the CPU from the stored (possibly bfloat16) embeddings: checks the device's fast path."""
    n_img, n_cap = min(n_img, len(images)), min(n_cap, len(captions))
    lengths = captions.lengths[:n_cap].cpu()
    corner = PackedSequences(captions.data[:int(lengths.sum())].float().cpu(), lengths)
    reference = score_matrix(copy.deepcopy(sim).cpu(), images[:n_img].float().cpu(),
                             img_lens[:n_img].cpu(), corner, "fp32")
    return float((sims[:n_img, :n_cap].cpu() - reference).abs().max())


def floor_seconds(images, tokens, budget, device, precision, repeats):
    """Plain products regions x tokens over the same data, blocked to fit the same budget."""
    rows = images.reshape(-1, images.shape[-1])
    step = max(1, budget // max(1, len(tokens)))
    best = float("inf")
    with matmul_mode(precision):
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            for r in range(0, len(rows), step):
                rows[r:r + step] @ tokens.t()
            sync(device)
            best = min(best, time.perf_counter() - start)
    return best


def cap_memory(device: torch.device, memory_gb: float) -> None:
    """Let this process use at most ``memory_gb`` GiB of CUDA ``device`` (with its index, see
    ``lib.precision.with_index``), as on a smaller card."""
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, memory_gb * 2**30 / total), device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n_img", type=int, default=5000, help="images (captions = 5x)")
    p.add_argument("--regions", type=int, default=36, help="regions per image")
    p.add_argument("--dim", type=int, default=1024, help="embedding width")
    p.add_argument("--coding", default="VHACoding", choices=CODINGS, help="similarity coding")
    p.add_argument("--pooling", default="MeanPooling", choices=POOLINGS, help="pooling")
    p.add_argument("--precision", default="bf16", choices=("fp32", "tf32", "bf16"),
                   help="storage/product precision of the scoring (and of the floor)")
    p.add_argument("--device", default=None,
                   help="cuda | cuda:N | cpu (default: cuda when available)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (best is kept)")
    p.add_argument("--memory_gb", type=float, default=None,
                   help="cap this process's CUDA memory (e.g. 24 to check a 24 GB card)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    if args.memory_gb and device.type == "cuda":
        cap_memory(device, args.memory_gb)
    dtype = storage_dtype(args.precision)
    images, img_lens, captions = make_embeddings(args, device, dtype)
    sim = Similarity(args.coding, args.pooling).to(device)
    n_tok = len(captions.data)
    flop = 2 * images.shape[0] * images.shape[1] * n_tok * args.dim
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({card}),"
          f" precision {args.precision}, {args.n_img} images x {args.regions} regions, "
          f"{len(captions)} captions / {n_tok} tokens, D={args.dim}, {flop / 1e12:.1f} TFLOP")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    score_matrix(sim, images[:2], img_lens[:2], captions, args.precision)  # warm-up
    best_score, best_rank = float("inf"), float("inf")
    for _ in range(args.repeats):
        sync(device)
        start = time.perf_counter()
        sims = score_matrix(sim, images, img_lens, captions, args.precision)
        sync(device)
        mid = time.perf_counter()
        metrics = recall_metrics(sims)
        sync(device)
        best_score = min(best_score, mid - start)
        best_rank = min(best_rank, time.perf_counter() - mid)
    error = reference_error(sim, images, img_lens, captions, sims)
    del sims
    floor = floor_seconds(images, captions.data, block_budget(device), device, args.precision,
                          args.repeats)
    total = best_score + best_rank
    print(f"scoring        {best_score:8.3f} s")
    print(f"ranking        {best_rank:8.3f} s   (rsum of random embeddings {metrics['rsum']:.1f})")
    print(f"total          {total:8.3f} s")
    print(f"floor (matmul) {floor:8.3f} s   ({flop / floor / 1e12:.2f} TFLOP/s)")
    print(f"ratio total / floor: {total / floor:.2f}")
    print(f"max |score - float32 CPU reference| on a corner: {error:.2e}")
    if device.type == "cuda" and args.precision == "bf16":
        fast = cuda_out_dtype_works(device, torch.bfloat16)
        print(f"bf16 products {'in one mm(out_dtype=float32)' if fast else 'upcast to float32'}")
    if device.type == "cuda":
        print(f"peak device memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    host_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB
    print(f"peak host memory   {host_gib:.2f} GiB")


if __name__ == "__main__":
    main()
