"""The model cards: metadata huggingface_hub reads, figures that match the presets, no typed-in accuracy, and usage
snippets that run against locally cached org/lale-* checkpoints."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from huggingface_hub import ModelCard
from rasterio.transform import from_origin

from lale_hf import LaleConfig, LaleForSemanticSegmentation, LaleImageProcessor


REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # the benchmark library, outside the package
from lale_bench import model_figures  # noqa: E402


PRESETS = ("lale-tiny", "lale-small", "lale-base")
SECTIONS = (
    "## Usage",
    "## Architecture",
    "## Efficiency",
    "## Training",
    "## Evaluation",
    "## Intended use",
    "## Limitations",
    "## Citation",
)
CODE_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def card_path(name: str) -> Path:
    return REPO_ROOT / "model_cards" / name / "README.md"


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


@pytest.mark.parametrize("name", PRESETS)
def test_card_metadata_parses(name):
    card = ModelCard.load(card_path(name))
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-segmentation"
    assert {"remote-sensing", "land-cover", "semantic-segmentation", "sentinel-2"} <= set(data["tags"])
    assert data["datasets"] and all("/" in dataset for dataset in data["datasets"])
    assert "model-index" not in data and card.data.eval_results is None  # accuracy comes from a training run
    for heading in SECTIONS:
        assert f"\n{heading}\n" in card.text, heading
    # Every repository id in the card is this card's own.
    assert set(re.findall(r"org/lale-\w+", card.text)) == {f"org/{name}"}


@pytest.mark.parametrize("name", PRESETS)
def test_card_figures_match_the_preset(name):
    text = card_path(name).read_text()
    config = LaleConfig.from_preset(name)
    torch.manual_seed(0)
    figures = model_figures(LaleForSemanticSegmentation(config))
    assert f"| parameters | {figures['parameters']:,} |" in text
    assert f"| GMACs per 256x256 image | {figures['gmacs']:.3f} |" in text
    assert f"| `model.safetensors` (fp32) | {figures['safetensors_bytes'] / 1e6:.2f} MB |" in text
    assert "python benchmarks/benchmark_predict.py --model_figures" in text and "benchmarks/benchmark.py" in text

    def row(values):
        return " / ".join(map(str, values))

    for label, values in (
        ("stage widths", config.hidden_sizes),
        ("stage depths", config.depths),
        ("block types", config.block_types),
        ("attention heads (transformer stages)", config.num_attention_heads),
        ("MLP ratios", config.mlp_ratios),
    ):
        assert f"| {label} | {row(values)} |" in text, label
    assert f"| decoder width | {config.decoder_hidden_size} |" in text
    assert f"| stem | two 3x3 stride-2 convolutions, width {config.stem_hidden_size} |" in text


@pytest.mark.parametrize("name", PRESETS)
def test_card_types_in_no_accuracy(name):
    evaluation = section(card_path(name).read_text(), "## Evaluation")
    assert "training run" in evaluation and "scripts/train.py" in evaluation
    assert not re.search(r"\d+\.\d+|\d+ ?%", evaluation)


def write_cached_checkpoint(hf_home: Path, name: str) -> Path:
    """The HF cache layout for org/<name>, written by hand from a randomly initialised preset."""
    repo = hf_home / "hub" / f"models--org--{name}"
    commit = hashlib.sha1(name.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    torch.manual_seed(0)
    LaleForSemanticSegmentation(LaleConfig.from_preset(name)).save_pretrained(snapshot)
    LaleImageProcessor().save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


# Runs each card's Python usage blocks in a fresh namespace, and each `python scripts/...` line of its bash blocks as
# that script's __main__, in one interpreter for all cards so the imports are paid once. Each card works in its own
# folder, holding a real patch and a georeferenced 16-bit scene.
RUNNER = r"""
import json, os, runpy, shlex, sys
for card in json.load(open(sys.argv[1])):
    os.chdir(card["folder"])
    for index, (language, code) in enumerate(card["blocks"]):
        if language == "python":
            exec(compile(code, f"<{card['name']} usage block {index}>", "exec"), {"__name__": "__main__"})
        else:
            for line in code.splitlines():
                argv = shlex.split(line)
                assert argv[0] == "python" and argv[1].startswith("scripts/"), line
                sys.argv = argv[1:]
                runpy.run_path(argv[1], run_name="__main__")
        print(f"{card['name']} block {index} ok", flush=True)
"""


def test_usage_snippets_run_against_cached_checkpoints(s2glc_sample, tmp_path, clean_env):
    hf_home = tmp_path / "hf-home"
    with rasterio.open(s2glc_sample / "raw-tif" / "s2glc_00260.tif") as dataset:
        raw = dataset.read()
    scene = np.concatenate([raw, raw[:, :, ::-1]], axis=2)[:, :200, :]  # 200 x 512, B, G, R, NIR
    cards = []
    for name in PRESETS:
        blocks = CODE_BLOCK.findall(section(card_path(name).read_text(), "## Usage"))
        assert [language for language, _ in blocks] == ["python", "python", "python", "bash", "python"], name
        write_cached_checkpoint(hf_home, name)
        work = tmp_path / name
        work.mkdir()
        (work / "scripts").symlink_to(REPO_ROOT / "scripts")
        (work / "patch.png").write_bytes((s2glc_sample / "val" / "images" / "s2glc_00280.png").read_bytes())
        with rasterio.open(
            work / "scene.tif",
            "w",
            driver="GTiff",
            height=200,
            width=512,
            count=4,
            dtype="uint16",
            crs="EPSG:32632",
            transform=from_origin(400000.0, 5100000.0, 10.0, 10.0),
        ) as dataset:
            dataset.write(scene)
        cards.append({"name": name, "folder": str(work), "blocks": blocks})
    (tmp_path / "cards.json").write_text(json.dumps(cards))
    (tmp_path / "runner.py").write_text(RUNNER)

    env = {**clean_env, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "cards.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    for name in PRESETS:
        assert all(f"{name} block {index} ok" in result.stdout for index in range(5)), name
        for folder in ("maps", "maps-python"):
            with rasterio.open(tmp_path / name / folder / "scene_classes.tif") as classes:
                assert classes.crs.to_epsg() == 32632 and (classes.height, classes.width) == (200, 512)
    assert result.stdout.count("torch.Size([1, 7, 64, 64])") == 3
    assert result.stdout.count(" km² (") >= 3
