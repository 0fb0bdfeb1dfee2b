#!/usr/bin/env python
"""Land-cover maps from a LALE checkpoint (Hub id or folder) or an ONNX file, for images and rasters of any size.

For each input, writes to --output_dir:
  <name>_classes.tif   class indexes as a Cloud-Optimized GeoTIFF, CRS/transform, colour table (georeferenced input), or
  <name>_classes.png   class indexes (other input)
  <name>_color.png     colourised preview with a legend (at most --preview_size pixels on its long side)
  <name>_stats.json    per-class pixels, percent and km² (georeferenced), plus every setting used
  <name>_stats.csv     the same table as CSV
and, when asked for, <name>_confidence.tif, <name>_probabilities.tif (COGs) and <name>_polygons.gpkg.

Examples:
  python scripts/predict.py --model org/lale-tiny --output_dir out patch.png
  python scripts/predict.py --model lale-tiny.onnx --output_dir out --bands 3,2,1 S2_scene_BGRN.tif
  python scripts/predict.py --model ./checkpoint --output_dir out --scaling 0.085 --bands 3,2,1 scenes/
  python scripts/predict.py --model ./checkpoint --output_dir out --bands 3,2,1 --mosaic region tiles/
  python scripts/predict.py --model ./checkpoint --output_dir out --bands 3,2,1 https://example.org/scene_cog.tif

Across processes, GPUs and nodes, with the launcher training uses (plain `python` is one process):
  accelerate launch --num_processes 8 scripts/predict.py --model ./checkpoint --output_dir out --dtype bf16 ...
  ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 scripts/predict.py ...   (CPU processes)
Inputs are cut into blocks of --block_rows tile rows, split between processes balanced by pixels. Each process
writes its own block files under <output_dir>/.lale-run/; the main process then assembles each georeferenced
input's class map as one Cloud-Optimized GeoTIFF (internal tiles, mode-resampled overviews, deflate, colour
table, nodata, class names), or with --output_layout tiles as <name>_classes.vrt over one COG per block. The map
is byte-identical whatever the number of processes. A killed run continues with --resume (finished blocks are
kept); a resume with other settings is refused, naming the setting.

Scaling (--scaling) turns raw values into the 8-bit RGB the model was trained on (ARAS400k: each 256x256 patch
divided by its own maximum). "auto" uses 8-bit input as is and, for anything else, "patch_max_median": one divisor
for the whole scene, the median over its 256x256 blocks of each block's maximum, found in a first streaming pass.
On a single patch that is exactly ARAS400k's scaling; on a scene it keeps one brightness across tiles, so no seams.
"per_patch_max" divides each tile by its own maximum ("tile_max" is its deprecated name), "scene_max" by the scene
maximum; a number is a fixed gain. The choice and the divisor or gain used are recorded in the outputs (stats JSON,
GeoTIFF tags, PNG text).

--offset is added to raw values before scaling. Sentinel-2 L2A products from processing baseline 04.00 on
(January 2022) store reflectance x 10000 + 1000 (BOA_ADD_OFFSET = -1000 in the product metadata): pass
--offset -1000 for them. The default, 0, is right for older products and for anything already offset-corrected.

No data: pixels whose selected bands all equal the raster's nodata value, or where any selected band is NaN or
±inf, get class 255 ("no data" in the statistics) and are left out of every scaling statistic. A scene without a
valid pixel is an error.

Scenes larger than a tile are predicted in sliding windows (--tile_size, --overlap) whose logits are averaged with
linear ramps over the overlaps, so tile borders leave no seams. Rasters are read and GeoTIFFs written window by
window; memory does not grow with the scene's area. A PNG class map (input without a CRS) is held whole until saved,
one byte per pixel. GeoTIFFs need rasterio (pip install 'lale-hf[geo]'), ONNX models onnxruntime
(pip install 'lale-hf[onnx]').
"""

import argparse
import logging

from lale_hf.argument_types import positive_int
from lale_hf.inference import SCALING_METHODS, InferenceError, predict_paths
from lale_hf.inference.distributed import end_processes


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="Image files, rasters (GeoTIFF...) or folders of them.")
    parser.add_argument("--model", required=True, help="Hub id, local checkpoint folder, or .onnx file.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--bands", help="1-based bands to use as R,G,B, e.g. 3,2,1 for B,G,R,NIR stacks (default: RGB)."
    )
    parser.add_argument(
        "--scaling", default="auto", help=f"One of {', '.join(SCALING_METHODS)}, or a fixed gain (default: auto)."
    )
    parser.add_argument("--tile_size", type=int, default=256, help="Sliding-window size in pixels (multiple of 32).")
    parser.add_argument(
        "--overlap", type=float, default=0.25, help="Overlap of neighbouring tiles, fraction of a tile."
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument(
        "--preview_size", type=positive_int, default=2048, help="Longest side of the colourised preview."
    )
    parser.add_argument("--num_threads", type=int, help="ONNX Runtime intra-op threads (default: all cores).")
    parser.add_argument(
        "--torch_compile",
        action="store_true",
        help="torch.compile the checkpoint with frozen weights: about 2.5x eager on CPU, after 20-60 s of compiling.",
    )
    parser.add_argument(
        "--offset", type=float, default=0.0, help="Added to raw values first: -1000 for S2 L2A baseline >= 04.00."
    )
    parser.add_argument(
        "--mosaic", metavar="NAME", help="Predict all inputs as one mosaic named NAME (same CRS and pixel grid)."
    )
    parser.add_argument(
        "--block_rows",
        type=positive_int,
        default=16,
        help="Tile rows per block: the unit of work and of --resume; lower it when processes outnumber blocks.",
    )
    parser.add_argument(
        "--output_layout",
        choices=("cog", "tiles"),
        default="cog",
        help="cog: one Cloud-Optimized GeoTIFF per input; tiles: a VRT over one COG per block.",
    )
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast on CUDA GPUs.")
    products = parser.add_argument_group("map products (COGs, or a GeoPackage, in the input's CRS)")
    products.add_argument(
        "--save_confidence",
        action="store_true",
        help="<name>_confidence.tif: top-class probability x 255 from the blended logits (seamless; 0 = no data).",
    )
    products.add_argument(
        "--save_probabilities", action="store_true", help="<name>_probabilities.tif: one band per class, x 255."
    )
    products.add_argument(
        "--tta",
        choices=("none", "flip", "d4"),
        default="none",
        help="Average logits over 4 flips (flip) or the 8 flips and rotations (d4) before blending; see the README "
        "for what it buys on real data and what it costs.",
    )
    products.add_argument(
        "--vectorize",
        action="store_true",
        help="<name>_polygons.gpkg: a polygon per region, with class, area in m² and mean confidence (projected CRS).",
    )
    products.add_argument(
        "--min_mapping_unit", type=int, default=0, help="--vectorize: merge regions under this many pixels first."
    )
    products.add_argument(
        "--simplify_tolerance", type=float, default=0.0, help="--vectorize: simplify edges, in map units (0: none)."
    )
    parser.add_argument("--resume", action="store_true", help="Finish an interrupted run in --output_dir.")
    parser.add_argument("--overwrite", action="store_true", help="Replace existing outputs.")
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument("--no_progress", action="store_true")
    return parser, parser.parse_args()


def main():
    parser, args = parse_args()
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    logging.getLogger("lale_hf").setLevel(logging.INFO)
    try:
        results = predict_paths(
            args.inputs,
            args.model,
            args.output_dir,
            bands=args.bands,
            scaling=args.scaling,
            tile_size=args.tile_size,
            overlap=args.overlap,
            batch_size=args.batch_size,
            preview_size=args.preview_size,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            trust_remote_code=args.trust_remote_code,
            num_threads=args.num_threads,
            torch_compile=args.torch_compile,
            offset=args.offset,
            block_rows=args.block_rows,
            output_layout=args.output_layout,
            resume=args.resume,
            dtype=args.dtype,
            mosaic=args.mosaic,
            save_confidence=args.save_confidence,
            save_probabilities=args.save_probabilities,
            tta=args.tta,
            vectorize=args.vectorize,
            min_mapping_unit=args.min_mapping_unit,
            simplify_tolerance=args.simplify_tolerance,
        )
    except (InferenceError, OSError, ImportError) as error:
        end_processes()
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    end_processes()

    for result in results:
        top = sorted(result["classes"], key=lambda item: -item["pixels"])[:3]
        shares = ", ".join(f"{item['label']} {item['percent']:.1f}%" for item in top)
        print(f"{result['prediction']['input']}: {shares} -> {result['outputs']['classes']}")


if __name__ == "__main__":
    main()
