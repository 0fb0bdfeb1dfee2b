"""ARAS400k as a `datasets` dataset: the converter from the official zips (or extracted folders), its dataset card,
and the procedural ARAS400k-format sample.

Modules, from the format up:

- `aras400k_format`: split names, published checksums, patch names, features, the error types.
- `checksums`: MD5 of the zips, `md5sum`-format lists, verification.
- `zip_members`: listing and reading zip or folder members without extraction; writing ARAS-format zips.
- `patch_png`: checking image PNGs without decoding; colour mask to class-index PNG.
- `pair_index`: finding each split's source and pairing images with masks in an on-disk SQLite index.
- `shard_workers`: converting pairs into Parquet shards in worker processes.
- `conversion_report`, `dataset_card`: what a conversion produced, and its README.md.
- `conversion`: `convert_aras400k`, `prepare_embedded_sample`, `push_dataset_to_hub`.
- `synthetic_landcover`: the procedural sample in the ARAS400k distribution format.

Public names load on first use, so `import lale_hf.data` pulls in neither pyarrow, sqlite3 nor multiprocessing.
"""

from ..lazy_imports import lazy_attributes


# Public name -> the submodule that defines it, imported on first access.
_LAZY_NAMES = {
    "AUTHORS_REPO_URL": ".aras400k_format",
    "Aras400kError": ".aras400k_format",
    "CITATION": ".aras400k_format",
    "DATASET_MARKER": ".aras400k_format",
    "IGNORE_INDEX": ".aras400k_format",
    "OutputFolderError": ".aras400k_format",
    "PUBLISHED_MD5": ".aras400k_format",
    "SAMPLE_MARKER": ".aras400k_format",
    "SPLIT_SOURCES": ".aras400k_format",
    "ZENODO_URL": ".aras400k_format",
    "dataset_features": ".aras400k_format",
    "id2label": ".aras400k_format",
    "parse_patch_name": ".aras400k_format",
    "expected_md5s": ".checksums",
    "md5_file": ".checksums",
    "read_md5_list": ".checksums",
    "write_md5_list": ".checksums",
    "write_split_zip": ".zip_members",
    "DEFAULT_MAX_IMAGE_PIXELS": ".patch_png",
    "check_png_image": ".patch_png",
    "mask_bytes_to_label_png": ".patch_png",
    "find_split_sources": ".pair_index",
    "index_split": ".pair_index",
    "open_pair_index": ".pair_index",
    "ConversionReport": ".conversion_report",
    "SplitSummary": ".conversion_report",
    "build_dataset_card": ".dataset_card",
    "render_dataset_card": ".dataset_card",
    "DEFAULT_MAX_SHARD_SIZE": ".conversion",
    "convert_aras400k": ".conversion",
    "prepare_embedded_sample": ".conversion",
    "push_dataset_to_hub": ".conversion",
    "DEFAULT_SAMPLE_SIZES": ".synthetic_landcover",
    "generate_patch": ".synthetic_landcover",
    "generate_sample": ".synthetic_landcover",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY_NAMES)


__all__ = sorted(_LAZY_NAMES)
