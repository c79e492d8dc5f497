"""LiveEdit meta-training steps on one device: the library loop vs DeepSpeed ZeRO-2 and ZeRO-3.

What only a GPU can check (the Ray workers run exactly this engine set-up, one per GPU): the
DeepSpeed engine of ``trainables/meta_train.py`` (``deepspeed_config`` with bf16 on CUDA, NCCL,
the editor's training step as the engine's module, the frozen backbone outside it) on a wide twin
(LLaVA, d = 1024 by default), world size 1. For each global batch, a plain torch loop (AdamW,
``torch.autocast`` bf16) and DeepSpeed ZeRO-2 / ZeRO-3 (every parameter partitioned) run the same
batches: steps/s (after warm-up steps), peak device memory, first / last loss, and whether the
exported editor weights are finite. Runs on the CPU too (fp32, gloo), where it is only a check
of the script.

Usage: ``python benchmarks/meta_train_device.py --world runs/demo/world [--device cuda]
[--hidden 1024] [--batches 8 32] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # trainables/


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--hidden", type=int, default=1024, help="twin LM hidden size d")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    import deepspeed

    from liveedit.backbones import build_twin
    from liveedit.data.loaders import load_records
    from liveedit.distributed import DistributedConfig, DistributedTrainConfig, deepspeed_config
    from liveedit.editors.liveedit.config import LiveEditConfig
    from liveedit.editors.liveedit.modules import LiveEditModules
    from liveedit.editors.liveedit.trainer import FAMILY_FORMAT, sample_indices
    from liveedit.editors.liveedit.training import build_training_batch, training_step
    from liveedit.world.build import load_world
    from trainables.meta_train import _editor_state, _step_module

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    world = load_world(args.world, check_images=False)
    records = load_records(
        FAMILY_FORMAT["vqa"], args.world / "vqa" / "train.json", args.world / "images"
    ).records
    backbone = build_twin(
        "llava-1.5",
        world.vocabulary,
        seed=0,
        hidden_size=args.hidden,
        num_heads=args.heads,
        num_layers=args.layers,
    )
    backbone = backbone.to(device=device, dtype=torch.bfloat16 if gpu else torch.float32).freeze()
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo")

    def run(kind: str, batch: int, stage: int | None) -> dict:
        torch.manual_seed(0)
        editor = LiveEditConfig(
            layer=min(5, args.layers - 1),
            lr=1e-3,
            d=backbone.hidden_size,
            n_vision=backbone.num_vision_tokens,
        )
        modules = LiveEditModules(editor).to(device)
        n_params = sum(p.numel() for p in modules.parameters())  # before ZeRO-3 partitions them
        optimizer = torch.optim.AdamW(modules.parameters(), lr=editor.lr)
        engine = None
        if stage is not None:
            config = DistributedTrainConfig(
                batch_size=batch,
                editor=editor,
                distributed=DistributedConfig(
                    workers=1,
                    gpus_per_worker=int(gpu),
                    zero_stage=stage,
                    zero3_persistence_threshold=0,
                ),
            )
            engine, _, _, _ = deepspeed.initialize(
                model=_step_module(modules, backbone),
                optimizer=optimizer,
                config=deepspeed_config(config, 1, gpu),
            )
        if gpu:
            torch.cuda.reset_peak_memory_stats(device)
        losses, times = [], []
        for step in range(args.warmup + args.steps):
            idx = sample_indices(len(records), batch, step, 0)
            tb = build_training_batch(backbone, [records[i] for i in idx])
            generator = torch.Generator().manual_seed(step)
            _sync(device)
            began = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=gpu):
                if engine is None:
                    total = training_step(backbone, modules, tb, generator).total
                else:
                    total = engine(tb, generator)
            if engine is None:
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
                optimizer.step()
            else:
                engine.backward(total)
                engine.step()
            _sync(device)
            if step >= args.warmup:
                times.append(time.perf_counter() - began)
            losses.append(total.item())
        weights = (
            _editor_state(engine, 0)
            if engine is not None
            else {k: v.detach() for k, v in modules.state_dict().items()}
        )
        return {
            "kind": kind,
            "zero_stage": stage,
            "batch": batch,
            "editor_params": n_params,
            "steps_per_s": len(times) / sum(times),
            "median_step_ms": 1000 * sorted(times)[len(times) // 2],
            "peak_mem_gib": _peak_gib(device),
            "loss_first": losses[0],
            "loss_last": losses[-1],
            "weights_finite": all(bool(torch.isfinite(v).all()) for v in weights.values()),
        }

    report = {
        "benchmark": "meta_train_device",
        "device": torch.cuda.get_device_name(device) if gpu else "cpu",
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "backbone": {
            "arch": "llava-1.5",
            "d": args.hidden,
            "layers": args.layers,
            "params": sum(p.numel() for p in backbone.model.parameters()),
            "dtype": "bfloat16" if gpu else "float32",
        },
        "settings": {"warmup": args.warmup, "timed_steps": args.steps},
        "rows": [],
    }
    for batch in args.batches:
        for kind, stage in (("library", None), ("deepspeed", 2), ("deepspeed", 3)):
            try:
                row = run(kind, batch, stage)
            except Exception as error:  # one failure must not hide the other rows
                traceback.print_exc()
                row = {"kind": kind, "zero_stage": stage, "batch": batch, "error": repr(error)}
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
            if gpu:
                torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
