"""The demo character built in code, reproducibly: a Mixamo-named armature (A-pose, facing -Y, +Z up) and a body.

The rigs of the other families live with the tests (addon_tests/blender/rig_families.py), written down from real files.
"""
from __future__ import annotations

import math

import bmesh
import bpy
from mathutils import Matrix, Vector

FINGERS = ("Thumb", "Index", "Middle", "Ring", "Pinky")
_FINGER_ROOT = {"Thumb": (0.02, -0.035, -0.01), "Index": (0.085, -0.025, 0.0), "Middle": (0.09, -0.005, 0.0),
                "Ring": (0.085, 0.015, 0.0), "Pinky": (0.075, 0.032, -0.005)}
_FINGER_DIR = {"Thumb": (0.55, -0.75, -0.35), "Index": (1, -0.05, 0), "Middle": (1, 0, 0), "Ring": (1, 0.05, 0),
               "Pinky": (1, 0.12, -0.05)}
_CENTRE = [("Hips", (0, 0, 0.95), (0, 0, 1.05), None), ("Spine", (0, 0, 1.05), (0, 0.026, 1.183), "Hips"),
           ("Spine1", (0, 0.026, 1.183), (0, 0.026, 1.317), "Spine"), ("Spine2", (0, 0.026, 1.317), (0, 0, 1.45), "Spine1"),
           ("Neck", (0, 0, 1.45), (0, -0.01, 1.61), "Spine2"), ("Head", (0, -0.01, 1.61), (0, -0.02, 1.78), "Neck")]


def _left_side() -> list[tuple[str, Vector, Vector, str]]:
    """(name, head, tail, parent) of the left arm, hand and leg, the arm hanging 45 degrees down (A-pose)."""
    shoulder = Vector((0.17, 0.02, 1.42))
    elbow, wrist, knuckles = Vector((0.45, 0.03, 1.42)), Vector((0.71, 0.01, 1.42)), Vector((0.79, 0.01, 1.42))
    rot = Matrix.Rotation(math.radians(45.0), 3, "Y")

    def arm(p: Vector) -> Vector:
        return shoulder + rot @ (p - shoulder)

    bones = [("LeftShoulder", Vector((0.03, 0.0, 1.43)), shoulder.copy(), "Spine2"),
             ("LeftArm", shoulder.copy(), arm(elbow), "LeftShoulder"), ("LeftForeArm", arm(elbow), arm(wrist), "LeftArm"),
             ("LeftHand", arm(wrist), arm(knuckles), "LeftForeArm")]
    for f in FINGERS:
        p, d = wrist + Vector(_FINGER_ROOT[f]), Vector(_FINGER_DIR[f]).normalized()
        for i, length in enumerate((0.035, 0.025, 0.02), start=1):
            bones.append((f"LeftHand{f}{i}", arm(p), arm(p + length * d), f"LeftHand{f}{i - 1}" if i > 1 else "LeftHand"))
            p = p + length * d
            d = (Matrix.Rotation(math.radians(-12), 3, "Y") @ d).normalized()  # a slight natural curl
    hip, knee, ankle = Vector((0.1, 0.0, 0.95)), Vector((0.1, -0.01, 0.52)), Vector((0.1, 0.02, 0.09))
    return bones + [("LeftUpLeg", hip, knee, "Hips"), ("LeftLeg", knee, ankle, "LeftUpLeg"),
                    ("LeftFoot", ankle, Vector((0.1, -0.12, 0.02)), "LeftLeg")]


def _layout() -> list[tuple[str, Vector, Vector, str | None]]:
    """(bone name, head, tail, parent name) of the demo character, parents first, Mixamo's names."""
    out = [(n, Vector(h), Vector(t), p) for n, h, t, p in _CENTRE]
    for name, head, tail, parent in _left_side():
        out.append((name, head, tail, parent))
        out.append((name.replace("Left", "Right"), Vector((-head.x, head.y, head.z)), Vector((-tail.x, tail.y, tail.z)),
                    parent.replace("Left", "Right")))
    return [("mixamorig:" + n, h, t, "mixamorig:" + p if p else None) for n, h, t, p in out]


def build_armature(name: str) -> bpy.types.Object:
    """The demo character's armature alone, in the current scene."""
    data = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, data)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    for n, head, tail, parent in _layout():
        eb = data.edit_bones.new(n)
        eb.head, eb.tail = head, tail
        if parent:
            eb.parent = data.edit_bones[parent]
            eb.use_connect = (eb.parent.tail - eb.head).length < 1e-6
    bpy.ops.object.mode_set(mode="OBJECT")
    for pb in obj.pose.bones:
        pb.rotation_mode = "QUATERNION"
    return obj


def _radius(bone_name: str) -> float:
    """A body-part thickness guessed from the bone's name."""
    n = bone_name.lower()
    if any(f in n for f in ("thumb", "index", "middle", "ring", "pinky")):
        return 0.009
    for part, r in (("hand", 0.012), ("forearm", 0.038), ("arm", 0.045), ("shoulder", 0.04), ("upleg", 0.075),
                    ("leg", 0.055), ("foot", 0.04), ("neck", 0.05), ("spine", 0.13), ("hips", 0.14)):
        if part in n:
            return r
    return 0.03


def build_demo_character(name: str = "DemoCharacter") -> bpy.types.Object:
    """A Mixamo-named armature with a simple skinned body (a cylinder per bone, a sphere head), facing -Y."""
    rig = build_armature(name)
    bm = bmesh.new()
    weights = bm.verts.layers.deform.verify()
    for group, bone in enumerate(rig.data.bones):
        if bone.name.endswith("Head"):
            geom = bmesh.ops.create_uvsphere(bm, u_segments=16, v_segments=10, radius=0.11,
                                             matrix=Matrix.Translation(bone.head_local + Vector((0, -0.01, 0.1))))
        else:
            r = _radius(bone.name.split(":")[-1])
            shape = Matrix.Translation((0, bone.length / 2, 0)) @ Matrix.Rotation(-math.pi / 2, 4, "X")
            geom = bmesh.ops.create_cone(bm, cap_ends=True, segments=12, radius1=r, radius2=r * 0.85,
                                         depth=bone.length, matrix=bone.matrix_local @ shape)
        for v in geom["verts"]:
            v[weights][group] = 1.0
    mesh = bpy.data.meshes.new(name + "Body")
    body = bpy.data.objects.new(name + "Body", mesh)
    for bone in rig.data.bones:  # vertex group i is bone i, as in the deform layer
        body.vertex_groups.new(name=bone.name)
    bm.to_mesh(mesh)
    bm.free()
    bpy.context.scene.collection.objects.link(body)
    body.parent = rig
    body.modifiers.new("Armature", "ARMATURE").object = rig
    for poly in mesh.polygons:
        poly.use_smooth = True
    return rig
