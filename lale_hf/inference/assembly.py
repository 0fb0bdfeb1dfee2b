"""From block files to final rasters: a VRT over the blocks, a Cloud-Optimized GeoTIFF copy, or a tiled layout.

GDAL's COG driver only copies (it cannot be written window by window), so blocks are written as tiled GeoTIFFs,
joined by a hand-written VRT, and copied once into a COG with internal tiles, mode-resampled overviews (class
indexes are never averaged), deflate compression, the colour table, nodata and the class names. The copy streams
through GDAL's block cache: its memory does not grow with the scene. With `--output_layout tiles` each block is
itself a COG and the output is a VRT over them, so a continent never needs one writer.
"""

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from .extras import import_rasterio
from .writers import class_colormap


COG_OPTIONS = {
    "COMPRESS": "DEFLATE",
    "BLOCKSIZE": 512,
    "OVERVIEW_RESAMPLING": "MODE",
    "BIGTIFF": "IF_SAFER",
    "NUM_THREADS": 1,
}


def write_vrt(
    path: Path,
    blocks: list[tuple[str, int, int]],
    width: int,
    height: int,
    crs,
    transform,
    metadata: dict,
    palette=None,
    descriptions: list[str] | None = None,
    nodata: int | None = 255,
):
    """A VRT of `blocks` ((file relative to the VRT, first row, rows), stacked top to bottom) with the metadata a
    class raster carries: CRS, transform, nodata, colour table, class names and the prediction settings."""
    descriptions = descriptions or ["land-cover class index (255 = no data)"]
    root = vrt_dataset(width, height, crs, transform)
    dataset_metadata = ET.SubElement(root, "Metadata")
    ET.SubElement(dataset_metadata, "MDI", key="LALE_PREDICTION").text = json.dumps(metadata)
    for band, description in enumerate(descriptions, start=1):
        element = ET.SubElement(root, "VRTRasterBand", dataType="Byte", band=str(band))
        ET.SubElement(element, "Description").text = description
        if nodata is not None:
            ET.SubElement(element, "NoDataValue").text = str(nodata)
        if palette is not None and band == 1:
            ET.SubElement(element, "ColorInterp").text = "Palette"
            table = ET.SubElement(element, "ColorTable")
            for _, rgba in sorted(class_colormap(palette).items()):
                ET.SubElement(table, "Entry", c1=str(rgba[0]), c2=str(rgba[1]), c3=str(rgba[2]), c4=str(rgba[3]))
            band_metadata = ET.SubElement(element, "Metadata")
            for key, value in metadata["classes"].items():
                ET.SubElement(band_metadata, "MDI", key=f"CLASS_{key}").text = value
        else:
            # What a TIFF can store (band 1 grey, the others extra samples); anything else would go to an .aux.xml.
            ET.SubElement(element, "ColorInterp").text = "Gray" if band == 1 else "Undefined"
        for name, row0, rows in blocks:
            add_simple_source(element, name, band, width, rows, 0, row0, relative=True)
    ET.indent(root)
    Path(path).write_bytes(ET.tostring(root, encoding="utf-8") + b"\n")


def vrt_dataset(width: int, height: int, crs, transform) -> ET.Element:
    """A `VRTDataset` element with the CRS and geotransform (either may be None: not georeferenced)."""
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if crs is not None:
        ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = crs.to_wkt()
    if transform is not None:
        values = (transform.c, transform.a, transform.b, transform.f, transform.d, transform.e)
        ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in values)
    return root


def add_simple_source(
    band_element: ET.Element, filename: str, band: int, width: int, height: int, x_off: int, y_off: int, relative: bool
):
    """Band `band` of `filename`, whole (`width` x `height`), placed at (`x_off`, `y_off`) of the VRT band."""
    source = ET.SubElement(band_element, "SimpleSource")
    ET.SubElement(source, "SourceFilename", relativeToVRT="1" if relative else "0").text = filename
    ET.SubElement(source, "SourceBand").text = str(band)
    size = {"xSize": str(width), "ySize": str(height)}
    ET.SubElement(source, "SrcRect", xOff="0", yOff="0", **size)
    ET.SubElement(source, "DstRect", xOff=str(x_off), yOff=str(y_off), **size)


def copy_to_cog(source: str | os.PathLike, destination: str | os.PathLike):
    """A Cloud-Optimized GeoTIFF copy of `source` (see `COG_OPTIONS`); overwrites `destination`."""
    import_rasterio()  # a clear message when rasterio is missing
    import rasterio.shutil

    rasterio.shutil.copy(str(source), str(destination), driver="COG", **COG_OPTIONS)


def block_transform(transform, row0: int):
    """The geotransform of a block whose first row is scene row `row0`."""
    from affine import Affine

    return transform @ Affine.translation(0, row0)


__all__ = ["COG_OPTIONS", "add_simple_source", "block_transform", "copy_to_cog", "vrt_dataset", "write_vrt"]
