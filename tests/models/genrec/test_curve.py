"""A learning-curve point decodes the live model being trained: no copy, back in training mode after, and the
rankings of the merged model the evaluate stage decodes."""

import copy

import torch

import tiny_genrec
from genrec.config.params import EvalParams, Params
from genrec.data.prompts import PromptTemplate
from genrec.models.genrec.backbone import load_backbone
from genrec.models.genrec.curve import curve_data, curve_point
from genrec.stages import prompts as prompts_stage


def test_a_curve_point_decodes_the_live_model_without_a_copy(tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    processed = tiny_genrec.write_split(tmp_path / "processed")
    prompts_stage.run(Params(dataset="tiny"), processed_dir=processed, out_dir=tmp_path / "prompts")
    model, tokenizer = load_backbone(tiny_genrec.write_backbone(tmp_path / "base"), dtype="float32")
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    model.train()
    template = PromptTemplate.sequence(3)
    data = curve_data(tmp_path / "prompts", processed, template, tokenizer, tiny_genrec.USERS,
                      EvalParams(batch_size=2, bootstrap_samples=10))
    merged = copy.deepcopy(model).merge_and_unload().eval()  # what the evaluate stage decodes

    def no_copy(*args, **kwargs):
        raise AssertionError("the learning curve copied the model")

    monkeypatch.setattr(copy, "deepcopy", no_copy)
    live = curve_point(model, tokenizer, template, data, bf16=False)
    assert model.training
    assert live == curve_point(merged, tokenizer, template, data, bf16=False)
