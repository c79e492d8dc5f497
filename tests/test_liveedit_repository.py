"""The expert repository: growth, rollback, atomic persistence, mismatch checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from liveedit.editors.liveedit import ExpertRepository, LiveEditConfig, RepositoryMismatch

R, D, F = 2, 6, 8


def _batch(b: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, R, D, generator=g),
        torch.randn(b, R, D, generator=g),
        torch.randn(b, F, generator=g),
        torch.randn(b, F, generator=g),
    )


def _repo(**kwargs) -> ExpertRepository:
    return ExpertRepository(R, D, F, config_hash="abc", backbone_id="tiny-blip2", **kwargs)


def test_append_views_and_times() -> None:
    repo = _repo()
    u, v, phi, psi = _batch(3, 0)
    repo.append(u, v, phi, psi, ["e0", "e1", "e2"])
    repo.append(*_batch(1, 1), ["e3"])
    assert len(repo) == 4 and repo.ids == ["e0", "e1", "e2", "e3"]
    assert repo.times == [1, 1, 1, 2]
    views = repo.views()
    assert views.U.shape == (4, R, D) and views.phi.shape == (4, F) and len(views) == 4
    assert torch.equal(views.U[:3], u) and torch.equal(views.psi[:3], psi)
    assert views.U.data_ptr() == repo._store["U"].data_ptr()  # a view, not a copy
    with pytest.raises(ValueError, match="already"):
        repo.append(*_batch(1, 2), ["e1"])
    with pytest.raises(ValueError, match="shape"):
        repo.append(torch.zeros(1, R + 1, D), *_batch(1, 2)[1:], ["x"])
    assert repo.bytes_per_expert == (2 * R * D + 2 * F) * 4


def test_capacity_doubles_and_storage_is_reused_within_capacity() -> None:
    repo = _repo(capacity=4)
    pointer = repo._store["U"].data_ptr()
    for i in range(4):
        repo.append(*_batch(1, i), [f"e{i}"])
        assert repo._store["U"].data_ptr() == pointer and repo.capacity == 4
    repo.append(*_batch(1, 9), ["e4"])
    assert repo.capacity == 8
    pointer = repo._store["U"].data_ptr()
    for i in range(5, 8):
        repo.append(*_batch(1, i), [f"e{i}"])
        assert repo._store["U"].data_ptr() == pointer
    repo.append(*_batch(9, 20), [f"f{i}" for i in range(9)])
    assert repo.capacity == 32 and len(repo) == 17
    assert torch.equal(repo.views().U[4], _batch(1, 9)[0][0])  # old content survived growth


def test_remove_rolls_back_one_edit_in_order() -> None:
    repo = _repo()
    u, v, phi, psi = _batch(4, 0)
    repo.append(u, v, phi, psi, ["a", "b", "c", "d"])
    repo.remove("b")
    assert repo.ids == ["a", "c", "d"] and len(repo) == 3
    keep = [0, 2, 3]
    assert torch.equal(repo.views().U, u[keep]) and torch.equal(repo.views().phi, phi[keep])
    repo.remove("d")
    assert repo.ids == ["a", "c"] and torch.equal(repo.views().V, v[[0, 2]])
    with pytest.raises(KeyError, match="'zzz'"):
        repo.remove("zzz")


def test_save_load_round_trip(tmp_path: Path) -> None:
    repo = _repo()
    u, v, phi, psi = _batch(3, 0)
    repo.append(u, v, phi, psi, ["a", "b", "c"])
    repo.append(*_batch(2, 1), ["d", "e"], time_step=7)
    repo.remove("b")
    repo.save(tmp_path)
    loaded = ExpertRepository.load(tmp_path, "abc", "tiny-blip2", r=R, d=D, feature_dim=F)
    assert loaded.ids == ["a", "c", "d", "e"] and loaded.times == [1, 1, 7, 7]
    for key in ("U", "V", "phi", "psi"):
        assert torch.equal(getattr(loaded.views(), key), getattr(repo.views(), key))
    loaded.append(*_batch(1, 5), ["f"])
    assert loaded.times[-1] == 8
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["ids"] == ["a", "c", "d", "e"] and manifest["config_hash"] == "abc"
    assert manifest["shapes"]["U"] == [4, R, D]
    # saving again replaces the tensor file, leaving exactly one
    repo.save(tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    assert not list(tmp_path.glob(".*tmp"))


def test_empty_repository_round_trip(tmp_path: Path) -> None:
    _repo().save(tmp_path)
    assert len(ExpertRepository.load(tmp_path, "abc", "tiny-blip2")) == 0


class _CrashOnManifest(ExpertRepository):
    def _write_manifest(self, path, manifest):  # the second write of save()
        path.write_text("{ half")
        raise OSError("disk full")


class _CrashOnTensors(ExpertRepository):
    def _write_tensors(self, path, tensors):
        path.write_bytes(b"partial")
        raise OSError("disk full")


@pytest.mark.parametrize("crashing", [_CrashOnManifest, _CrashOnTensors])
def test_a_crash_mid_save_leaves_the_old_files_valid(tmp_path: Path, crashing) -> None:
    old = _repo()
    old.append(*_batch(2, 0), ["a", "b"])
    old.save(tmp_path)
    new = crashing(R, D, F, config_hash="abc", backbone_id="tiny-blip2")
    new.append(*_batch(3, 1), ["x", "y", "z"])
    with pytest.raises(OSError, match="disk full"):
        new.save(tmp_path)
    loaded = ExpertRepository.load(tmp_path, "abc", "tiny-blip2")
    assert loaded.ids == ["a", "b"]
    assert torch.equal(loaded.views().U, old.views().U)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    assert not list(tmp_path.glob(".*tmp"))


def test_mismatches_are_refused_with_what_differs(tmp_path: Path) -> None:
    repo = _repo()
    repo.append(*_batch(1, 0), ["a"])
    repo.save(tmp_path)
    with pytest.raises(RepositoryMismatch, match="config hash differs.*'abc'.*'xyz'"):
        ExpertRepository.load(tmp_path, "xyz", "tiny-blip2")
    with pytest.raises(RepositoryMismatch, match="backbone id differs.*'tiny-llava'"):
        ExpertRepository.load(tmp_path, "abc", "tiny-llava")
    with pytest.raises(RepositoryMismatch, match="d differs: saved 6, expected 7"):
        ExpertRepository.load(tmp_path, "abc", "tiny-blip2", d=7)
    with pytest.raises(RepositoryMismatch, match="feature_dim differs"):
        ExpertRepository.load(tmp_path, "abc", "tiny-blip2", feature_dim=16)
    # a manifest that disagrees with its tensors
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["r"] = 3
    path.write_text(json.dumps(manifest))
    with pytest.raises(RepositoryMismatch, match="tensor U has shape"):
        ExpertRepository.load(tmp_path, "abc", "tiny-blip2")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        ExpertRepository.load(tmp_path / "nothing", "abc", "tiny-blip2")


def test_for_config_uses_the_architecture_hash() -> None:
    cfg = LiveEditConfig(d=D, d_m=4, k=2, r=R, heads=2)
    repo = ExpertRepository.for_config(cfg, backbone_id="b")
    assert (repo.r, repo.d, repo.feature_dim) == (R, D, 8)
    assert repo.config_hash == cfg.architecture_hash()
