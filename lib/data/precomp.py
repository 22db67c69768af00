"""SCAN "precomp" data: BUTD region features plus captions (the layout of SCAN, VSE∞ and CHAN).

``{root}/precomp/{split}_ims.npy`` is float32 ``(N_img, R, img_dim)`` and is memory-mapped (COCO
train is ~33 GB); ``{split}_caps.txt`` holds one caption per line. Caption ``k`` belongs to image
``k // im_div`` where ``im_div`` is 5 (five captions per image) or 1.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .batch import CaptionBatch, ImageBatch
from .errors import DataError
from .vocab import read_lines

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test", "testall")
NPY_MAGIC = b"\x93NUMPY"
CHECK_CHUNK_BYTES = 256 * 2**20  # features read at once by the NaN/inf check
_FINITE_CHECKED: set[tuple] = set()
DEV_CAPTIONS = 5000  # validation uses the first 5,000 dev captions (1,000 images)


@dataclass
class PrecompSplit:
    """Validated description of one split; features are opened lazily in each process."""

    ims_path: Path
    captions: list[str]
    num_images: int
    im_div: int  # captions per image (5 or 1)
    feature_dim: int  # width of one region feature
    caps_path: Path | None = None  # the caption file, for messages

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    def image_of(self, caption_index: int) -> int:
        return caption_index // self.im_div

    def images(self) -> _Features:
        """Reader of one image's ``(R, img_dim)`` features by index, opened in each process."""
        return _Features(self.ims_path)


def open_split(data_path: str | Path, split: str, img_dim: int | None = None) -> PrecompSplit:
    """Check a split's files and return its description, or raise :class:`DataError`.

    ``img_dim`` is the expected feature width; ``None`` accepts the width the file has.
    """
    folder = Path(data_path) / "precomp"
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder} (expected the SCAN layout "
                        f"<data_path>/precomp/{{split}}_ims.npy and {{split}}_caps.txt)")
    ims_path, caps_path = folder / f"{split}_ims.npy", folder / f"{split}_caps.txt"
    for path in (ims_path, caps_path):
        if not path.is_file():
            raise DataError(f"missing file: {path} (split {split!r} needs {ims_path.name} "
                            f"and {caps_path.name})")
    shape = _feature_shape(ims_path)
    if len(shape) != 3 or (img_dim is not None and shape[2] != img_dim):
        width = "img_dim" if img_dim is None else img_dim
        raise DataError(f"{ims_path}: expected features of shape (N_img, regions, {width}) "
                        f"(--img_dim {img_dim}), found {shape}")
    captions = read_lines(caps_path)
    num_images = shape[0]
    if len(captions) == 5 * num_images:
        im_div = 5
    elif len(captions) == num_images:
        im_div = 1
    else:
        raise DataError(f"{caps_path}: expected {5 * num_images} or {num_images} captions for the "
                        f"{num_images} images of {ims_path.name}, found {len(captions)}")
    if split == "dev" and len(captions) > DEV_CAPTIONS:
        captions = captions[:DEV_CAPTIONS]
        num_images = DEV_CAPTIONS // im_div
    elif split == "dev" and len(captions) < DEV_CAPTIONS:
        log.warning("%s: %d dev captions, fewer than the %d of the published protocol; "
                    "validation recalls over %d images are not comparable to 1K figures",
                    caps_path, len(captions), DEV_CAPTIONS, num_images)
    check_finite(ims_path, num_images)
    return PrecompSplit(ims_path, captions, num_images, im_div, shape[2], caps_path)


def _feature_shape(path: Path) -> tuple[int, ...]:
    with path.open("rb") as f:
        magic = f.read(len(NPY_MAGIC))
    if magic != NPY_MAGIC:
        raise DataError(f"{path}: not a .npy file (it starts with {magic!r}, a .npy file with "
                        f"{NPY_MAGIC!r}); expected float32 features (N_img, regions, dim)")
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as err:
        if "pickled" in str(err) or "Python objects" in str(err):
            raise DataError(f"{path}: holds pickled Python objects, not a float32 array of "
                            f"features (N_img, regions, dim)") from None
        raise DataError(f"{path}: truncated or unreadable .npy array ({err})") from None
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{path}: expected floating-point features, found dtype {arr.dtype}")
    return tuple(arr.shape)


def check_finite(path: Path, num_images: int) -> None:
    """Refuse features holding NaN or infinity, naming the first bad image: a NaN region would
    otherwise surface an epoch later as a NaN loss, or as a score matrix with no ranking.

    The whole array is read once, in chunks (a memory-mapped training split is read every
    epoch anyway); results are remembered per file state within the process.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, num_images)
    if key in _FINITE_CHECKED:
        return
    array = np.load(path, mmap_mode="r")
    step = max(1, CHECK_CHUNK_BYTES // max(1, array[0].nbytes)) if len(array) else 1
    start = time.perf_counter()
    for first in range(0, num_images, step):
        chunk = np.asarray(array[first:min(first + step, num_images)])
        finite = np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
        if not finite.all():
            bad = first + int(np.argmin(finite))
            raise DataError(f"{path}: image {bad} (0-based row) holds NaN or infinite feature "
                            f"values; fix or remove it (checked rows 0-{first + len(chunk) - 1})")
    seconds = time.perf_counter() - start
    if seconds > 5:
        log.info("%s: checked %d images for NaN/inf in %.0f s", path, num_images, seconds)
    _FINITE_CHECKED.add(key)


class _Features:
    """Per-process memory map of ``{split}_ims.npy`` (never pickled into workers)."""

    def __init__(self, path: Path):
        self.path = path
        self._array = None

    def _open(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    @property
    def num_regions(self) -> int:
        return self._open().shape[1]

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self._open()[index], dtype=np.float32))

    def gather(self, images: np.ndarray, order: np.ndarray, kept: np.ndarray,
               out: torch.Tensor) -> None:
        """Write region ``order[b, j]`` of image ``images[b]`` to ``out[b, j]`` for ``j <
        kept[b]`` and zeros after: one gather of rows from the memory map, in file order when
        ``images`` is sorted. ``images (B,)``, ``order (B, R)``, ``kept (B,)``, ``out (B, R,
        img_dim)`` float32."""
        array = self._open()
        n_reg, dim = array.shape[1:]
        table = array.reshape(-1, dim)  # (N_img * R, img_dim) view of the map
        rows = (images[:, None] * n_reg + order).reshape(-1)  # (B * R,)
        flat = out.view(-1, dim)
        if table.dtype == np.float32:
            np.take(table, rows, axis=0, out=flat.numpy(), mode="clip")  # unbuffered
        else:
            flat.copy_(torch.from_numpy(table[rows].astype(np.float32)))
        padding = np.flatnonzero(np.arange(n_reg)[None, :] >= kept[:, None])  # (B * R - kept,)
        flat.index_fill_(0, torch.from_numpy(padding), 0.0)

    def __getstate__(self):
        return {"path": self.path, "_array": None}


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """Augmentation RNG as a pure function of (seed, epoch, item): same draws for any workers."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 10_000_019 + index) % 2**63)


class ImageDataset(Dataset):
    """Each image once (evaluation encodes images and captions separately)."""

    def __init__(self, split: PrecompSplit):
        self.split = split
        self.features = split.images()

    def __len__(self) -> int:
        return self.split.num_images

    def __getitem__(self, index: int):
        return self.features[index], index


class CaptionDataset(Dataset):
    def __init__(self, split: PrecompSplit, tokenizer):
        self.split = split
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return self.split.num_captions

    def __getitem__(self, index: int):
        return torch.tensor(self.tokenizer.encode(self.split.captions[index]), dtype=torch.long), index


def pad_sequences(seqs: list[torch.Tensor], pad_value=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length tensors into ``(N, L_max, ...)`` plus their ``(N,)`` lengths."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    padded = seqs[0].new_full((len(seqs), int(lengths.max()), *seqs[0].shape[1:]), pad_value)
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = s
    return padded, lengths


def collate_images(batch):
    regions, ids = zip(*batch, strict=True)
    images, lengths = pad_sequences(list(regions))
    return ImageBatch(images, lengths, torch.tensor(ids))


class CaptionCollate:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch):
        tokens, ids = zip(*batch, strict=True)
        captions, lengths = pad_sequences(list(tokens), self.pad_id)
        return CaptionBatch(captions, lengths, torch.tensor(ids))
