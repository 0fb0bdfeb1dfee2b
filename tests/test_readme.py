"""Every ```python block of README.md runs, each in a fresh interpreter, offline, in an empty working directory.

The blocks are read from README.md when the tests are collected, so edits to the README are tested as they land.
What a block may rely on, and nothing else:
- the Hub id `org/lale-tiny`, served from the session's HF cache (a random-weight lale-tiny saved with its code files
  and image processor, written in the documented cache layout), so the `from_pretrained`, `trust_remote_code` and
  pipeline blocks run as written;
- `patch.png` in the working directory: a real 256x256 RGB patch of s2glc-sample/val;
- the names in `STAND_INS` when a block uses them without defining them (README fragments such as `bands`).
A block that uses another Hub id or another undefined name fails with a message saying what to add here.

Skipped blocks: none. A block may be skipped only if it needs something that cannot run offline here; list it in
`SKIPPED_BLOCKS` by a line it contains, with the reason. Blocks in other languages (```bash) are never run.
"""

import ast
import builtins
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest


README = Path(__file__).resolve().parents[1] / "README.md"
SERVED_HUB_IDS = {"org/lale-tiny"}
SKIPPED_BLOCKS: dict[str, str] = {}  # a line of the block -> why it cannot run offline

# Undefined name -> (what it stands for, the code that defines it in the block's working directory).
STAND_INS = {
    "bands": (
        "a real Sentinel-2 patch (H, W, 4), uint16 B, G, R, NIR, from s2glc-sample/raw-tif",
        "import numpy as np\nbands = np.load('bands.npy')\n",
    ),
}

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def python_blocks(markdown: str) -> list[tuple[int, str]]:
    """(line number, code) of each fenced block whose info string names Python (`python`, `py`)."""
    blocks = []
    for match in FENCE.finditer(markdown):
        language = match["info"].strip().split(" ")[0].lower()
        if language in ("python", "py", "python3"):
            line = markdown.count("\n", 0, match.start()) + 1
            blocks.append((line, textwrap.dedent(match["body"])))
    return blocks


def undefined_names(code: str) -> set[str]:
    """Names a block reads but neither assigns, imports nor defines anywhere (and that are no builtins)."""
    tree = ast.parse(code)
    defined, read = set(dir(builtins)), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else defined).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
    return read - defined


def hub_ids(code: str) -> set[str]:
    """String constants shaped like a Hub repo id (`owner/name`)."""
    return {
        node.value
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and HUB_ID.match(node.value)
    }


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks_and_extraction_reads_fences():
    assert len(BLOCKS) >= 5, f"found only {len(BLOCKS)} python blocks in {README}"
    sample = "text\n```bash\nls\n```\n- item\n\n  ```python\n  x = 1\n  print(x)\n  ```\n```py\ny = 2\n```\n"
    assert python_blocks(sample) == [(7, "x = 1\nprint(x)\n"), (11, "y = 2\n")]
    assert undefined_names("from a import b\nc = b(d)\nprint([i for i in c])") == {"d"}
    assert hub_ids('m = f("org/lale-tiny", "patch.png", "image-segmentation")') == {"org/lale-tiny"}


@pytest.fixture
def block_workdir(tmp_path, s2glc_sample) -> Path:
    """An empty working directory holding the files README blocks may open."""
    patch = sorted((s2glc_sample / "val" / "images").glob("*.png"))[0]
    shutil.copyfile(patch, tmp_path / "patch.png")
    return tmp_path


def write_bands(folder: Path, sample: Path) -> None:
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(sample / "raw-tif" / "s2glc_00003.tif") as source:
        np.save(folder / "bands.npy", source.read().transpose(1, 2, 0))


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line, code, block_workdir, s2glc_sample, cached_lale_tiny, clean_env):
    for marker, reason in SKIPPED_BLOCKS.items():
        if marker in code:
            pytest.skip(f"README.md:{line}: {reason}")
    unknown_ids = hub_ids(code) - SERVED_HUB_IDS
    assert not unknown_ids, (
        f"README.md:{line} uses Hub ids {sorted(unknown_ids)}; this test serves only {sorted(SERVED_HUB_IDS)} from "
        "a local cache: cache the new id too (tests/test_readme.py), or list the block in SKIPPED_BLOCKS with why"
    )
    missing = undefined_names(code)
    unknown_names = missing - set(STAND_INS)
    assert not unknown_names, (
        f"README.md:{line} uses {sorted(unknown_names)} without defining them: define them in the block, or add a "
        "stand-in to STAND_INS in tests/test_readme.py"
    )
    if "bands" in missing:
        write_bands(block_workdir, s2glc_sample)
    preamble = "".join(STAND_INS[name][1] for name in sorted(missing))
    script = block_workdir / "block.py"
    script.write_text(preamble + code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=block_workdir,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"README.md:{line} failed:\n{code}\n--- stderr ---\n{result.stderr[-4000:]}"
