"""Checkpoint I/O: native weights_only format, safe official import, refusals with specific messages."""
import json
import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from addon_tests.crafted import code_running_checkpoint, official_zip
from addon_tests.paths import FIXTURES, ROOT
from model_core.checkpoint import (CheckpointError, UnsafeCheckpointError, convert_official, describe,
                                   load_checkpoint, read_official, save_native, tensors_sha256)
from model_core.network import ModelConfig, PoseDiffusion
from model_core.skeleton import TED_GESTURE


@pytest.mark.parametrize("name,dim,params", [("ted_small", 27, 280951), ("expressive_small", 126, 296989)])
def test_official_fixtures_load_safely(name, dim, params):
    raw = read_official(FIXTURES / f"{name}_checkpoint.bin")
    assert raw["epoch"] == 499 and raw["pose_dim"] == dim
    assert type(raw["lang_model"]).__name__ == "_Record" and raw["lang_model"].word_embedding_weights.shape == (19, 300)
    ckpt = load_checkpoint(FIXTURES / f"{name}_checkpoint.bin")
    assert ckpt.source_format == "official" and ckpt.config.pose_dim == dim
    assert sum(p.numel() for p in ckpt.model.parameters()) == params
    assert ckpt.model.audio_encoder.feat_extractor[1].num_batches_tracked.item() == 40


def test_torch_safe_loader_refuses_official_files():
    with pytest.raises(pickle.UnpicklingError):
        torch.load(FIXTURES / "ted_small_checkpoint.bin", weights_only=True)


def test_convert_then_native_loads_with_weights_only(tmp_path):
    native = tmp_path / "ted.pt"
    official = convert_official(FIXTURES / "ted_small_checkpoint.bin", native)
    payload = torch.load(native, weights_only=True)
    assert payload["format"] == "diffgesture-native" and payload["skeleton"] == "ted_gesture"
    assert payload["provenance"]["converted_from"] == "ted_small_checkpoint.bin"
    again = load_checkpoint(native)
    for (k, a), b in zip(official.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert again.sha256 != official.sha256


def test_fp16_storage_is_compact_and_loads_as_float32(tmp_path):
    model = PoseDiffusion(ModelConfig(hidden_dim=64, block_depth=2))
    save_native(tmp_path / "a.pt", model, TED_GESTURE)
    save_native(tmp_path / "b.pt", model, TED_GESTURE, dtype=torch.float16)
    assert (tmp_path / "b.pt").stat().st_size < 0.6 * (tmp_path / "a.pt").stat().st_size
    loaded = load_checkpoint(tmp_path / "b.pt").model
    assert loaded.diffusion_net.net.linear.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.diffusion_net.net.linear.weight, model.diffusion_net.net.linear.weight,
                               atol=1e-3, rtol=1e-3)
    assert torch.equal(loaded.schedule.alpha_bars, model.schedule.alpha_bars), "schedule buffers stay float32"


def test_crafted_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = code_running_checkpoint(tmp_path / "evil.bin", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system|os\.system"):
        load_checkpoint(evil)
    assert not marker.exists(), "the payload must never execute"


def test_unexpected_global_in_an_official_file_is_named(tmp_path):
    import datetime
    data = pickle.dumps({"args": {"when": datetime.date(2023, 1, 1)}, "state_dict": {}}, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="datetime.date"):
        load_checkpoint(official_zip(tmp_path / "extra.bin", data))


@pytest.mark.parametrize("make,message", [
    (lambda p: p, "not found"),
    (lambda p: (p.write_bytes(b""), p)[1], "empty"),
    (lambda p: (p.write_bytes(os.urandom(4096)), p)[1], "not a PyTorch checkpoint"),
    (lambda p: (p.write_bytes((FIXTURES / "ted_small_checkpoint.bin").read_bytes()[:300_000]), p)[1], "not a PyTorch"),
])
def test_bad_files_give_specific_errors(tmp_path, make, message):
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(make(tmp_path / "x.bin"))


def test_directory_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint(tmp_path)


def test_shape_mismatch_names_the_keys(tmp_path):
    model = PoseDiffusion(ModelConfig(hidden_dim=64, block_depth=2))
    save_native(tmp_path / "m.pt", model, TED_GESTURE)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["config"]["hidden_dim"] = 128
    del payload["state_dict"]["null_cond_emb"]
    payload["tensors_sha256"] = tensors_sha256(payload["state_dict"])  # a consistent file from a buggy writer
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "bad.pt")
    text = str(err.value)
    assert "missing keys: null_cond_emb" in text and "diffusion_net.net.linear.weight: file (64, 90) vs model (128, 90)" in text


def test_storage_missing_from_archive_is_reported(tmp_path):
    src = zipfile.ZipFile(FIXTURES / "ted_small_checkpoint.bin")
    out = tmp_path / "partial.bin"
    with zipfile.ZipFile(out, "w") as zf:
        for item in src.namelist():
            if not item.endswith("/data/3"):
                zf.writestr(item, src.read(item))
    with pytest.raises(CheckpointError, match="storage 3 is missing"):
        load_checkpoint(out)


def _edited(ckpt, path, edit, redigest=True):
    """The native fixture with its payload edited by `edit(payload)`; the digest recomputed unless told not to."""
    payload = torch.load(ckpt, weights_only=True)
    edit(payload)
    if redigest and "tensors_sha256" in payload:
        payload["tensors_sha256"] = tensors_sha256(payload["state_dict"])
    torch.save(payload, path)
    return path


def test_a_changed_weight_in_a_native_file_fails_its_digest(ckpt, tmp_path):
    assert load_checkpoint(ckpt).integrity == "tensor digest verified"
    def flip(p):
        w = p["state_dict"]["diffusion_net.net.linear.weight"]
        w.view(torch.int32)[3, 5] ^= 1 << 30  # one exponent bit: the weight becomes ~1e38, still finite
    with pytest.raises(CheckpointError, match="its tensors do not match the digest stored in the file"):
        load_checkpoint(_edited(ckpt, tmp_path / "flipped.pt", flip, redigest=False))


def test_format_1_native_file_without_a_digest_loads_and_says_so(ckpt, tmp_path):
    def legacy(p):
        p["format_version"] = 1
        del p["tensors_sha256"]
    old = load_checkpoint(_edited(ckpt, tmp_path / "v1.pt", legacy))
    assert old.integrity.startswith("not verified: format 1 files carry no digest")
    r = subprocess.run([sys.executable, "-m", "model_core", "info", str(tmp_path / "v1.pt")], capture_output=True,
                       text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert json.loads(r.stdout)["integrity"] == old.integrity


@pytest.mark.parametrize("edit,message", [
    (lambda p: p.update(mean_dir_vec=p["mean_dir_vec"][:-1]), "mean_dir_vec has 26 values, the ted_gesture "
                                                              "skeleton needs 27"),
    (lambda p: p["config"].update(n_heads=0), "n_heads must be an integer within 1..64, not 0"),
    (lambda p: p["config"].update(n_heads=7), "must be even and divisible by n_heads 7"),
    (lambda p: p["config"].update(hidden_dim="64"), "hidden_dim must be an integer within 2..4096, not '64'"),
    (lambda p: p["config"].update(colour="red"), "invalid config: .*unexpected keyword argument 'colour'"),
    (lambda p: p.update(config=[1, 2]), "its config or state dict is not a table"),
    (lambda p: p.update(skeleton="octopus"), "unknown skeleton 'octopus'"),
    (lambda p: p.update(format_version="2"), "invalid native format version '2'"),
    (lambda p: p["state_dict"]["null_cond_emb"].fill_(float("nan")), "non-finite weights .* in null_cond_emb"),
], ids=["mean-length", "heads-0", "heads-7", "string-dim", "unknown-key", "config-list", "skeleton",
        "version-type", "nan-weights"])
def test_invalid_native_contents_are_refused_at_load(ckpt, tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(_edited(ckpt, tmp_path / "bad.pt", edit))


def test_errors_without_a_message_are_still_described(tmp_path):
    data = b"\x80\x02}(X\x04\x00\x00\x00args}X\n\x00\x00\x00state_dict}u" + b"\x8a\x09"  # LONG1 cut short
    with pytest.raises(CheckpointError, match=r"x.bin is damaged or not a DiffGesture checkpoint \(EOFError\)$"):
        load_checkpoint(official_zip(tmp_path / "x.bin", data))
    assert describe(KeyError()) == "KeyError" and describe(ValueError("a\nb")) == "ValueError: a"


def test_special_files_are_named(tmp_path):
    os.mkfifo(tmp_path / "pipe.pt")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(tmp_path / "pipe.pt")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint("/dev/zero")
    with pytest.raises(CheckpointError, match=r"cannot open the checkpoint \(File name too long\)"):
        load_checkpoint(tmp_path / ("x" * 5000))


def respelled(src, dst, module: bytes):
    """A copy of an official file whose pickle names numpy's _reconstruct under another module path."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("data.pkl"):
                assert b"numpy.core.multiarray\n_reconstruct" in data  # how 2023-era official files spell it
                data = data.replace(b"numpy.core.multiarray\n_reconstruct", module + b"\n_reconstruct")
            zout.writestr(item, data)
    return dst


@pytest.mark.parametrize("numpy_line", ["numpy 2", "numpy 1.26"])
@pytest.mark.parametrize("module", [b"numpy.core.multiarray", b"numpy._core.multiarray"])
def test_official_files_load_under_both_numpy_lines(tmp_path, numpy_line, module):
    """requirements/torch.txt allows numpy>=1.26: both spellings of the global load under both numpy lines."""
    import subprocess
    import sys
    from addon_tests.paths import NUMPY1, ROOT
    path = respelled(FIXTURES / "ted_small_checkpoint.bin", tmp_path / "ckpt.bin", module)
    assert numpy_line == "numpy 2" or (NUMPY1 / "numpy").is_dir(), f"numpy 1.26 is missing from {NUMPY1}"
    pythonpath = os.pathsep.join([str(NUMPY1)] * (numpy_line == "numpy 1.26") + [str(ROOT)])
    code = ("import sys, numpy; from model_core.checkpoint import read_official, load_checkpoint; "
            "raw = read_official(sys.argv[1]); ckpt = load_checkpoint(sys.argv[1]); "
            "print(numpy.__version__, raw['lang_model'].word_embedding_weights.shape, ckpt.config.pose_dim)")
    out = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code, str(path)],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=pythonpath))
    assert out.returncode == 0, out.stderr[-2000:]
    version, shape = out.stdout.split(" ", 1)
    assert version.startswith("1.26" if numpy_line == "numpy 1.26" else "2.")
    assert shape.strip() == "(19, 300) 27"
