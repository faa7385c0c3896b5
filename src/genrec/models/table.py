"""Every model genrec compares, one entry each: the table the CLI, the report, Table 1 and promotion read.

A model is a plug-in: its own module(s) (a scoring model implements `genrec.models.interface.Recommender` and
its stage module calls `genrec.evaluation.harness.evaluate_recommender`; a generative one writes its files
through `genrec.evaluation.outputs.finish`), its `params.yaml` section, its dvc.yaml stage(s), and one entry
here. Nothing else names it: the CLI builds each entry's commands (`genrec <command>` calls
`genrec.stages.<command>.run`), the report and Table 1 order and label their rows by this table (a metrics
file of a model not listed still appears, after the listed ones), and `promotable` says which models the
registry may serve.

The table is data only (no model code is imported), so a stage that reads it does not depend on every model.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Command:
    """One CLI command of a model: `genrec <name>` runs `genrec.stages.<name>.run(params, **paths)`."""

    name: str
    """Command and stage module name (dvc.yaml calls `genrec <name> ...`)."""
    help: str
    """The command's one-line help."""
    options: tuple[str, ...]
    """Path options, by their name in `genrec.cli.OPTIONS` (e.g. "processed", "results")."""


@dataclass(frozen=True)
class ModelEntry:
    """One model of the comparison."""

    name: str
    """The `model` key of its metrics file, the stem of its metrics and predictions files."""
    label: str
    """How tables and charts name it."""
    kind: str
    """generative (a beam search writes titles or ids) | scoring (scores every item; `Recommender`)."""
    description: str
    """One line for the docs and the model card's baseline table."""
    commands: tuple[Command, ...] = field(default=())
    """Its CLI commands (none when another model's command writes it, e.g. genrec+sasrec)."""
    promotable: bool = False
    """The registry may hold and serve it (`genrec promote`)."""
    representation: str = ""
    """How it names items (title, an index method of `genrec.indexing`, or id for scoring models); the report
    tests every variant of a family against the family's `DEFAULT_REPRESENTATION`."""


MODELS: dict[str, ModelEntry] = {entry.name: entry for entry in (
    ModelEntry("genrec", "GenRec", "generative",
               "LoRA-fine-tuned causal LM generating the next title; constrained 10-beam search",
               commands=(Command("train", "LoRA fine-tuning with TRL's SFTTrainer; run it under `accelerate "
                                 "launch` (see genrec.stages.train).",
                                 ("base", "prompts", "out_model", "processed_optional", "curve")),
                         Command("evaluate", "Generative top-k (10-beam search, constrained to catalogue titles) "
                                 "and HR/NDCG for every user.",
                                 ("base", "model_optional", "prompts", "processed", "results", "assistant"))),
               promotable=True, representation="title"),
    *(ModelEntry(f"genrec-{index}", f"GenRec [{index}]", "generative", f"GenRec generating {words} (new tokens "
                 "trained with the adapter) instead of titles", representation=index)
      for index, words in (("semantic", "semantic ids, as LC-Rec"), ("collaborative", "collaborative ids"),
                           ("random", "random ids"), ("sequential", "sequential ids (leaky)"))),
    ModelEntry("genrec+sasrec", "GenRec+SASRec", "generative",
               "GenRec's beam search with SASRec's title probabilities mixed in (D3's text-free assistant)",
               representation="title"),
    *(ModelEntry(f"p5-{index}", f"P5 [{index}]", "generative", f"T5 over {words}, a beam search constrained to "
                 "real items' codes", representation=index,
                 commands=(Command("p5_train", "Train a P5 (T5 over item codes) on an item index, the same split and "
                                   "training positions.", ("processed", "index", "out_p5")),
                           Command("p5_evaluate", "Evaluate P5 with the same protocol: 10-beam search constrained "
                                   "to real items' codes.", ("processed", "model_p5", "results")))
                 if index == "random" else ())
      for index, words in (("random", "random item ids"), ("semantic", "semantic ids (TIGER-style)"),
                           ("collaborative", "collaborative ids (OpenP5's CID)"),
                           ("sequential", "sequential ids (leaky)"))),
    ModelEntry("sasrec", "SASRec", "scoring", "self-attentive sequential model, full-catalogue softmax",
               commands=(Command("sasrec", "SASRec anchor: self-attentive sequential model, full-catalogue "
                                 "cross-entropy and ranking.", ("processed", "out_sasrec", "results")),),
               representation="id"),
    ModelEntry("mostpop", "MostPop", "scoring", "the most popular training items the user does not have",
               commands=(Command("mostpop", "MostPop anchor: the most popular training items, excluding the "
                                 "user's history.", ("processed", "results")),)),
)}
"""Every model, in the order of the report's rows. The P5 family has one entry per item index (`p5-<index>`, one
dvc.yaml stage pair per name in `index.p5`); its commands hang on p5-random, the others share them."""

DEFAULT_REPRESENTATION = {"p5": "p5-random", "genrec": "genrec"}
"""Per family (the name before the first '-'), the model its other representations are tested against."""


def family_default(name: str) -> str | None:
    """The model `name` is compared with on the representation axis: its family's default, or None (it is one)."""
    default = DEFAULT_REPRESENTATION.get(name.split("-")[0])
    return default if default and default != name else None


def order_key(name: str) -> tuple[int, str]:
    """Sort key of a model name: the table's order, then unknown names alphabetically."""
    names = list(MODELS)
    return (names.index(name) if name in MODELS else len(names), name)


def label(name: str) -> str:
    """The table's label of a model, or its name when it is not in the table."""
    return MODELS[name].label if name in MODELS else name
