"""Skeleton tables and the canonical character frame (+Z up, facing -Y, left at +X)."""
import numpy as np
import pytest

from model_core import skeleton as sk


@pytest.mark.parametrize("skel", [sk.TED_GESTURE, sk.TED_EXPRESSIVE])
def test_tables_are_consistent(skel):
    assert skel.pose_dim == len(skel.mean_dir_vec) == 3 * len(skel.bones) == 3 * len(skel.lengths)
    seen = {skel.pairs[0][0]}
    for parent, child in skel.pairs:
        assert parent in seen, "bones must be listed parents first"
        seen.add(child)
    assert seen == set(range(len(skel.joints)))
    assert np.isclose(np.linalg.det(skel.rotation), 1.0)


@pytest.mark.parametrize("skel", [sk.TED_GESTURE, sk.TED_EXPRESSIVE])
def test_mean_pose_in_canonical_frame(skel):
    dirs = sk.poses_to_canonical(np.zeros(skel.pose_dim, np.float32), skel)
    joints = sk.to_joints(dirs, skel)
    j = {name: joints[i] for i, name in enumerate(skel.joints)}
    assert j["neck"][2] > 0.2, "up is +Z"
    assert j["left_shoulder"][0] > 0.1 and j["right_shoulder"][0] < -0.1, "the character's left is +X"
    assert j["left_wrist"][0] > 0 and j["right_wrist"][0] < 0
    assert j["left_wrist"][1] < j["left_elbow"][1] and j["right_wrist"][1] < j["right_elbow"][1], "hands in front (-Y)"
    assert j["nose"][1] < j["neck"][1], "the face points -Y"


@pytest.mark.parametrize("skel", [sk.TED_GESTURE, sk.TED_EXPRESSIVE])
def test_round_trips(skel):
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal((5, skel.pose_dim))).astype(np.float32)
    dirs = sk.to_directions(x, skel)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(sk.to_directions(sk.from_directions(dirs, skel), skel), dirs, atol=1e-5)
    np.testing.assert_allclose(sk.joints_to_directions(sk.to_joints(dirs, skel), skel), dirs, atol=1e-5)
    canon = sk.poses_to_canonical(x, skel)
    np.testing.assert_allclose(sk.poses_to_canonical(sk.canonical_to_poses(canon, skel), skel), canon, atol=1e-5)


def test_lookup_and_errors():
    assert sk.get_skeleton(27) is sk.TED_GESTURE and sk.get_skeleton("ted_expressive") is sk.TED_EXPRESSIVE
    with pytest.raises(ValueError, match="known: ted_gesture"):
        sk.get_skeleton(55)
    with pytest.raises(ValueError, match="27 values per frame"):
        sk.to_directions(np.zeros(10), sk.TED_GESTURE)
