"""What a run's samples say: best paths, paired ratios, fractions of the matmul peak, and the targets."""

from collections.abc import Iterable
from dataclasses import dataclass

from .timing import paired_ratio


@dataclass(frozen=True)
class Target:
    """An acceptance target: a paired ratio, a fraction of the matmul peak, or a static count of `model`."""

    kind: str  # "ratio", "peak_fraction", "params_m" or "gmacs"
    model: str
    measure: str = ""  # "inference/eager", "inference/best" or "train/eager"
    other: str = ""  # the ratio's denominator
    min: float | None = None
    max: float | None = None


# The project's efficiency targets on its 2-core CPU machine, evaluated on the fp32 figures of a run.
TARGETS = (
    Target("ratio", "lale-tiny", "inference/eager", "segformer-b0", min=1.5),
    Target("ratio", "lale-tiny", "inference/eager", "upernet-convnext-7m", min=2.5),
    Target("ratio", "lale-tiny", "inference/eager", "mobilevit-xxs-deeplabv3", min=1.3),
    Target("ratio", "lale-tiny", "train/eager", "segformer-b0", min=1.8),
    Target("ratio", "lale-tiny", "inference/best", "segformer-b0", min=3.0),
    Target("peak_fraction", "lale-tiny", "inference/best", min=0.5),
    Target("params_m", "lale-tiny", min=1.52, max=1.68),
    Target("gmacs", "lale-tiny", max=0.6),
)


def _key(record: dict) -> str:
    return f"{record['model']}|{record['dtype']}|{record['mode']}|{record['path']}|b{record['batch_size']}"


def timed_records(run: dict) -> dict[str, dict]:
    """The measurements that were checked and timed, by `model|dtype|mode|path|bN`."""
    return {_key(r): r for r in run["measurements"] if r["status"] == "ok" and "samples" in r}


def best_paths(run: dict) -> dict[str, dict]:
    """For every `model|dtype|bN`: the timed inference record with the highest median throughput."""
    best = {}
    for record in timed_records(run).values():
        if record["mode"] == "inference":
            slot = f"{record['model']}|{record['dtype']}|b{record['batch_size']}"
            if slot not in best or record["median"] > best[slot]["median"]:
                best[slot] = record
    return best


def find_series(run: dict, measure: str, model: str, dtype: str, batch_size: int) -> dict | None:
    """The timed record of `measure` ("inference/eager", "inference/best" or "train/eager") for one model."""
    if measure == "inference/best":
        return best_paths(run).get(f"{model}|{dtype}|b{batch_size}")
    mode, path = measure.split("/")
    return timed_records(run).get(f"{model}|{dtype}|{mode}|{path}|b{batch_size}")


def _path_speedups(run: dict, model: str, eager: dict, where: dict) -> list[dict]:
    """Every other timed path of `model` at the same dtype and batch size, paired against its eager series."""
    slot = (model, where["dtype"], "inference", where["batch_size"])
    speedups = []
    for record in timed_records(run).values():
        if (record["model"], record["dtype"], record["mode"], record["batch_size"]) == slot and record[
            "path"
        ] != "eager":
            pairing = paired_ratio(record["samples"], eager["samples"])
            speedups.append({**where, "model": model, "path": record["path"], **pairing})
    return speedups


def summarize(run: dict, reference: str = "lale-tiny") -> dict:
    """The reference model's paired ratios against every model, path speed-ups, fractions of the matmul peak."""
    settings = run["settings"]
    measures = [(m, b) for m in ("inference/eager", "inference/best") for b in settings["inference_batch_sizes"]]
    measures.append(("train/eager", settings["train_batch_size"]))
    ratios, fractions, speedups = [], [], []
    for dtype in settings["dtypes"]:
        peak = run["matmul_peak"][dtype]
        for model in settings["models"]:
            info = run["models"][model]
            for measure, batch_size in measures:
                series = find_series(run, measure, model, dtype, batch_size)
                if series is None:
                    continue
                where = {"dtype": dtype, "measure": measure, "batch_size": batch_size}
                other = find_series(run, measure, reference, dtype, batch_size) if model != reference else None
                if other is not None:
                    pairing = paired_ratio(other["samples"], series["samples"])
                    ratios.append({**where, "numerator": reference, "denominator": model, **pairing})
                gflop = info["train_gflops_per_image"] if measure.startswith("train") else 2 * info["gmacs"]
                achieved = [gflop * images for images in series["samples"]]
                fractions.append(
                    {**where, "model": model, "path": series["path"], **paired_ratio(achieved, peak["samples"])}
                )
                if measure == "inference/eager":
                    speedups += _path_speedups(run, model, series, where)
    summary = {"reference": reference, "ratios": ratios, "peak_fractions": fractions, "path_speedups": speedups}
    summary["best_paths"] = {slot: record["path"] for slot, record in best_paths(run).items()}
    summary["targets"] = evaluate_targets(run, summary) if "fp32" in settings["dtypes"] else []
    return summary


def target_name(target: Target, settings: dict) -> str:
    largest, size = max(settings["inference_batch_sizes"]), settings["image_size"]
    batch = settings["train_batch_size"] if target.measure.startswith("train") else largest
    measure = {"inference/eager": "eager inference", "inference/best": "best path", "train/eager": "training"}
    if target.kind == "ratio":
        return f"{measure[target.measure]} b{batch}: {target.model} / {target.other}"
    if target.kind == "peak_fraction":
        return f"{measure[target.measure]} b{batch}: {target.model}, fraction of the fp32 matmul peak"
    return f"{target.model} {'parameters (M)' if target.kind == 'params_m' else f'GMACs at {size}x{size}'}"


def evaluate_targets(run: dict, summary: dict, targets: Iterable[Target] = TARGETS) -> list[dict]:
    """`targets` on the run's fp32 figures; those whose models were not run are left out."""
    settings = run["settings"]
    results = []
    for target in targets:
        train = target.measure.startswith("train")
        batch = settings["train_batch_size"] if train else max(settings["inference_batch_sizes"])
        where = {"dtype": "fp32", "measure": target.measure, "batch_size": batch}
        if target.kind == "ratio":
            where.update(numerator=target.model, denominator=target.other)
            found = [r["median"] for r in summary["ratios"] if where.items() <= r.items()]
        elif target.kind == "peak_fraction":
            where["model"] = target.model
            found = [f["median"] for f in summary["peak_fractions"] if where.items() <= f.items()]
        elif target.model in run["models"]:
            info = run["models"][target.model]
            found = [info["params"] / 1e6 if target.kind == "params_m" else info["gmacs"]]
        else:
            found = []
        if found:
            value = found[0]
            met = (target.min is None or value >= target.min) and (target.max is None or value <= target.max)
            name = target_name(target, settings)
            results.append({"name": name, "value": value, "min": target.min, "max": target.max, "met": met})
    return results


def compare_runs(numerator_run: dict, denominator_run: dict) -> list[dict]:
    """Paired ratios of every workload timed in both runs (e.g. tcmalloc over glibc, taken in lockstep)."""
    denominator = timed_records(denominator_run)
    comparisons = []
    for key, record in timed_records(numerator_run).items():
        if key in denominator and len(record["samples"]) == len(denominator[key]["samples"]):
            fields = {k: record[k] for k in ("model", "dtype", "mode", "path", "batch_size")}
            comparisons.append({**fields, **paired_ratio(record["samples"], denominator[key]["samples"])})
    return comparisons
