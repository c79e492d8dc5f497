"""The expert repository E_t (paper §4.1; DESIGN §2.4).

One entry per edit: (U_e, V_e) ∈ R^{r×d} × R^{r×d}, φ̂, ψ̂ ∈ R^{k·d_m}, the edit id and the time
step at which it was added. Storage is preallocated and grows by doubling, so appending is
amortised O(1) and never concatenates per edit; :meth:`ExpertRepository.views` returns the live
slices that routing reads (no copy). :meth:`ExpertRepository.remove` rolls one edit back (later
entries shift down, order kept).

On disk (``save(dir)``)::

    dir/manifest.json               format, config_hash, backbone_id, shapes, dtype, ids, times,
                                    and the name of the tensor file it belongs to
    dir/experts-<token>.safetensors U [n, r, d], V [n, r, d], phi [n, D], psi [n, D]

Atomicity: a save writes a *new* tensor file (temporary name, then ``os.replace`` to a fresh
``experts-<token>`` name), then the manifest (temporary name, then ``os.replace``). The manifest's
replacement is the single commit point: a crash before it leaves the old manifest pointing at the
old tensor file, which is untouched; a crash after it leaves the new pair. Stale tensor files are
deleted once the new manifest is in place.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .routing import RepositoryViews

MANIFEST = "manifest.json"
FORMAT = "liveedit-experts/1"


class RepositoryMismatch(ValueError):
    """A saved repository that does not fit the requested configuration / backbone / shapes."""


class ExpertRepository:
    """Growing storage of generated experts and their routing features.

    ``ExpertRepository(r, d, feature_dim, config_hash="", backbone_id="", capacity=16)``;
    ``feature_dim`` is k·d_m. Tensors live on ``device`` with ``dtype``.
    """

    def __init__(
        self,
        r: int,
        d: int,
        feature_dim: int,
        *,
        config_hash: str = "",
        backbone_id: str = "",
        capacity: int = 16,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.r, self.d, self.feature_dim = r, d, feature_dim
        self.config_hash, self.backbone_id = config_hash, backbone_id
        self.device, self.dtype = torch.device(device), dtype
        self._n = 0
        self._ids: list[str] = []
        self._times: list[int] = []
        self._clock = 0
        self._allocate(max(1, capacity))

    @classmethod
    def for_config(cls, cfg: Any, backbone_id: str = "", **kwargs: Any) -> ExpertRepository:
        """An empty repository shaped for a :class:`~.config.LiveEditConfig`."""
        return cls(
            cfg.r,
            cfg.d,
            cfg.feature_dim,
            config_hash=cfg.architecture_hash(),
            backbone_id=backbone_id,
            **kwargs,
        )

    # ------------------------------------------------------------------ storage

    def _allocate(self, capacity: int) -> None:
        shapes = {
            "U": (capacity, self.r, self.d),
            "V": (capacity, self.r, self.d),
            "phi": (capacity, self.feature_dim),
            "psi": (capacity, self.feature_dim),
        }
        old = getattr(self, "_store", None)
        store = {k: torch.zeros(s, device=self.device, dtype=self.dtype) for k, s in shapes.items()}
        if old is not None and self._n:
            for key in store:
                store[key][: self._n] = old[key][: self._n]
        self._store = store

    @property
    def capacity(self) -> int:
        return self._store["U"].shape[0]

    def __len__(self) -> int:
        return self._n

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def times(self) -> list[int]:
        return list(self._times)

    @property
    def bytes_per_expert(self) -> int:
        """Bytes one entry occupies: (2·r·d + 2·k·d_m) elements of ``dtype``."""
        elem = torch.empty((), dtype=self.dtype).element_size()
        return (2 * self.r * self.d + 2 * self.feature_dim) * elem

    def append(
        self,
        U: Tensor,
        V: Tensor,
        phi: Tensor,
        psi: Tensor,
        edit_ids: Sequence[str],
        time_step: int | None = None,
    ) -> None:
        """Add B edits: ``U``, ``V`` ``[B, r, d]``; ``phi``, ``psi`` ``[B, k·d_m]``; B unique ids.

        All B entries get ``time_step`` (default: one more than the last append's step). Values are
        copied (detached) into the preallocated storage."""
        batch = len(edit_ids)
        expected = {
            "U": (batch, self.r, self.d),
            "V": (batch, self.r, self.d),
            "phi": (batch, self.feature_dim),
            "psi": (batch, self.feature_dim),
        }
        given = {"U": U, "V": V, "phi": phi, "psi": psi}
        for key, shape in expected.items():
            if tuple(given[key].shape) != shape:
                raise ValueError(
                    f"append: {key} has shape {tuple(given[key].shape)}, expected {shape}"
                )
        known = set(self._ids)
        for edit_id in edit_ids:
            if not isinstance(edit_id, str):
                raise TypeError(f"append: edit id {edit_id!r} is not a string")
            if edit_id in known:
                raise ValueError(f"append: edit id {edit_id!r} is already in the repository")
            known.add(edit_id)
        if batch == 0:
            return
        step = self._clock + 1 if time_step is None else int(time_step)
        needed = self._n + batch
        if needed > self.capacity:
            capacity = self.capacity
            while capacity < needed:
                capacity *= 2
            self._allocate(capacity)
        with torch.no_grad():
            for key, value in given.items():
                self._store[key][self._n : needed].copy_(value.detach())
        self._n = needed
        self._ids.extend(edit_ids)
        self._times.extend([step] * batch)
        self._clock = max(self._clock, step)

    def views(self) -> RepositoryViews:
        """The live entries ``[:len(self)]`` (views into the storage, not copies). Take them again
        after :meth:`append` / :meth:`remove`: growth reallocates, removal shifts entries."""
        n = self._n
        s = self._store
        return RepositoryViews(U=s["U"][:n], V=s["V"][:n], phi=s["phi"][:n], psi=s["psi"][:n])

    def remove(self, edit_id: str) -> None:
        """Roll back one edit: drop its entry and shift later entries down (order kept)."""
        try:
            i = self._ids.index(edit_id)
        except ValueError:
            raise KeyError(f"no edit with id {edit_id!r} in the repository") from None
        n = self._n
        with torch.no_grad():
            for tensor in self._store.values():
                if i + 1 < n:
                    tensor[i : n - 1] = tensor[i + 1 : n].clone()
                tensor[n - 1].zero_()
        del self._ids[i]
        del self._times[i]
        self._n -= 1

    def clear(self) -> None:
        """Remove every edit (capacity is kept)."""
        for tensor in self._store.values():
            tensor.zero_()
        self._n, self._ids, self._times, self._clock = 0, [], [], 0

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """Write tensors + manifest atomically into ``directory``; returns the manifest path."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:12]
        tensor_name = f"experts-{token}.safetensors"
        views = self.views()
        tensors = {
            key: getattr(views, key).detach().to("cpu").contiguous()
            for key in ("U", "V", "phi", "psi")
        }
        manifest = {
            "format": FORMAT,
            "config_hash": self.config_hash,
            "backbone_id": self.backbone_id,
            "tensors": tensor_name,
            "count": self._n,
            "r": self.r,
            "d": self.d,
            "feature_dim": self.feature_dim,
            "dtype": str(self.dtype).removeprefix("torch."),
            "ids": self._ids,
            "times": self._times,
            "clock": self._clock,
            "shapes": {key: list(t.shape) for key, t in tensors.items()},
        }
        tmp_tensors = out / f".{tensor_name}.tmp"
        tmp_manifest = out / f".{MANIFEST}.{token}.tmp"
        try:
            self._write_tensors(tmp_tensors, tensors)
            os.replace(tmp_tensors, out / tensor_name)
            self._write_manifest(tmp_manifest, manifest)
            os.replace(tmp_manifest, out / MANIFEST)
        except BaseException:
            for leftover in (tmp_tensors, tmp_manifest, out / tensor_name):
                if leftover.exists() and not _is_referenced(out, leftover.name):
                    leftover.unlink()
            raise
        for stale in out.glob("experts-*.safetensors"):
            if stale.name != tensor_name:
                stale.unlink()
        return out / MANIFEST

    def _write_tensors(self, path: Path, tensors: dict[str, Tensor]) -> None:
        """First write of :meth:`save` (overridable, e.g. to simulate a crash in tests)."""
        save_file(tensors, str(path), metadata={"format": FORMAT})
        _fsync(path)

    def _write_manifest(self, path: Path, manifest: dict[str, Any]) -> None:
        """Second write of :meth:`save`."""
        path.write_text(json.dumps(manifest, indent=1))
        _fsync(path)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        config_hash: str,
        backbone_id: str,
        *,
        r: int | None = None,
        d: int | None = None,
        feature_dim: int | None = None,
        device: torch.device | str = "cpu",
        capacity: int | None = None,
    ) -> ExpertRepository:
        """Load a saved repository, refusing one made for another config hash or backbone, or
        whose shapes differ from the manifest or from the given ``r`` / ``d`` / ``feature_dim``."""
        src = Path(directory)
        path = src / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{src}: no expert repository ({MANIFEST} missing)")
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise RepositoryMismatch(
                f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}"
            )
        problems = []
        if manifest["config_hash"] != config_hash:
            problems.append(
                f"config hash differs: saved {manifest['config_hash']!r}, expected {config_hash!r}"
            )
        if manifest["backbone_id"] != backbone_id:
            problems.append(
                f"backbone id differs: saved {manifest['backbone_id']!r}, expected {backbone_id!r}"
            )
        for name, want in (("r", r), ("d", d), ("feature_dim", feature_dim)):
            if want is not None and manifest[name] != want:
                problems.append(f"{name} differs: saved {manifest[name]}, expected {want}")
        if problems:
            raise RepositoryMismatch(
                f"{src}: cannot load the expert repository: " + "; ".join(problems)
            )
        tensors = load_file(str(src / manifest["tensors"]))
        n, mr, md, mf = manifest["count"], manifest["r"], manifest["d"], manifest["feature_dim"]
        expected = {"U": (n, mr, md), "V": (n, mr, md), "phi": (n, mf), "psi": (n, mf)}
        for key, shape in expected.items():
            got = tuple(tensors[key].shape) if key in tensors else None
            if got != shape:
                raise RepositoryMismatch(
                    f"{src}: tensor {key} has shape {got}, the manifest says {shape}"
                )
        if len(manifest["ids"]) != n or len(manifest["times"]) != n:
            raise RepositoryMismatch(
                f"{src}: manifest lists {len(manifest['ids'])} ids for {n} experts"
            )
        dtype = getattr(torch, manifest["dtype"])
        repo = cls(
            mr,
            md,
            mf,
            config_hash=config_hash,
            backbone_id=backbone_id,
            capacity=max(capacity or 16, n),
            device=device,
            dtype=dtype,
        )
        if n:
            repo.append(tensors["U"], tensors["V"], tensors["phi"], tensors["psi"], manifest["ids"])
        repo._times = [int(t) for t in manifest["times"]]
        repo._clock = int(manifest.get("clock", max(repo._times, default=0)))
        return repo


def _is_referenced(directory: Path, name: str) -> bool:
    path = directory / MANIFEST
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("tensors") == name
    except (OSError, ValueError):
        return False


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
