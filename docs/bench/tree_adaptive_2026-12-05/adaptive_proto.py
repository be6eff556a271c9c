import sys, time, json
import numpy as np, torch
sys.path.insert(0, "/work/main/benchmarks")
from bake import square_camera
from turbonerf.app.runs import read_run_spec
from turbonerf.bake.march_cpu import march_cpu, prepare_cpu
from turbonerf.bake.nerftree import load_tree
from turbonerf.bake.render import default_step, close_terminated
from turbonerf.data.formats import load_scene
from turbonerf.rays import image_ray_bundle

run = "/work/t16/lego"; tol = float(sys.argv[1]) if len(sys.argv) > 1 else 0.02
s = read_run_spec(run).scene
cams = load_scene(s.data, downscale=s.downscale, splits=("test",)).split("test").cameras
tree = load_tree(run + "/baked/nerftree.safetensors"); ct = prepare_cpu(tree); step = default_step(tree, s.ndc)
bg = np.asarray(s.background, np.float64).reshape(3)

def march(o, d, vd, near, far):
    r = march_cpu(ct, o, d, vd, near, far, bg, step, t_min=0.05, threads=2)
    out = close_terminated({k: torch.from_numpy(v) for k, v in r.items()}, torch.from_numpy(bg).float(), 0.05)
    return np.concatenate([out["rgb"].numpy(), out["opacity"].numpy()[:, None]], 1)

def axis(n):
    g = list(range(0, n, 2))
    if g[-1] != n - 1: g.append(n - 1)
    g = np.array(g)
    i1 = np.searchsorted(g, np.arange(n), side="left"); i1 = np.clip(i1, 1, len(g) - 1)
    i0 = i1 - 1; a = (np.arange(n) - g[i0]) / (g[i1] - g[i0])
    return g, i0, i1, a

def adaptive(o, d, vd, near, far, H, W, tol):
    gy, y0, y1, ay = axis(H); gx, x0, x1, ax = axis(W)
    idx = (gy[:, None] * W + gx[None, :]).ravel()
    G = march(o[idx], d[idx], vd[idx], near[idx], far[idx]).reshape(len(gy), len(gx), 4)
    c = np.stack([G[:-1, :-1], G[1:, :-1], G[:-1, 1:], G[1:, 1:]])
    fail = (c.max(0) - c.min(0)).max(-1) > tol   # [Hc, Wc]
    # bilinear
    A = G[y0][:, x0]; B = G[y0][:, x1]; C = G[y1][:, x0]; D = G[y1][:, x1]
    ayy = ay[:, None, None]; axx = ax[None, :, None]
    img = (1 - ayy) * ((1 - axx) * A + axx * B) + ayy * ((1 - axx) * C + axx * D)
    # pixel needs march if any cell containing it fails; cells by pixel: rows y0..., cells index i0 (cell between grid i0,i1)
    # a pixel on a grid row gy[k] (not grid col) belongs to cells k-1 and k
    isgy = np.zeros(H, bool); isgy[gy] = True; isgx = np.zeros(W, bool); isgx[gx] = True
    cy0 = np.where(isgy, np.clip(np.searchsorted(gy, np.arange(H)) - 1, 0, len(gy) - 2), y0)
    cy1 = np.where(isgy, np.clip(np.searchsorted(gy, np.arange(H)), 0, len(gy) - 2), y0)
    cx0 = np.where(isgx, np.clip(np.searchsorted(gx, np.arange(W)) - 1, 0, len(gx) - 2), x0)
    cx1 = np.where(isgx, np.clip(np.searchsorted(gx, np.arange(W)), 0, len(gx) - 2), x0)
    need = fail[cy0][:, cx0] | fail[cy0][:, cx1] | fail[cy1][:, cx0] | fail[cy1][:, cx1]
    need &= ~(isgy[:, None] & isgx[None, :])
    nidx = np.flatnonzero(need.ravel())
    img = img.reshape(-1, 4)
    img[idx] = G.reshape(-1, 4)
    if len(nidx):
        img[nidx] = march(o[nidx], d[nidx], vd[nidx], near[nidx], far[nidx])
    return img.reshape(H, W, 4), len(idx) + len(nidx)

def rays_for(view, size):
    cam = square_camera(cams, view, size) if size else cams[torch.tensor([view])]
    r = image_ray_bundle(cam, 0, s.near, s.far, s.ndc)
    o, d, vd = (np.ascontiguousarray(a.numpy()) for a in (r.origins, r.directions, r.viewdirs))
    n = len(o); near = np.broadcast_to(r.near.numpy(), (n,)).astype(np.float32).copy(); far = np.broadcast_to(r.far.numpy(), (n,)).astype(np.float32).copy()
    return o, d, vd, near, far, cam.height, cam.width

def psnr(a, b): return -10 * np.log10(np.mean((a - b) ** 2))

mode = sys.argv[2] if len(sys.argv) > 2 else "speed"
if mode == "speed":
    for view in (0, 50, 100):
        o, d, vd, near, far, H, W = rays_for(view, 400)
        n = H * W
        ex = march(o, d, vd, near, far); ad, cnt = adaptive(o, d, vd, near, far, H, W, tol)
        te, ta = [], []
        for _ in range(7):
            t0 = time.perf_counter(); march(o, d, vd, near, far); te.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); adaptive(o, d, vd, near, far, H, W, tol); ta.append(time.perf_counter() - t0)
        print(json.dumps(dict(view=view, tol=tol, exact_ms=1000*np.median(te), adaptive_ms=1000*np.median(ta), marched=cnt / n,
                              psnr_vs_exact=psnr(ex[:, :3], ad.reshape(-1, 4)[:, :3]))), flush=True)
else:
    from turbonerf.data.formats import load_scene as ls
    sc = ls(s.data, downscale=s.downscale, splits=("test",)).split("test")
    ps_e, ps_a, fr = [], [], []
    for view in range(0, 200, int(sys.argv[3]) if len(sys.argv) > 3 else 8):
        o, d, vd, near, far, H, W = rays_for(view, 0)
        gt = sc.images[view].numpy()
        ex = march(o, d, vd, near, far)[:, :3].reshape(H, W, 3).clip(0, 1); ad, cnt = adaptive(o, d, vd, near, far, H, W, tol)
        ps_e.append(psnr(ex, gt)); ps_a.append(psnr(ad[..., :3].clip(0, 1), gt)); fr.append(cnt / (H * W))
    print(json.dumps(dict(tol=tol, views=len(ps_e), psnr_exact=float(np.mean(ps_e)), psnr_adaptive=float(np.mean(ps_a)), marched=float(np.mean(fr)))))
