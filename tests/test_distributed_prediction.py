"""Prediction at scale: 1 vs 2 real `accelerate launch` processes, SIGKILL and --resume, Cloud-Optimized GeoTIFF
output, VRT mosaics, remote rasters over HTTP range requests, and the errors of each, on real Sentinel-2 patches."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image


rasterio = pytest.importorskip("rasterio")
from affine import Affine  # noqa: E402
from range_server import serve_folder  # noqa: E402
from rasterio.crs import CRS  # noqa: E402
from test_train import ACCELERATE, REPO_ROOT, free_port  # noqa: E402

from lale_hf.inference import InferenceError, predict_paths  # noqa: E402


PREDICT = REPO_ROOT / "scripts" / "predict.py"
CRS_UTM = CRS.from_epsg(32633)
PIXEL = 10.0
ORIGIN = (500000.0, 5200000.0)


def real_patches(s2glc_sample: Path, count: int) -> list[np.ndarray]:
    paths = sorted((s2glc_sample / "val" / "images").glob("*.png"))[:count]
    return [np.asarray(Image.open(path).convert("RGB")) for path in paths]


def write_geotiff(path: Path, rgb: np.ndarray, left: float, top: float, crs=CRS_UTM) -> Path:
    profile = {"driver": "GTiff", "width": rgb.shape[1], "height": rgb.shape[0], "count": 3, "dtype": "uint8"}
    with rasterio.open(path, "w", crs=crs, transform=Affine(PIXEL, 0, left, 0, -PIXEL, top), **profile) as dataset:
        dataset.write(np.moveaxis(rgb, -1, 0))
    return path


def mosaic_array(patches: list[np.ndarray], columns: int) -> np.ndarray:
    rows = [np.concatenate(patches[i : i + columns], axis=1) for i in range(0, len(patches), columns)]
    return np.concatenate(rows, axis=0)


@pytest.fixture(scope="module")
def real_scenes(s2glc_sample, tmp_path_factory) -> dict:
    """A 1024x768 georeferenced mosaic of 12 real patches, a 512x512 scene and its four quarters as separate
    GeoTIFFs, and a folder of three real-patch rasters of different sizes."""
    folder = tmp_path_factory.mktemp("scenes")
    patches = real_patches(s2glc_sample, 16)
    mosaic = write_geotiff(folder / "mosaic.tif", mosaic_array(patches[:12], 3), *ORIGIN)
    quarter = patches[0]
    whole = write_geotiff(folder / "quarters_whole.tif", mosaic_array([quarter] * 4, 2), *ORIGIN)
    quarters = folder / "quarters"
    quarters.mkdir()
    for index, (row, col) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        left, top = ORIGIN[0] + col * 256 * PIXEL, ORIGIN[1] - row * 256 * PIXEL
        write_geotiff(quarters / f"q{index}.tif", quarter, left, top)
    several = folder / "several"
    several.mkdir()
    write_geotiff(several / "a.tif", mosaic_array(patches[12:14], 2), *ORIGIN)
    write_geotiff(several / "b.tif", patches[14], *ORIGIN)
    write_geotiff(several / "c.tif", mosaic_array(patches[12:16], 1)[:900], *ORIGIN)
    return {"mosaic": mosaic, "whole": whole, "quarters": quarters, "several": several}


def predict_command(checkpoint: Path, output: Path, *inputs, processes: int = 1, extra=()) -> list[str]:
    arguments = [str(PREDICT), "--model", str(checkpoint), "--output_dir", str(output), "--no_progress", *extra]
    arguments += [str(item) for item in inputs]
    if processes == 1:
        return [sys.executable, *arguments]
    launcher = [*ACCELERATE, "--num_processes", str(processes), "--num_machines", "1", "--multi_gpu"]
    launcher += ["--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launcher, *arguments]


def run(command: list[str], env: dict, processes: int = 1) -> subprocess.CompletedProcess:
    env = {**env, "ACCELERATE_USE_CPU": "true"} if processes > 1 else env
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if result.returncode != 0:
        pytest.fail(f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-6000:]}", pytrace=False)
    return result


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def class_table(stats_json: Path) -> list:
    return json.loads(stats_json.read_text())["classes"]


def assert_valid_cog(path: Path, crs, transform):
    with rasterio.open(path) as dataset:
        assert dataset.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert dataset.overviews(1), "a COG of this size has overviews"
        assert dataset.block_shapes[0] == (512, 512)
        assert dataset.crs == crs and dataset.transform == transform
        assert dataset.nodata == 255
        palette = json.loads(dataset.tags()["LALE_PREDICTION"])["palette"]
        assert [list(dataset.colormap(1)[index][:3]) for index in range(len(palette))] == palette
        assert dataset.tags(1)["CLASS_0"]
        assert json.loads(dataset.tags()["LALE_PREDICTION"])["classes"]


@pytest.mark.slow
def test_one_and_two_processes_write_the_same_bytes(real_scenes, lale_tiny_checkpoint, tmp_path, clean_env):
    """A mosaic of real patches (4 blocks) and a folder of three rasters (1, 1 and 5 blocks), with flip TTA and
    every map product: byte-identical class, confidence and probability COGs, GeoPackages, previews and statistics
    from 1 and 2 processes."""
    extra = ["--block_rows", "1", "--tta", "flip", "--save_confidence", "--save_probabilities", "--vectorize"]
    inputs = [real_scenes["mosaic"], real_scenes["several"]]
    one = check(run(predict_command(lale_tiny_checkpoint, tmp_path / "one", *inputs, extra=extra), clean_env))
    two_command = predict_command(lale_tiny_checkpoint, tmp_path / "two", *inputs, processes=2, extra=extra)
    two = check(run(two_command, clean_env, processes=2))
    assert "process 1 of 2: predicted" in two.stderr and "process 0 of 1" in one.stderr
    assert digests(tmp_path / "one") == digests(tmp_path / "two")
    assert sorted(digests(tmp_path / "one")) == sorted(
        f"{stem}_{suffix}"
        for stem in ("mosaic", "a", "b", "c")
        for suffix in (
            "classes.tif",
            "color.png",
            "stats.csv",
            "stats.json",
            "confidence.tif",
            "probabilities.tif",
            "polygons.gpkg",
        )
    )
    assert not (tmp_path / "two" / ".lale-run").exists()
    with rasterio.open(real_scenes["mosaic"]) as source:
        assert_valid_cog(tmp_path / "two" / "mosaic_classes.tif", source.crs, source.transform)
    stats = json.loads((tmp_path / "two" / "mosaic_stats.json").read_text())
    assert sum(item["pixels"] for item in stats["classes"]) == 1024 * 768


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_bytes_without_redoing_blocks(
    real_scenes, lale_tiny_checkpoint, tmp_path, clean_env
):
    extra = ["--block_rows", "1", "--batch_size", "2", "--tile_size", "128"]  # 8 blocks
    reference = tmp_path / "reference"
    check(run(predict_command(lale_tiny_checkpoint, reference, real_scenes["mosaic"], extra=extra), clean_env))
    output = tmp_path / "killed"
    command = predict_command(lale_tiny_checkpoint, output, real_scenes["mosaic"], processes=2, extra=extra)
    env = {**clean_env, "ACCELERATE_USE_CPU": "true"}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)  # fmt: skip
    blocks = output / ".lale-run" / "blocks"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(blocks.glob("*.done.json"))) < 2 and process.poll() is None:
        time.sleep(0.05)
    # torchrun may start its workers in their own process groups: kill the whole tree, workers first.
    tree = psutil.Process(process.pid).children(recursive=True)
    for child in tree:
        child.send_signal(signal.SIGKILL)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    psutil.wait_procs(tree, timeout=30)
    process.stderr.close()
    done = sorted(blocks.glob("*.done.json"))
    assert len(done) >= 2, "the run ended before two blocks were done"
    total = len(json.loads((output / ".lale-run" / "run.json").read_text())["blocks"])
    assert len(done) < total, "the kill came after every block was done"
    assert not (output / "mosaic_classes.tif").exists()

    changed = predict_command(
        lale_tiny_checkpoint, output, real_scenes["mosaic"], extra=[*extra[:-1], "64", "--resume"]
    )
    refused = run(changed, clean_env)
    assert refused.returncode == 2 and "--tile_size differs from the interrupted run" in refused.stderr, refused.stderr
    fresh = run(predict_command(lale_tiny_checkpoint, output, real_scenes["mosaic"], extra=extra), clean_env)
    assert fresh.returncode == 2 and "pass --resume" in fresh.stderr, fresh.stderr

    resumed_command = predict_command(
        lale_tiny_checkpoint, output, real_scenes["mosaic"], processes=2, extra=[*extra, "--resume"]
    )
    resumed = check(run(resumed_command, clean_env, processes=2))
    predicted = [
        int(line.split("predicted ")[1].split()[0]) for line in resumed.stderr.splitlines() if ": predicted " in line
    ]
    assert len(predicted) == 2 and sum(predicted) == total - len(done), resumed.stderr
    assert digests(output) == digests(reference)


def test_vrt_and_mosaic_of_four_rasters_equal_the_single_geotiff(real_scenes, lale_tiny_checkpoint, tmp_path):
    from lale_hf.inference.mosaic import build_mosaic

    quarters = sorted(real_scenes["quarters"].glob("*.tif"))
    vrt = tmp_path / "quarters.vrt"
    vrt.write_text(build_mosaic("quarters", quarters).xml)  # a VRT file on disk, as gdalbuildvrt would write
    common = {"progress": False, "block_rows": 2}
    whole = predict_paths([real_scenes["whole"]], lale_tiny_checkpoint, tmp_path / "whole", **common)[0]
    from_vrt = predict_paths([vrt], lale_tiny_checkpoint, tmp_path / "vrt", **common)[0]
    mosaic = predict_paths(quarters, lale_tiny_checkpoint, tmp_path / "mosaic", mosaic="region", **common)[0]
    with rasterio.open(whole["outputs"]["classes"]) as expected:
        labels = expected.read(1)
        for result in (from_vrt, mosaic):
            with rasterio.open(result["outputs"]["classes"]) as got:
                assert got.transform == expected.transform and got.crs == expected.crs
                np.testing.assert_array_equal(got.read(1), labels)
            assert result["classes"] == whole["classes"]
    assert mosaic["prediction"]["mosaic_of"] == [str(path) for path in quarters]


def test_tiles_layout_is_a_vrt_over_block_cogs(real_scenes, lale_tiny_checkpoint, tmp_path):
    common = {"progress": False, "block_rows": 1}
    cog = predict_paths([real_scenes["several"] / "c.tif"], lale_tiny_checkpoint, tmp_path / "cog", **common)[0]
    tiles = predict_paths(
        [real_scenes["several"] / "c.tif"], lale_tiny_checkpoint, tmp_path / "tiles", output_layout="tiles", **common
    )[0]
    folder = Path(tiles["outputs"]["classes_tiles"])
    parts = sorted(folder.glob("*.tif"))
    assert len(parts) == 5 and tiles["outputs"]["classes"].endswith("c_classes.vrt")
    with rasterio.open(real_scenes["several"] / "c.tif") as source:
        crs, transform = source.crs, source.transform
    for part in parts:
        with rasterio.open(part) as dataset:
            assert dataset.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and dataset.crs == crs
    with rasterio.open(tiles["outputs"]["classes"]) as vrt, rasterio.open(cog["outputs"]["classes"]) as single:
        assert vrt.transform == transform
        assert {k: v[:3] for k, v in vrt.colormap(1).items()} == {k: v[:3] for k, v in single.colormap(1).items()}
        np.testing.assert_array_equal(vrt.read(1), single.read(1))
    assert tiles["classes"] == cog["classes"]


def test_remote_cog_over_http_range_requests_equals_the_local_file(real_scenes, lale_tiny_checkpoint, tmp_path):
    from lale_hf.inference.assembly import copy_to_cog

    served = tmp_path / "served"
    served.mkdir()
    copy_to_cog(real_scenes["mosaic"], served / "scene.tif")
    local = predict_paths([served / "scene.tif"], lale_tiny_checkpoint, tmp_path / "local", progress=False)[0]
    with serve_folder(served) as (url, handler):
        remote = predict_paths([f"{url}/scene.tif"], lale_tiny_checkpoint, tmp_path / "remote", progress=False)[0]
        assert handler.range_requests > 0
    with rasterio.open(local["outputs"]["classes"]) as a, rasterio.open(remote["outputs"]["classes"]) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
        assert a.transform == b.transform
    assert remote["classes"] == local["classes"]
    assert Path(remote["outputs"]["classes"]).name == "scene_classes.tif"


def test_offset_equals_predicting_offset_corrected_values(lale_tiny_checkpoint, tmp_path, s2glc_sample):
    """--offset -1000 on Sentinel-2 L2A values (reflectance x 10000 + 1000) equals the corrected values."""
    with rasterio.open(sorted((s2glc_sample / "raw-tif").glob("*.tif"))[0]) as dataset:
        raw = dataset.read()
    corrected = tmp_path / "corrected.tif"
    shifted = tmp_path / "shifted.tif"
    for path, data in ((corrected, raw), (shifted, raw.astype(np.uint16) + 1000)):
        profile = {"driver": "GTiff", "width": raw.shape[2], "height": raw.shape[1], "count": 4, "dtype": "uint16"}
        with rasterio.open(path, "w", crs=CRS_UTM, transform=Affine(PIXEL, 0, 0, 0, -PIXEL, 0), **profile) as out:
            out.write(data)
    common = {"bands": "3,2,1", "progress": False}
    expected = predict_paths([corrected], lale_tiny_checkpoint, tmp_path / "a", **common)[0]
    got = predict_paths([shifted], lale_tiny_checkpoint, tmp_path / "b", offset=-1000, **common)[0]
    assert got["classes"] == expected["classes"]
    assert got["prediction"]["scaling"]["offset"] == -1000
    assert got["prediction"]["scaling"]["peak"] == expected["prediction"]["scaling"]["peak"]


def test_bad_inputs_at_scale_give_clear_errors_and_no_output(real_scenes, lale_tiny_checkpoint, tmp_path, clean_env):
    from lale_hf.inference.mosaic import build_mosaic

    output = tmp_path / "out"

    def refused(inputs, match, **kwargs):
        with pytest.raises((InferenceError, FileExistsError), match=match):
            predict_paths(inputs, lale_tiny_checkpoint, output, progress=False, **kwargs)
        assert not any(p.name.endswith(("_classes.tif", "_stats.json")) for p in output.rglob("*"))
        assert not (output / ".lale-run").exists()

    closed_port = free_port()
    url = f"http://127.0.0.1:{closed_port}/scene.tif"
    result = run(predict_command(lale_tiny_checkpoint, output, url), clean_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{url}: cannot read it as a raster" in result.stderr
    moved = tmp_path / "moved"
    moved.mkdir()
    for path in sorted(real_scenes["quarters"].glob("*.tif")):
        (moved / path.name).write_bytes(path.read_bytes())
    broken = tmp_path / "broken.vrt"
    broken.write_text(build_mosaic("broken", sorted(moved.glob("*.tif"))).xml)
    (moved / "q2.tif").unlink()
    refused([broken], r"broken\.vrt: the VRT refers to missing file\(s\): .*q2\.tif")
    other_crs = tmp_path / "crs"
    other_crs.mkdir()
    write_geotiff(other_crs / "a.tif", np.zeros((64, 64, 3), np.uint8), *ORIGIN)
    write_geotiff(other_crs / "b.tif", np.zeros((64, 64, 3), np.uint8), 0, 0, crs=CRS.from_epsg(4326))
    refused([other_crs], r"b\.tif is in EPSG:4326 but .*a\.tif is in EPSG:32633", mosaic="region")
    refused([real_scenes["mosaic"]], "--block_rows 0", block_rows=0)
    refused([real_scenes["mosaic"]], "--output_layout 'zip'", output_layout="zip")
    refused([real_scenes["mosaic"]], "--dtype bf16: needs a CUDA device", dtype="bf16")
    done = tmp_path / "done"
    predict_paths([real_scenes["several"] / "b.tif"], lale_tiny_checkpoint, done, progress=False)
    before = digests(done)
    with pytest.raises(FileExistsError, match="outputs already exist .*pass --overwrite"):
        predict_paths([real_scenes["several"] / "b.tif"], lale_tiny_checkpoint, done, progress=False)
    assert digests(done) == before


def test_resume_in_process_refuses_a_rewritten_input_and_finishes_an_interrupted_run(
    real_scenes, lale_tiny_checkpoint, tmp_path
):
    """A run cut by an error inside the model (as a power cut would) keeps its finished blocks; an input touched
    since is refused; the untouched input resumes to the bytes of an uninterrupted run."""
    import shutil

    from lale_hf.inference import Predictor, load_predictor

    class FailsAfterThreeBatches(Predictor):
        def __init__(self, predictor):
            super().__init__(predictor.name, predictor.id2label, predictor.preprocessing)
            self.predictor, self.backend, self.calls = predictor, predictor.backend, 0

        def __call__(self, pixel_values):
            self.calls += 1
            if self.calls > 3:
                raise RuntimeError("power cut")
            return self.predictor(pixel_values)

    scene = tmp_path / "scene.tif"
    shutil.copy(real_scenes["several"] / "c.tif", scene)
    predictor = load_predictor(lale_tiny_checkpoint)
    settings = {"block_rows": 1, "progress": False}
    reference = predict_paths([scene], predictor, tmp_path / "reference", **settings)[0]
    output = tmp_path / "out"
    with pytest.raises(RuntimeError, match="power cut"):
        predict_paths([scene], FailsAfterThreeBatches(predictor), output, **settings)
    done = list((output / ".lale-run" / "blocks").glob("*.done.json"))
    assert 0 < len(done) < 5 and not (output / "scene_classes.tif").exists()
    status = scene.stat()
    os.utime(scene, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    with pytest.raises(InferenceError, match=r"--resume: an input .* differs from the interrupted run"):
        predict_paths([scene], predictor, output, resume=True, **settings)
    os.utime(scene, ns=(status.st_atime_ns, status.st_mtime_ns))
    resumed = predict_paths([scene], predictor, output, resume=True, **settings)[0]
    assert digests(output) == digests(tmp_path / "reference")
    assert resumed["classes"] == reference["classes"]
