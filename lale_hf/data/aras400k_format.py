"""The ARAS400k distribution format: split names, published checksums, patch names, the converted dataset's features,
and the error type every part of the converter raises.

ARAS400k (Zenodo record 18890661, CC BY 4.0) ships `train.zip`, `val.zip`, `test.zip` and `synth.zip`, each holding
`images/NAME.png` (RGB, scaled per patch by its own maximum) and `masks/NAME.png` (colour-coded classes) under an
undocumented folder prefix.
"""

import re

from ..configuration_lale import ARAS400K_LABELS


ZENODO_URL = "https://zenodo.org/records/18890661"
AUTHORS_REPO_URL = "https://github.com/caglarmert/ARAS400k"

# Output split name -> the authors' split name (zip stem and folder name).
SPLIT_SOURCES = {"train": "train", "validation": "val", "test": "test", "synthetic": "synth"}

# The MD5 sums published with the dataset (authors' README and Zenodo record).
PUBLISHED_MD5 = {
    "train.zip": "95cd5caea68c813fd86888f9cd95b627",
    "val.zip": "76e61fd7557d65ba0596e44c0f92b43f",
    "test.zip": "01679231ee8e38701f5d3ab7de0b5719",
    "synth.zip": "0dc95bfdda44a816ade0d7ea747e4f9c",
}
PUBLISHED_CHECKSUMS = "the published ARAS400k checksums"

# Written by `lale_hf.data.synthetic_landcover` beside its zips; the converter then labels the card as procedural.
SAMPLE_MARKER = "lale-procedural-sample.json"
# Written into every dataset folder the converter produces: only such a folder is replaced by `overwrite=True`.
DATASET_MARKER = "lale-hf-dataset.json"

IGNORE_INDEX = 255

CITATION = """\
@inproceedings{caglar2026aras400k,
  title     = {Grounding Synthetic Data Generation With Vision and Language Models},
  author    = {{\\c{C}}a{\\u{g}}lar, {\\"U}mit Mert and Temizel, Alptekin},
  booktitle = {CVPR Workshop on Synthetic Data for Computer Vision},
  year      = {2026},
  eprint    = {2603.09625},
  archivePrefix = {arXiv},
  note      = {ARAS400k dataset: https://zenodo.org/records/18890661}
}"""

# ARAS names are `{tile}_{row:03d}_{col:03d}`, the tile being the 3x3-degree grid cell of the Sentinel-2/WorldCover
# mosaic (authors' dataset_creator.py). Names of other forms (e.g. synthetic patches) get no tile/row/col.
_ARAS_NAME = re.compile(r"^(?P<tile>[NS]\d{2}[EW]\d{3})_(?P<row>\d+)_(?P<col>\d+)$")


class Aras400kError(ValueError):
    """Bad input for the ARAS400k converter; the message names the file and what was expected."""


class OutputFolderError(Aras400kError):
    """The output folder cannot be used: it overlaps an input, is not ours to replace, or cannot be written."""


def parse_patch_name(name: str) -> tuple[str | None, int | None, int | None]:
    """`N45E010_003_004` -> ("N45E010", 3, 4): tile, patch row, patch column; (None, None, None) for other names."""
    match = _ARAS_NAME.match(name)
    if match is None:
        return None, None, None
    return match["tile"], int(match["row"]), int(match["col"])


def dataset_features():
    """The `datasets.Features` of a converted split."""
    from datasets import Features, Value
    from datasets import Image as ImageFeature

    return Features(
        {
            "image": ImageFeature(),
            "label": ImageFeature(),
            "name": Value("string"),
            "tile": Value("string"),
            "patch_row": Value("int32"),
            "patch_col": Value("int32"),
        }
    )


def id2label() -> dict[str, str]:
    """The class-index -> class-name map written to `id2label.json`."""
    return {str(index): name for index, name in enumerate(ARAS400K_LABELS)}
