"""The promises of docs/security.md that no other test file covers: pickled weights are never loaded, and a
checkpoint's own code never runs without trust_remote_code."""

import json

import pytest
import torch

from lale_hf import LaleConfig, LaleForSemanticSegmentation
from lale_hf.inference import InferenceError
from lale_hf.inference.predictors import load_predictor


def test_a_pickled_checkpoint_is_refused_not_unpickled(tmp_path):
    folder = tmp_path / "pickled"
    model = LaleForSemanticSegmentation(LaleConfig())
    model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"

    class Payload:  # unpickling this object would create the marker file
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"payload": Payload(), **model.state_dict()}, folder / "pytorch_model.bin")
    with pytest.raises(InferenceError, match="no file named model.safetensors"):
        load_predictor(str(folder))
    assert not marker.exists()


def test_checkpoint_code_does_not_run_without_trust_remote_code(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    marker = tmp_path / "executed"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (folder / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil-seg",
                "auto_map": {
                    "AutoConfig": "configuration_evil.EvilConfig",
                    "AutoModelForSemanticSegmentation": "modeling_evil.EvilModel",
                },
            }
        )
    )
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_predictor(str(folder))
    assert not marker.exists()
