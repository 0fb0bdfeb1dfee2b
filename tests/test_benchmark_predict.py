"""The prediction benchmark's code on tiny scenes: the cached scene, the recorded and replayed batches, the pairing,
the rates and the script's tables and JSON. Correctness only: no timing is asserted (the machine is shared)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from lale_hf.inference import load_predictor, plan_tiles, tiling
from lale_hf.inference.predictors import Predictor
from lale_hf.inference.scaling import Scaling
from lale_hf.preprocessing import Preprocessing


REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # the benchmark library sits beside its entry points

import benchmark_predict  # noqa: E402

from lale_bench.predict_profile import profile_stages  # noqa: E402
from lale_bench.predict_report import summarize_pairs, throughput_table  # noqa: E402
from lale_bench.predict_scene import cached_scene, raw_patches  # noqa: E402
from lale_bench.predict_timing import PairedRun, TimedPredictor, measure_pairs, replay_plan  # noqa: E402


SETTINGS = dict(bands="3,2,1", tile_size=256, overlap=0.25, batch_size=3)


def test_scene_is_deterministic_cached_and_made_of_real_patches(s2glc_sample, tmp_path):
    raw = s2glc_sample / "raw-tif"
    path = cached_scene(tmp_path / "a", 300, raw, seed=0)
    again = cached_scene(tmp_path / "a", 300, raw, seed=0)
    assert again == path
    assert cached_scene(tmp_path / "b", 300, raw, seed=0).read_bytes() == path.read_bytes()
    assert cached_scene(tmp_path / "b", 300, raw, seed=1).name != path.name
    with rasterio.open(path) as dataset:
        assert (dataset.count, dataset.height, dataset.width, dataset.dtypes[0]) == (4, 300, 300, "uint16")
        assert dataset.crs is not None
        corner = dataset.read(window=((0, 256), (0, 256)))
    # Every 256-pixel block is a real patch, rotated.
    assert any(np.array_equal(corner, np.rot90(p, k, axes=(1, 2))) for p in raw_patches(raw) for k in range(4))
    assert [p.name for p in (tmp_path / "a").iterdir()] == [path.name]  # no partial file left


def test_replay_plan_feeds_recorded_batches_in_the_pipelines_order_and_sizes():
    batches = [np.full((size, 1), index, dtype=np.float32) for index, size in enumerate([3, 3, 1, 3, 1])]
    assert replay_plan(batches, [3, 3, 1, 3, 1]) is batches
    # Only the first three were kept: the rest reuse kept batches of the same size, cycling.
    plan = replay_plan(batches[:3], [3, 3, 1, 3, 1])
    assert [int(b[0, 0]) for b in plan] == [0, 1, 2, 0, 2]
    with pytest.raises(ValueError, match=r"no recorded batch of size \[1\]"):
        replay_plan(batches[:2], [3, 3, 1])


def test_pairs_time_the_model_on_exactly_the_pipelines_batches(s2glc_sample, lale_tiny_checkpoint, tmp_path):
    scene = cached_scene(tmp_path / "cache", 384, s2glc_sample / "raw-tif")
    eager = load_predictor(str(lale_tiny_checkpoint))
    run, pipeline = measure_pairs(scene, {"eager": eager}, tmp_path / "out", SETTINGS, rounds=2, record_bytes=2**30)
    grid = plan_tiles(384, 384, 256, 0.25)
    assert run.tiles == grid.num_tiles == 4
    assert run.batch_sizes == {2: 2}  # batches never span tile rows: 2 tiles per row
    assert run.distinct_batches == 2
    assert [sample["first"] for sample in run.rounds] == ["model_alone", "end_to_end"]
    for sample in run.rounds:
        assert 0 < sample["model_in_pipeline_s"] < sample["end_to_end_s"]
        assert sample["model_alone_s"] > 0
    assert len(pipeline.rounds) == 2 and all(sample["end_to_end_s"] > 0 for sample in pipeline.rounds)
    # The pipeline alone replays the recorded logits: the same map as the model's.
    with rasterio.open(tmp_path / "out" / "eager" / f"{scene.stem}_classes.tif") as model_map:
        with rasterio.open(tmp_path / "out" / "replay" / f"{scene.stem}_classes.tif") as replayed_map:
            np.testing.assert_array_equal(model_map.read(), replayed_map.read())

    # The batches a fresh pipeline run feeds its model are those the model-alone time replays.
    recorder = TimedPredictor(eager, keep_bytes=2**30)
    from lale_hf.inference import predict_file

    predict_file(scene, recorder, tmp_path / "again", overwrite=True, progress=False, **SETTINGS)
    second = TimedPredictor(eager, keep_bytes=2**30)
    predict_file(scene, second, tmp_path / "again", overwrite=True, progress=False, **SETTINGS)
    for first, other in zip(recorder.kept, second.kept, strict=True):
        np.testing.assert_array_equal(first, other)


def test_rates_ratios_and_the_sentinel2_time():
    rounds = [
        {"end_to_end_s": 2.0, "model_alone_s": 1.0, "model_in_pipeline_s": 1.2},
        {"end_to_end_s": 4.0, "model_alone_s": 3.0, "model_in_pipeline_s": 3.2},
        {"end_to_end_s": 1.0, "model_alone_s": 0.9, "model_in_pipeline_s": 0.9},
    ]
    run = PairedRun("eager", tiles=100, batch_sizes={8: 12, 4: 1}, distinct_batches=13, rounds=rounds)
    summary = summarize_pairs(run, 2000, 2000)
    assert summary["end_to_end_mpx_s"] == {"median": 2.0, "min": 1.0, "max": 4.0}
    assert summary["ratio_end_to_end_over_model"] == {"median": 0.75, "min": 0.5, "max": 0.9}
    assert summary["pixels_per_tile"] == 40000
    assert summary["sentinel2_tile"]["seconds"] == pytest.approx(10980**2 / 2e6)
    assert summary["sentinel2_tile"]["how"].startswith("extrapolated")
    assert summarize_pairs(run, 10980, 10980)["sentinel2_tile"] == {
        "seconds": 2.0,
        "how": "measured (median end-to-end time of this scene)",
    }
    table = throughput_table([summary], 0.8)
    assert "| eager | 2.00 [1.00, 4.00] |" in table and "75% [50%, 90%] | not met |" in table


def test_stage_profile_finds_every_stage_of_the_pipeline(s2glc_sample, lale_tiny_checkpoint, tmp_path):
    scene = cached_scene(tmp_path / "cache", 300, s2glc_sample / "raw-tif")
    profile = profile_stages(scene, load_predictor(str(lale_tiny_checkpoint)), tmp_path / "out", SETTINGS)
    # A renamed pipeline function would drop out of the breakdown.
    stages = profile["stages_s"]
    for stage in ("model", "reading", "scaling", "normalisation", "upsampling", "argmax", "writing GeoTIFF"):
        assert stages[stage] > 0, stage
    assert sum(stages.values()) == pytest.approx(profile["total_s"], rel=0.05)


@pytest.mark.slow  # ONNX export and two predict.py child processes: about 40 s on two shared cores
def test_script_writes_tables_and_json(s2glc_sample, tmp_path, clean_env):
    command = [sys.executable, "benchmarks/benchmark_predict.py", "--size", "300", "--rounds", "1"]
    command += ["--backends", "eager", "onnxruntime", "--memory_sizes", "300", "--threads", "1"]
    command += ["--data", str(s2glc_sample), "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO_ROOT, env=clean_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "benchmark-predict.md").read_text()
    results = json.loads((tmp_path / "benchmark-predict.json").read_text())
    assert [row["backend"] for row in results["throughput"]] == ["eager", "onnxruntime"]
    assert [row["backend"] for row in results["memory"]] == ["eager", "onnxruntime"]
    assert all(row["peak_rss_mib"] > 100 for row in results["memory"])
    assert results["environment"]["threads"] == 1
    assert "| eager |" in report and "| onnxruntime |" in report and "Peak RSS" in report
    assert "(extrapolated)" in report and report in result.stdout


def test_script_refuses_bad_settings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark_predict.main(["--rounds", "0"])
    assert exit_info.value.code == 2 and "--rounds" in capsys.readouterr().err


# Pipeline speed: the batched, table-driven tile preparation gives the per-tile path's pixel values bit for bit.


class RecordingPredictor(Predictor):
    """Keeps the batches it is fed; zero logits."""

    def __init__(self, preprocessing: Preprocessing):
        super().__init__("recording", {index: str(index) for index in range(7)}, preprocessing)
        self.batches = []

    def __call__(self, pixel_values):
        self.batches.append(pixel_values.copy())
        return torch.zeros(len(pixel_values), 7, pixel_values.shape[2] // 4, pixel_values.shape[3] // 4)


def per_tile_batches(source, bands, nodata, scaling, grid, predictor, batch_size) -> list[np.ndarray]:
    """The reference: each tile read, scaled and normalised alone, as `_read_tile` does."""
    batches = []
    for y in grid.ys:
        for start in range(0, len(grid.xs), batch_size):
            tiles = [
                tiling._read_tile(source, bands, nodata, scaling, grid, y, x) for x in grid.xs[start:][:batch_size]
            ]
            batches.append(np.stack([predictor.normalize(tile) for tile in tiles]))
    return batches


FLIPPED = Preprocessing(do_normalize=False, flip_channel_order=True)  # MobileViT's: no mean/std, BGR


@pytest.mark.parametrize(
    "dtype, scaling, preprocessing, nodata",
    [
        ("uint16", Scaling("patch_max_median", peak=2500.0), Preprocessing(), None),
        ("uint16", Scaling("patch_max_median", peak=2500.0, offset=-1000.0), Preprocessing(), 2000),
        ("uint16", Scaling("gain", gain=0.085), FLIPPED, 4000),
        ("uint16", Scaling("per_patch_max"), Preprocessing(), None),
        ("uint8", Scaling("none"), Preprocessing(), None),
        ("float32", Scaling("scene_max", peak=3000.0), Preprocessing(), None),
    ],
)
def test_tile_batches_equal_tiles_prepared_one_by_one(s2glc_sample, dtype, scaling, preprocessing, nodata):
    from lale_hf.inference.sources import ImageSource, nodata_values

    raw = np.moveaxis(np.concatenate(raw_patches(s2glc_sample / "raw-tif")[:2], axis=2), 0, -1)[:250, :507]
    if dtype == "uint8":
        raw = (raw // 16).clip(0, 255)
    data = raw.astype(dtype)
    if dtype == "float32":
        data[10:20, 30:40, 1] = np.nan
    if nodata is not None:
        data[100:140, 200:260] = nodata  # a patch of no data in every band; it would scale to a non-zero value
    source = ImageSource(data, name="scene")
    source.nodata = None if nodata is None else (nodata,) * data.shape[-1]
    bands = (3, 2, 1)
    values = nodata_values(source, bands)
    grid = plan_tiles(*data.shape[:2], tile_size=128, overlap=0.25)
    assert grid.padded_width > grid.width  # the last tiles are edge-padded
    predictor = RecordingPredictor(preprocessing)
    for _ in tiling._batches(source, bands, values, scaling, grid, predictor, 3, range(len(grid.ys))):
        pass
    expected = per_tile_batches(source, bands, values, scaling, grid, predictor, 3)
    assert len(predictor.batches) == len(expected)
    for batch, reference in zip(predictor.batches, expected, strict=True):
        np.testing.assert_array_equal(batch, reference)


def test_one_process_run_records_its_stages_merge_and_memory(s2glc_sample, lale_tiny_checkpoint, tmp_path):
    from lale_bench.predict_processes import projection, run_processes

    scene = cached_scene(tmp_path / "cache", 300, s2glc_sample / "raw-tif")
    models = {"checkpoint": lale_tiny_checkpoint}
    run = run_processes(1, "eager", models, scene, tmp_path, {**SETTINGS, "batch_size": 8}, threads=1)
    (rank,) = run["ranks"]
    assert run["threads_per_process"] == [1] and rank["exit_code"] == 0
    assert 0 < run["predict_s"] < rank["wall_s"] < run["wall_s"] and 0 < run["merge_s"] < rank["wall_s"]
    assert rank["inclusive_s"]["model"] <= run["predict_s"]  # the model runs inside the block loop
    # VmHWM of the child itself, not the benchmark process's size carried through fork (ru_maxrss would include it).
    assert 100 < rank["peak_rss_mib"] <= rank["ru_maxrss_mib"]
    assert (tmp_path / "processes-1" / f"{scene.stem}_classes.tif").exists()
    # 10^11 px at 1 Mpx/s on 64 processes, merged at 10 Mpx/s: 1562.5 s + 10^4 s.
    assert projection(1e11, 1.0, 10.0, 64) == {"processes": 64, "predict_s": 1562.5, "merge_s": 1e4, "total_s": 11562.5}


def test_cog_assembly_benchmark_measures_each_size_in_its_own_process(tmp_path):
    output = tmp_path / "cog.json"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "benchmark_cog_assembly.py"), "--sizes", "512", "1700"]
    result = subprocess.run([*command, "--json", str(output)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(output.read_text())
    assert [row["size"] for row in rows] == [512, 1700] and "| 1700^2 | 3 |" in result.stdout
    # Each child starts from its own baseline: the peak is at least the RSS before the copy.
    assert all(row["peak_rss_mib"] >= row["rss_before_mib"] > 100 and row["cog_mib"] > 0 for row in rows)
