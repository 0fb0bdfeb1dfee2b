"""Where end-to-end prediction time goes: the pipeline's functions wrapped with timers for one run.

Each stage's time is exclusive (time spent in stages it calls is counted there), measured per thread: work done by a
background thread is listed with "(background)" and overlaps the main thread's. What no stage covers (batching,
blending the logits into the row buffer, the loop itself) is the remainder. The timers cost microseconds per call,
a few thousand calls per scene.
"""

import contextlib
import functools
import importlib
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

from .predict_timing import TimedPredictor, run_end_to_end


# (stage, defining module, attribute path): the functions of the prediction path. A module-level function is replaced
# wherever `lale_hf` holds it (a `from .x import f` copies the name), a method on its class. Missing ones are skipped
# and reported, so the profile survives refactoring of the pipeline.
STAGES = (
    ("scaling pass", "lale_hf.inference.scaling", "resolve_scaling"),
    ("reading", "lale_hf.inference.sources", "RasterioSource.read"),
    ("tile assembly", "lale_hf.inference.tiling", "_read_tile"),
    ("scaling", "lale_hf.inference.scaling", "Scaling.apply"),
    ("normalisation", "lale_hf.preprocessing", "Preprocessing.to_array"),
    ("upsampling", "lale_hf.inference.tiling", "_upsample_to_labels"),
    ("argmax", "lale_hf.inference.tiling", "_argmax"),
    ("no-data mask", "lale_hf.inference.tiling", "_mask_nodata"),
    ("writing GeoTIFF", "lale_hf.inference.writers", "GeoTiffWriter.write"),
    ("closing GeoTIFF", "lale_hf.inference.writers", "GeoTiffWriter.close"),
    ("statistics", "lale_hf.inference.statistics", "AreaStatistics.update"),
    ("preview", "lale_hf.inference.writers", "Preview.update"),
    ("preview figure", "lale_hf.inference.visualization", "colorize_with_legend"),
    ("model", "lale_hf.inference.predictors", "TorchPredictor.__call__"),
    ("model", "lale_hf.inference.predictors", "OnnxPredictor.__call__"),
    # Block-wise prediction (several processes, resume): the loop over a rank's blocks, and the merge of the blocks
    # into the outputs.
    ("block loop", "lale_hf.inference.block_prediction", "predict_blocks"),
    ("assembly (merge)", "lale_hf.inference.block_prediction", "assemble_input"),
    ("COG copy", "lale_hf.inference.assembly", "copy_to_cog"),
)


class StageTimer:
    def __init__(self):
        self.totals = defaultdict(float)  # exclusive
        self.inclusive = defaultdict(float)  # with the stages called inside
        self.calls = defaultdict(int)
        self.local = threading.local()

    def wrap(self, stage: str, function):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            stack = self.local.__dict__.setdefault("stack", [])
            start = time.perf_counter()
            stack.append([stage, 0.0])
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                _, inner = stack.pop()
                key = stage if not stack or stack[0][0] != "scaling pass" else f"scaling pass: {stage}"
                if threading.current_thread() is not threading.main_thread():
                    key += " (background)"
                self.totals[key] += elapsed - inner
                self.inclusive[key] += elapsed
                self.calls[key] += 1
                if stack:
                    stack[-1][1] += elapsed

        return timed


@contextlib.contextmanager
def patched_stages(timer: StageTimer):
    """Wraps every function of `STAGES` that exists; yields the stages that were not found."""
    restore, missing, found = [], [], []
    for stage, module_name, attribute in STAGES:
        try:
            owner = importlib.import_module(module_name)
        except ImportError:
            missing.append(f"{module_name}.{attribute}")
            continue
        *parents, name = attribute.split(".")
        for parent in parents:
            owner = getattr(owner, parent, None)
        original = getattr(owner, name, None) if owner is not None else None
        if original is None:
            missing.append(f"{module_name}.{attribute}")
        else:
            found.append((stage, owner, parents, name, original))
    # Every module is imported now, so every `from .x import f` copy of a function can be found.
    modules = [module for key, module in list(sys.modules.items()) if key.startswith("lale_hf") and module]
    for stage, owner, parents, name, original in found:
        wrapped = timer.wrap(stage, original)
        holders = [owner] if parents else [m for m in modules if getattr(m, name, None) is original]
        for holder in holders:
            setattr(holder, name, wrapped)
            restore.append((holder, name, original))
    try:
        yield missing
    finally:
        for owner, name, original in reversed(restore):
            setattr(owner, name, original)


def profile_stages(scene: Path, predictor, output_dir: Path, settings: dict, name: str | None = None) -> dict:
    """One end-to-end run with every stage timed; seconds per stage, the model's, the remainder and the total."""
    timer = StageTimer()
    timed = TimedPredictor(predictor)
    with patched_stages(timer) as missing:
        total = run_end_to_end(scene, timed, output_dir, settings)
    stages = dict(sorted(timer.totals.items(), key=lambda item: -item[1]))
    if "model" not in stages:  # a predictor class the stages do not list
        stages["model"] = timed.seconds
    main_thread = sum(seconds for stage, seconds in stages.items() if not stage.endswith("(background)"))
    stages["remainder (batching, blending, loop)"] = max(total - main_thread, 0.0)
    return {
        "backend": name or predictor.backend,
        "total_s": total,
        "stages_s": stages,
        "calls": dict(timer.calls),
        "not_found": missing,
    }
