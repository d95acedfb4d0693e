"""The sample subject's 3D head: scikit-image's astronaut photograph lifted to a textured, deformable mesh.

Everything is built once per process from the photo and MediaPipe face mesh (0.10.21, offline):
- a head-and-shoulders crop of the photo is the reference frame (REF_SIZE px, focal FOCAL_REF px);
- its 478 face-mesh detections, un-projected with their relative depth, give the rest shape in the head's
  canonical frame (`talkfield.camera` conventions: head units, origin at the centroid of
  `talkfield.landmarks.RIGID`, x to the subject's left, y down, z into the face);
- triangles are rebuilt from `FACEMESH_TESSELATION` edges (`triangles_from_edges`);
- deformation fields (jaw weights, lip closure / spreading / rounding, blinks) are harmonic interpolations of a
  few constrained vertices over the mesh graph, so neighbouring skin follows smoothly;
- the rest of the person (hair, neck, shoulders) is a textured grid whose vertices blend the head and torso
  motions; eyeballs, mouth cavity and teeth are extra geometry behind the face mesh.
Texture coordinates are the rest projections into the photo, so the rest pose reproduces the photo.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections import defaultdict
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.interpolate import griddata

from talkfield.landmarks import (FACE_OVAL, LEFT_EYE, NUM_MESH, OUTER_EYE_CORNERS, RIGHT_EYE, RIGID)

log = logging.getLogger(__name__)

REF_SIZE = 512
"""Reference frame size (px); other sizes scale intrinsics, texture and geometry by size / REF_SIZE."""
CROP = (89, 0, 272)
"""(x0, y0, size) of the head-and-shoulders crop in the 512x512 astronaut photo, face roughly centred."""
TEX_MARGIN = 48
"""Photo pixels kept beyond the crop on the left, right and bottom, so torso motion never shows an edge."""
FOCAL_REF = 1200.0
"""Focal length (px) at REF_SIZE: a ~24 degree field of view, as in GeneFace's 512 px crops."""

UPPER_INNER_LIP = np.array([78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308])
LOWER_INNER_LIP = np.array([78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308])
UPPER_OUTER_LIP = np.array([61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291])
LOWER_OUTER_LIP = np.array([61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291])
RIGHT_UPPER_LID = np.array([246, 161, 160, 159, 158, 157, 173])
RIGHT_LOWER_LID = np.array([7, 163, 144, 145, 153, 154, 155])
LEFT_UPPER_LID = np.array([466, 388, 387, 386, 385, 384, 398])
LEFT_LOWER_LID = np.array([249, 390, 373, 374, 380, 381, 382])
CHIN = np.array([152, 148, 176, 149, 150, 377, 400, 378, 379, 175, 199, 200, 396, 171, 208, 428])
IRIS_CENTRES = (468, 473)

JAW_MAX_DEG = 10.0
"""Jaw rotation at full opening (jaw = 1)."""

LAYER_PERSON, LAYER_CAVITY, LAYER_TEETH, LAYER_EYEBALL, LAYER_FACE = range(5)
"""Draw order: the person grid, mouth cavity, teeth, eyeballs, then the face mesh on top."""


# --------------------------------------------------------------------------------------------- triangles
def triangles_from_edges(edges, points2d: np.ndarray | None = None, toward: np.ndarray | None = None) -> np.ndarray:
    """Rebuild mesh triangles from an edge list (the face-mesh tables give edges only).

    Triangles are the 3-cliques of the edge graph; cliques that are not faces (every edge shared by more than
    two cliques) are dropped until each edge borders at most two triangles; then the orientation is propagated
    across shared edges so neighbours agree, and flipped globally so that, if `points2d` [V,2] (image coords,
    v down) is given, most triangles have a negative `_signed_area` (counter-clockwise on screen): their normals
    (b - a) x (c - a) point towards an OpenCV camera looking along +z. Returns [F,3] int64.
    """
    edges = {tuple(sorted(map(int, e))) for e in edges}
    adj = defaultdict(set)
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    tris = {tuple(sorted((a, b, c))) for a, b in edges for c in adj[a] & adj[b]}

    def tri_edges(t):
        return ((t[0], t[1]), (t[0], t[2]), (t[1], t[2]))

    while True:
        count = defaultdict(int)
        for t in tris:
            for e in tri_edges(t):
                count[e] += 1
        over = [t for t in tris if any(count[e] > 2 for e in tri_edges(t))]
        if not over:
            break
        worst = max(over, key=lambda t: (sum(count[e] > 2 for e in tri_edges(t)), t))
        tris.discard(worst)

    tris = sorted(tris)
    by_edge = defaultdict(list)
    for i, t in enumerate(tris):
        for e in tri_edges(t):
            by_edge[e].append(i)
    oriented: dict[int, tuple[int, int, int]] = {}
    for seed in range(len(tris)):
        if seed in oriented:
            continue
        oriented[seed] = tris[seed]
        stack = [seed]
        while stack:
            i = stack.pop()
            a, b, c = oriented[i]
            for u, v in ((a, b), (b, c), (c, a)):
                for j in by_edge[tuple(sorted((u, v)))]:
                    if j in oriented:
                        continue
                    t = tris[j]
                    w = [x for x in t if x not in (u, v)][0]
                    oriented[j] = (v, u, w)  # the shared edge runs the other way in the neighbour
                    stack.append(j)
    out = np.array([oriented[i] for i in range(len(tris))], dtype=np.int64)
    if points2d is not None:
        p = np.asarray(points2d, dtype=np.float64)
        area = _signed_area(p[out[:, 0]], p[out[:, 1]], p[out[:, 2]])
        if np.sum(area > 0) > np.sum(area < 0):
            out = out[:, [0, 2, 1]]
    return out


def _signed_area(a, b, c):
    """Twice the signed area in image coordinates (v down): positive when a->b->c turns clockwise on screen."""
    return (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])


def face_mesh_triangles(points2d: np.ndarray | None = None) -> np.ndarray:
    """[F,3] triangles of the 468-point MediaPipe face mesh, rebuilt from FACEMESH_TESSELATION."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    return triangles_from_edges(FACEMESH_TESSELATION, points2d)


def mesh_edges(triangles: np.ndarray) -> np.ndarray:
    """Unique undirected edges [E,2] of a triangle list."""
    e = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    return np.unique(np.sort(e, axis=1), axis=0)


def harmonic_field(n: int, edges: np.ndarray, fixed: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Interpolate `values` [k, D] given at vertices `fixed` [k] over a graph of n vertices (uniform Laplacian).

    Vertices not connected to any fixed vertex get 0. Returns [n, D].
    """
    values = np.asarray(values, dtype=np.float64).reshape(len(fixed), -1)
    w = np.ones(len(edges))
    A = sp.coo_matrix((np.r_[w, w], (np.r_[edges[:, 0], edges[:, 1]], np.r_[edges[:, 1], edges[:, 0]])),
                      shape=(n, n)).tocsr()
    deg = np.asarray(A.sum(1)).ravel()
    L = (sp.diags(deg) - A).tocsr()
    free = np.setdiff1d(np.arange(n), fixed)
    free = free[deg[free] > 0]
    out = np.zeros((n, values.shape[1]))
    out[fixed] = values
    if len(free):
        Lff = L[free][:, free].tocsc()
        rhs = -(L[free][:, fixed] @ values)
        sol = spla.splu(Lff).solve(rhs)
        out[free] = sol
    return out


# --------------------------------------------------------------------------------------------- the photo
@functools.lru_cache(maxsize=1)
def _photo_and_detection():
    """(texture RGBA uint8 at REF scale incl. margins, frame offset (ox, oy) in that texture, background plate RGB
    uint8 [REF,REF], face-mesh points [478,3] in the reference frame (px, z in px of the same scale))."""
    import mediapipe as mp
    import skimage.data

    photo = skimage.data.astronaut()  # [512, 512, 3] RGB uint8, public domain
    x0, y0, s = CROP
    k = REF_SIZE / s
    # texture region: the crop plus margins (clipped to the photo), at reference scale
    tx0, ty0 = max(0, x0 - TEX_MARGIN), max(0, y0 - TEX_MARGIN)
    tx1, ty1 = min(photo.shape[1], x0 + s + TEX_MARGIN), min(photo.shape[0], y0 + s + TEX_MARGIN)
    region = photo[ty0:ty1, tx0:tx1]
    tw, th = int(round((tx1 - tx0) * k)), int(round((ty1 - ty0) * k))
    tex = cv2.resize(region, (tw, th), interpolation=cv2.INTER_CUBIC)
    ox, oy = (x0 - tx0) * k, (y0 - ty0) * k
    frame = cv2.resize(photo[y0:y0 + s, x0:x0 + s], (REF_SIZE, REF_SIZE), interpolation=cv2.INTER_CUBIC)

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as fm:
        res = fm.process(frame)
    if not res.multi_face_landmarks:
        raise RuntimeError("MediaPipe found no face in the astronaut photo; is mediapipe 0.10.21 installed?")
    pts = np.array([[p.x, p.y, p.z] for p in res.multi_face_landmarks[0].landmark], dtype=np.float64)
    pts *= REF_SIZE  # x, y in px (pixel centres at +0.5), z in px of the same scale (MediaPipe: relative to width)

    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        mask = seg.process(tex).segmentation_mask.astype(np.float32)
    guide = tex.astype(np.float32) / 255.0
    mask = cv2.ximgproc.guidedFilter(guide, mask, 6, 1e-3)
    mask = np.clip((mask - 0.15) / 0.7, 0.0, 1.0)
    alpha = (mask * 255).round().astype(np.uint8)
    rgba = np.concatenate([tex, alpha[..., None]], axis=-1)

    # background plate: the studio backdrop with the person filled in from around it (normalised convolution)
    person = cv2.dilate((mask > 0.05).astype(np.uint8), np.ones((15, 15), np.uint8)).astype(np.float32)
    known = 1.0 - person
    ftex = tex.astype(np.float32)
    fill = np.zeros_like(ftex)
    have = np.zeros(known.shape, bool)
    for sigma in (8, 24, 64, 160):
        num = cv2.GaussianBlur(ftex * known[..., None], (0, 0), sigma)
        den = cv2.GaussianBlur(known, (0, 0), sigma)
        ok = (den > 0.05) & ~have
        fill[ok] = num[ok] / den[ok, None]
        have |= ok
    fill[~have] = ftex[known > 0.5].mean(0)
    fill = cv2.GaussianBlur(fill, (0, 0), 2.0)
    plate = ftex * known[..., None] + fill * person[..., None]
    rng = np.random.default_rng(1234)
    grain = cv2.GaussianBlur(rng.normal(0, 3.0, plate.shape[:2]).astype(np.float32), (0, 0), 1.2)
    plate = np.clip(plate + grain[..., None] * person[..., None], 0, 255)
    oxi, oyi = int(round(ox)), int(round(oy))
    plate = plate[oyi:oyi + REF_SIZE, oxi:oxi + REF_SIZE].round().astype(np.uint8)
    return rgba, (ox, oy), plate, pts


# --------------------------------------------------------------------------------------------- the model
@dataclass
class FaceModel:
    """The sample head at reference scale (REF_SIZE px). Geometry in head units.

    rest: [478,3] canonical rest landmarks (head frame, head units).
    triangles: [F,3] face-mesh triangles (indices < 468).
    K_ref: [3,3] intrinsics at REF_SIZE.
    R_ref, c_ref: the photo's head-to-camera rotation [3,3] and the rigid centroid's camera position [3];
      a canonical point X sits at X @ R_ref.T + c_ref in the photo's camera.
    uv_rest: [478,2] texture coordinates (continuous px in the texture, pixel centres at +0.5).
    fields: name -> [478,3] displacement fields at parameter value 1 (close, wide, round, blink).
    jaw_weight: [478] weight of the jaw rotation; hinge: [3] canonical hinge point (axis = canonical x).
    normals_rest: [478,3] vertex normals in the canonical frame.
    extra_*: eyeball / mouth geometry: canonical positions [N,3], uv [N,2], jaw weight [N], triangles [M,3]
      (indices into the extra vertices), layer per triangle [M].
    grid_*: person grid in the photo's camera frame: positions [G,3], uv [G,2], head weight [G], normals [G,3],
      triangles [Q,3] (indices into the grid).
    texture: RGBA uint8 atlas at REF scale (photo region + synthetic mouth patches below it).
    plate: [REF,REF,3] uint8 static background.
    pivot: [3] canonical point the head rotates about (the neck); torso_pivot: [3] in the photo's camera frame.
    """

    rest: np.ndarray
    triangles: np.ndarray
    K_ref: np.ndarray
    R_ref: np.ndarray
    c_ref: np.ndarray
    uv_rest: np.ndarray
    fields: dict
    jaw_weight: np.ndarray
    hinge: np.ndarray
    normals_rest: np.ndarray
    extra_pos: np.ndarray
    extra_uv: np.ndarray
    extra_jaw: np.ndarray
    extra_tris: np.ndarray
    extra_layer: np.ndarray
    grid_pos: np.ndarray
    grid_uv: np.ndarray
    grid_head: np.ndarray
    grid_normals: np.ndarray
    grid_tris: np.ndarray
    texture: np.ndarray
    plate: np.ndarray
    pivot: np.ndarray
    torso_pivot: np.ndarray


def vertex_normals(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals [V,3] of a triangle mesh (zero for unused vertices)."""
    a, b, c = points[triangles[:, 0]], points[triangles[:, 1]], points[triangles[:, 2]]
    fn = np.cross(b - a, c - a)
    n = np.zeros_like(points)
    for k in range(3):
        np.add.at(n, triangles[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def _unproject(uv: np.ndarray, z: np.ndarray, K: np.ndarray) -> np.ndarray:
    x = (uv[:, 0] - K[0, 2]) / K[0, 0] * z
    y = (uv[:, 1] - K[1, 2]) / K[1, 1] * z
    return np.stack([x, y, z], -1)


def _mouth_patches(width: int, teeth_rgb: np.ndarray) -> tuple[np.ndarray, dict]:
    """Synthetic RGBA patches: mouth cavity (dark, darker in the middle), upper and lower teeth rows.

    Returns (image [h, width, 4] uint8, {name: (x0, y0, x1, y1) continuous px inside the patch image})."""
    ph = 64
    img = np.zeros((3 * ph, width, 4), np.float32)
    xs = np.linspace(-1, 1, width)[None, :]
    ys = np.linspace(-1, 1, ph)[:, None]
    r = np.sqrt(xs ** 2 + ys ** 2)
    cav = np.array([70, 22, 26], np.float32)[None, None] * (0.35 + 0.65 * np.clip(r, 0, 1))[..., None]
    img[:ph, :, :3] = cav
    for row, flip in ((1, False), (2, True)):
        y = np.linspace(0, 1, ph)[:, None]
        if flip:
            y = 1 - y
        n_teeth = 10
        phase = (np.linspace(0, 1, width)[None, :] * n_teeth) % 1.0
        seam = 1.0 - 0.35 * np.exp(-((np.minimum(phase, 1 - phase)) * 14) ** 2)
        side = 1.0 - 0.55 * np.abs(np.linspace(-1, 1, width))[None, :] ** 2
        gum = np.clip((0.22 - y) / 0.1, 0, 1)  # gums at the root of the teeth
        base = teeth_rgb[None, None, :] * (seam * side)[..., None] * (0.85 + 0.15 * y[..., None])
        gumc = np.array([150, 70, 75], np.float32)[None, None]
        img[row * ph:(row + 1) * ph, :, :3] = base * (1 - gum[..., None]) + gumc * gum[..., None]
    img[..., 3] = 255
    rects = {"cavity": (0, 0, width, ph), "upper_teeth": (0, ph, width, 2 * ph),
             "lower_teeth": (0, 2 * ph, width, 3 * ph)}
    return np.clip(img, 0, 255).round().astype(np.uint8), rects


@functools.lru_cache(maxsize=1)
def build_face_model() -> FaceModel:
    """Build the sample head (cached per process). Deterministic given the photo and MediaPipe 0.10.21."""
    rgba, (ox, oy), plate, pts = _photo_and_detection()
    K = np.array([[FOCAL_REF, 0, REF_SIZE / 2], [0, FOCAL_REF, REF_SIZE / 2], [0, 0, 1]], dtype=np.float64)
    uv = pts[:, :2]
    ra, la = OUTER_EYE_CORNERS
    eye_px = np.linalg.norm(uv[la] - uv[ra])
    depth0 = FOCAL_REF / eye_px  # rough camera distance in head units
    z = depth0 + pts[:, 2] / eye_px  # MediaPipe z: px of the image width, relative to the head centre
    P = _unproject(uv, z, K)
    s = 1.0 / np.linalg.norm(P[la] - P[ra])
    P *= s  # exact head units; the camera sits at the origin so projections are unchanged
    c = P[RIGID].mean(0)
    ex = P[la] - P[ra]
    ex /= np.linalg.norm(ex)
    # frontal = the eye axis parallel to the image plane; the photo's own pitch counts as 0
    ey = np.cross(np.array([0.0, 0.0, 1.0]), ex)
    ey /= np.linalg.norm(ey)
    ez = np.cross(ex, ey)
    R = np.stack([ex, ey, ez], 1)  # columns: canonical axes in camera coords
    rest = (P - c) @ R

    tri = face_mesh_triangles(uv[:468])
    edges = mesh_edges(tri)
    n468 = 468
    normals = vertex_normals(rest, tri)
    normals[468:] = np.array([0, 0, -1.0])

    # ---- deformation fields (canonical frame, head units)
    mouth_c = rest[[13, 14]].mean(0)
    dist_m = np.linalg.norm(rest - mouth_c, axis=1)
    upper = np.unique(np.r_[UPPER_INNER_LIP[1:-1], UPPER_OUTER_LIP[1:-1]])
    lower = np.unique(np.r_[LOWER_INNER_LIP[1:-1], LOWER_OUTER_LIP[1:-1]])
    y_corner = rest[[61, 291], 1].mean()
    above = np.where((rest[:n468, 1] < y_corner - 0.12) | np.isin(np.arange(n468), [234, 454, 93, 323, 127, 356]))[0]
    chin = np.unique(np.r_[CHIN, np.where((rest[:n468, 1] > rest[17, 1] + 0.2) & (np.abs(rest[:n468, 0]) < 0.55))[0]])
    fixed = np.r_[upper, above, lower, chin]
    vals = np.r_[np.zeros(len(upper) + len(above)), np.ones(len(lower) + len(chin))]
    fixed, first = np.unique(fixed, return_index=True)
    jaw_w = np.clip(harmonic_field(n468, edges, fixed, vals[first])[:, 0], 0, 1)
    jaw_w = np.r_[jaw_w, np.zeros(NUM_MESH - n468)]
    hinge = np.array([0.0, 0.5 * y_corner, 1.2])

    far = np.where(dist_m[:n468] > 0.75)[0]

    nose = np.array([1, 2, 4, 5, 6, 168, 195, 197, 98, 327, 48, 278, 64, 294])

    def field(idx, disp):
        idx = np.asarray(idx)
        zero = np.setdiff1d(np.r_[far, nose, RIGID], idx)
        f = harmonic_field(n468, edges, np.r_[idx, zero], np.r_[np.asarray(disp, float).reshape(-1, 3),
                                                                  np.zeros((len(zero), 3))])
        return np.r_[f, np.zeros((NUM_MESH - n468, 3))]

    # lips closing: inner lips meet at the midpoint of each upper/lower pair
    pairs = np.stack([UPPER_INNER_LIP[1:-1], LOWER_INNER_LIP[1:-1]], 1)
    mid = rest[pairs].mean(1)
    close = field(np.r_[pairs[:, 0], pairs[:, 1], [78, 308]],
                  np.r_[mid - rest[pairs[:, 0]], mid - rest[pairs[:, 1]], np.zeros((2, 3))])
    # spreading: corners move apart (and slightly back), the midline stays
    mid_line = np.array([0, 13, 14, 17, 164])
    half = 0.5 * np.linalg.norm(rest[291] - rest[61])
    corner_d = np.array([[-1, 0, 0.15], [1, 0, 0.15], [-1, 0, 0.15], [1, 0, 0.15]]) * 0.22 * half
    wide = field(np.r_[[61, 291, 78, 308], mid_line], np.r_[corner_d, np.zeros((len(mid_line), 3))])
    # rounding: corners move in, lips push forward (towards the camera: -z)
    lips_all = np.unique(np.r_[UPPER_INNER_LIP, LOWER_INNER_LIP, UPPER_OUTER_LIP, LOWER_OUTER_LIP])
    rnd = np.zeros((len(lips_all), 3))
    rnd[:, 2] = -0.08
    sign = np.sign(rest[lips_all, 0] - mouth_c[0])
    rnd[:, 0] = -sign * 0.28 * half * np.clip(np.abs(rest[lips_all, 0] - mouth_c[0]) / half, 0, 1) ** 1.5
    round_f = field(lips_all, rnd)
    # blinks: the upper lids come down onto the lower lids
    up = np.r_[RIGHT_UPPER_LID, LEFT_UPPER_LID]
    lo = np.r_[RIGHT_LOWER_LID, LEFT_LOWER_LID]
    eye_centres = np.stack([rest[RIGHT_EYE].mean(0), rest[LEFT_EYE].mean(0)])
    d_eye = np.min(np.linalg.norm(rest[:n468, None] - eye_centres[None], axis=-1), axis=1)
    far_eye = np.where(d_eye > 0.42)[0]
    corners = np.array([33, 133, 263, 362])
    blink_disp = (rest[lo] - rest[up]) * 0.97
    zero = np.setdiff1d(np.r_[far_eye, lo, corners, RIGID], up)
    blink = harmonic_field(n468, edges, np.r_[up, zero], np.r_[blink_disp, np.zeros((len(zero), 3))])
    blink = np.r_[blink, np.zeros((NUM_MESH - n468, 3))]
    fields = {"close": close, "wide": wide, "round": round_f, "blink": blink}

    # ---- texture atlas: the photo region, then synthetic mouth patches below it
    mouth_poly = np.r_[UPPER_INNER_LIP, LOWER_INNER_LIP[::-1][1:-1]]
    m = np.zeros(plate.shape[:2], np.uint8)
    cv2.fillPoly(m, [np.round(uv[mouth_poly] - 0.5).astype(np.int32)], 1)
    frame_rgb = rgba[int(round(oy)):int(round(oy)) + REF_SIZE, int(round(ox)):int(round(ox)) + REF_SIZE, :3]
    inside = frame_rgb[m > 0].astype(np.float32)
    bright = inside[inside.mean(1) >= np.percentile(inside.mean(1), 70)] if len(inside) else np.zeros((0, 3))
    teeth_rgb = np.median(bright, 0) if len(bright) else np.array([225, 215, 200], np.float32)
    teeth_rgb = np.clip(teeth_rgb * 1.05, 0, 255)
    patches, rects = _mouth_patches(rgba.shape[1], teeth_rgb)
    atlas = np.concatenate([rgba, patches], axis=0)
    py0 = rgba.shape[0]
    uv_rest = uv + np.array([ox, oy])

    # ---- extra geometry (canonical frame)
    xs, ys, js, tris, layers = [], [], [], [], []
    n_extra = 0

    def add(pos, tex, jw, faces, layer):
        nonlocal n_extra
        xs.append(pos)
        ys.append(tex)
        js.append(jw)
        tris.append(np.asarray(faces) + n_extra)
        layers.append(np.full(len(faces), layer))
        n_extra += len(pos)

    for loop, centre in ((RIGHT_EYE, IRIS_CENTRES[0]), (LEFT_EYE, IRIS_CENTRES[1])):
        pos = np.r_[rest[loop], rest[[centre]]] + np.array([0, 0, 0.02])
        tex = np.r_[uv_rest[loop], uv_rest[[centre]]]
        n = len(loop)
        faces = [(i, (i + 1) % n, n) for i in range(n)]
        add(pos, tex, np.zeros(n + 1), faces, LAYER_EYEBALL)

    def rect_uv(name, fx, fy):
        x0, y0, x1, y1 = rects[name]
        return np.stack([x0 + fx * (x1 - x0), py0 + y0 + fy * (y1 - y0)], -1)

    # cavity: a fan behind the whole mouth, its lower half on the jaw
    loop = np.r_[UPPER_INNER_LIP, LOWER_INNER_LIP[::-1][1:-1]]
    centre = rest[loop].mean(0)
    ring = centre + (rest[loop] - centre) * np.array([1.35, 2.2, 1.0]) + np.array([0, 0, 0.22])
    pos = np.r_[ring, [centre + np.array([0, 0.05, 0.35])]]
    rel = (pos[:, :2] - centre[:2])
    ext = np.abs(rel).max(0) + 1e-6
    tex = rect_uv("cavity", 0.5 + 0.5 * rel[:, 0] / ext[0], 0.5 + 0.5 * rel[:, 1] / ext[1])
    jw = np.r_[np.zeros(len(UPPER_INNER_LIP)), np.ones(len(loop) - len(UPPER_INNER_LIP)), [0.5]]
    n = len(loop)
    add(pos, tex, jw, [(i, (i + 1) % n, n) for i in range(n)], LAYER_CAVITY)

    # teeth rows along the inner lips, on a dental arch behind them
    def teeth_row(lip, top, bottom, name, jaw):
        p = rest[lip].copy()
        p[:, 0] = mouth_c[0] + (p[:, 0] - mouth_c[0]) * 0.92
        xrel = (p[:, 0] - mouth_c[0]) / half
        p[:, 2] += 0.05 + 0.22 * xrel ** 2
        a = p + np.array([0, top, 0])
        b = p + np.array([0, bottom, 0])
        fx = np.linspace(0, 1, len(lip))
        tex = np.r_[rect_uv(name, fx, np.zeros_like(fx)), rect_uv(name, fx, np.ones_like(fx))]
        k = len(lip)
        faces = []
        for i in range(k - 1):
            faces += [(i, i + 1, k + i + 1), (i, k + i + 1, k + i)]
        add(np.r_[a, b], tex, np.full(2 * k, jaw), faces, LAYER_TEETH)

    teeth_row(UPPER_INNER_LIP, -0.06, 0.085, "upper_teeth", 0.0)
    teeth_row(LOWER_INNER_LIP, -0.075, 0.06, "lower_teeth", 1.0)
    extra_pos, extra_uv, extra_jaw = np.concatenate(xs), np.concatenate(ys), np.concatenate(js)
    extra_tris, extra_layer = np.concatenate(tris), np.concatenate(layers)

    # ---- person grid (hair, neck, shoulders) in the photo's camera frame
    step = 16.0
    gu = np.arange(-ox, rgba.shape[1] - ox + step, step)
    gv = np.arange(-oy, rgba.shape[0] - oy + step, step)
    GU, GV = np.meshgrid(gu, gv)
    gpix = np.stack([GU.ravel(), GV.ravel()], -1)
    # head silhouette ellipse from the face oval, widened for the hair
    oval = uv[FACE_OVAL]
    cx_h = oval[:, 0].mean()
    half_w = 0.5 * (oval[:, 0].max() - oval[:, 0].min()) * 1.45
    top = oval[:, 1].min() - 0.55 * (oval[:, 1].max() - oval[:, 1].min())
    bottom = oval[:, 1].max() + 0.02 * (oval[:, 1].max() - oval[:, 1].min())
    cy_h, half_h = 0.5 * (top + bottom), 0.5 * (bottom - top)
    r = np.sqrt(((gpix[:, 0] - cx_h) / half_w) ** 2 + ((gpix[:, 1] - cy_h) / half_h) ** 2)
    head_w = np.clip((1.12 - r) / 0.22, 0, 1)
    head_w = head_w * head_w * (3 - 2 * head_w)
    # depth: face-mesh depth inside the oval, the head's mid-depth on the silhouette, a torso plane elsewhere
    zc = P[RIGID].mean(0)[2]
    z_face = P[:468, 2]
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    rim = np.stack([cx_h + half_w * np.cos(t), cy_h + half_h * np.sin(t)], -1)
    src = np.r_[uv[:468], rim]
    zsrc = np.r_[z_face, np.full(len(rim), zc + 0.75)]
    zh = griddata(src, zsrc, gpix, method="linear")
    zh = np.where(np.isfinite(zh), zh, zc + 0.75)
    z_torso = zc + 1.0
    gz = head_w * zh + (1 - head_w) * z_torso
    grid_pos = _unproject(gpix, gz, K)
    H, W = GU.shape
    gp = grid_pos.reshape(H, W, 3)
    du = np.gradient(gp, axis=1)
    dv = np.gradient(gp, axis=0)
    gn = np.cross(du, dv).reshape(-1, 3)
    gn /= np.maximum(np.linalg.norm(gn, axis=-1, keepdims=True), 1e-12)
    gn *= np.where(gn[:, 2:3] > 0, -1.0, 1.0)  # towards the camera
    quads = []
    for i in range(H - 1):
        for j in range(W - 1):
            a, b, c_, d = i * W + j, i * W + j + 1, (i + 1) * W + j + 1, (i + 1) * W + j
            quads += [(a, b, c_), (a, c_, d)]
    gtris = np.array(quads, dtype=np.int64)
    grid_uv = gpix + np.array([ox, oy])
    # drop cells whose texture is fully transparent
    alpha = cv2.dilate(rgba[..., 3], np.ones((int(2 * step) + 1, int(2 * step) + 1), np.uint8))
    ai = np.clip(np.round(grid_uv - 0.5).astype(int), 0, [rgba.shape[1] - 1, rgba.shape[0] - 1])
    va = alpha[ai[:, 1], ai[:, 0]] > 0
    gtris = gtris[va[gtris].any(1)]

    pivot = np.array([0.0, 1.3, 1.1])  # the neck, below and behind the rigid centroid
    chest = _unproject(np.array([[REF_SIZE / 2, REF_SIZE * 1.05]]), np.array([z_torso]), K)[0]
    return FaceModel(rest=rest, triangles=tri, K_ref=K, R_ref=R, c_ref=c, uv_rest=uv_rest, fields=fields,
                     jaw_weight=jaw_w, hinge=hinge, normals_rest=normals, extra_pos=extra_pos, extra_uv=extra_uv,
                     extra_jaw=extra_jaw, extra_tris=extra_tris, extra_layer=extra_layer, grid_pos=grid_pos,
                     grid_uv=grid_uv, grid_head=head_w, grid_normals=gn, grid_tris=gtris, texture=atlas,
                     plate=plate, pivot=pivot, torso_pivot=chest)


# --------------------------------------------------------------------------------------------- other faces
FACE_VARIATION_MAX = 0.3
"""Largest `face_variation` (each proportion changes by at most this fraction)."""


def vary_face(model: FaceModel, rng: np.random.Generator, amount: float) -> tuple[FaceModel, dict]:
    """Another face geometry on the same photo, deterministic given `rng`: mouth width, mouth height and the chin's
    length below the lower lip scaled by 1 + amount * U(-1, 1), 1 + amount * U(-1, 1) and 1 + amount * U(0, 1).

    The warp is a smooth function of canonical position that is linear (the scales) around the mouth and fades to
    the identity (cosine falloff) before the nearest rigid point (forehead, nose bridge, temples, eye corners), so
    head units, the canonical origin and the face oval's seam with the hair/neck grid stay as they are. It moves
    the rest shape and the mouth's extra geometry (cavity, teeth) alike, and the lip deformation fields become
    warp(rest + field) - warp(rest), so a closed mouth still closes. Returns (model, the drawn scales).
    """
    if not 0 <= amount <= FACE_VARIATION_MAX:
        raise ValueError(f"sample generator: face_variation must be in [0, {FACE_VARIATION_MAX}], got {amount!r}")
    u = rng.uniform(-1.0, 1.0, 3)
    sx, sy = 1.0 + amount * u[:2]
    sc = 1.0 + amount * abs(u[2])  # only longer: a shorter chin would uncover the photo's own chin behind it
    rest = model.rest
    m = rest[[13, 14]].mean(0)
    metric = np.array([0.6, 1.0, 1.0])  # distances count less sideways: the mouth is wider than it is tall

    def dist(X: np.ndarray) -> np.ndarray:
        return np.linalg.norm((X - m) * metric, axis=-1)

    r1 = 0.95 * float(dist(rest[RIGID]).min())
    r0 = 0.5 * r1
    y_chin = m[1] + 0.15  # below the lower lip
    half_w = 0.6  # the chin stretch fades out sideways over this many head units

    def warp(X: np.ndarray) -> np.ndarray:
        d = X - m
        r = dist(X)
        w = np.clip((r1 - r) / (r1 - r0), 0.0, 1.0)
        w = 0.5 - 0.5 * np.cos(np.pi * w)
        out = X + w[:, None] * d * np.array([sx - 1.0, sy - 1.0, 0.0])
        below = np.clip(X[:, 1] - y_chin, 0.0, None)
        side = np.clip(1.0 - np.abs(d[:, 0]) / half_w, 0.0, 1.0)
        side = 0.5 - 0.5 * np.cos(np.pi * side)
        out[:, 1] += (sc - 1.0) * below * side
        return out

    new_rest = warp(rest)
    fields = dict(model.fields)
    for k in ("close", "wide", "round"):
        fields[k] = warp(rest + model.fields[k]) - new_rest
    varied = dataclasses.replace(model, rest=new_rest, fields=fields, extra_pos=warp(model.extra_pos))
    return varied, {"mouth_width": float(sx), "mouth_height": float(sy), "chin_length": float(sc)}
