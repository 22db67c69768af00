"""Time the backbone grid encoder's training step (forward + backward) in images per second.

VSE∞'s grid setting by default: ResNet-152 at 512 px (a 16 x 16 grid of 2,048-d cells),
projection to 1,024, 2-D APPM over the grid, cell drop 0.2; random weights (nothing is
downloaded), the whole trunk trainable as after ``--embedding_warmup_epochs`` (or frozen, as
during them, with ``--freeze_backbone``). The loss is the
sum of the cell embeddings: the text side and the similarity are not part of this figure.

    python scripts/benchmark_grid.py                                     # cuda if present
    python scripts/benchmark_grid.py --device cpu --batch_size 2 --steps 2
    python scripts/benchmark_grid.py --precision bf16 --batch_size 32    # on a GPU
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.models.backbone import BackboneGridEncoder  # noqa: E402
from lib.models.fusion import APPM  # noqa: E402
from lib.precision import autocast, resolve_device  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="resnet152")
    p.add_argument("--image_size", type=int, default=512)
    p.add_argument("--batch_size", type=int, default=None,
                   help="images per step (default 16 on CUDA, 2 on the CPU)")
    p.add_argument("--steps", type=int, default=3, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--embed_size", type=int, default=1024)
    p.add_argument("--no_fusion", action="store_true", help="leave out the 2-D APPM")
    p.add_argument("--cell_drop_rate", type=float, default=0.2)
    p.add_argument("--freeze_backbone", action="store_true",
                   help="trunk frozen, as during --embedding_warmup_epochs (no trunk backward)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32")
    return p.parse_args(argv)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(encoder: BackboneGridEncoder, images: torch.Tensor, precision: str) -> None:
    """One forward + backward."""
    encoder.zero_grad(set_to_none=True)
    with autocast(precision, images.device):
        cells, _ = encoder(images)
    cells.float().sum().backward()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    batch = args.batch_size or (16 if device.type == "cuda" else 2)
    torch.manual_seed(0)
    fusion = None if args.no_fusion else APPM(args.embed_size, spatial_dims=2)
    encoder = BackboneGridEncoder(args.backbone, args.embed_size, fusion=fusion,
                                  cell_drop_rate=args.cell_drop_rate).to(device).train()
    encoder.freeze_backbone(args.freeze_backbone)
    images = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
    with torch.no_grad():
        h, w = encoder.feature_map(images[:1]).shape[-2:]  # (1, C, h, w)
    for _ in range(args.warmup):
        step(encoder, images, args.precision)
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(encoder, images, args.precision)
    sync(device)
    seconds = (time.perf_counter() - start) / max(args.steps, 1)
    print(f"device: {describe(device)}")
    print(f"{args.backbone} at {args.image_size} px, grid {h}x{w}, embed {args.embed_size}, "
          f"fusion {'none' if fusion is None else 'appm 2-D'}, batch {batch}, {args.precision}, "
          f"trunk {'frozen' if args.freeze_backbone else 'trained'}")
    print(f"forward+backward: {seconds:.3f} s/step over {args.steps} steps, "
          f"{batch / seconds:.2f} images/s")
    if device.type == "cuda":
        print(f"peak device memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    print(f"peak host memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
