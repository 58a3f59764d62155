"""Rigs as real files and tools leave them, for the retargeting tests; written down here, not taken from the presets.

Each family lists its bones as the real file names and parents them (a Mixamo download, the UE4 and UE5
mannequins, a VRoid Studio export read by the VRM add-on, CMU BVH files in their MotionBuilder- and 3ds-Max-friendly
namings, including their helper, twist, end and IK bones). Rest positions are one adult figure in metres, T-pose
(or A-pose), the head of each bone at the joint the family puts it at (so zero-length BVH joints stay zero-length
until Blender's BVH importer nudges them). How the importers leave them is reproduced too: Mixamo's FBX/glTF import
is stored Y-up in centimetres under an object turned +90 degrees about X with scale 0.01; BVH files go through
Blender's own BVH importer; Blender's Human metarig and the Rigify rig are made by Rigify itself (see rigify_rig).
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import bpy
from mathutils import Matrix, Vector

FINGERS = ("thumb", "index", "middle", "ring", "pinky")
_FINGER_ROOT = {"thumb": (0.02, -0.035, -0.01), "index": (0.085, -0.025, 0.0), "middle": (0.09, -0.005, 0.0),
                "ring": (0.085, 0.015, 0.0), "pinky": (0.075, 0.032, -0.005)}
_FINGER_DIR = {"thumb": (0.55, -0.75, -0.35), "index": (1, -0.05, 0), "middle": (1, 0, 0), "ring": (1, 0.05, 0),
               "pinky": (1, 0.12, -0.05)}


def joints(a_pose: bool = False, spine: int = 3, neck: int = 1) -> dict[str, Vector]:
    """Joint positions of the figure (metres, +Z up, facing -Y), left side as 'l_*' and right side as 'r_*'.

    spine: joints between the hips and the neck; neck: joints between the neck base and the head."""
    p = {"root": Vector((0, 0, 0)), "hips": Vector((0, 0, 0.95)), "neck": Vector((0, 0, 1.45)),
         "head": Vector((0, -0.01, 1.6)), "head_top": Vector((0, -0.01, 1.78))}
    for k in range(spine + 1):
        p[f"spine{k}"] = Vector((0, 0.03 * math.sin(math.pi * k / spine), 1.05 + 0.4 * k / spine))
    p["neck"] = p[f"spine{spine}"]
    for k in range(1, neck):
        p[f"neck{k}"] = p["neck"].lerp(p["head"], k / neck)
    shoulder = Vector((0.17, 0.02, 1.42))
    rot = Matrix.Rotation(math.radians(45.0 if a_pose else 0.0), 3, "Y")

    def arm(v: Vector) -> Vector:
        return shoulder + rot @ (v - shoulder)

    left = {"collar": Vector((0.03, 0.0, 1.43)), "shoulder": shoulder, "elbow": arm(Vector((0.45, 0.03, 1.42))),
            "wrist": arm(Vector((0.71, 0.01, 1.42))), "knuckles": arm(Vector((0.79, 0.01, 1.42))),
            "hip": Vector((0.1, 0.0, 0.93)), "knee": Vector((0.1, -0.01, 0.52)), "ankle": Vector((0.1, 0.02, 0.09)),
            "ball": Vector((0.1, -0.1, 0.02)), "toe": Vector((0.1, -0.16, 0.02))}
    left["upper_mid"] = left["shoulder"].lerp(left["elbow"], 0.5)
    left["fore_mid"] = left["elbow"].lerp(left["wrist"], 0.5)
    left["scapula"] = left["collar"].lerp(left["shoulder"], 0.5)
    left["thigh_mid"] = left["hip"].lerp(left["knee"], 0.5)
    left["breast"] = Vector((0.09, -0.12, 1.28))
    wrist = Vector((0.71, 0.01, 1.42))
    for f in FINGERS:
        q, d = wrist + Vector(_FINGER_ROOT[f]), Vector(_FINGER_DIR[f]).normalized()
        left[f"{f}0"] = arm(wrist.lerp(q, 0.3))  # metacarpal base (UE5)
        for i, length in enumerate((0.035, 0.025, 0.02, 0.0), start=1):
            left[f"{f}{i}"] = arm(q)
            q = q + length * d
            d = (Matrix.Rotation(math.radians(-12), 3, "Y") @ d).normalized()  # a slight natural curl
        left[f"{f}4"] = left[f"{f}3"] + (left[f"{f}3"] - left[f"{f}2"]) * 0.8
    for k, v in left.items():
        p[f"l_{k}"], p[f"r_{k}"] = v.copy(), Vector((-v.x, v.y, v.z))
    return p


# --- hierarchies: (bone, parent, head joint, tail joint); 'S' is the side: 'l'/'r' in joints, names below -------
def _sided(rows: list[tuple], sides: dict[str, str]) -> list[tuple]:
    """Rows with {S} in names expanded for both sides, the joints' 'S_' prefix becoming l_/r_."""
    out = []
    for row in rows:
        if "{S}" not in "".join(str(c) for c in row):
            out.append(row)
            continue
        for s, name in sides.items():
            out.append(tuple(c.replace("{S}", name) if isinstance(c, str) and c and not c.startswith("S_")
                             else c.replace("S_", f"{s}_") if isinstance(c, str) else c for c in row))
    return out


def _finger_rows(hand: str, bone, metacarpal=None) -> list[tuple]:
    """Rows of the five fingers below hand: bone(finger, i) names phalanx i (1-3), metacarpal(finger) the bone
    between the hand and each finger but the thumb (None: the fingers start at the hand)."""
    rows = []
    for k, f in enumerate(FINGERS):
        first = hand
        if metacarpal is not None and f != "thumb":
            first = metacarpal(f, k)
            rows.append((first, hand, f"S_{f}0", f"S_{f}1"))
        rows += [(bone(f, i), bone(f, i - 1) if i > 1 else first, f"S_{f}{i}", f"S_{f}{i + 1}") for i in (1, 2, 3)]
    return rows


def mixamo(fingers: bool = True) -> list[tuple]:
    """A Mixamo download (FBX or glTF), names without their 'mixamorig:' namespace."""
    rows = [("Hips", None, "hips", "spine0"), ("Spine", "Hips", "spine0", "spine1"), ("Spine1", "Spine", "spine1", "spine2"),
            ("Spine2", "Spine1", "spine2", "neck"), ("Neck", "Spine2", "neck", "head"), ("Head", "Neck", "head", "head_top"),
            ("HeadTop_End", "Head", "head_top", None),
            ("{S}Shoulder", "Spine2", "S_collar", "S_shoulder"), ("{S}Arm", "{S}Shoulder", "S_shoulder", "S_elbow"),
            ("{S}ForeArm", "{S}Arm", "S_elbow", "S_wrist"), ("{S}Hand", "{S}ForeArm", "S_wrist", "S_middle1"),
            ("{S}UpLeg", "Hips", "S_hip", "S_knee"), ("{S}Leg", "{S}UpLeg", "S_knee", "S_ankle"),
            ("{S}Foot", "{S}Leg", "S_ankle", "S_ball"), ("{S}ToeBase", "{S}Foot", "S_ball", "S_toe"),
            ("{S}Toe_End", "{S}ToeBase", "S_toe", None)]
    if fingers:
        for f in FINGERS:
            name = f.capitalize()
            rows += [(f"{{S}}Hand{name}{i}", f"{{S}}Hand{name}{i - 1}" if i > 1 else "{S}Hand", f"S_{f}{i}",
                      f"S_{f}{i + 1}" if i < 4 else None) for i in (1, 2, 3, 4)]
    return _sided(rows, {"l": "Left", "r": "Right"})


def ue4(fingers: bool = True, twist: bool = True) -> list[tuple]:
    """The Unreal Engine 4 mannequin (SK_Mannequin), with its IK and twist bones."""
    rows = [("root", None, "root", "hips"), ("pelvis", "root", "hips", "spine0"),
            ("spine_01", "pelvis", "spine0", "spine1"), ("spine_02", "spine_01", "spine1", "spine2"),
            ("spine_03", "spine_02", "spine2", "neck"), ("neck_01", "spine_03", "neck", "head"),
            ("head", "neck_01", "head", "head_top"),
            ("clavicle_{S}", "spine_03", "S_collar", "S_shoulder"), ("upperarm_{S}", "clavicle_{S}", "S_shoulder", "S_elbow"),
            ("lowerarm_{S}", "upperarm_{S}", "S_elbow", "S_wrist"), ("hand_{S}", "lowerarm_{S}", "S_wrist", "S_knuckles"),
            ("thigh_{S}", "pelvis", "S_hip", "S_knee"), ("calf_{S}", "thigh_{S}", "S_knee", "S_ankle"),
            ("foot_{S}", "calf_{S}", "S_ankle", "S_ball"), ("ball_{S}", "foot_{S}", "S_ball", "S_toe"),
            ("ik_foot_root", "root", "root", None), ("ik_foot_{S}", "ik_foot_root", "S_ankle", None),
            ("ik_hand_root", "root", "root", None), ("ik_hand_gun", "ik_hand_root", "r_wrist", None),
            ("ik_hand_{S}", "ik_hand_gun", "S_wrist", None)]
    if twist:
        rows += [("upperarm_twist_01_{S}", "upperarm_{S}", "S_upper_mid", "S_elbow"),
                 ("lowerarm_twist_01_{S}", "lowerarm_{S}", "S_fore_mid", "S_wrist"),
                 ("thigh_twist_01_{S}", "thigh_{S}", "S_hip", "S_knee"), ("calf_twist_01_{S}", "calf_{S}", "S_knee", "S_ankle")]
    if fingers:
        rows += _finger_rows("hand_{S}", lambda f, i: f"{f}_0{i}_{{S}}")
    return _sided(rows, {"l": "l", "r": "r"})


def ue5(fingers: bool = True) -> list[tuple]:
    """The Unreal Engine 5 mannequin (Manny): five spine and two neck bones, finger metacarpals, two twists a limb."""
    rows = [("root", None, "root", "hips"), ("pelvis", "root", "hips", "spine0")]
    rows += [(f"spine_0{k + 1}", "pelvis" if k == 0 else f"spine_0{k}", f"spine{k}", f"spine{k + 1}" if k < 4 else "neck")
             for k in range(5)]
    rows += [("neck_01", "spine_05", "neck", "neck1"), ("neck_02", "neck_01", "neck1", "head"),
             ("head", "neck_02", "head", "head_top"),
             ("clavicle_{S}", "spine_05", "S_collar", "S_shoulder"), ("upperarm_{S}", "clavicle_{S}", "S_shoulder", "S_elbow"),
             ("lowerarm_{S}", "upperarm_{S}", "S_elbow", "S_wrist"), ("hand_{S}", "lowerarm_{S}", "S_wrist", "S_knuckles"),
             ("upperarm_twist_01_{S}", "upperarm_{S}", "S_shoulder", "S_upper_mid"),
             ("upperarm_twist_02_{S}", "upperarm_{S}", "S_upper_mid", "S_elbow"),
             ("lowerarm_twist_01_{S}", "lowerarm_{S}", "S_fore_mid", "S_wrist"),
             ("lowerarm_twist_02_{S}", "lowerarm_{S}", "S_elbow", "S_fore_mid"),
             ("thigh_{S}", "pelvis", "S_hip", "S_knee"), ("calf_{S}", "thigh_{S}", "S_knee", "S_ankle"),
             ("foot_{S}", "calf_{S}", "S_ankle", "S_ball"), ("ball_{S}", "foot_{S}", "S_ball", "S_toe"),
             ("ik_hand_root", "root", "root", None), ("ik_hand_gun", "ik_hand_root", "r_wrist", None),
             ("ik_hand_{S}", "ik_hand_gun", "S_wrist", None)]
    if fingers:
        rows += _finger_rows("hand_{S}", lambda f, i: f"{f}_0{i}_{{S}}", lambda f, k: f"{f}_metacarpal_{{S}}")
    return _sided(rows, {"l": "l", "r": "r"})


def vroid(fingers: bool = True) -> list[tuple]:
    """A VRoid Studio export as the VRM add-on imports it: J_Bip_* body bones, J_Sec_* secondary and J_Adj_* face."""
    rows = [("Root", None, "root", "hips"), ("J_Bip_C_Hips", "Root", "hips", "spine0"),
            ("J_Bip_C_Spine", "J_Bip_C_Hips", "spine0", "spine1"), ("J_Bip_C_Chest", "J_Bip_C_Spine", "spine1", "spine2"),
            ("J_Bip_C_UpperChest", "J_Bip_C_Chest", "spine2", "neck"), ("J_Bip_C_Neck", "J_Bip_C_UpperChest", "neck", "head"),
            ("J_Bip_C_Head", "J_Bip_C_Neck", "head", "head_top"), ("J_Adj_{S}_FaceEye", "J_Bip_C_Head", "head", None),
            ("J_Sec_{S}_Bust1", "J_Bip_C_UpperChest", "spine2", None),
            ("J_Bip_{S}_Shoulder", "J_Bip_C_UpperChest", "S_collar", "S_shoulder"),
            ("J_Bip_{S}_UpperArm", "J_Bip_{S}_Shoulder", "S_shoulder", "S_elbow"),
            ("J_Bip_{S}_LowerArm", "J_Bip_{S}_UpperArm", "S_elbow", "S_wrist"),
            ("J_Bip_{S}_Hand", "J_Bip_{S}_LowerArm", "S_wrist", "S_knuckles"),
            ("J_Bip_{S}_UpperLeg", "J_Bip_C_Hips", "S_hip", "S_knee"), ("J_Bip_{S}_LowerLeg", "J_Bip_{S}_UpperLeg", "S_knee", "S_ankle"),
            ("J_Bip_{S}_Foot", "J_Bip_{S}_LowerLeg", "S_ankle", "S_ball"), ("J_Bip_{S}_ToeBase", "J_Bip_{S}_Foot", "S_ball", "S_toe")]
    if fingers:
        rows += _finger_rows("J_Bip_{S}_Hand", lambda f, i: f"J_Bip_{{S}}_{'Little' if f == 'pinky' else f.capitalize()}{i}")
    return _sided(rows, {"l": "L", "r": "R"})


def cc(fingers: bool = True) -> list[tuple]:
    """A Character Creator 4 / iClone character (CC_Base_*), as its FBX and glTF exports name and parent the bones: the
    hip carries the spine and a pelvis bone that carries the legs; the arm twists hang beside the limb (Twist01 at the
    limb's head, Twist02 half-way), the neck is NeckTwist01 > NeckTwist02. Names and parents from a CC4 character's
    glTF skin (jonathan-cc-base, found through the code search) and Reallusion's own mapping in the VRM add-on for
    Blender (reallusion_mapping.py)."""
    rows = [("CC_Base_BoneRoot", None, "root", "hips"), ("CC_Base_Hip", "CC_Base_BoneRoot", "hips", "spine0"),
            ("CC_Base_Pelvis", "CC_Base_Hip", "hips", None),
            ("CC_Base_Waist", "CC_Base_Hip", "spine0", "spine1"), ("CC_Base_Spine01", "CC_Base_Waist", "spine1", "spine2"),
            ("CC_Base_Spine02", "CC_Base_Spine01", "spine2", "neck"),
            ("CC_Base_NeckTwist01", "CC_Base_Spine02", "neck", "neck1"),
            ("CC_Base_NeckTwist02", "CC_Base_NeckTwist01", "neck1", "head"),
            ("CC_Base_Head", "CC_Base_NeckTwist02", "head", "head_top"), ("CC_Base_FacialBone", "CC_Base_Head", "head", None),
            ("CC_Base_{S}_Eye", "CC_Base_FacialBone", "head", None),
            ("CC_Base_{S}_RibsTwist", "CC_Base_Spine02", "S_collar", None),
            ("CC_Base_{S}_Breast", "CC_Base_{S}_RibsTwist", "S_breast", None),
            ("CC_Base_{S}_Clavicle", "CC_Base_Spine02", "S_collar", "S_shoulder"),
            ("CC_Base_{S}_Upperarm", "CC_Base_{S}_Clavicle", "S_shoulder", "S_elbow"),
            ("CC_Base_{S}_UpperarmTwist01", "CC_Base_{S}_Upperarm", "S_shoulder", "S_upper_mid"),
            ("CC_Base_{S}_UpperarmTwist02", "CC_Base_{S}_UpperarmTwist01", "S_upper_mid", "S_elbow"),
            ("CC_Base_{S}_Forearm", "CC_Base_{S}_Upperarm", "S_elbow", "S_wrist"),
            ("CC_Base_{S}_ForearmTwist01", "CC_Base_{S}_Forearm", "S_elbow", "S_fore_mid"),
            ("CC_Base_{S}_ForearmTwist02", "CC_Base_{S}_ForearmTwist01", "S_fore_mid", "S_wrist"),
            ("CC_Base_{S}_ElbowShareBone", "CC_Base_{S}_Forearm", "S_elbow", None),
            ("CC_Base_{S}_Hand", "CC_Base_{S}_Forearm", "S_wrist", "S_middle1"),
            ("CC_Base_{S}_Thigh", "CC_Base_Pelvis", "S_hip", "S_knee"), ("CC_Base_{S}_Calf", "CC_Base_{S}_Thigh", "S_knee", "S_ankle"),
            ("CC_Base_{S}_Foot", "CC_Base_{S}_Calf", "S_ankle", "S_ball"),
            ("CC_Base_{S}_ToeBase", "CC_Base_{S}_Foot", "S_ball", "S_toe")]
    if fingers:
        rows += _finger_rows("CC_Base_{S}_Hand", lambda f, i: f"CC_Base_{{S}}_{'Mid' if f == 'middle' else f.capitalize()}{i}")
    return _sided(rows, {"l": "L", "r": "R"})


def daz_genesis8(fingers: bool = True) -> list[tuple]:
    """Daz Genesis 8 as Diffeomorphic's importer or Daz's FBX export leaves it: bend and twist bones in series along
    each limb (lShldrBend > lShldrTwist > lForearmBend > lForearmTwist > lHand), one carpal per finger, the hip
    carrying the spine and a pelvis bone with the legs. Names from Diffeomorphic's Genesis 8 rest pose table
    (import_daz data/restposes/genesis_8_male.json), parents as public Genesis 8 skeletons list them."""
    rows = [("hip", None, "hips", "spine0"), ("pelvis", "hip", "hips", None),
            ("abdomenLower", "hip", "spine0", "spine1"), ("abdomenUpper", "abdomenLower", "spine1", "spine2"),
            ("chestLower", "abdomenUpper", "spine2", "spine3"), ("chestUpper", "chestLower", "spine3", "neck"),
            ("neckLower", "chestUpper", "neck", "neck1"), ("neckUpper", "neckLower", "neck1", "head"),
            ("head", "neckUpper", "head", "head_top"), ("{S}Eye", "head", "head", None),
            ("{S}Pectoral", "chestUpper", "S_breast", None),
            ("{S}Collar", "chestUpper", "S_collar", "S_shoulder"), ("{S}ShldrBend", "{S}Collar", "S_shoulder", "S_upper_mid"),
            ("{S}ShldrTwist", "{S}ShldrBend", "S_upper_mid", "S_elbow"),
            ("{S}ForearmBend", "{S}ShldrTwist", "S_elbow", "S_fore_mid"),
            ("{S}ForearmTwist", "{S}ForearmBend", "S_fore_mid", "S_wrist"),
            ("{S}Hand", "{S}ForearmTwist", "S_wrist", "S_middle1"),
            ("{S}ThighBend", "pelvis", "S_hip", "S_thigh_mid"), ("{S}ThighTwist", "{S}ThighBend", "S_thigh_mid", "S_knee"),
            ("{S}Shin", "{S}ThighTwist", "S_knee", "S_ankle"), ("{S}Foot", "{S}Shin", "S_ankle", "S_ball"),
            ("{S}Toe", "{S}Foot", "S_ball", "S_toe")]
    if fingers:
        rows += _finger_rows("{S}Hand", lambda f, i: f"{{S}}{'Mid' if f == 'middle' else f.capitalize()}{i}",
                             lambda f, k: f"{{S}}Carpal{k}")
    return _sided(rows, {"l": "l", "r": "r"})


def daz_genesis9(fingers: bool = True) -> list[tuple]:
    """Daz Genesis 9: spine1-4, neck1-2, l_shoulder > l_upperarm > l_forearm > l_hand with the twist bones beside the
    limb, a metacarpal per finger and an l_hand_anchor. Names and parents from Diffeomorphic's Genesis 9 parent
    table (import_daz data/parents/genesis_9.json)."""
    rows = [("hip", None, "hips", "spine0"), ("pelvis", "hip", "hips", None),
            ("spine1", "hip", "spine0", "spine1"), ("spine2", "spine1", "spine1", "spine2"),
            ("spine3", "spine2", "spine2", "spine3"), ("spine4", "spine3", "spine3", "neck"),
            ("neck1", "spine4", "neck", "neck1"), ("neck2", "neck1", "neck1", "head"), ("head", "neck2", "head", "head_top"),
            ("{S}_eye", "head", "head", None), ("{S}_pectoral", "spine3", "S_breast", None),
            ("{S}_shoulder", "spine4", "S_collar", "S_shoulder"), ("{S}_upperarm", "{S}_shoulder", "S_shoulder", "S_elbow"),
            ("{S}_upperarmtwist1", "{S}_upperarm", "S_shoulder", "S_upper_mid"),
            ("{S}_upperarmtwist2", "{S}_upperarm", "S_upper_mid", "S_elbow"),
            ("{S}_forearm", "{S}_upperarm", "S_elbow", "S_wrist"),
            ("{S}_forearmtwist1", "{S}_forearm", "S_elbow", "S_fore_mid"),
            ("{S}_forearmtwist2", "{S}_forearm", "S_fore_mid", "S_wrist"),
            ("{S}_hand", "{S}_forearm", "S_wrist", "S_middle1"), ("{S}_hand_anchor", "{S}_hand", "S_wrist", None),
            ("{S}_thigh", "pelvis", "S_hip", "S_knee"), ("{S}_shin", "{S}_thigh", "S_knee", "S_ankle"),
            ("{S}_foot", "{S}_shin", "S_ankle", "S_ball"), ("{S}_toes", "{S}_foot", "S_ball", "S_toe")]
    if fingers:
        short = {"middle": "mid"}
        rows += _finger_rows("{S}_hand", lambda f, i: f"{{S}}_{short.get(f, f)}{i}",
                             lambda f, k: f"{{S}}_{short.get(f, f)}metacarpal")
    return _sided(rows, {"l": "l", "r": "r"})


def mpfb(fingers: bool = True) -> list[tuple]:
    """MakeHuman's default rig as MPFB 2 builds it: root at the hips carrying spine05 (up) and pelvis.L/.R (legs),
    five spine and three neck bones, clavicle > shoulder01 > upperarm01 > upperarm02 > lowerarm01 > lowerarm02 > wrist
    (each limb split in series), a metacarpal per finger, breast bones on spine02. Names and parents from MPFB's
    rig.default.json (makehumancommunity/mpfb2, src/mpfb/data/rigs/standard)."""
    rows = [("root", None, "hips", "spine0"), ("spine05", "root", "spine0", "spine1"), ("spine04", "spine05", "spine1", "spine2"),
            ("spine03", "spine04", "spine2", "spine3"), ("spine02", "spine03", "spine3", "spine4"),
            ("spine01", "spine02", "spine4", "neck"), ("neck01", "spine01", "neck", "neck1"),
            ("neck02", "neck01", "neck1", "neck2"), ("neck03", "neck02", "neck2", "head"), ("head", "neck03", "head", "head_top"),
            ("jaw", "head", "head", None), ("breast.{S}", "spine02", "spine3", "S_breast"),
            ("clavicle.{S}", "spine01", "S_collar", "S_scapula"), ("shoulder01.{S}", "clavicle.{S}", "S_scapula", "S_shoulder"),
            ("upperarm01.{S}", "shoulder01.{S}", "S_shoulder", "S_upper_mid"),
            ("upperarm02.{S}", "upperarm01.{S}", "S_upper_mid", "S_elbow"),
            ("lowerarm01.{S}", "upperarm02.{S}", "S_elbow", "S_fore_mid"),
            ("lowerarm02.{S}", "lowerarm01.{S}", "S_fore_mid", "S_wrist"), ("wrist.{S}", "lowerarm02.{S}", "S_wrist", "S_knuckles"),
            ("pelvis.{S}", "root", "hips", "S_hip"), ("upperleg01.{S}", "pelvis.{S}", "S_hip", "S_thigh_mid"),
            ("upperleg02.{S}", "upperleg01.{S}", "S_thigh_mid", "S_knee"), ("lowerleg01.{S}", "upperleg02.{S}", "S_knee", "S_ankle"),
            ("foot.{S}", "lowerleg01.{S}", "S_ankle", "S_ball"), ("toe1-1.{S}", "foot.{S}", "S_ball", "S_toe")]
    if fingers:
        rows += _finger_rows("wrist.{S}", lambda f, i: f"finger{FINGERS.index(f) + 1}-{i}.{{S}}",
                             lambda f, k: f"metacarpal{k}.{{S}}")
    return _sided(rows, {"l": "L", "r": "R"})


def _biped_finger(prefix: str, sep: str):
    """3ds Max Biped's finger names: Finger0 (thumb), Finger01, Finger02; Finger1 (index), Finger11 ..."""
    return lambda f, i: f"{prefix}{{S}}{sep}Finger{FINGERS.index(f)}{'' if i == 1 else i - 1}"


def biped(fingers: bool = True) -> list[tuple]:
    """A 3ds Max Biped exported to FBX ('Bip01 L UpperArm'): the thighs under the first spine link, the clavicles
    under the neck, four spine links, three bones a finger. Names and parents as Biped rigs in public game tools
    list them."""
    rows = [("Bip01", None, "hips", "spine0"), ("Bip01 Pelvis", "Bip01", "hips", "spine0"),
            ("Bip01 Spine", "Bip01 Pelvis", "spine0", "spine1"), ("Bip01 Spine1", "Bip01 Spine", "spine1", "spine2"),
            ("Bip01 Spine2", "Bip01 Spine1", "spine2", "spine3"), ("Bip01 Spine3", "Bip01 Spine2", "spine3", "neck"),
            ("Bip01 Neck", "Bip01 Spine3", "neck", "head"), ("Bip01 Head", "Bip01 Neck", "head", "head_top"),
            ("Bip01 {S} Clavicle", "Bip01 Neck", "S_collar", "S_shoulder"),
            ("Bip01 {S} UpperArm", "Bip01 {S} Clavicle", "S_shoulder", "S_elbow"),
            ("Bip01 {S} Forearm", "Bip01 {S} UpperArm", "S_elbow", "S_wrist"),
            ("Bip01 {S} Hand", "Bip01 {S} Forearm", "S_wrist", "S_middle1"),
            ("Bip01 {S} Thigh", "Bip01 Spine", "S_hip", "S_knee"), ("Bip01 {S} Calf", "Bip01 {S} Thigh", "S_knee", "S_ankle"),
            ("Bip01 {S} Foot", "Bip01 {S} Calf", "S_ankle", "S_ball"), ("Bip01 {S} Toe0", "Bip01 {S} Foot", "S_ball", "S_toe")]
    if fingers:
        rows += _finger_rows("Bip01 {S} Hand", _biped_finger("Bip01 ", " "))
    return _sided(rows, {"l": "L", "r": "R"})


def valve_biped(fingers: bool = True) -> list[tuple]:
    """Valve's Source engine biped ('ValveBiped.Bip01_L_UpperArm'): the pelvis carries the thighs and the spine,
    Spine, Spine1, Spine2, Spine4, Neck1, Head1, three bones a finger."""
    v = "ValveBiped.Bip01_"
    rows = [(f"{v}Pelvis", None, "hips", "spine0"), (f"{v}Spine", f"{v}Pelvis", "spine0", "spine1"),
            (f"{v}Spine1", f"{v}Spine", "spine1", "spine2"), (f"{v}Spine2", f"{v}Spine1", "spine2", "spine3"),
            (f"{v}Spine4", f"{v}Spine2", "spine3", "neck"), (f"{v}Neck1", f"{v}Spine4", "neck", "head"),
            (f"{v}Head1", f"{v}Neck1", "head", "head_top"),
            (f"{v}{{S}}_Clavicle", f"{v}Spine4", "S_collar", "S_shoulder"),
            (f"{v}{{S}}_UpperArm", f"{v}{{S}}_Clavicle", "S_shoulder", "S_elbow"),
            (f"{v}{{S}}_Forearm", f"{v}{{S}}_UpperArm", "S_elbow", "S_wrist"),
            (f"{v}{{S}}_Hand", f"{v}{{S}}_Forearm", "S_wrist", "S_middle1"),
            (f"{v}{{S}}_Thigh", f"{v}Pelvis", "S_hip", "S_knee"), (f"{v}{{S}}_Calf", f"{v}{{S}}_Thigh", "S_knee", "S_ankle"),
            (f"{v}{{S}}_Foot", f"{v}{{S}}_Calf", "S_ankle", "S_ball"), (f"{v}{{S}}_Toe0", f"{v}{{S}}_Foot", "S_ball", "S_toe")]
    if fingers:
        rows += _finger_rows(f"{v}{{S}}_Hand", _biped_finger(v, "_"))
    return _sided(rows, {"l": "L", "r": "R"})


def humanik(fingers: bool = True, accessories: bool = True) -> list[tuple]:
    """A Unity humanoid character with Maya HumanIK names (Character1_Reference > Character1_Hips ..., roll bones on
    the arm), and its accessories as such characters carry them: four sleeve chains round each forearm, hanging 40 cm
    down, two long twin-tail hair chains from the back of the head, above its joint, down to the waist, and a skirt
    of six strands from the hips to the knees."""
    rows = [("Reference", None, "root", "hips"), ("Hips", "Reference", "hips", "spine0"),
            ("Spine", "Hips", "spine0", "spine1"), ("Spine1", "Spine", "spine1", "spine2"),
            ("Spine2", "Spine1", "spine2", "neck"), ("Neck", "Spine2", "neck", "head"), ("Head", "Neck", "head", "head_top"),
            ("{S}Shoulder", "Spine2", "S_collar", "S_shoulder"), ("{S}Arm", "{S}Shoulder", "S_shoulder", "S_elbow"),
            ("{S}ArmRoll", "{S}Arm", "S_upper_mid", "S_elbow"),
            ("{S}ForeArm", "{S}Arm", "S_elbow", "S_wrist"), ("{S}ForeArmRoll", "{S}ForeArm", "S_fore_mid", "S_wrist"),
            ("{S}Hand", "{S}ForeArm", "S_wrist", "S_middle1"),
            ("{S}UpLeg", "Hips", "S_hip", "S_knee"), ("{S}Leg", "{S}UpLeg", "S_knee", "S_ankle"),
            ("{S}Foot", "{S}Leg", "S_ankle", "S_ball"), ("{S}ToeBase", "{S}Foot", "S_ball", "S_toe")]
    if fingers:
        for f in FINGERS:
            rows += [(f"{{S}}Hand{f.capitalize()}{i}", f"{{S}}Hand{f.capitalize()}{i - 1}" if i > 1 else "{S}Hand",
                      f"S_{f}{i}", f"S_{f}{i + 1}") for i in (1, 2, 3)]
    rows = [(f"Character1_{b}", p and f"Character1_{p}", h, t) for b, p, h, t in _sided(rows, {"l": "Left", "r": "Right"})]
    if not accessories:
        return rows
    for side, x in (("L", 1.0), ("R", -1.0)):
        forearm, cuff = f"Character1_{'Left' if x > 0 else 'Right'}ForeArm", f"{side.lower()}_fore_mid"
        for k, (dy, dz) in enumerate(((0.04, 0.0), (0.0, 0.04), (-0.04, 0.0), (0.0, -0.04))):
            joint = [(cuff, (0.05 * x + 0.02 * x * i, dy, dz - 0.1 * i)) for i in range(5)]
            rows += [(f"Sleeve_{side}_{k}_{i}", f"Sleeve_{side}_{k}_{i - 1}" if i else forearm, joint[i], joint[i + 1])
                     for i in range(4)]
        joint = [("head", (0.08 * x + 0.03 * x * i, 0.06 + 0.02 * i, 0.06 - 0.09 * i)) for i in range(8)]
        rows += [(f"Hair_TwinTail_{side}_{i:02d}", f"Hair_TwinTail_{side}_{i - 1:02d}" if i else "Character1_Head",
                  joint[i], joint[i + 1]) for i in range(7)]
    for k in range(6):  # a skirt: six strands round the hips, from just below the hip joints down to the knees
        out = Vector((math.sin(k * math.pi / 3), math.cos(k * math.pi / 3), 0.0))  # from the back round
        joint = [("hips", tuple(out * (0.14 + 0.03 * i) + Vector((0, 0, -0.04 - 0.1 * i)))) for i in range(5)]
        rows += [(f"Skirt_{k}_{i}", f"Skirt_{k}_{i - 1}" if i else "Character1_Hips", joint[i], joint[i + 1])
                 for i in range(4)]
    return rows


BVH_CMU = """\
Hips > LHipJoint > LeftUpLeg > LeftLeg > LeftFoot > LeftToeBase
Hips > RHipJoint > RightUpLeg > RightLeg > RightFoot > RightToeBase
Hips > LowerBack > Spine > Spine1 > Neck > Neck1 > Head
Spine1 > LeftShoulder > LeftArm > LeftForeArm > LeftHand > LeftFingerBase > LeftHandIndex1
LeftHand > LThumb
Spine1 > RightShoulder > RightArm > RightForeArm > RightHand > RightFingerBase > RightHandIndex1
RightHand > RThumb
"""  # CMU mocap as converted for MotionBuilder (cgspeed): zero-length hip, back, neck, collar and finger-base joints
BVH_CMU_JOINTS = {"Hips": "hips", "LHipJoint": "hips", "LeftUpLeg": "l_hip", "LeftLeg": "l_knee", "LeftFoot": "l_ankle",
                  "LeftToeBase": "l_ball", "LowerBack": "hips", "Spine": "spine1", "Spine1": "spine2", "Neck": "spine2",
                  "Neck1": "neck", "Head": "head", "LeftShoulder": "spine2", "LeftArm": "l_shoulder",
                  "LeftForeArm": "l_elbow", "LeftHand": "l_wrist", "LeftFingerBase": "l_wrist",
                  "LeftHandIndex1": "l_index1", "LThumb": "l_wrist"}
BVH_MAX = """\
Hips > LeftHip > LeftKnee > LeftAnkle
Hips > RightHip > RightKnee > RightAnkle
Hips > Chest > Chest2 > Neck > Head
Chest2 > LeftCollar > LeftShoulder > LeftElbow > LeftWrist
Chest2 > RightCollar > RightShoulder > RightElbow > RightWrist
"""  # CMU mocap as converted for 3ds Max: LeftShoulder is the upper arm, LeftCollar the clavicle
BVH_MAX_JOINTS = {"Hips": "hips", "LeftHip": "l_hip", "LeftKnee": "l_knee", "LeftAnkle": "l_ankle", "Chest": "spine1",
                  "Chest2": "spine2", "Neck": "neck", "Head": "head", "LeftCollar": "l_collar",
                  "LeftShoulder": "l_shoulder", "LeftElbow": "l_elbow", "LeftWrist": "l_wrist"}
BVH_ENDS = {"Head": "head_top", "LeftToeBase": "l_toe", "LeftHandIndex1": "l_index3", "LThumb": "l_thumb2",
            "LeftAnkle": "l_ball", "LeftWrist": "l_knuckles"}


def _both_sides(table: dict[str, str]) -> dict[str, str]:
    """A left-side BVH name -> joint table completed with the right side."""
    out = dict(table)
    for name, joint in table.items():
        right = name.replace("Left", "Right").replace("LHip", "RHip").replace("LThumb", "RThumb")
        out[right] = "r_" + joint[2:] if joint.startswith("l_") else joint
    return out


def _bvh_text(tree: str, joint_of: dict[str, str], scale: float = 100.0, zero_ends: frozenset[str] = frozenset(),
              lying: bool = False, captured: bool = False) -> str:
    """A BVH file (Y-up, centimetres, as mocap files are) with one frame of rest pose.

    zero_ends: joints whose End Site has a zero offset. lying: every OFFSET along +X, so the zero pose is one
    straight line along X (as some motion-capture datasets write it), and the frame's rotations stand the figure up:
    each joint turns its child's OFFSET onto the line to that child (joints where branches part, such as the hips, the
    chest and the hand, are zero-length forks in these files, as in CMU's, so each joint has one child apart from it).
    captured: as a real file's numbers leave it, the left side's OFFSETs 0.1 mm off the line."""
    p = joints(spine=3)
    joint_of, ends = _both_sides(joint_of), _both_sides(BVH_ENDS)
    children: dict[str, list[str]] = {}
    for line in tree.strip().splitlines():
        chain = [n.strip() for n in line.split(">")]
        for parent, child in zip(chain, chain[1:]):
            if child not in children.setdefault(parent, []):
                children[parent].append(child)
    lines, values = ["HIERARCHY"], []

    def y_up(v: Vector) -> Vector:
        return Vector((v.x, v.z, -v.y)) * scale

    def written(v: Vector, name: str) -> Vector:
        """The OFFSET written for a joint (or its End Site) lying v away from its parent."""
        if not lying:
            return y_up(v)
        left = captured and name.startswith(("Left", "LThumb", "LHip"))
        return Vector((y_up(v).length, 0.01 if left and v.length > 1e-9 else 0.0, 0.0))

    def write(name: str, parent_pos: Vector, parent_turn: Matrix, depth: int) -> None:
        pos, ind = p[joint_of[name]], "  " * depth
        kids = children.get(name, [])
        end = (pos if name in zero_ends else p[ends[name]] if name in ends else pos + Vector((0, 0, 0.05))) \
            if not kids else None
        apart = [(p[joint_of[c]] - pos, c) for c in kids if (p[joint_of[c]] - pos).length > 1e-9] or \
            ([(end - pos, name)] if end is not None and (end - pos).length > 1e-9 else [])
        assert not lying or len(apart) <= 1, f"{name} forks"
        turn = written(*apart[0]).rotation_difference(y_up(apart[0][0])).to_matrix() if lying and apart else parent_turn
        euler = (parent_turn.transposed() @ turn).to_euler("YXZ")  # the file's Zrotation Xrotation Yrotation
        values.extend((list(y_up(pos)) if depth == 0 else []) + [math.degrees(a) for a in (euler.z, euler.x, euler.y)])
        lines.extend([f"{ind}{'ROOT' if depth == 0 else 'JOINT'} {name}", f"{ind}{{",
                      f"{ind}  OFFSET " + " ".join(f"{c:.4f}" for c in written(pos - parent_pos, name)),
                      f"{ind}  CHANNELS {6 if depth == 0 else 3} " + ("Xposition Yposition Zposition " if depth == 0
                                                                     else "") + "Zrotation Xrotation Yrotation"])
        for child in kids:
            write(child, pos, turn, depth + 1)
        if end is not None:
            lines.extend([f"{ind}  End Site", f"{ind}  {{",
                          f"{ind}    OFFSET " + " ".join(f"{c:.4f}" for c in written(end - pos, name)), f"{ind}  }}"])
        lines.append(f"{ind}}}")

    write("Hips", Vector((0, 0, 0)), Matrix.Identity(3), 0)
    lines += ["MOTION", "Frames: 1", "Frame Time: 0.0333333", " ".join(f"{v:.4f}" for v in values)]
    return "\n".join(lines) + "\n"


def import_bvh(kind: str, name: str, *, zero_ends: frozenset[str] = frozenset(), lying: bool = False,
               captured: bool = False) -> bpy.types.Object:
    """A CMU BVH ('cmu': MotionBuilder names, 'max': 3ds Max names) read by Blender's own BVH importer (see _bvh_text
    for zero_ends, lying and captured). Its one frame of motion is cleared back to the rest pose, except for a lying file,
    which keeps it as the file's standing pose."""
    tree, table = (BVH_CMU, BVH_CMU_JOINTS) if kind == "cmu" else (BVH_MAX, BVH_MAX_JOINTS)
    path = Path(tempfile.mkdtemp(prefix="dg-bvh-")) / f"{name}.bvh"
    path.write_text(_bvh_text(tree, table, zero_ends=frozenset(zero_ends), lying=lying, captured=captured))
    bpy.ops.import_anim.bvh(filepath=str(path), global_scale=0.01)
    obj = bpy.context.active_object
    obj.name = name
    if not lying:
        obj.animation_data_clear()
        for pb in obj.pose.bones:
            pb.location, pb.rotation_mode = (0, 0, 0), "QUATERNION"
            pb.rotation_quaternion = (1, 0, 0, 0)
    return obj


def without(rows: list[tuple], bones: set[str]) -> list[tuple]:
    """Hierarchy rows minus some bones, their children hung from the removed bone's parent (a stylised character
    without a neck, a chest or clavicles); each child keeps its own head joint."""
    parent = {r[0]: r[1] for r in rows}

    def kept(p):
        while p in bones:
            p = parent[p]
        return p

    return [(b, kept(p), h, t) for b, p, h, t in rows if b not in bones]


def _cross_axis(head: Vector, tail: Vector) -> Vector:
    """A tail across the limb: what FBX bones look like without Automatic Bone Orientation."""
    d = tail - head
    across = d.cross(Vector((0, 0, 1)))
    if across.length < 1e-6 * d.length:
        across = d.cross(Vector((1, 0, 0)))
    return head + across.normalized() * d.length


def build(rows: list[tuple], name: str, *, a_pose: bool = False, spine: int = 3, neck: int = 1, prefix: str = "",
          roll_degrees: float = 0.0, y_up_cm: bool = False, cross_axis: bool = False,
          y_tails: bool = False) -> bpy.types.Object:
    """Build an armature from hierarchy rows in the current scene.

    y_up_cm: store it as glTF/FBX imports do (data Y-up in centimetres, object turned +90 about X, scale 0.01);
    cross_axis: every bone's tail points across its limb (FBX without Automatic Bone Orientation);
    y_tails: every bone's tail along the world's +Y at the bone's length (FBX's default import)."""
    p = joints(a_pose, spine, neck)

    def at(joint) -> Vector:
        """A joint by name, or (joint, offset) for a point hung from one (an accessory's)."""
        return p[joint] if isinstance(joint, str) else p[joint[0]] + Vector(joint[1])

    data = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, data)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    to_data = Matrix.Diagonal((100, 100, 100, 1)) @ Matrix.Rotation(-math.pi / 2, 4, "X") if y_up_cm else Matrix()
    bpy.ops.object.mode_set(mode="EDIT")
    for bone, parent, head, tail in rows:
        h = at(head)
        t = at(tail) if tail else h + (h - at(next(r[2] for r in rows if r[0] == parent))).normalized() * 0.05 \
            if parent else h + Vector((0, 0, 0.1))
        if (t - h).length < 1e-4:
            t = h + Vector((0, 0, 0.05))
        if cross_axis:
            t = _cross_axis(h, t)
        if y_tails:
            t = h + Vector((0, (t - h).length, 0))
        eb = data.edit_bones.new(prefix + bone)
        eb.head, eb.tail, eb.roll = to_data @ h, to_data @ t, math.radians(roll_degrees)
        if parent:
            eb.parent = data.edit_bones[prefix + parent]
            eb.use_connect = (eb.parent.tail - eb.head).length < 1e-6
    bpy.ops.object.mode_set(mode="OBJECT")
    if y_up_cm:
        obj.rotation_euler, obj.scale = (math.pi / 2, 0, 0), (0.01, 0.01, 0.01)
    for pb in obj.pose.bones:
        pb.rotation_mode = "QUATERNION"
    return obj


FAMILIES = {"mixamo": dict(rows=mixamo, prefix="mixamorig:"), "ue4": dict(rows=ue4), "ue5": dict(rows=ue5, spine=5, neck=2),
            "vrm": dict(rows=vroid), "cc": dict(rows=cc, neck=2), "daz8": dict(rows=daz_genesis8, spine=4, neck=2, preset="daz"),
            "daz9": dict(rows=daz_genesis9, spine=4, neck=2, preset="daz"), "mpfb": dict(rows=mpfb, spine=5, neck=3, a_pose=True),
            "humanik": dict(rows=humanik, preset="mixamo"), "biped": dict(rows=biped, spine=4),
            "valve": dict(rows=valve_biped, spine=4, preset="biped")}


def preset_of(family: str) -> str:
    """The preset a test family must be detected as (its own name unless told)."""
    return FAMILIES[family].get("preset", family)


def build_family(family: str, name: str | None = None, *, fingers: bool = True, **options) -> bpy.types.Object:
    """A rig of a family as its files arrive (see FAMILIES), with the build options of `build`."""
    spec = dict(FAMILIES[family])
    rows = spec.pop("rows")(fingers=fingers)
    spec.pop("preset", None)
    return build(rows, name or family, **{**spec, **options})


def metarig(name: str = "metarig") -> bpy.types.Object:
    """Blender's Human metarig, added by Rigify's own operator."""
    import addon_utils
    addon_utils.enable("rigify", default_set=True)
    bpy.ops.object.armature_human_metarig_add()
    obj = bpy.context.active_object
    obj.name = name
    return obj


def rigify_rig(name: str = "rig") -> bpy.types.Object:
    """A rig generated by Rigify from the Human metarig (its generate function: the operator can hang headless)."""
    import rigify.generate
    meta = metarig("metarig")
    rigify.generate.generate_rig(bpy.context, meta)
    obj = next(o for o in bpy.data.objects if o.type == "ARMATURE" and o is not meta and "ORG-spine" in o.data.bones)
    obj.name = name
    bpy.data.objects.remove(meta)
    return obj
