"""Loads a LALE checkpoint the way a user without the lale_hf package does: Auto classes with trust_remote_code.

Run as a script: `python remote_code_client.py MODEL INPUTS.safetensors OUTPUTS.safetensors IMAGE.png`.
"""

import importlib.machinery
import importlib.util
import json
import sys


# Make lale_hf unreachable: drop the repository from sys.path and the editable-install finder from sys.meta_path.
sys.path = [p for p in sys.path if importlib.machinery.PathFinder.find_spec("lale_hf", [p or "."]) is None]
sys.meta_path = [finder for finder in sys.meta_path if "editable" not in repr(finder).lower()]
if importlib.util.find_spec("lale_hf") is not None:
    raise SystemExit("lale_hf is still importable; the test would prove nothing")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForSemanticSegmentation,
    pipeline,
)


model_id, inputs_path, outputs_path, image_path = sys.argv[1:5]
pixel_values = load_file(inputs_path)["pixel_values"]
config = AutoConfig.from_pretrained(model_id, trust_remote_code=True)
model = AutoModelForSemanticSegmentation.from_pretrained(model_id, trust_remote_code=True).eval()
encoder = AutoModel.from_pretrained(model_id, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(model_id, trust_remote_code=True)
image = Image.open(image_path)
with torch.no_grad():
    logits = model(pixel_values).logits
    processed_logits = model(**processor(image, return_tensors="pt")).logits
    encoder_output = encoder(pixel_values).last_hidden_state
segmenter = pipeline("image-segmentation", model=model_id, trust_remote_code=True)
segments = segmenter(image)
save_file({"logits": logits, "processed_logits": processed_logits, "encoder_output": encoder_output}, outputs_path)
print(
    json.dumps(
        {
            "config_class": type(config).__name__,
            "model_module": type(model).__module__,
            "processor_class": type(processor).__name__,
            "lale_hf_imported": "lale_hf" in sys.modules,
            "segments": [{"label": s["label"], "size": list(s["mask"].size)} for s in segments],
        }
    )
)
