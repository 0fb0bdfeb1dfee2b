"""Per-class pixel counts, shares and areas of a class map, accumulated row block by row block."""

import csv
import io

import numpy as np

from .sources import NODATA_CLASS


EARTH_RADIUS_M = 6371007.2  # authalic radius, for areas in geographic coordinates


class AreaStatistics:
    """Per-class pixel counts, shares and (for georeferenced scenes) areas in km², accumulated row block by block.

    Projected CRS: pixel area from the transform in the CRS's linear unit. Geographic CRS (north-up): each row's
    pixel area on a sphere of the authalic radius. Shares are of all scene pixels, nodata included.
    """

    def __init__(self, id2label: dict, height: int, width: int, crs=None, transform=None):
        self.id2label = dict(id2label)
        self.height, self.width = height, width
        self.counts = np.zeros(256, dtype=np.int64)
        self.areas_m2 = np.zeros(256, dtype=np.float64)
        self.pixel_area_m2 = None
        self.row_area_m2 = None
        self.area_note = "not georeferenced: no areas"
        if crs is not None and transform is not None:
            if crs.is_projected:
                metres = crs.linear_units_factor[1]
                self.pixel_area_m2 = abs(transform.a * transform.e - transform.b * transform.d) * metres**2
                self.area_note = f"pixel area from the transform in {crs.linear_units_factor[0]}"
            elif crs.is_geographic and transform.b == 0 and transform.d == 0:
                self.row_area_m2 = self._geographic_row_area(transform)
                self.area_note = "geographic CRS: per-row pixel areas on a sphere of radius 6371007.2 m"
            else:
                self.area_note = "rotated geographic grid: no areas"

    @staticmethod
    def _geographic_row_area(transform):
        def row_area(rows: np.ndarray) -> np.ndarray:
            top = np.radians(transform.f + transform.e * rows)
            bottom = np.radians(transform.f + transform.e * (rows + 1))
            return EARTH_RADIUS_M**2 * abs(np.radians(transform.a)) * np.abs(np.sin(top) - np.sin(bottom))

        return row_area

    @property
    def georeferenced(self) -> bool:
        return self.pixel_area_m2 is not None or self.row_area_m2 is not None

    def update(self, row0: int, labels: np.ndarray):
        self.counts += np.bincount(labels.ravel(), minlength=256)
        if self.row_area_m2 is not None:
            areas = np.repeat(self.row_area_m2(np.arange(row0, row0 + labels.shape[0])), labels.shape[1])
            self.areas_m2 += np.bincount(labels.ravel(), weights=areas, minlength=256)

    def _km2(self, index: int) -> float | None:
        if self.pixel_area_m2 is not None:
            return float(self.counts[index] * self.pixel_area_m2 / 1e6)
        if self.row_area_m2 is not None:
            return float(self.areas_m2[index] / 1e6)
        return None

    def to_dict(self) -> dict:
        total = self.height * self.width
        rows = [(index, self.id2label[index]) for index in sorted(self.id2label)]
        if self.counts[NODATA_CLASS]:
            rows.append((NODATA_CLASS, "no data"))
        classes = [
            {
                "id": index,
                "label": label,
                "pixels": int(self.counts[index]),
                "percent": float(100.0 * self.counts[index] / total),
                "km2": self._km2(index),
            }
            for index, label in rows
        ]
        total_km2 = sum(item["km2"] for item in classes) if self.georeferenced else None
        return {
            "total_pixels": int(total),
            "total_km2": total_km2,
            "pixel_area_m2": self.pixel_area_m2,
            "area_note": self.area_note,
            "classes": classes,
        }


def statistics_csv(stats: dict) -> str:
    """The per-class table of `AreaStatistics.to_dict()` as CSV (class_id, label, pixels, percent, km2)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class_id", "label", "pixels", "percent", "km2"])
    for item in stats["classes"]:
        km2 = "" if item["km2"] is None else f"{item['km2']:.6f}"
        writer.writerow([item["id"], item["label"], item["pixels"], f"{item['percent']:.4f}", km2])
    return buffer.getvalue()


__all__ = ["AreaStatistics", "statistics_csv"]
