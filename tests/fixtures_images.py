"""A tiny real-image data set in the Flickr30K layout, written at test time (nothing shipped).

Twelve photos shipped with scikit-image, five hand-written captions each::

    root/precomp/{train,dev,test}_caps.txt, {split}_ids.txt
    root/id_mapping.json               ids -> "<number>.jpg" (also ids of no split, as in F30K)
    root/flickr30k-images/*.jpg        greyscale photos stay single-channel JPEGs

Ids are neither row numbers nor in photo order, so a loader that ignores the mapping reads the
wrong photo. Large photos are shrunk to 320 pixels on the long side to keep the set small.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

MAX_SIDE = 320

CAPTIONS = {
    "astronaut": ["a woman astronaut in a white space suit smiles at the camera",
                  "an astronaut holding a helmet poses in front of a flag",
                  "a smiling astronaut in an orange and white suit",
                  "portrait of a space crew member in uniform beside a flag",
                  "an astronaut posing for an official photo"],
    "coffee": ["a cup of coffee on a saucer with a spoon",
               "a white mug of espresso on a red table",
               "a coffee cup with foam seen from above",
               "a hot drink in a cup next to a small spoon",
               "a cappuccino on a plate on a wooden surface"],
    "rocket": ["a rocket stands on the launch pad",
               "a space shuttle ready for launch under a blue sky",
               "a tall rocket next to its launch tower",
               "a white rocket waiting on the pad for lift off",
               "a launch pad with a rocket and service towers"],
    "motorcycle": ["a red motorcycle parked in a garage",
                   "a motorbike on its stand in a storage room",
                   "a red and black motorcycle in front of shelves with boxes",
                   "a parked motorcycle inside a workshop",
                   "an old red bike standing on a concrete floor"],
    "coins": ["rows of old silver coins on a dark background",
              "a collection of ancient coins laid out in a grid",
              "many round coins arranged in rows",
              "a black and white photo of coins on a table",
              "coins with faces on them lined up neatly"],
    "hubble_deep_field": ["a deep field of stars and galaxies in black space",
               "thousands of colourful galaxies in the night sky",
               "a telescope image of distant galaxies",
               "small bright spots of light on a black background",
               "the dark universe full of tiny galaxies"],
    "page": ["a printed page of text about segmentation",
             "a page from a book with a heading and paragraphs",
             "black text on a white sheet of paper",
             "a document page with a line of code at the bottom",
             "a paragraph of printed words under a bold title"],
    "brick": ["a wall of grey bricks",
              "rows of bricks seen at an angle",
              "a brick pavement in black and white",
              "a close up of a brick wall pattern",
              "long thin bricks laid in a running bond"],
    "camera": ["a man in a dark coat looks through a camera on a tripod",
               "a photographer with an old camera in a field",
               "a black and white photo of a cameraman outdoors",
               "a man filming with a camera on a stand on the grass",
               "a person operating a camera with buildings in the distance"],
    "moon": ["the grey surface of the moon with craters",
             "a close up of lunar craters",
             "a crater on a grey rocky surface",
             "the cratered ground of the moon in black and white",
             "a photo of the moon surface with a few dark spots"],
    "chelsea": ["an orange tabby cat looks to the side",
                "a cat with striped fur sitting indoors",
                "a close up of a ginger cat's face",
                "a tabby cat with green eyes looking left",
                "a small cat with whiskers and pointed ears"],
    "immunohistochemistry": ["a microscope image of stained tissue",
                             "brown and blue cells seen under a microscope",
                             "a stained tissue sample with glands",
                             "a medical slide of cells in brown and purple",
                             "tissue cells coloured by a chemical stain"],
}
SPLITS = {"train": ["astronaut", "coffee", "rocket", "motorcycle", "coins", "hubble_deep_field",
                    "page", "brick"],
          "dev": ["camera", "moon"],
          "test": ["chelsea", "immunohistochemistry"]}
UNUSED_IDS = {0: "999999.jpg", 5: "999998.jpg"}  # mapping entries of no split, as in F30K


def photo(name: str) -> np.ndarray:
    """The scikit-image photo ``name``: uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB."""
    try:
        import skimage.data
    except ImportError:
        raise ImportError("the raw-image tests need scikit-image's photos: "
                          "pip install -r requirements-dev.txt") from None
    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def image_id(name: str) -> int:
    """Mapping id of a photo: not its row in any split, not in photo order."""
    return 7 + 3 * sorted(CAPTIONS).index(name)


def file_name(name: str) -> str:
    return f"{1000092795 + 1009 * image_id(name)}.jpg"


def write_f30k_images(root: Path, ids_per_caption: bool = False) -> Path:
    """Write the data set under ``root``; ``ids_per_caption`` lists every id five times (the
    per-caption form of ``{split}_ids.txt``). Returns ``root``."""
    folder = root / "flickr30k-images"
    folder.mkdir(parents=True, exist_ok=True)
    (root / "precomp").mkdir(exist_ok=True)
    mapping = {str(i): f for i, f in UNUSED_IDS.items()}
    for split, names in SPLITS.items():
        for name in names:
            mapping[str(image_id(name))] = file_name(name)
            _write_jpeg(photo(name), folder / file_name(name))
        repeat = 5 if ids_per_caption else 1
        ids = [str(image_id(n)) for n in names for _ in range(repeat)]
        (root / "precomp" / f"{split}_ids.txt").write_text("\n".join(ids) + "\n")
        captions = [c for n in names for c in CAPTIONS[n]]
        (root / "precomp" / f"{split}_caps.txt").write_text("\n".join(captions) + "\n")
    (root / "id_mapping.json").write_text(json.dumps(mapping))
    return root


def _write_jpeg(pixels: np.ndarray, path: Path) -> None:
    image = Image.fromarray(pixels)
    image.thumbnail((MAX_SIDE, MAX_SIDE))  # keeps the aspect ratio, only shrinks
    image.save(path, quality=90)
