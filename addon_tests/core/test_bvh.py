"""The CLI's BVH export: it parses as BVH (here and in the PyPI `bvh` parser), runs at 15 fps, names every joint once,
and its forward kinematics give model_core's joints turned into BVH's +Y up, facing +Z."""
import os
import subprocess
import sys

import numpy as np
import pytest

from addon_tests.checkers import read_bvh
from addon_tests.paths import FIXTURES, ROOT
from model_core.bvh import TO_BVH
from model_core.checkpoint import convert_official
from model_core.protocol import read_result
from model_core.skeleton import get_skeleton, to_joints


def parse_bvh(text: str):
    """A small independent BVH reader: nodes (name, parent, offset, channels, is_end) and the motion rows."""
    tokens = text.split()
    nodes, stack, i = [], [], 0
    assert tokens[0] == "HIERARCHY"
    i = 1
    while tokens[i] != "MOTION":
        tok = tokens[i]
        if tok in ("ROOT", "JOINT"):
            nodes.append({"name": tokens[i + 1], "parent": stack[-1] if stack else None, "end": False})
            i += 2
        elif tok == "End":
            nodes.append({"name": f"{nodes[stack[-1]]['name']}_end", "parent": stack[-1], "end": True,
                          "channels": []})
            i += 2
        elif tok == "{":
            stack.append(len(nodes) - 1)
            i += 1
        elif tok == "}":
            stack.pop()
            i += 1
        elif tok == "OFFSET":
            nodes[stack[-1]]["offset"] = np.array([float(t) for t in tokens[i + 1:i + 4]])
            i += 4
        elif tok == "CHANNELS":
            n = int(tokens[i + 1])
            nodes[stack[-1]]["channels"] = tokens[i + 2:i + 2 + n]
            i += 2 + n
        else:
            raise AssertionError(f"unexpected token {tok!r}")
    assert tokens[i + 1] == "Frames:" and tokens[i + 3:i + 5] == ["Frame", "Time:"]
    frames, frame_time = int(tokens[i + 2]), float(tokens[i + 5])
    values = np.array([float(t) for t in tokens[i + 6:]])
    return nodes, frames, frame_time, values.reshape(frames, -1)


def axis_rotation(axis: str, deg: np.ndarray) -> np.ndarray:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    r = np.zeros((len(a), 3, 3))
    i, j = {"X": (1, 2), "Y": (2, 0), "Z": (0, 1)}[axis]
    k = 3 - i - j
    r[:, k, k] = 1
    r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
    return r


def forward_kinematics(nodes, motion) -> np.ndarray:
    """World positions (frames, nodes, 3): each node's channels rotate in the order they are listed."""
    f = len(motion)
    pos, rot = np.zeros((f, len(nodes), 3)), np.zeros((f, len(nodes), 3, 3))
    col = 0
    for n, node in enumerate(nodes):
        local = np.broadcast_to(np.eye(3), (f, 3, 3)).copy()
        translation = np.zeros((f, 3))
        for ch in node["channels"]:
            if ch.endswith("position"):
                translation[:, "XYZ".index(ch[0])] = motion[:, col]
            else:
                local = local @ axis_rotation(ch[0], motion[:, col])
            col += 1
        p = node["parent"]
        if p is None:
            pos[:, n], rot[:, n] = node["offset"] + translation, local
        else:
            pos[:, n] = pos[:, p] + np.einsum("fij,j->fi", rot[:, p], node["offset"])
            rot[:, n] = rot[:, p] @ local
    assert col == motion.shape[1]
    return pos


@pytest.mark.parametrize("name", ["ted_small", "expressive_small"])
def test_cli_bvh_parses_and_matches_the_skeletons_joints(tmp_path, name):
    ckpt = tmp_path / "c.pt"
    convert_official(FIXTURES / f"{name}_checkpoint.bin", ckpt)
    wav = tmp_path / "s.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "Hands move with the voice."], check=True)
    common = ["--checkpoint", str(ckpt), "--steps", "5", "--seed", "3", "--precision", "exact", "--variations", "2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for out in ("m.npz", "m.bvh"):
        subprocess.run([sys.executable, "-m", "model_core", "generate", str(wav), "-o", str(tmp_path / out), *common],
                       check=True, capture_output=True, env=env)
    result = read_result(tmp_path / "m.npz")
    skel = get_skeleton(result["meta"]["skeleton"])
    for v, path in enumerate([tmp_path / "m.bvh", tmp_path / "m_v2.bvh"]):
        nodes, frames, frame_time, motion = parse_bvh(path.read_text())
        assert frames == result["poses"].shape[1] and frame_time == pytest.approx(1 / 15, abs=1e-6)
        joints = [node["name"] for node in nodes if not node["end"]]
        assert sorted(joints) == sorted(skel.bones), "one joint per bone, each named once"
        pos = forward_kinematics(nodes, motion)
        expected = to_joints(result["directions"][v].astype(np.float64), skel) @ TO_BVH.T  # (frames, joints, 3)
        by_name = {node["name"]: k for k, node in enumerate(nodes)}
        neck, nose = (nodes[by_name["neck_nose"] + k]["offset"] for k in (0, 1))  # the rest pose (the mean pose)
        assert neck[1] > 0.2 and nose[2] > 0.05, ("+Y up, facing +Z", neck, nose)
        for b, (parent, child) in enumerate(skel.pairs):
            np.testing.assert_allclose(pos[:, by_name[skel.bones[b]]], expected[:, parent], atol=1e-4)
            end = by_name.get(f"{skel.bones[b]}_end")
            if end is not None:
                np.testing.assert_allclose(pos[:, end], expected[:, child], atol=1e-4)
        assert sum(node["end"] for node in nodes) == sum(c not in {p for p, _ in skel.pairs} for _, c in skel.pairs)
        third = read_bvh(path)
        assert third["names"] == joints and third["lookup"] == list(range(len(joints)))
        assert third["frames"] == third["rows"] == frames and third["frame_time"] == pytest.approx(1 / 15, abs=1e-6)
        assert third["row_lengths"] == {third["channels"]} == {3 * len(joints) + 3}
