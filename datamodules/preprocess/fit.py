"""Stage 4: face model and camera without a licensed 3DMM.

1. Generalised Procrustes of the 3D detections on `landmarks.RIGID` gives the person's mean shape in head units
   (talkfield.motion) and a weak-perspective pose per frame.
2. A per-person expression basis: PCA of the canonical residuals with the rigid-motion directions projected
   out; the number of components (<= 32) minimises the error on held-out frames (coefficients estimated from
   half of the points, error measured on the other half, so extra components that fit noise are penalised).
3. Joint least squares (L-BFGS) of a pinhole camera: per-frame rotation and translation, one focal length,
   a correction of the mean shape and per-frame expression coefficients, on the 2D reprojection error of all
   478 points, with a temporal second-difference penalty on the pose (Charbonnier: quadratic below
   `smooth_scale_px`, linear above, so jitter goes but real sharp head moves stay; expression is left free so
   lips and eyes keep their timing). The expression basis is zero on the rigid subset, so the rigid points
   alone carry the pose.
4. The gauge is reset so the fitted mean shape is exactly canonical (talkfield.motion.normalize_shape); poses
   become camera-to-world matrices in the head frame (talkfield.camera conventions).
"""

from __future__ import annotations

import numpy as np

from talkfield import camera, landmarks as lmk, motion

from .common import log


def _tangent_basis(shape: np.ndarray) -> np.ndarray:
    """Orthonormal basis [7, N*3] of infinitesimal similarity motions (3 translations, 3 rotations, scale)."""
    N = len(shape)
    X = shape - shape.mean(0)
    vecs = []
    for k in range(3):
        v = np.zeros((N, 3))
        v[:, k] = 1
        vecs.append(v)
    for axis in np.eye(3):
        vecs.append(np.cross(axis, X))
    vecs.append(X)
    G = np.stack([v.reshape(-1) for v in vecs])
    q, _ = np.linalg.qr(G.T)
    return q.T


def _principal_axes(D: np.ndarray) -> np.ndarray:
    """Right singular vectors of D [n,d] (rows of the result, by decreasing singular value), from the
    eigen-decomposition of D^T D (a matrix product and a d x d eigh: much faster than an SVD for n >> d)."""
    if len(D) < D.shape[1]:
        return np.linalg.svd(D, full_matrices=False)[2]
    w, V = np.linalg.eigh(D.T @ D)
    return V[:, ::-1].T


def expression_basis(canonical: np.ndarray, mean_shape: np.ndarray, max_k: int, holdout_every: int):
    """PCA expression basis chosen by held-out-frame error.

    canonical [T,478,3], mean_shape [478,3] (head units). Returns (basis [K,478,3], coeffs [T,K],
    held-out error per K [max_k+1] (head units, RMS over held-out points; index 0 = no basis)).
    """
    T, N, _ = canonical.shape
    D = (canonical - mean_shape).reshape(T, -1)
    G = _tangent_basis(mean_shape)
    D = D - (D @ G.T) @ G
    hold = np.arange(T) % holdout_every == holdout_every // 2 if T >= 2 * holdout_every else np.zeros(T, bool)
    train = ~hold
    Vt = _principal_axes(D[train])
    max_k = int(min(max_k, Vt.shape[0], max(1, train.sum() - 1)))
    errs = np.full(max_k + 1, np.nan)
    if hold.any():
        pt = np.arange(N)
        a = np.repeat(pt % 2 == 0, 3)  # coordinates of the points used to estimate coefficients
        b = ~a  # coordinates the error is measured on
        H = D[hold]
        errs[0] = np.sqrt(np.mean(H[:, b] ** 2))
        for k in range(1, max_k + 1):
            V = Vt[:k]  # [k, N*3]
            coef, *_ = np.linalg.lstsq(V[:, a].T, H[:, a].T, rcond=None)  # [k, n_hold]
            errs[k] = np.sqrt(np.mean((H[:, b] - coef.T @ V[:, b]) ** 2))
        K = int(np.nanargmin(errs[1:]) + 1)
    else:
        K = max_k
    V = _principal_axes(D)[:K]
    coeffs = D @ V.T
    return V.reshape(K, N, 3), coeffs, errs


def _rodrigues(w):
    import torch

    theta = w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = w / theta
    K = torch.zeros(*w.shape[:-1], 3, 3, dtype=w.dtype)
    K[..., 0, 1], K[..., 0, 2] = -k[..., 2], k[..., 1]
    K[..., 1, 0], K[..., 1, 2] = k[..., 2], -k[..., 0]
    K[..., 2, 0], K[..., 2, 1] = -k[..., 1], k[..., 0]
    s, c = torch.sin(theta)[..., None], torch.cos(theta)[..., None]
    eye = torch.eye(3, dtype=w.dtype).expand_as(K)
    return eye + s * K + (1 - c) * (K @ K)


def _rotvec(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_rotvec()


def _fit_pose_expression(P, canon, B, coeffs0, size, cfg, focal, iters):
    """Phase A (pose, focal unless fixed, rigid mean-shape correction) then phase B (expression) on
    landmarks P [T,478,3]. Returns (f, R head->camera [T,3,3], tau [T,3], mean shape [478,3], coeffs [T,K],
    basis [K,478,3], held-out error per basis size)."""
    import torch

    T = len(P)
    mean0 = canon.mean_shape
    # initial pinhole camera from the weak-perspective Procrustes poses
    cx = cy = size / 2.0
    f0 = float(focal) if focal else 2.0 * size
    Rc0 = np.swapaxes(canon.R, 1, 2)  # head -> image axes
    s = canon.s  # head units per px
    origin = np.einsum("tij,tj->ti", Rc0, -canon.t) / s[:, None]  # rigid centroid in image px
    Z = f0 * s
    tau0 = np.stack([(origin[:, 0] - cx) * Z / f0, (origin[:, 1] - cy) * Z / f0, Z], -1)

    dt = torch.float64
    rig = lmk.RIGID
    obs_r = torch.tensor(P[:, rig, :2], dtype=dt)
    mean_r = torch.tensor(mean0[rig], dtype=dt)
    omega = torch.tensor(_rotvec(Rc0), dtype=dt, requires_grad=True)
    tau = torch.tensor(tau0, dtype=dt, requires_grad=True)
    logf = torch.tensor(np.log(f0), dtype=dt, requires_grad=not focal)
    dmean = torch.zeros_like(mean_r, requires_grad=True)
    wr = torch.ones(len(rig), dtype=dt)  # per-point weights (re-estimated from the residuals)
    params = [omega, tau, dmean] + ([logf] if logf.requires_grad else [])
    lam_pose = float(cfg["smooth_pose"])
    charb = float(cfg["smooth_scale_px"])
    centre = torch.tensor([cx, cy], dtype=dt)

    def d2(x):
        return x[2:] - 2 * x[1:-1] + x[:-2] if len(x) > 2 else x[:0]

    # phase A: pose, focal length and the rigid part of the mean shape, jointly, on the rigid points
    def loss_fn():
        R = _rodrigues(omega)
        C = torch.einsum("tij,nj->tni", R, mean_r + dmean) + tau[:, None]
        f = logf.exp()
        uv = f * C[..., :2] / C[..., 2:3].clamp_min(1e-6) + centre
        data = (((uv - obs_r) ** 2).sum(-1) * wr).mean()
        px_per_unit = (f / tau[:, 2].detach()).mean()
        # second differences in image pixels (rotation at one head unit, translation at the head's depth);
        # a Charbonnier (smooth L1) penalty removes jitter but lets real sharp head moves through
        acc = torch.cat([d2(omega), d2(tau[:, :2]), 0.3 * d2(tau[:, 2:])], -1) * px_per_unit
        smooth = lam_pose * (torch.sqrt(acc.pow(2) + charb ** 2) - charb).sum() / T
        reg = (px_per_unit ** 2) * dmean.pow(2).mean()
        return data + smooth + reg

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    for rnd in range(1 + int(cfg["reweight"])):
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=int(iters), history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)
        opt.step(closure)
        if rnd < int(cfg["reweight"]):
            with torch.no_grad():
                R = _rodrigues(omega)
                C = torch.einsum("tij,nj->tni", R, mean_r + dmean) + tau[:, None]
                uv = logf.exp() * C[..., :2] / C[..., 2:3] + centre
                var = ((uv - obs_r) ** 2).sum(-1).mean(0)  # [n] mean squared residual per point
                wr = var.mean() / var.clamp_min(1e-3 * var.mean())
                wr = wr / wr.mean()

    with torch.no_grad():
        f = float(logf.exp())
        R_c = _rodrigues(omega).numpy()
        tau_np = tau.numpy().copy()
    mean_fit = mean0.copy()
    mean_fit[rig] += dmean.detach().numpy()
    # phase B: with the poses fixed, back-project the detections onto their camera rays (depth from the current
    # model) into the head frame; the non-rigid mean shape and the basis are re-estimated there (least squares
    # = mean + PCA), then each frame's coefficients are refined on the 2D error (Gauss-Newton)
    X = mean_fit + np.einsum("tk,knd->tnd", coeffs0, B)
    C = np.einsum("tij,tnj->tni", R_c, X) + tau_np[:, None]
    z = C[..., 2:3]
    C_obs = np.concatenate([(P[..., :2] - np.array([cx, cy])) * z / f, z], -1)
    X_obs = np.einsum("tji,tnj->tni", R_c, C_obs - tau_np[:, None])
    nonrig = np.setdiff1d(np.arange(lmk.NUM_MESH), rig)
    mean_fit[nonrig] = X_obs[:, nonrig].mean(0)
    X_obs[:, rig] = mean_fit[rig]
    B, coef0, errs = expression_basis(X_obs, mean_fit, cfg["max_components"], cfg["holdout_every"])
    B[:, rig] = 0.0
    coef_np = fit_expression(P[..., :2], R_c, tau_np, f, (cx, cy), mean_fit, B, coef0,
                             ridge=float(cfg["exp_ridge"]))
    return f, R_c, tau_np, mean_fit, coef_np, B, errs


def _reprojection(P, f, R, tau, mean, B, coef, size):
    X = mean + np.einsum("tk,knd->tnd", coef, B)
    C = np.einsum("tij,tnj->tni", R, X) + tau[:, None]
    uv = f * C[..., :2] / C[..., 2:3] + size / 2.0
    return np.linalg.norm(uv - P[..., :2], axis=-1)


def fit_camera(lms2d: np.ndarray, size: int, cfg: dict) -> dict:
    """Fit pose, focal length, mean shape and expression to tracked landmarks.

    lms2d: [T,478,3] px (x, y in the crop; z MediaPipe's relative depth scaled like x). size: crop size (px).
    Returns a dict of schema arrays (intrinsics, c2w, mean_shape, lms3d, offsets, motion_stats, exp_basis,
    exp_coeffs, eye_ratio, eye_open, face_rect, lip_rect) and 'info' (K chosen, errors, focal).
    """
    import torch

    T = len(lms2d)
    P = lms2d.astype(np.float64)
    canon = motion.canonicalize(P)
    mean0 = canon.mean_shape
    B, coeffs0, errs = expression_basis(canon.canonical, mean0, cfg["max_components"], cfg["holdout_every"])
    # expression never moves the rigid subset: the rigid points alone carry the head pose (letting the basis
    # move them too doubled the rotation error on the synthetic sample: 1.7 -> 1.9 deg median at smooth_pose 3)
    B = B.copy()
    B[:, lmk.RIGID] = 0.0

    cx = cy = size / 2.0
    focal = cfg.get("focal")
    f_scores = {}
    if not focal:
        # the focal length is weakly observable from landmarks (depth and rotation trade off), so it is chosen
        # by the reprojection error (all 478 points, after the expression fit) over a grid, on a frame subset
        sub = np.arange(0, T, max(1, int(np.ceil(T / 250))))
        csub = motion.CanonicalFit(canon.mean_shape, canon.s[sub], canon.R[sub], canon.t[sub], canon.canonical[sub])
        for mult in cfg["focal_grid"]:
            fr = _fit_pose_expression(P[sub], csub, B, coeffs0[sub], size, cfg, mult * size, max(20, cfg["iters"] // 2))
            f_scores[float(mult * size)] = float(np.mean(_reprojection(P[sub], fr[0], fr[1], fr[2], fr[3], fr[5],
                                                                       fr[4], size) ** 2))
        focal = min(f_scores, key=f_scores.get)
    f, R_c, tau_np, mean_fit, coef_np, B, errs = _fit_pose_expression(P, canon, B, coeffs0, size, cfg, focal, cfg["iters"])
    K = len(B)
    # reset the gauge: the fitted mean shape becomes exactly canonical
    mean_new, sg, Rg, tg = motion.normalize_shape(mean_fit)
    B_new = sg * np.einsum("knj,ij->kni", B, Rg)
    R_new = R_c @ Rg.T
    tau_new = sg * tau_np - np.einsum("tij,j->ti", R_new, tg)
    w2c = np.tile(np.eye(4), (T, 1, 1))
    w2c[:, :3, :3] = R_new
    w2c[:, :3, 3] = tau_new
    c2w = camera.invert_pose(w2c)
    Kmat = camera.intrinsics_matrix(f, f, cx, cy)
    lms3d = mean_new + np.einsum("tk,knd->tnd", coef_np, B_new)
    off = motion.offsets(lms3d, mean_new)
    ratio = lmk.eye_ratio(lms3d)
    q03, q97 = motion.eye_quantiles(ratio)

    uv, _ = camera.project(lms3d, c2w, Kmat)
    err = np.linalg.norm(uv - P[..., :2], axis=-1)
    rig_uv = uv[:, lmk.RIGID]
    jitter = float(np.abs(rig_uv[2:] - 2 * rig_uv[1:-1] + rig_uv[:-2]).mean()) if T > 2 else 0.0
    info = {"components": K, "holdout_rms": [None if not np.isfinite(e) else float(e) for e in errs],
            "focal_grid_mse_px2": f_scores,
            "focal_px": f, "reproj_median_px": float(np.median(err)), "reproj_p95_px": float(np.percentile(err, 95)),
            "rigid_jitter_px": jitter, "eye_quantiles": [q03, q97]}
    log.info("fit: %d expression components, focal %.0f px, reprojection median %.2f px, rigid jitter %.3f px",
             K, f, info["reproj_median_px"], jitter)
    return {
        "intrinsics": Kmat, "c2w": c2w, "mean_shape": mean_new, "lms3d": lms3d, "offsets": off,
        "motion_stats": motion.motion_stats(off), "exp_basis": B_new, "exp_coeffs": coef_np,
        "eye_ratio": ratio, "eye_open": motion.eye_openness(ratio, q03, q97),
        "face_rect": face_rects(lms2d, size), "lip_rect": lip_rects(lms2d, size), "info": info,
    }


def fit_expression(obs: np.ndarray, R: np.ndarray, tau: np.ndarray, f: float, c: tuple[float, float],
                   mean: np.ndarray, B: np.ndarray, coef0: np.ndarray, ridge: float = 1e-3, iters: int = 3,
                   chunk: int = 256) -> np.ndarray:
    """Expression coefficients [T,K] minimising the 2D reprojection error for fixed poses (Gauss-Newton).

    obs [T,478,2] px, R [T,3,3] / tau [T,3] head-to-camera, f focal (px), c principal point, mean [478,3],
    B [K,478,3], coef0 [T,K] start. ridge: damping relative to the mean diagonal of J^T J.
    """
    T, K = coef0.shape
    out = coef0.copy()
    Bf = B.reshape(K, -1, 3).astype(np.float32)
    mean = mean.astype(np.float32)
    obs = obs.astype(np.float32)
    R = R.astype(np.float32)
    tau = tau.astype(np.float32)
    for a in range(0, T, chunk):
        sl = slice(a, min(T, a + chunk))
        Rk, tk, ob, cf = R[sl], tau[sl], obs[sl], out[sl].astype(np.float32)
        RB = np.einsum("tij,knj->tkni", Rk, Bf)  # [t,K,N,3] camera-frame basis
        for _ in range(iters):
            X = mean + np.einsum("tk,knd->tnd", cf, Bf)
            C = np.einsum("tij,tnj->tni", Rk, X) + tk[:, None]
            z = C[..., 2]
            uv = f * C[..., :2] / z[..., None] + np.asarray(c)
            r = (uv - ob).reshape(len(cf), -1)  # [t, 2N]
            # d(u,v)/dC = f/z [[1,0,-x/z],[0,1,-y/z]]
            ju = f / z[:, None] * (RB[..., 0] - RB[..., 2] * (C[:, None, :, 0] / z[:, None]))
            jv = f / z[:, None] * (RB[..., 1] - RB[..., 2] * (C[:, None, :, 1] / z[:, None]))
            J = np.stack([ju, jv], -1).reshape(len(cf), K, -1)  # [t,K,2N]
            H = (J @ np.swapaxes(J, 1, 2)).astype(np.float64)
            lam = ridge * np.trace(H, axis1=1, axis2=2)[:, None, None] / K
            g = (J @ r[..., None]).astype(np.float64)
            cf = (cf - np.linalg.solve(H + lam * np.eye(K), g)[..., 0]).astype(np.float32)
        out[sl] = cf
    return out


def face_rects(lms2d: np.ndarray, size: int) -> np.ndarray:
    """Face boxes [T,4] int32 (x0, y0, x1, y1) from the 68-point layout, clamped to the image."""
    p = lmk.to68(lms2d)[..., :2]
    r = np.concatenate([p.min(1), p.max(1)], -1)
    return np.clip(np.round(r), 0, size).astype(np.int32)


def lip_rects(lms2d: np.ndarray, size: int) -> np.ndarray:
    """Square lip boxes [T,4] int32: bbox of the outer lips, half-size x1.2, clamped (as GeneFace++)."""
    p = lmk.to68(lms2d)[:, 48:60, :2]
    lo, hi = p.min(1), p.max(1)
    c = (lo + hi) / 2
    half = 1.2 * (hi - lo).max(-1, keepdims=True) / 2
    r = np.concatenate([c - half, c + half], -1)
    return np.clip(np.round(r), 0, size).astype(np.int32)
