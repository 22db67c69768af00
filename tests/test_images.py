"""Raw images in the SCAN layout and the backbone grid encoder (CPU, real photos and weights)."""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_images import CAPTIONS, SPLITS, file_name, image_id, photo, write_f30k_images
from PIL import Image
from torch.utils.data import DataLoader

from lib.data.batch import Batch, ImageBatch
from lib.data.errors import DataError
from lib.data.images import (
    ImagePairCollate,
    ImagePairDataset,
    RawImageDataset,
    collate_raw_images,
    crop_box,
    load_pixels,
    open_image_split,
    prepare_image,
    resolve_image_size,
)
from lib.imagenet import IMAGENET_MEAN, IMAGENET_STD
from lib.models.backbone import BackboneGridEncoder, TimmTrunk, TorchvisionTrunk, build_trunk
from lib.models.backbone import drop_cells as drop
from lib.models.backbone_weights import efficientnet_lite_to_timm, read_state_dict
from lib.models.fusion import APPM

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
CUP_CLASSES = {967, 968}  # espresso, cup


class CharTokenizer:
    """Stand-in tokenizer: one id per word; masks a word with probability 0.5 when given a
    generator, so caption augmentation draws from the item's generator too."""

    pad_id = 0

    def encode(self, caption: str, generator: torch.Generator | None = None) -> list[int]:
        ids = [1 + len(word) for word in caption.split()]
        if generator is not None:
            ids = [99 if float(torch.rand((), generator=generator)) < 0.5 else i for i in ids]
        return ids


@pytest.fixture(scope="module")
def f30k(tmp_path_factory) -> Path:
    return write_f30k_images(tmp_path_factory.mktemp("f30k"))


@pytest.fixture(scope="module")
def lite0(lite0_path) -> BackboneGridEncoder:
    return BackboneGridEncoder("tf_efficientnet_lite0", 32, lite0_path).eval()


def resnet18(**kwargs) -> BackboneGridEncoder:
    torch.manual_seed(0)
    return BackboneGridEncoder("resnet18", 16, **kwargs)


# --- data -------------------------------------------------------------------------------------

def test_split_rows_follow_the_id_mapping(f30k):
    mapping = json.loads((f30k / "id_mapping.json").read_text())
    for split, names in SPLITS.items():
        s = open_image_split(f30k, split)
        assert (s.num_images, s.num_captions, s.im_div) == (len(names), 5 * len(names), 5)
        assert s.keys == [str(image_id(n)) for n in names]
        assert s.files == [mapping[k] for k in s.keys] == [file_name(n) for n in names]
        assert s.captions[5 * 1 + 2] == CAPTIONS[names[1]][2] and s.image_of(7) == 1


def test_each_row_decodes_its_own_photo(f30k):
    """The decoded image of every row is nearest to the photo the mapping names."""
    s = open_image_split(f30k, "train")

    def small(pixels: torch.Tensor) -> torch.Tensor:
        return F.interpolate(pixels[None].float(), size=(32, 32), mode="area")[0]

    originals = {n: torch.from_numpy(np.atleast_3d(photo(n)).copy()).permute(2, 0, 1)
                 for n in SPLITS["train"]}
    for row, name in enumerate(SPLITS["train"]):
        decoded = small(load_pixels(s, row))  # (3, 32, 32)
        errors = {n: (small(p).expand(3, -1, -1) - decoded).abs().mean() for n, p in
                  originals.items()}
        assert min(errors, key=errors.get) == name and errors[name] < 8


def test_grey_jpeg_decodes_to_three_equal_channels(f30k):
    s = open_image_split(f30k, "train")
    pixels = load_pixels(s, SPLITS["train"].index("coins"))
    assert pixels.dtype == torch.uint8 and pixels.shape[0] == 3
    assert torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[1], pixels[2])


def test_ids_listed_per_caption_fold_to_one_row_per_image(tmp_path, f30k):
    root = write_f30k_images(tmp_path, ids_per_caption=True)
    assert len((root / "precomp" / "train_ids.txt").read_text().split()) == 40
    per_caption, per_image = open_image_split(root, "train"), open_image_split(f30k, "train")
    assert (per_caption.keys, per_caption.files, per_caption.im_div) == \
        (per_image.keys, per_image.files, 5)


def test_one_distinct_id_per_caption_is_one_image_per_caption(tmp_path):
    root = write_f30k_images(tmp_path)
    ids = [str(image_id(n)) for n in SPLITS["test"]]
    (root / "precomp" / "test_ids.txt").write_text("\n".join(ids) + "\n")
    (root / "precomp" / "test_caps.txt").write_text("a cat\ntissue\n")
    s = open_image_split(root, "test")
    assert (s.num_images, s.im_div, s.image_of(1)) == (2, 1, 1)


def test_unmapped_id_and_bad_counts_are_refused(tmp_path):
    root = write_f30k_images(tmp_path)
    ids_path = root / "precomp" / "test_ids.txt"
    ids_path.write_text("16\n12345\n")
    with pytest.raises(DataError, match=r"image id 12345 \(image row 1\) has no entry in .*"
                                        r"id_mapping.json"):
        open_image_split(root, "test")
    ids_path.write_text("16\n28\n40\n")
    with pytest.raises(DataError, match="3 ids for 10 captions"):
        open_image_split(root, "test")


def test_missing_or_unreadable_image_names_file_and_mapping_entry(tmp_path):
    root = write_f30k_images(tmp_path)
    s = open_image_split(root, "test")
    missing = root / "flickr30k-images" / file_name("chelsea")
    missing.unlink()
    entry = f'id_mapping.json entry "{image_id("chelsea")}": "{file_name("chelsea")}"'
    with pytest.raises(DataError) as err:
        RawImageDataset(s, 64)[0]
    assert f"image not found: {missing}" in str(err.value) and entry in str(err.value)
    with pytest.raises(DataError, match=f"image not found: {missing}"):  # raised in a worker
        next(iter(DataLoader(RawImageDataset(s, 64), num_workers=1,
                             collate_fn=collate_raw_images)))
    broken = root / "flickr30k-images" / file_name("immunohistochemistry")
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=f"cannot read image {broken} .*image row 1"):
        ImagePairDataset(s, CharTokenizer(), image_size=64)[7]


def test_image_folder_must_exist(tmp_path):
    root = write_f30k_images(tmp_path)
    (root / "flickr30k-images").rename(root / "elsewhere")
    with pytest.raises(DataError, match="image folder not found"):
        open_image_split(root, "test")
    with pytest.raises(DataError, match=r"expected images/ \("):
        open_image_split(root, "test", data_name="coco")


def test_test_images_are_resized_and_normalised_only(f30k):
    s = open_image_split(f30k, "test")
    image, index = RawImageDataset(s, image_size=48)[1]
    pixels = load_pixels(s, 1).float()[None] / 255
    expected = F.interpolate(pixels, size=(48, 48), mode="bilinear", align_corners=False)[0]
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    assert index == 1 and image.shape == (3, 48, 48) and image.dtype == torch.float32
    torch.testing.assert_close(image, (expected - mean) / std)
    pairs = ImagePairDataset(s, CharTokenizer(), train=False, image_size=48)
    first = pairs[5]
    pairs.set_epoch(3)
    assert torch.equal(first[0], image) and torch.equal(pairs[5][0], image)
    assert first[2:] == (5, 1)


def test_training_augmentation_is_a_function_of_seed_epoch_and_item(f30k):
    s = open_image_split(f30k, "train")
    plain = RawImageDataset(s, image_size=48)[2][0]
    a, b = (ImagePairDataset(s, CharTokenizer(), train=True, image_size=48, seed=7)
            for _ in range(2))
    item = a[12]
    assert not torch.equal(item[0], plain)  # cropped (and maybe flipped)
    assert torch.equal(item[0], b[12][0]) and torch.equal(item[1], b[12][1])
    b.set_epoch(1)
    assert not torch.equal(item[0], b[12][0])
    other_seed = ImagePairDataset(s, CharTokenizer(), train=True, image_size=48, seed=8)
    assert not torch.equal(item[0], other_seed[12][0])


def test_no_drop_leaves_captions_alone_but_still_crops_images(f30k):
    """``--no-drop`` turns caption augmentation off; raw images are always augmented."""
    s = open_image_split(f30k, "train")
    plain = ImagePairDataset(s, CharTokenizer(), image_size=48)[12]
    kept = ImagePairDataset(s, CharTokenizer(), train=True, image_size=48, seed=7,
                            augment_captions=False)[12]
    augmented = ImagePairDataset(s, CharTokenizer(), train=True, image_size=48, seed=7)[12]
    assert torch.equal(kept[1], plain[1]) and not torch.equal(augmented[1], plain[1])
    assert torch.equal(kept[0], augmented[0]) and not torch.equal(kept[0], plain[0])


def test_batches_do_not_depend_on_the_number_of_workers(f30k):
    s = open_image_split(f30k, "train")
    data = ImagePairDataset(s, CharTokenizer(), train=True, image_size=32, seed=1)
    data.set_epoch(2)
    batches = [list(DataLoader(data, batch_size=4, num_workers=workers,
                               collate_fn=ImagePairCollate(0)))[:2] for workers in (0, 2)]
    for serial, parallel in zip(*batches, strict=True):
        assert all(torch.equal(getattr(serial, f.name), getattr(parallel, f.name))
                   for f in fields(Batch))


def test_crop_keeps_one_side_fraction_inside_the_image():
    tops, lefts = set(), set()
    for seed in range(300):
        top, left, h, w = crop_box(50, 80, torch.Generator().manual_seed(seed))
        assert 30 <= h < 50 and abs(w / 80 - h / 50) < 1 / 50  # one fraction for both sides
        assert 0 <= top <= 50 - h and 0 <= left <= 80 - w
        tops.add(top)
        lefts.add((left, w))
    assert 0 in tops and any(left + w == 80 for left, w in lefts)  # both edges reachable


def test_training_flips_about_half_of_the_images():
    pixels = torch.zeros(3, 20, 20, dtype=torch.uint8)
    pixels[:, :, 10:] = 255  # dark left half, bright right half
    flipped = [bool(prepare_image(pixels, 16, torch.Generator().manual_seed(s))[0, :, 0].mean()
                    > 0) for s in range(60)]
    assert 15 <= sum(flipped) <= 45
    assert prepare_image(pixels, 16)[0, :, 0].mean() < 0  # no generator: never flipped


def test_collated_batches_are_the_region_loaders_classes(f30k):
    s = open_image_split(f30k, "dev")
    pairs = ImagePairDataset(s, CharTokenizer(), image_size=40)
    batch = ImagePairCollate(0)([pairs[i] for i in (0, 6, 9)])
    assert isinstance(batch, Batch)
    assert batch.images.shape == (3, 3, 40, 40) and batch.img_lens.tolist() == [0, 0, 0]
    assert batch.img_ids.tolist() == [0, 1, 1] and batch.cap_ids.tolist() == [0, 6, 9]
    assert batch.captions.shape[0] == 3 and batch.cap_lens.min() > 0
    images = collate_raw_images([RawImageDataset(s, 40)[i] for i in (1, 0)])
    assert isinstance(images, ImageBatch) and images.img_ids.tolist() == [1, 0]
    assert images.images.shape == (2, 3, 40, 40)


def test_image_size_follows_vse_input_scale_factor():
    assert resolve_image_size(None, None) == 512
    assert resolve_image_size(None, 2.0) == 512 and resolve_image_size(None, 1.0) == 256
    assert resolve_image_size(384, None) == 384 and resolve_image_size(512, 2.0) == 512
    with pytest.raises(ValueError, match="contradicts"):
        resolve_image_size(448, 2.0)


# --- grid encoder -----------------------------------------------------------------------------

def test_lite0_grid_has_one_cell_per_32_pixels(lite0):
    images = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        cells, lengths = lite0(images)
    assert cells.shape == (2, 8 * 8, 32) and lengths.tolist() == [64, 64]
    torch.testing.assert_close(cells.norm(dim=-1), torch.ones(2, 64))


def test_lite0_inputs_are_renormalised_to_its_own_mean_and_std(lite0):
    raw = torch.rand(1, 3, 4, 4)
    imagenet = (raw - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert lite0.renormalize
    torch.testing.assert_close(imagenet * lite0.input_scale + lite0.input_shift, (raw - 0.5) / 0.5)


def test_lite0_weights_classify_known_photos(lite0, lite0_path, f30k):
    """ImageNet head from the same file on the encoder's pooled grid: the cat is a cat."""
    state = efficientnet_lite_to_timm(read_state_dict(lite0_path), lite0.backbone.stage_depths)
    torch.testing.assert_close(lite0.backbone.net.conv_stem.weight,
                               read_state_dict(lite0_path)["_conv_stem.weight"])
    test, train = open_image_split(f30k, "test"), open_image_split(f30k, "train")
    images = torch.stack([RawImageDataset(test, 224)[SPLITS["test"].index("chelsea")][0],
                          RawImageDataset(train, 224)[SPLITS["train"].index("coffee")][0]])
    with torch.no_grad():
        pooled = lite0.feature_map(images).mean((2, 3))  # (2, 1280)
    logits = pooled @ state["classifier.weight"].T + state["classifier.bias"]
    top5 = logits.topk(5).indices.tolist()
    assert top5[0][0] in CAT_CLASSES and CUP_CLASSES & set(top5[1])


def test_freeze_and_unfreeze_the_backbone():
    enc = resnet18(cell_drop_rate=0.0).train()
    images = torch.randn(2, 3, 64, 64)
    enc.freeze_backbone(True)
    assert not any(p.requires_grad for p in enc.backbone.parameters())
    enc(images)[0].sum().backward()
    assert enc.fc.weight.grad is not None
    assert all(p.grad is None for p in enc.backbone.parameters())
    enc.freeze_backbone(False)
    enc(images)[0].sum().backward()
    assert enc.backbone.net.layer4[1].conv2.weight.grad.abs().sum() > 0


def test_batchnorm_statistics_do_not_change_in_training():
    enc = resnet18(cell_drop_rate=0.3)
    bns = [m for m in enc.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    optimizer = torch.optim.AdamW(enc.parameters(), lr=1e-2, weight_decay=0.0)
    enc.eval().train()
    assert enc.training and enc.fc.training and not any(m.training for m in bns)
    for _ in range(2):
        optimizer.zero_grad()
        enc(torch.randn(3, 3, 64, 64) * 3 + 1)[0].sum().backward()
        optimizer.step()
    for m, (mean, var) in zip(bns, before, strict=True):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
    assert not torch.equal(bns[0].weight, torch.ones_like(bns[0].weight))  # still trained


def test_grid_appm_is_unaffected_by_dropped_cells():
    """Fusion runs on the whole grid before the drop: kept cells equal the undropped ones."""
    torch.manual_seed(0)
    enc = resnet18(fusion=APPM(16, 8, rates=(1, 2), spatial_dims=2), cell_drop_rate=0.5).train()
    images = torch.randn(3, 3, 128, 128)
    dropped, lengths = enc(images)
    enc.cell_drop_rate = 0.0
    full, full_lengths = enc(images)
    assert full.shape == (3, 16, 16) and full_lengths.tolist() == [16] * 3
    assert dropped.shape[1] == int(lengths.max()) and lengths.min() >= 1 and lengths.sum() < 48
    for i, n in enumerate(lengths.tolist()):
        distance = torch.cdist(dropped[i, :n], full[i])  # (n, 16)
        nearest = distance.argmin(1)
        assert distance.min(1).values.max() < 1e-5 and bool((nearest.diff() > 0).all())
        assert dropped[i, n:].abs().sum() == 0


def test_grid_encoder_needs_a_2d_fusion():
    with pytest.raises(ValueError, match="spatial_dims=2"):
        resnet18(fusion=APPM(16, 8, spatial_dims=1))


def test_drop_cells_keeps_at_least_one_cell_and_the_order():
    torch.manual_seed(0)
    x = torch.arange(1, 401, dtype=torch.float32).view(4, 100, 1)  # cell values = positions
    packed, lengths = drop(x, 0.2)
    assert 60 <= lengths.float().mean() <= 95
    for row, n in zip(packed, lengths.tolist(), strict=True):
        assert bool((row[:n, 0].diff() > 0).all()) and row[n:].abs().sum() == 0
    _, lengths = drop(x, 0.999)
    assert lengths.min() >= 1


def test_resnet_weights_load_from_a_local_file(tmp_path):
    import torchvision

    torch.manual_seed(1)
    model = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    enc = BackboneGridEncoder("resnet18", 16, backbone_path=path)
    assert isinstance(enc.backbone, TorchvisionTrunk) and not enc.renormalize
    for name, value in enc.backbone.net.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    with pytest.raises(DataError, match=rf"{path}: does not fit the backbone \(\d+ backbone "
                                        r"weights missing from the file: layer1\.2"):
        BackboneGridEncoder("resnet34", 16, backbone_path=path)
    with pytest.raises(DataError, match="backbone weights not found"):
        BackboneGridEncoder("resnet18", 16, backbone_path=tmp_path / "none.pth")
    (tmp_path / "junk.pth").write_text("junk")
    with pytest.raises(DataError, match="junk.pth: not a readable weights file"):
        BackboneGridEncoder("resnet18", 16, backbone_path=tmp_path / "junk.pth")


def test_backbone_names_pick_the_library():
    assert isinstance(build_trunk("timm:resnet18"), TimmTrunk)
    assert isinstance(build_trunk("torchvision:resnet18"), TorchvisionTrunk)
    with pytest.raises(ValueError, match="ResNet-family"):
        build_trunk("mobilenet_v3_small")
    with pytest.raises(ValueError, match="not a torchvision classification model nor a timm"):
        build_trunk("no_such_net")


def test_benchmark_grid_reports_images_per_second(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import benchmark_grid

    benchmark_grid.main(["--backbone", "resnet18", "--image_size", "64", "--batch_size", "2",
                         "--embed_size", "32", "--steps", "1", "--warmup", "0", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "device: cpu" in out and "grid 2x2" in out and "images/s" in out


def test_fixture_photos_are_real_jpegs(f30k):
    with Image.open(f30k / "flickr30k-images" / file_name("chelsea")) as image:
        assert image.format == "JPEG" and max(image.size) == 320
