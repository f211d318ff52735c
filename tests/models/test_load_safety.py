"""Model folders and masks are untrusted: pickles are never unpickled, shipped code is never run.

Each refused file carries a payload that creates a marker file when unpickled or imported; the
tests check both the clear error and that the marker never appears.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig
from typer.testing import CliRunner

from forgetlab.cli import app
from forgetlab.masks import Mask, MaskError
from forgetlab.models.load import ModelPathError, load, load_model, load_tokenizer


class Payload:
    """Unpickling this opens (creates) ``marker``: stands for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def text_model_folder(path: Path) -> Path:
    path.mkdir()
    LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2).save_pretrained(path)  # fmt: skip
    return path


def test_the_payload_really_runs_when_unpickled(tmp_path) -> None:
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()  # so its absence below means "never unpickled"


@pytest.mark.parametrize("decoy", [False, True], ids=["bin-only", "bin-beside-another-safetensors"])
def test_pickled_weights_are_refused_and_never_unpickled(tmp_path, decoy) -> None:
    folder = text_model_folder(tmp_path / "model")
    marker = tmp_path / "ran"
    torch.save({"model.embed_tokens.weight": Payload(marker)}, folder / "pytorch_model.bin")
    if decoy:  # a stray safetensors file must not let from_pretrained fall back to the .bin
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(folder / "adapter.safetensors"))
    match = "cannot load" if decoy else "pickled weights .* safetensors only"
    with pytest.raises(ModelPathError, match=match):
        load_model(folder)
    assert not marker.exists()


def test_code_shipped_in_a_model_folder_is_not_run(tmp_path) -> None:
    folder = text_model_folder(tmp_path / "model")
    marker = tmp_path / "ran"
    config = json.loads((folder / "config.json").read_text())
    config |= {"model_type": "evil", "architectures": ["EvilForCausalLM"],
               "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                            "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    code = f"open({str(marker)!r}, 'w')\n"
    for name in ("configuration_evil.py", "modeling_evil.py"):
        (folder / name).write_text(code)
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelPathError, match="ships its own Python code .* trust_remote_code=True"):
        load_model(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["tok_evil.Tok", None]}}))
    (folder / "tok_evil.py").write_text(code)
    with pytest.raises(ModelPathError, match="ships its own Python code"):
        load_tokenizer(folder)
    with pytest.raises(ModelPathError):
        load(folder)
    assert not marker.exists()


def test_a_pickled_mask_is_refused_and_never_unpickled(tmp_path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "mask.pt"
    torch.save({"w": Payload(marker)}, path)
    with pytest.raises(MaskError, match="not a readable safetensors mask .* never unpickles"):
        Mask.load(path)
    renamed = tmp_path / "mask.safetensors"  # the name does not matter: the content is checked
    path.rename(renamed)
    result = CliRunner().invoke(app, ["unlearn", "--method", "mmunlearner", "--model", str(tmp_path / "m"),
                                      "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                                      "--mask", str(renamed)])  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith(f"error: {renamed} is not a readable safetensors mask"), result.output
    assert not marker.exists()


def test_malformed_config_files_name_the_file(tmp_path) -> None:
    folder = text_model_folder(tmp_path / "model")
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelPathError, match=r"config\.json holds list, not a JSON object"):
        load_model(folder)
    (folder / "config.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ModelPathError, match=r"config\.json is not valid JSON"):
        load_model(folder)
