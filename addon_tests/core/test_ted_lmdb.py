"""The TED LMDB converter on databases written as the official ones were: pyarrow.serialize values, read back by
the pinned pyarrow 11 environment (requirements/ted_lmdb.txt) through training/legacy_lmdb.py's pickle-free
stream; and on pickled copies read in process."""
from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from addon_tests.paths import LMDB_PYTHON, ROOT
from model_core.skeleton import TED_EXPRESSIVE, TED_GESTURE, from_directions, joints_to_directions, to_joints
from training import data
from training.legacy_lmdb import read_records, write_records

# Run by the pinned interpreter: the official layout (keys '%010d', values pyarrow.serialize(video).to_buffer()),
# from arrays and fields this test made.
WRITE_OFFICIAL = """
import json, sys
import lmdb, numpy as np, pyarrow
src, out = sys.argv[1], sys.argv[2]
arrays, videos = np.load(src + ".npz"), json.load(open(src + ".json"))
env = lmdb.open(out, map_size=1 << 26)
with env.begin(write=True) as txn:
    for i, video in enumerate(videos):
        for k, clip in enumerate(video["clips"]):
            for name in ("skeletons_3d", "audio_raw", "audio_feat"):
                clip[name] = arrays[f"{i}_{k}_{name}"]
        txn.put("{:010}".format(i).encode("ascii"), pyarrow.serialize(video).to_buffer())
env.close()
"""


@pytest.fixture(scope="module")
def lmdb_python():
    if not LMDB_PYTHON.exists():
        pytest.skip(f"no pyarrow 11 environment at {LMDB_PYTHON} (python3 build.py test makes it from Python 3.11)")
    return LMDB_PYTHON


def _videos(skel, n_videos: int = 2) -> list[dict]:
    """Two videos of two clips each, in the official record layout: 3D joints, raw audio, absolute word times."""
    rng = np.random.default_rng(0)
    videos = []
    for v in range(n_videos):
        clips = []
        for k in range(2):
            n = 50 + 10 * k
            dirs = skel.mean[None] + 0.2 * rng.standard_normal((n, skel.n_bones, 3)).astype(np.float32)
            dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
            joints = to_joints(dirs, skel) + rng.standard_normal(3)  # translated: directions are invariant
            start = 12.5 * k
            clips.append({"skeletons_3d": joints, "audio_raw": rng.uniform(-0.5, 0.5, int(n / 15 * 16000)),
                          "audio_feat": np.zeros((n, 8)), "start_frame_no": 0, "end_frame_no": n,
                          "start_time": start, "end_time": start + n / 15,
                          "words": [["hello", start + 0.5, start + 0.8], ["world", start + 1.0, start + 1.4]]})
        videos.append({"vid": f"vid{v}", "clips": clips})
    return videos


def _write_official(path, videos, python, tmp_path) -> None:
    arrays, fields = {}, []
    for i, video in enumerate(videos):
        clips = []
        for k, clip in enumerate(video["clips"]):
            for name in ("skeletons_3d", "audio_raw", "audio_feat"):
                arrays[f"{i}_{k}_{name}"] = clip[name]
            clips.append({key: value for key, value in clip.items() if not isinstance(value, np.ndarray)})
        fields.append({"vid": video["vid"], "clips": clips})
    np.savez(tmp_path / "src.npz", **arrays)
    (tmp_path / "src.json").write_text(json.dumps(fields))
    subprocess.run([str(python), "-c", WRITE_OFFICIAL, str(tmp_path / "src"), str(path)], check=True)


def _write_pickled(path, videos) -> None:
    import lmdb
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, video in enumerate(videos):
            txn.put(f"{i:010}".encode(), pickle.dumps(video))
    env.close()


def _check_converted(out, index, videos, skel) -> None:
    assert [c["name"] for c in index["clips"]] == ["vid0_000", "vid0_001", "vid1_000", "vid1_001"]
    ds = data.WindowDataset(out, motion_filters=False, min_words=0)
    for c, src in zip(index["clips"], [c for v in videos for c in v["clips"]]):
        poses = np.asarray(ds.poses)[c["frame_offset"]: c["frame_offset"] + c["n_frames"]]
        want = from_directions(joints_to_directions(src["skeletons_3d"], skel), skel)
        np.testing.assert_allclose(poses, want, atol=1e-5)
        audio = np.asarray(ds.audio)[c["sample_offset"]: c["sample_offset"] + c["n_samples"]] / 32767
        np.testing.assert_allclose(audio, src["audio_raw"], atol=1 / 32767)
        assert [w[0] for w in c["words"]] == ["hello", "world"]
        np.testing.assert_allclose([w[1:] for w in c["words"]], [[0.5, 0.8], [1.0, 1.4]], atol=1e-9)
        assert c["meta"]["vid"] in ("vid0", "vid1") and c["meta"]["end_frame_no"] == len(poses)
    assert len(ds) == 2 * (1 + 2)  # 50 frames -> 1 window, 60 frames -> 2 windows (42-frame span, stride 10)


@pytest.mark.parametrize("skel", [TED_GESTURE, TED_EXPRESSIVE], ids=lambda s: s.name)
def test_official_pyarrow_lmdb_converts(tmp_path, skel, lmdb_python):
    videos = _videos(skel)
    _write_official(tmp_path / "lmdb", videos, lmdb_python, tmp_path)
    index = data.convert_lmdb(tmp_path / "lmdb", tmp_path / "out", skel.name, legacy_python=lmdb_python)
    _check_converted(tmp_path / "out", index, videos, skel)
    assert index["source"] == {"kind": "ted_lmdb", "path": str(tmp_path / "lmdb")}


def test_command_line_converts_and_explains_the_pyarrow_files(tmp_path, lmdb_python):
    videos = _videos(TED_GESTURE)
    _write_official(tmp_path / "lmdb", videos, lmdb_python, tmp_path)
    env = {"PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "training.data", str(tmp_path / "lmdb"), str(tmp_path / "out"),
           "--skeleton", "ted_gesture"]
    # without the pinned reader the pyarrow records are refused with the command that converts them
    bad = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    assert "build.py convert-ted" in bad.stderr and "pyarrow.serialize" in bad.stderr
    assert not (tmp_path / "out" / "index.json").exists()
    ok = subprocess.run(cmd + ["--legacy-python", str(lmdb_python)], capture_output=True, text=True, env=env,
                        cwd=ROOT, check=True)
    assert ok.stdout.startswith("4 clips")
    _check_converted(tmp_path / "out", data.read_index(tmp_path / "out"), videos, TED_GESTURE)


def test_reader_errors_name_the_problem(tmp_path, lmdb_python):
    with pytest.raises(RuntimeError, match="no LMDB at"):
        data.convert_lmdb(tmp_path / "missing", tmp_path / "out", "ted_gesture", legacy_python=lmdb_python)
    _write_pickled(tmp_path / "pickled", _videos(TED_GESTURE, 1))  # not pyarrow: the pinned reader says so
    with pytest.raises(RuntimeError, match="reading .*pickled"):
        data.convert_lmdb(tmp_path / "pickled", tmp_path / "out", "ted_gesture", legacy_python=lmdb_python)
    with pytest.raises(FileNotFoundError, match="no LMDB at"):
        data.convert_lmdb(tmp_path / "missing", tmp_path / "out", "ted_gesture")


@pytest.mark.parametrize("skel", [TED_GESTURE, TED_EXPRESSIVE], ids=lambda s: s.name)
def test_pickled_copies_convert_in_process(tmp_path, skel):
    videos = _videos(skel)
    _write_pickled(tmp_path / "lmdb", videos)
    index = data.convert_lmdb(tmp_path / "lmdb", tmp_path / "out", skel.name)
    _check_converted(tmp_path / "out", index, videos, skel)


def test_record_stream_keeps_arrays_and_fields_without_pickle():
    value = {"vid": "x", "n": np.int64(3), "f": np.float32(0.5), "clips": [
        {"a": np.arange(6, dtype="<f8").reshape(2, 3), "b": np.array([True, False]), "e": np.zeros((0, 4), "<f4"),
         "w": np.array(["hi", "there"], dtype=object), "nested": [[1, 2.5, "s"]], "none": None}]}
    buf = io.BytesIO()
    write_records(iter([(b"0000000001", value), (b"k2", {"clips": []})]), buf)
    buf.seek(0)
    (k1, v1), (k2, v2) = list(read_records(buf))
    assert (k1, k2, v2) == ("0000000001", "k2", {"clips": []})
    c = v1["clips"][0]
    np.testing.assert_array_equal(c["a"], value["clips"][0]["a"])
    assert c["a"].dtype == np.float64 and c["b"].dtype == bool and c["e"].shape == (0, 4)
    assert c["w"] == ["hi", "there"] and c["nested"] == [[1, 2.5, "s"]] and c["none"] is None
    assert v1["n"] == 3 and v1["f"] == 0.5
    truncated = io.BytesIO(buf.getvalue()[:-20])
    with pytest.raises(EOFError):
        list(read_records(truncated))
