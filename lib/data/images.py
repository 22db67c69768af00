"""Raw images in the SCAN layout, for backbone grid encoders (VSE∞'s grid setting).

Layout (the image folder is ``images/`` for COCO, ``flickr30k-images/`` otherwise)::

    {root}/precomp/{split}_caps.txt   one caption per line
    {root}/precomp/{split}_ids.txt    one integer id per line: a key of id_mapping.json
    {root}/id_mapping.json            {"<id>": "<file name relative to the image folder>"}
    {root}/flickr30k-images/*.jpg     or {root}/images/{train2014,val2014}/*.jpg for COCO

``{split}_ids.txt`` is read the way VSE∞'s ``RawImageDataset`` reads it: when it holds as many
lines as there are captions, VSE∞ takes image row ``k`` to be caption ``k``'s own id (``im_div``
1), otherwise it takes one id per image and five captions per image (``im_div`` 5). Both forms
occur in SCAN releases. Here a per-caption listing whose ids come in runs of five identical ids
is folded to one row per image (so evaluation encodes each image once); any other listing with
one line per caption is one image per caption, and one line per five captions is one id per
image. The dev split is cut to its first 5,000 captions, as for precomputed features.

Images are decoded, augmented and normalised in the loader workers, to float32 ``(3, S, S)``
with ``S = image_size`` (default 512, aspect ratio not kept) and ImageNet mean/std. Training
augmentation (VSE∞'s ``_process_image``): one random crop keeping the same fraction
``U[0.6, 1.0)`` of both sides at a uniform position, resize to ``S``, horizontal flip with
probability 0.5. At test time the whole image is resized. The draws are a pure function of
(seed, epoch, item) through :func:`item_generator`, so any number of workers gives the same
batches.

Batches are the region loaders' classes (``lib/data/batch.py``): :class:`Batch` for training,
:class:`ImageBatch` for evaluation, captions through the region loaders' ``CaptionDataset``.
``images`` is ``(B, 3, S, S)``; ``img_lens`` is a ``(B,)`` tensor of zeros: a grid has no length
before the encoder runs, and ``lib.models.backbone.BackboneGridEncoder`` returns the real cell
counts with its embeddings. This is ``DATASET_KINDS["images"]`` (:func:`open_images`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ..imagenet import IMAGENET_MEAN, IMAGENET_STD
from .batch import Batch, ImageBatch
from .errors import DataError
from .naming import folder_dataset
from .precomp import DEV_CAPTIONS, item_generator, pad_sequences
from .vocab import read_lines

IMAGE_FOLDERS = {"coco": "images", "f30k": "flickr30k-images"}
MAPPING_FILE = "id_mapping.json"
DEFAULT_IMAGE_SIZE = 512
VSE_BASE_SIZE = 256  # VSE∞'s image side before --input_scale_factor
CROP_MIN, CROP_MAX = 0.6, 1.0  # side fraction kept by the training crop
CAPTIONS_PER_IMAGE = 5


def resolve_image_size(image_size: int | None, input_scale_factor: float | None) -> int:
    """The image side: ``--image_size`` or VSE∞'s ``int(256 * --input_scale_factor)``.

    VSE∞ scales its 256-pixel base side by ``--input_scale_factor`` in the dataset (its grid
    script passes 2.0, i.e. 512). Both flags given and disagreeing is an error.
    """
    scaled = None if input_scale_factor is None else int(VSE_BASE_SIZE * input_scale_factor)
    if image_size is not None and scaled is not None and image_size != scaled:
        raise ValueError(f"--image_size {image_size} contradicts --input_scale_factor "
                         f"{input_scale_factor} (= {scaled} px); give one of them")
    size = image_size if image_size is not None else scaled or DEFAULT_IMAGE_SIZE
    if size < 32:
        raise ValueError(f"image side {size} px is too small for a backbone grid (>= 32)")
    return size


@dataclass
class ImageSplit:
    """Validated description of a raw-image split: captions and the file of every image row."""

    image_dir: Path
    mapping_path: Path
    keys: list[str]  # id_mapping.json key of each image row
    files: list[str]  # file name of each image row, relative to image_dir
    captions: list[str]
    im_div: int  # captions per image (5 or 1)
    caps_path: Path

    @property
    def num_images(self) -> int:
        return len(self.keys)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    @property
    def feature_dim(self) -> None:
        """No feature width to check or record: the backbone decides it."""
        return None

    def image_of(self, caption_index: int) -> int:
        return caption_index // self.im_div

    def path_of(self, image_index: int) -> Path:
        return self.image_dir / self.files[image_index]

    def describe(self, image_index: int) -> str:
        """Where an image row comes from, for messages."""
        return (f"image row {image_index}, {self.mapping_path.name} entry "
                f"\"{self.keys[image_index]}\": \"{self.files[image_index]}\"")


def image_folder(root: Path, data_name: str | None = None) -> Path:
    """``images/`` for COCO, ``flickr30k-images/`` for Flickr30K; found by name otherwise."""
    names = [IMAGE_FOLDERS[data_name]] if data_name in IMAGE_FOLDERS else IMAGE_FOLDERS.values()
    found = [root / name for name in names if (root / name).is_dir()]
    if len(found) > 1:
        raise DataError(f"{root} holds both {found[0].name}/ and {found[1].name}/; keep one, "
                        f"or name the data folder coco or f30k to pick one")
    if not found:
        raise DataError(f"image folder not found in {root}: expected "
                        f"{' or '.join(n + '/' for n in names)} (Flickr30K: "
                        f"{IMAGE_FOLDERS['f30k']}/, COCO: {IMAGE_FOLDERS['coco']}/)")
    return found[0]


def open_image_split(data_path: str | Path, split: str,
                     data_name: str | None = None) -> ImageSplit:
    """Check a raw-image split's files and return its description, or raise DataError."""
    root = Path(data_path)
    caps_path, ids_path = (root / "precomp" / f"{split}_{kind}.txt" for kind in ("caps", "ids"))
    for path in (caps_path, ids_path):
        if not path.is_file():
            raise DataError(f"missing file: {path} (split {split!r} of a raw-image data set "
                            f"needs {caps_path.name} and {ids_path.name})")
    captions = read_lines(caps_path)
    if not captions:
        raise DataError(f"{caps_path}: no captions")
    ids, im_div = _image_rows(_read_ids(ids_path), len(captions), ids_path)
    if split == "dev" and len(captions) > DEV_CAPTIONS:
        captions = captions[:DEV_CAPTIONS]
        ids = ids[:DEV_CAPTIONS // im_div]
    mapping_path = root / MAPPING_FILE
    files = _mapped_files(mapping_path, ids, ids_path)
    opened = ImageSplit(image_folder(root, data_name), mapping_path, [str(i) for i in ids], files,
                        captions, im_div, caps_path)
    _check_files_exist(opened, split)
    return opened


def _check_files_exist(split: ImageSplit, name: str) -> None:
    """Fail before training rather than when a missing image is first decoded (one ``stat``
    per image: a fraction of a second for COCO's 113K training images on a local disk)."""
    missing = [row for row in range(split.num_images) if not split.path_of(row).is_file()]
    if missing:
        raise DataError(f"image not found: {split.path_of(missing[0])} "
                        f"({split.describe(missing[0])}); {len(missing)} of the "
                        f"{split.num_images} images of split {name!r} are missing")


def open_images(data_path: str | Path, split: str, img_dim: int | None = None) -> ImageSplit:
    """``DATASET_KINDS["images"]``: :func:`open_image_split`, the image folder picked by the
    data folder's name (``f30k``, ``coco``). Raw images have no feature width: ``img_dim``
    must be None."""
    if img_dim is not None:
        raise ValueError(f"raw images have no feature width to check (img_dim {img_dim})")
    return open_image_split(data_path, split, folder_dataset(data_path))


def _read_ids(path: Path) -> list[int]:
    ids = []
    for number, line in enumerate(read_lines(path), 1):
        try:
            ids.append(int(line))
        except ValueError:
            raise DataError(f"{path}:{number}: expected one integer image id per line, "
                            f"found {line!r}") from None
    return ids


def _image_rows(ids: list[int], num_captions: int, ids_path: Path) -> tuple[list[int], int]:
    """One id per image row and the captions per image (see the module docstring)."""
    if len(ids) * CAPTIONS_PER_IMAGE == num_captions:
        return ids, CAPTIONS_PER_IMAGE
    if len(ids) == num_captions:
        per_image = ids[::CAPTIONS_PER_IMAGE]
        runs = num_captions % CAPTIONS_PER_IMAGE == 0 and all(
            ids[k] == per_image[k // CAPTIONS_PER_IMAGE] for k in range(num_captions))
        return (per_image, CAPTIONS_PER_IMAGE) if runs else (ids, 1)
    raise DataError(f"{ids_path}: {len(ids)} ids for {num_captions} captions; expected one id "
                    f"per image ({num_captions // CAPTIONS_PER_IMAGE}) or one per caption")


def _mapped_files(mapping_path: Path, ids: list[int], ids_path: Path) -> list[str]:
    """File names of ``ids`` through id_mapping.json; an id it lacks is an error."""
    try:
        mapping = json.loads(mapping_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"missing file: {mapping_path} (a JSON object from image id to file "
                        f"name, as shipped with VSE∞)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{mapping_path}: not a JSON file ({err})") from None
    if not isinstance(mapping, dict):
        raise DataError(f"{mapping_path}: expected a JSON object {{\"<id>\": \"<file name>\"}}, "
                        f"found a {type(mapping).__name__}")
    missing = [(row, i) for row, i in enumerate(ids) if str(i) not in mapping]
    if missing:
        row, image_id = missing[0]
        raise DataError(f"{ids_path}: image id {image_id} (image row {row}) has no entry in "
                        f"{mapping_path} ({len(missing)} of {len(ids)} ids missing)")
    return [mapping[str(i)] for i in ids]


def load_pixels(split: ImageSplit, image_index: int) -> torch.Tensor:
    """Decode one image to uint8 ``(3, H, W)`` RGB; missing or unreadable is a DataError."""
    path = split.path_of(image_index)
    try:
        with Image.open(path) as image:
            array = np.array(image.convert("RGB"))  # grey, palette, CMYK, RGBA -> RGB
    except FileNotFoundError:
        raise DataError(f"image not found: {path} ({split.describe(image_index)})") from None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path} ({split.describe(image_index)}): "
                        f"{err}") from None
    return torch.from_numpy(array).permute(2, 0, 1)  # (3, H, W)


def crop_box(height: int, width: int, gen: torch.Generator) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of VSE∞'s training crop: both sides scaled by one
    ``U[0.6, 1.0)`` fraction, at a uniform position (every offset that fits, edges included)."""
    fraction = CROP_MIN + (CROP_MAX - CROP_MIN) * float(torch.rand((), generator=gen))
    h, w = max(1, int(height * fraction)), max(1, int(width * fraction))
    top = int(torch.randint(height - h + 1, (), generator=gen))
    left = int(torch.randint(width - w + 1, (), generator=gen))
    return top, left, h, w


def prepare_image(pixels: torch.Tensor, size: int,
                  gen: torch.Generator | None = None) -> torch.Tensor:
    """uint8 ``(3, H, W)`` -> normalised float32 ``(3, size, size)``; augments when ``gen``.

    Bilinear resize without antialiasing (half-pixel centres), as VSE∞'s ``cv2.resize`` with
    ``INTER_LINEAR``.
    """
    if gen is not None:
        top, left, h, w = crop_box(pixels.shape[1], pixels.shape[2], gen)
        pixels = pixels[:, top:top + h, left:left + w]
    image = F.interpolate(pixels[None].float(), size=(size, size), mode="bilinear",
                          align_corners=False)[0]  # (3, size, size), values in [0, 255]
    if gen is not None and float(torch.rand((), generator=gen)) < 0.5:
        image = image.flip(-1)
    return normalize(image / 255)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std on a ``(3, H, W)`` image in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image - mean) / std


class ImagePairDataset(Dataset):
    """(image, caption tokens, caption index, image row) per caption; augments when ``train``
    (the captions too unless ``augment_captions`` is False: ``--no-drop``).

    The image augmentation and the caption augmentation share one per-item generator (image
    draws first), so an item is a pure function of (seed, epoch, index).
    """

    def __init__(self, split: ImageSplit, tokenizer, train: bool = False,
                 image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0,
                 augment_captions: bool = True):
        self.split = split
        self.tokenizer = tokenizer
        self.train = train
        self.image_size = image_size
        self.seed = seed
        self.augment_captions = augment_captions
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.split.num_captions

    def __getitem__(self, index: int):
        img_index = self.split.image_of(index)
        gen = item_generator(self.seed, self.epoch, index) if self.train else None
        image = prepare_image(load_pixels(self.split, img_index), self.image_size, gen)
        tokens = self.tokenizer.encode(self.split.captions[index],
                                       gen if self.augment_captions else None)
        return image, torch.tensor(tokens, dtype=torch.long), index, img_index


class RawImageDataset(Dataset):
    """Each image once, resized only (evaluation encodes images and captions separately)."""

    def __init__(self, split: ImageSplit, image_size: int = DEFAULT_IMAGE_SIZE):
        self.split = split
        self.image_size = image_size

    def __len__(self) -> int:
        return self.split.num_images

    def __getitem__(self, index: int):
        return prepare_image(load_pixels(self.split, index), self.image_size), index


def unknown_lengths(batch_size: int) -> torch.Tensor:
    """``img_lens`` of an image batch: zeros, as cell counts exist only after the encoder."""
    return torch.zeros(batch_size, dtype=torch.long)


class ImagePairCollate:
    """Training :class:`Batch`: ``images (B, 3, S, S)``, ``img_lens`` zeros, padded captions."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch) -> Batch:
        images, tokens, cap_ids, img_ids = zip(*batch, strict=True)
        captions, cap_lens = pad_sequences(list(tokens), self.pad_id)
        return Batch(torch.stack(images), unknown_lengths(len(images)), captions, cap_lens,
                     torch.tensor(cap_ids), torch.tensor(img_ids))


def collate_raw_images(batch) -> ImageBatch:
    """Evaluation :class:`ImageBatch` of :class:`RawImageDataset`: each image once."""
    images, ids = zip(*batch, strict=True)
    return ImageBatch(torch.stack(images), unknown_lengths(len(images)), torch.tensor(ids))
