#!/usr/bin/env python
"""Peak memory and time of the COG assembly (VRT over block GeoTIFFs, then the COG copy) against the scene size.

The main process of a prediction run joins the blocks every rank wrote into one Cloud-Optimized GeoTIFF
(`lale_hf.inference.assembly`). This measures that step alone, in a fresh process per scene size, on synthetic
class blocks written the way prediction writes them (GeoTiffWriter, 1536-row blocks): the peak RSS (VmHWM) after
the copy, above the same process's RSS before it, and the wall time.

    python benchmarks/benchmark_cog_assembly.py --sizes 2048 8192 16384
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


BLOCK_ROWS = 1536


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 16384], help="Square scene sides.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "FOLDER"), help=argparse.SUPPRESS)
    return parser.parse_args()


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def assemble_in_this_process(size: int, folder: Path) -> dict:
    """Writes the blocks, then times and measures the VRT + COG copy."""
    from affine import Affine
    from rasterio.crs import CRS

    from lale_hf.inference.assembly import block_transform, copy_to_cog, write_vrt
    from lale_hf.inference.extras import rasterio_env
    from lale_hf.inference.writers import GeoTiffWriter

    crs, transform = CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 5000000)
    metadata = {"classes": {str(i): f"class {i}" for i in range(7)}}
    palette = [(i * 30, 255 - i * 30, 100) for i in range(7)]
    rng = np.random.default_rng(0)
    columns = (np.arange(size) // 700 % 7).astype(np.uint8)[None]
    blocks = []
    for row0 in range(0, size, BLOCK_ROWS):
        rows = min(BLOCK_ROWS, size - row0)
        writer = GeoTiffWriter(
            folder / f"b{row0}.tif", rows, size, crs, block_transform(transform, row0), metadata, palette
        )
        for start in range(0, rows, 256):  # fields by column, with speckle: compresses like a class map
            speckle = (rng.random((min(256, rows - start), size)) < 0.1).astype(np.uint8)
            writer.write(start, np.minimum(columns + speckle, 6))
        writer.close()
        blocks.append((f"b{row0}.tif", row0, rows))
    write_vrt(folder / "scene.vrt", blocks, size, size, crs, transform, metadata, palette)
    before = rss_kib("VmRSS")
    start = time.perf_counter()
    with rasterio_env():
        copy_to_cog(folder / "scene.vrt", folder / "scene_classes.tif")
    seconds = time.perf_counter() - start
    return {
        "size": size,
        "megapixels": size * size / 1e6,
        "seconds": seconds,
        "rss_before_mib": before / 1024,
        "peak_rss_mib": rss_kib("VmHWM") / 1024,
        "peak_above_before_mib": (rss_kib("VmHWM") - before) / 1024,
        "cog_mib": (folder / "scene_classes.tif").stat().st_size / 2**20,
    }


def main():
    args = parse_args()
    if args.child:
        print(json.dumps(assemble_in_this_process(int(args.child[0]), Path(args.child[1]))))
        return
    results = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix=f"cog-{size}-") as folder:
            command = [sys.executable, __file__, "--child", str(size), folder]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
    print("| scene | Mpx | COG copy s | peak RSS MiB | peak above the process before the copy MiB | COG MiB |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['size']}^2 | {r['megapixels']:.0f} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{r['peak_above_before_mib']:.0f} | {r['cog_mib']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
