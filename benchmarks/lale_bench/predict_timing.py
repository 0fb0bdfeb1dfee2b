"""Model-alone against end-to-end prediction, timed on the same tiles, interleaved and paired round by round.

The tiles: one untimed end-to-end run of the scene records the exact `pixel_values` batches the pipeline feeds its
model (up to a memory cap; past it the recorded batches are reused, batch size for batch size, in the pipeline's
order). "Model alone" then feeds those batches, in the same order and shapes, to the same predictor object;
"end to end" is `predict_file` on the scene (scaling pass, reading, scaling, normalisation, model, blending,
upsampling, argmax, GeoTIFF, preview and statistics). Within a round each backend runs its two measurements back
to back, the order alternating from round to round, so the pair sees the same load; the ratio is taken per round.
"""

import itertools
import os
import resource
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lale_hf.inference import load_predictor, predict_file
from lale_hf.inference.predictors import Predictor


BACKENDS = ("eager", "compiled", "onnxruntime")


def load_backend(backend: str, models: dict[str, Path], threads: int) -> Predictor:
    """eager: the checkpoint as `predict.py` runs it on CPU (channels-last); compiled: `torch_compile=True`;
    onnxruntime: the ONNX export with `threads` intra-op threads."""
    if backend == "eager":
        return load_predictor(str(models["checkpoint"]))
    if backend == "compiled":
        return load_predictor(str(models["checkpoint"]), torch_compile=True)
    if backend == "onnxruntime":
        return load_predictor(str(models["onnx"]), num_threads=threads)
    raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}.")


class TimedPredictor(Predictor):
    """Delegates to `inner`, adds up the wall time of its model calls, and keeps copies of the batches it is fed
    until `keep_bytes` are held (the sizes of all batches are always recorded).

    `normalize` is the base class's (the inner predictor's preprocessing), so the pipeline takes the same path as
    with the inner predictor; a wrapped predictor with its own `normalize` is refused.
    """

    def __init__(self, inner: Predictor, keep_bytes: int = 0):
        if type(inner).normalize is not Predictor.normalize:
            raise ValueError(f"{type(inner).__name__} has its own normalize(); the recorded batches would differ.")
        super().__init__(inner.name, inner.id2label, inner.preprocessing)
        self.inner = inner
        self.backend = inner.backend
        self.keep_bytes = keep_bytes
        self.kept: list[np.ndarray] = []
        self.kept_logits: list = []
        self.batch_sizes: list[int] = []
        self.seconds = 0.0

    def __getattr__(self, name):
        # Anything else a pipeline asks of a predictor (device, dtype...) is the inner predictor's.
        return getattr(self.__dict__["inner"], name)

    def reset(self):
        self.seconds = 0.0
        self.batch_sizes = []

    def __call__(self, pixel_values: np.ndarray):
        if sum(batch.nbytes for batch in self.kept) + pixel_values.nbytes <= self.keep_bytes:
            self.kept.append(pixel_values.copy())
        self.batch_sizes.append(len(pixel_values))
        start = time.perf_counter()
        logits = self.inner(pixel_values)
        self.seconds += time.perf_counter() - start
        if len(self.kept_logits) < len(self.kept):
            self.kept_logits.append(logits.clone())
        return logits


def replay_plan(kept: list[np.ndarray], batch_sizes: list[int]) -> list[np.ndarray]:
    """The batches to feed, one per recorded call: the recorded batch itself where it was kept, otherwise the next
    kept batch of the same size, cycling."""
    if len(kept) == len(batch_sizes):
        return kept
    by_size = defaultdict(list)
    for batch in kept:
        by_size[len(batch)].append(batch)
    missing = sorted(set(batch_sizes) - set(by_size))
    if missing:
        raise ValueError(f"no recorded batch of size {missing}: raise --record_mib.")
    cycles = {size: itertools.cycle(batches) for size, batches in by_size.items()}
    return [next(cycles[size]) for size in batch_sizes]


class ReplayPredictor(Predictor):
    """Returns recorded logits, call after call, at no model cost: the pipeline alone, with real logits to blend,
    upsample, take the argmax of and write. Its rate is what end to end tends to as the model gets faster (a GPU)."""

    backend = "replay"

    def __init__(self, template: Predictor, logits: list):
        super().__init__("replayed logits", template.id2label, template.preprocessing)
        self.logits = logits
        self.calls = 0

    def __call__(self, pixel_values: np.ndarray):
        logits = self.logits[self.calls % len(self.logits)]
        self.calls += 1
        if len(logits) != len(pixel_values):
            raise ValueError(f"replayed logits for {len(logits)} tiles, the pipeline asked for {len(pixel_values)}.")
        return logits


def time_model_alone(predictor: Predictor, batches: list[np.ndarray]) -> float:
    start = time.perf_counter()
    for batch in batches:
        predictor(batch)
    return time.perf_counter() - start


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class PairedRun:
    """One backend's measurements: the per-round samples and what the recording run saw."""

    backend: str
    tiles: int
    batch_sizes: dict[int, int]
    distinct_batches: int
    rounds: list[dict] = field(default_factory=list)


def run_end_to_end(scene: Path, predictor: Predictor, output_dir: Path, settings: dict) -> float:
    start = time.perf_counter()
    predict_file(scene, predictor, output_dir, overwrite=True, progress=False, **settings)
    return time.perf_counter() - start


def measure_pairs(
    scene: Path,
    predictors: dict[str, Predictor],
    output_dir: Path,
    settings: dict,
    rounds: int,
    record_bytes: int,
    log: Callable[[str], None] = print,
) -> list[PairedRun]:
    """Records the batches in one untimed end-to-end run per distinct preprocessing (the batches do not depend on
    the backend otherwise), warms every backend up on each batch shape (compiles included), then takes `rounds`
    rounds of paired (model alone, end to end) samples per backend. Each round also runs the pipeline alone on the
    recorded logits (the last run returned)."""
    timed = {name: TimedPredictor(predictor, record_bytes) for name, predictor in predictors.items()}
    runs, plans, recorded = {}, {}, {}
    for name, predictor in timed.items():
        key = repr(predictor.preprocessing.to_dict())
        if key not in recorded:
            log(f"recording run ({name}): the batches the pipeline feeds its model")
            run_end_to_end(scene, predictor, output_dir / name, settings)
            recorded[key] = (replay_plan(predictor.kept, predictor.batch_sizes), predictor.batch_sizes, predictor.kept)
            if len(recorded) == 1:
                replay = ReplayPredictor(predictor, replay_plan(predictor.kept_logits, predictor.batch_sizes))
        plans[name], batch_sizes, kept = recorded[key]
        predictor.kept, predictor.kept_logits, predictor.keep_bytes = [], [], 0  # timed runs copy nothing
        for size in sorted(set(batch_sizes)):
            time_model_alone(predictor.inner, [next(batch for batch in plans[name] if len(batch) == size)])
        runs[name] = PairedRun(name, sum(batch_sizes), dict(Counter(batch_sizes)), len(kept))
    names = list(timed)
    pipeline = PairedRun("pipeline alone (replayed logits)", runs[names[0]].tiles, runs[names[0]].batch_sizes, 0)
    for round_index in range(rounds):
        replay.calls = 0
        sample = {"load_average": os.getloadavg()[0], "model_alone_s": 0.0, "model_in_pipeline_s": 0.0}
        sample["end_to_end_s"] = run_end_to_end(scene, replay, output_dir / "replay", settings)
        pipeline.rounds.append(sample)
        log(f"round {round_index + 1}/{rounds} pipeline alone: {sample['end_to_end_s']:.2f} s")
        # Backends take turns in a rotating order; inside a pair, which goes first alternates.
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            predictor = timed[name]
            sample = {"load_average": os.getloadavg()[0]}
            order = ("model_alone", "end_to_end") if round_index % 2 == 0 else ("end_to_end", "model_alone")
            for what in order:
                cpu = cpu_seconds()
                if what == "model_alone":
                    sample["model_alone_s"] = time_model_alone(predictor.inner, plans[name])
                else:
                    predictor.reset()
                    sample["end_to_end_s"] = run_end_to_end(scene, predictor, output_dir / name, settings)
                    sample["model_in_pipeline_s"] = predictor.seconds
                sample[f"{what}_cpu_s"] = cpu_seconds() - cpu
            sample["first"] = order[0]
            runs[name].rounds.append(sample)
            log(
                f"round {round_index + 1}/{rounds} {name}: model alone {sample['model_alone_s']:.2f} s, end to end "
                f"{sample['end_to_end_s']:.2f} s (model inside {sample['model_in_pipeline_s']:.2f} s), load "
                f"{sample['load_average']:.1f}"
            )
    return [*runs.values(), pipeline]
