"""Images per second of the ImageNet-folder training pipeline (decode -> RandomResizedCrop ->
flip -> RandAugment -> normalise -> random erasing -> batch) with N DataLoader workers.

    python benchmarks/data_pipeline.py --workers 0 2 --images 256 --src-size 500x375

It writes a folder of random-content JPEGs (ImageNet's typical 500x375) to a temporary
directory (or --data-dir) unless one exists, then times full passes over it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader


def make_folder(root: Path, n: int, classes: int, size: tuple[int, int]) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    for i in range(n):
        d = root / "train" / f"n{i % classes:08d}"
        d.mkdir(parents=True, exist_ok=True)
        # smooth random content compresses like a photo, unlike white noise
        small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        im.save(d / f"img_{i:06d}.JPEG", quality=90)
    (root / "val").mkdir(exist_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--src-size", default="500x375")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--randaugment", default="rand-m9-mstd0.5-inc1")
    ap.add_argument("--draft", action="store_true", help="let JPEG decode at a reduced scale (>= 2x img-size)")
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()

    from spikeformers.data import build_dataset

    torch.set_num_threads(1)
    tmp = None
    root = args.data_dir
    if root is None:
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name)
    if not (root / "train").is_dir():
        w, h = (int(v) for v in args.src_size.split("x"))
        t0 = time.perf_counter()
        make_folder(root, args.images, args.classes, (w, h))
        print(f"wrote {args.images} JPEGs of {w}x{h} in {time.perf_counter() - t0:.1f}s to {root}")
    ds = build_dataset("imagefolder", root, train=True, img_size=args.img_size, randaugment=args.randaugment,
                       random_erasing=0.25, draft_size=2 * args.img_size if args.draft else None)
    print(f"pipeline: {ds.transform}")
    for nw in args.workers:
        loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=nw, drop_last=False,
                            persistent_workers=nw > 0)
        next(iter(loader))  # start the workers
        n, t0 = 0, time.perf_counter()
        for _ in range(args.epochs):
            for x, _y in loader:
                n += x.shape[0]
        dt = time.perf_counter() - t0
        print(f"workers={nw}: {n} images in {dt:.2f}s = {n / dt:.1f} images/s "
              f"(batch {tuple(x.shape)})")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
