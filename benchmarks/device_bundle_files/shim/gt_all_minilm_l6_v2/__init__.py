"""MiniLM rebuilt from the bundle's packed weights (once, in $BUNDLE_MINILM_DIR)."""

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PACKED = Path(__file__).resolve().parents[2] / "backbones" / "minilm"
BUILT = Path(os.environ.get("BUNDLE_MINILM_DIR", "/tmp/minilm-from-bundle"))


def get_model_path() -> str:
    if not (BUILT / "model.safetensors").exists():
        BUILT.mkdir(parents=True, exist_ok=True)
        tensors = load_file(str(PACKED / "packed.safetensors"))
        rows, kept = tensors.pop("kept_rows"), tensors.pop("kept_word_embeddings")
        full = torch.zeros(int(tensors.pop("vocab_size")), kept.shape[1])
        full[rows] = kept.float()
        tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
        tensors["embeddings.word_embeddings.weight"] = full
        for f in PACKED.iterdir():
            if f.name != "packed.safetensors":
                (BUILT / f.name).write_bytes(f.read_bytes())
        save_file(tensors, str(BUILT / "model.safetensors"))
    return str(BUILT)
