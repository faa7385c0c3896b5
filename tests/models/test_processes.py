"""genrec.models.processes on 2 CPU processes (gloo) under `accelerate launch`: the process group's timeout,
decisions taken by the main process, a main-process failure reaching the other, and the shared-folder check."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import tiny_genrec

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import torch

    from genrec.errors import DataError
    from genrec.models.processes import (PeerFailure, broadcast, check_shared_folder, group_timeout, main_only,
                                         process_state)

    out = Path(sys.argv[1])
    state = process_state(77, cpu=True)
    rank = state.process_index
    result = {"processes": state.num_processes, "timeout": group_timeout().total_seconds(),
              "decided": broadcast(state, f"rank {rank}"),
              "returned": main_only(state, lambda: f"work of rank {rank}")}

    def fail():
        raise ValueError("the store is down")

    try:
        main_only(state, fail)
    except PeerFailure as err:
        result["failure"] = f"PeerFailure: {err}"
    except ValueError as err:
        result["failure"] = f"ValueError: {err}"
    check_shared_folder(state, out / "shared")
    try:
        check_shared_folder(state, out / f"local-{rank}")  # as on two machines without a shared file system
    except DataError as err:
        result["not_shared"] = str(err)
    (out / f"rank-{rank}.json").write_text(json.dumps(result))
    state.wait_for_everyone()
    torch.distributed.destroy_process_group()  # gloo's threads may abort an exit that leaves the group up
''')


def test_two_processes_share_a_timeout_decisions_failures_and_folders(tmp_path):
    (tmp_path / "script.py").write_text(SCRIPT)
    proc = tiny_genrec.accelerate_launch(ROOT / "configs" / "accelerate" / "cpu2.yaml", str(tmp_path / "script.py"),
                                         str(tmp_path), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["processes"] for r in ranks] == [2, 2]
    assert [r["timeout"] for r in ranks] == [77.0, 77.0]  # not torch's default (30 min gloo, 10 min NCCL)
    assert [r["decided"] for r in ranks] == ["rank 0", "rank 0"]
    assert [r["returned"] for r in ranks] == ["work of rank 0", None]
    assert ranks[0]["failure"] == "ValueError: the store is down"
    assert ranks[1]["failure"] == "PeerFailure: the main process failed: ValueError: the store is down"
    assert all("processes [1] do not see the files the main process writes" in r["not_shared"] for r in ranks)
    assert not list((tmp_path / "shared").iterdir())  # the probe file is gone


FSDP_SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import torch
    from peft import LoraConfig, get_peft_model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from genrec.config.params import EvalParams
    from genrec.data.prompts import PromptTemplate
    from genrec.models.genrec.backbone import load_backbone
    from genrec.models.genrec.curve import curve_data, curve_point, is_sharded
    from genrec.models.genrec.sft_trainer import adapter_state_dict
    from genrec.models.processes import process_state

    world, out = Path(sys.argv[1]), Path(sys.argv[2])
    state = process_state(120, cpu=True)
    model, tokenizer = load_backbone(world / "base", dtype="float32")
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # an adapter that changes the rankings
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    template = PromptTemplate.sequence(3)
    data = curve_data(world / "prompts", world / "processed", template, tokenizer, 6,
                      EvalParams(batch_size=2, bootstrap_samples=10))
    alone = curve_point(model, tokenizer, template, data, bf16=False)
    # Sharded as accelerate's fsdp profile shards on GPUs (FSDP2: each decoder layer, then the whole model).
    mesh = init_device_mesh("cpu", (state.num_processes,))
    for layer in model.base_model.model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    together = curve_point(model, tokenizer, template, data, bf16=False, state=state)
    gathered = adapter_state_dict(model)
    (out / f"rank-{state.process_index}.json").write_text(json.dumps({
        "sharded": is_sharded(model), "alone": alone, "together": together, "training": model.training,
        "trainable": trainable, "gathered": sorted(gathered),
        "devices": sorted({str(t.device) for t in gathered.values()})}))
    state.wait_for_everyone()
    torch.distributed.destroy_process_group()
''')


def test_a_sharded_model_runs_the_learning_curve_and_saves_its_adapter_only(tmp_path):
    """FSDP2 on 2 CPU processes (gloo), sharded by hand: accelerate turns FSDP on for accelerators only, so
    its fsdp_cpu2 profile runs DDP. Every process decodes every curve user in step, giving the metrics of
    one unsharded process; the adapter save gathers the LoRA weights, whole, on the main process's CPU, and
    no frozen backbone weight (transformers' own save under FSDP gathers them all)."""
    from genrec.config.params import Params
    from genrec.stages import prompts as prompts_stage

    processed = tiny_genrec.write_split(tmp_path / "processed")
    prompts_stage.run(Params(dataset="tiny"), processed_dir=processed, out_dir=tmp_path / "prompts")
    tiny_genrec.write_backbone(tmp_path / "base")
    (tmp_path / "script.py").write_text(FSDP_SCRIPT)
    proc = tiny_genrec.accelerate_launch(ROOT / "configs" / "accelerate" / "cpu2.yaml", str(tmp_path / "script.py"),
                                         str(tmp_path), str(tmp_path), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert all(r["sharded"] for r in ranks)
    assert ranks[0]["together"] == ranks[1]["together"] == ranks[0]["alone"]
    assert ranks[0]["together"]["hr_at_10"] > 0
    assert ranks[0]["training"]  # the curve puts the model back in training mode
    main = ranks[0]
    assert main["gathered"] == main["trainable"] and all("lora_" in k for k in main["gathered"])
    assert main["devices"] == ["cpu"] and ranks[1]["gathered"] == []
