"""Humanoid armatures built in code, reproducibly: one per rig family, plus a skinned demo character.

Every rig faces -Y with +Z up and its left at +X (how Mixamo FBX, the Unreal mannequin, VRM and Rigify rigs look
once imported into Blender the usual way). Bone names come from the presets in bone_maps, so a built rig is what
auto-detection expects; legs, a root and optional twist bones are extras that no role maps.
"""
from __future__ import annotations

import math

import bmesh
import bpy
from mathutils import Matrix, Vector

from .bone_maps import FINGERS, NECK_ROLES, PRESETS, SPINE_ROLES, mirror_name

FAMILIES = tuple(PRESETS)
# left-side names of the bones no role maps: root, thigh, shin, foot, twist (between upper arm and forearm)
_EXTRAS = {
    "mixamo": (None, "LeftUpLeg", "LeftLeg", "LeftFoot", "LeftArmTwist"),
    "rigify": ("root", "thigh_fk.L", "shin_fk.L", "foot_fk.L", "upper_arm_twist.L"),
    "metarig": (None, "thigh.L", "shin.L", "foot.L", "upper_arm_twist.L"),
    "ue4": ("root", "thigh_l", "calf_l", "foot_l", "upperarm_twist_01_l"),
    "ue5": ("root", "thigh_l", "calf_l", "foot_l", "upperarm_twist_01_l"),
    "vrm": ("Root", "J_Bip_L_UpperLeg", "J_Bip_L_LowerLeg", "J_Bip_L_Foot", "J_Sec_L_UpperArmTwist"),
}
_PREFIX = {"mixamo": "mixamorig:"}
_FINGER_ROOT = {"thumb": (0.02, -0.035, -0.01), "index": (0.085, -0.025, 0.0), "middle": (0.09, -0.005, 0.0),
                "ring": (0.085, 0.015, 0.0), "pinky": (0.075, 0.032, -0.005)}
_FINGER_DIR = {"thumb": (0.55, -0.75, -0.35), "index": (1, -0.05, 0), "middle": (1, 0, 0), "ring": (1, 0.05, 0),
               "pinky": (1, 0.12, -0.05)}


def _left_layout(a_pose: bool, twist: bool) -> list[tuple[str, Vector, Vector, str | None]]:
    """(key, head, tail, parent key) of the left arm, hand and leg; the arm hangs 45 degrees down in A-pose."""
    shoulder = Vector((0.17, 0.02, 1.42))
    elbow, wrist, knuckles = Vector((0.45, 0.03, 1.42)), Vector((0.71, 0.01, 1.42)), Vector((0.79, 0.01, 1.42))
    rot = Matrix.Rotation(math.radians(45.0 if a_pose else 0.0), 3, "Y")

    def arm(p: Vector) -> Vector:
        return shoulder + rot @ (p - shoulder)

    bones = [("clavicle", Vector((0.03, 0.0, 1.43)), shoulder.copy(), "spine_top")]
    if twist:
        mid = (shoulder + elbow) / 2
        bones += [("upper_arm", shoulder.copy(), arm(mid), "clavicle"), ("twist", arm(mid), arm(elbow), "upper_arm"),
                  ("forearm", arm(elbow), arm(wrist), "twist")]
    else:
        bones += [("upper_arm", shoulder.copy(), arm(elbow), "clavicle"),
                  ("forearm", arm(elbow), arm(wrist), "upper_arm")]
    bones.append(("hand", arm(wrist), arm(knuckles), "forearm"))
    for f in FINGERS:
        p, d = wrist + Vector(_FINGER_ROOT[f]), Vector(_FINGER_DIR[f]).normalized()
        for i, length in enumerate((0.035, 0.025, 0.02), start=1):
            bones.append((f"{f}{i}", arm(p), arm(p + length * d), "hand" if i == 1 else f"{f}{i - 1}"))
            p = p + length * d
            d = (Matrix.Rotation(math.radians(-12), 3, "Y") @ d).normalized()  # a slight natural curl
    hip, knee, ankle = Vector((0.1, 0.0, 0.95)), Vector((0.1, -0.01, 0.52)), Vector((0.1, 0.02, 0.09))
    bones += [("thigh", hip, knee, "hips"), ("shin", knee, ankle, "thigh"),
              ("foot", ankle, Vector((0.1, -0.12, 0.02)), "shin")]
    return bones


def _layout(family: str, a_pose: bool, twist: bool, fingers: bool) -> list[tuple[str, Vector, Vector, str | None]]:
    """(bone name, head, tail, parent name) of a whole rig of the family, parents first."""
    table, extras = PRESETS[family], dict(zip(("root", "thigh", "shin", "foot", "twist"), _EXTRAS[family]))
    names = {"hips": table["hips"][0], **{k: v for k, v in extras.items() if v}}
    names.update({r[5:]: table[r][0] for r in table if r.startswith("left_")})
    spine = [table[r][0] for r in SPINE_ROLES if r in table]
    neck = [table[r][0] for r in NECK_ROLES if r in table]
    out = []
    if extras["root"]:
        out.append((names["root"], Vector((0, 0, 0)), Vector((0, 0.2, 0)), None))
    out.append((names["hips"], Vector((0, 0.0, 0.95)), Vector((0, 0.0, 1.05)), names.get("root")))
    z = [1.05 + 0.4 * k / len(spine) for k in range(len(spine) + 1)]
    y = [0.03 * math.sin(math.pi * k / len(spine)) for k in range(len(spine) + 1)]  # a curved back
    for k, n in enumerate(spine):
        out.append((n, Vector((0, y[k], z[k])), Vector((0, y[k + 1], z[k + 1])), out[-1][0]))
    z = [1.45 + 0.16 * k / (len(neck) - 1) for k in range(len(neck))] + [1.78]
    for k, n in enumerate(neck):
        out.append((n, Vector((0, -0.01 * k, z[k])), Vector((0, -0.01 * (k + 1), z[k + 1])), out[-1][0]))
    names["spine_top"] = spine[-1]
    for key, head, tail, parent in _left_layout(a_pose, twist):
        if key[:-1] in FINGERS and not fingers:
            continue
        left = names[key]
        out.append((left, head, tail, names[parent]))
        out.append((mirror_name(left), Vector((-head.x, head.y, head.z)), Vector((-tail.x, tail.y, tail.z)),
                    mirror_name(names[parent])))
    prefix = _PREFIX.get(family, "")
    return [(prefix + n, h, t, prefix + p if p else None) for n, h, t, p in out]


def build_rig(family: str, *, a_pose: bool = False, roll_degrees: float = 0.0, twist_bones: bool = False,
              fingers: bool = True, name: str | None = None) -> bpy.types.Object:
    """Build a humanoid armature of a rig family in the current scene (T-pose unless a_pose) and return it."""
    if family not in PRESETS:
        raise ValueError(f"unknown rig family {family!r}; known: {', '.join(FAMILIES)}")
    data = bpy.data.armatures.new(name or family)
    obj = bpy.data.objects.new(name or family, data)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    for n, head, tail, parent in _layout(family, a_pose, twist_bones, fingers):
        eb = data.edit_bones.new(n)
        eb.head, eb.tail, eb.roll = head, tail, math.radians(roll_degrees)
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
    rig = build_rig("mixamo", a_pose=True, name=name)
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
