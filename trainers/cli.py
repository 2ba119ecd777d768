"""`realign-train`: train the ReAlign reviser and policy with TRL from stored pair datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from realign_data.config import load_config
from realign_data.errors import main_with_errors
from realign_data.store import Store
from trainers.config import PolicyTrainConfig, ReviserTrainConfig, TrainConfig

app = typer.Typer(
    help="Train the ReAlign reviser and policy with TRL (DPO, IPO, APO-zero, sigmoid-norm or SimPO) from pair "
    "datasets built by `realign-data build`.\n\n"
    "Multi-GPU: accelerate launch --config_file trainers/accelerate/ddp.yaml -m trainers.cli policy ...",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
console = Console()

ManifestOption = Annotated[Path | None, typer.Option("--manifest", "-m", help="YAML training manifest.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a field, e.g. --set beta=0.05.")]
DatasetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--dataset",
        "-d",
        help="NAME@vN, NAME, or a .parquet/.jsonl path; append :WEIGHT to weight it "
        "(e.g. smoke@v1:0.5). Repeatable; replaces the manifest's datasets.",
    ),
]
ModelOption = Annotated[str | None, typer.Option("--model", help="Starting model spec.")]
OutputOption = Annotated[Path | None, typer.Option("--output-dir", "-o", help="Where the trained model goes.")]
StoreOption = Annotated[Path | None, typer.Option("--store", envvar="REALIGN_STORE", show_default="./realign-store")]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in --output-dir.")]
LossOption = Annotated[str | None, typer.Option("--loss-type", help="sigmoid, ipo, apo_zero, sigmoid_norm, simpo.")]
StepsOption = Annotated[int | None, typer.Option("--max-steps", help="Stop after N optimizer steps.")]


def parse_dataset(item: str) -> dict[str, Any]:
    ref, sep, weight = item.rpartition(":")
    if sep and weight.replace(".", "", 1).isdigit():
        return {"ref": ref, "weight": float(weight)}
    return {"ref": item}


def _run(kind: type[TrainConfig], manifest, sets, dataset_refs, model, output_dir, store, resume, **options) -> None:
    import datasets
    from transformers.utils import logging as transformers_logging

    from trainers.run import train

    transformers_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    values = {"model.spec": model, "output_dir": str(output_dir) if output_dir else None, **options}
    if dataset_refs:
        values["datasets"] = [parse_dataset(item) for item in dataset_refs]
    config = load_config(kind, manifest, sets, values)
    with console.status(
        f"training the {'reviser' if kind is ReviserTrainConfig else 'policy'} ({config.loss_type}) ..."
    ):
        record = train(config, Store(store), resume)
    if not record:  # another rank of a distributed run: rank 0 writes the model, the record and the summary
        return
    metrics = record["metrics"]
    table = Table("", "value", title=f"realign-train {record['role']}")
    table.add_row("inputs", ", ".join(f"{i['ref']} ({i['used_rows']} rows)" for i in record["inputs"]))
    table.add_row("rows train / held-out", f"{record['rows']['train']} / {record['rows']['eval']}")
    table.add_row("steps", str(metrics["global_step"]))
    if metrics["first_loss"] is not None:
        table.add_row("loss first -> last", f"{metrics['first_loss']:.4f} -> {metrics['last_loss']:.4f}")
    for key in ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins"):
        if key in metrics:
            table.add_row(key.replace("eval_", "held-out "), f"{metrics[key]:.4f}")
    assert config.output_dir is not None  # train() refuses (InputError) to run without an output directory
    table.add_row("model", str(Path(config.output_dir).resolve()))
    table.add_row("next", f"realign-data models show {config.output_dir}")
    console.print(table)


@app.command("reviser")
def reviser(
    manifest: ManifestOption = None,
    set_: SetOption = None,
    dataset: DatasetOption = None,
    model: ModelOption = None,
    output_dir: OutputOption = None,
    store: StoreOption = None,
    resume: ResumeOption = False,
    loss_type: LossOption = None,
    max_steps: StepsOption = None,
    sft_warmup: Annotated[
        bool | None, typer.Option("--sft-warmup/--no-sft-warmup", help="SFT on the chosen revisions before DPO.")
    ] = None,
) -> None:
    """Train the reviser: optional SFT warm-up, then DPO on reviser_train pairs (prompt = instruction + draft).

    Example: realign-train reviser -d smoke@v1 --model smollm2-135m-instruct -o models/reviser --max-steps 20
    """
    _run(
        ReviserTrainConfig,
        manifest,
        set_,
        dataset,
        model,
        output_dir,
        store,
        resume,
        loss_type=loss_type,
        max_steps=max_steps,
        **{"sft_warmup.enabled": sft_warmup},
    )


@app.command("policy")
def policy(
    manifest: ManifestOption = None,
    set_: SetOption = None,
    dataset: DatasetOption = None,
    model: ModelOption = None,
    output_dir: OutputOption = None,
    store: StoreOption = None,
    resume: ResumeOption = False,
    loss_type: LossOption = None,
    max_steps: StepsOption = None,
    revision_weight: Annotated[
        float | None,
        typer.Option("--revision-weight", help="lambda: revision pairs appear lambda times per epoch in expectation."),
    ] = None,
) -> None:
    """Train the policy with DPO on on-policy pairs plus reviser-enhanced revision pairs.

    Example: realign-train policy -d policy-pairs@v1 --revision-weight 0.5 -o models/policy --loss-type ipo
    """
    _run(
        PolicyTrainConfig,
        manifest,
        set_,
        dataset,
        model,
        output_dir,
        store,
        resume,
        loss_type=loss_type,
        max_steps=max_steps,
        revision_weight=revision_weight,
    )


@app.command("recipe")
def recipe(
    manifest: Annotated[
        Path, typer.Argument(help="Recipe YAML with reviser_data, reviser, policy_data and policy sections.")
    ],
    set_: SetOption = None,
    store: StoreOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue interrupted training steps.")] = False,
) -> None:
    """The whole ReAlign loop: build reviser data, train the reviser, build policy pairs with it, train the \
policy; a step whose result exists with the same effective config is skipped.

    Example: realign-train recipe manifests/realign-smoke-cpu.yaml
    """
    from transformers.utils import logging as transformers_logging

    from realign_data.cli import Format, emit, stage_progress
    from trainers.recipe import RecipeConfig, run_recipe

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    config = load_config(RecipeConfig, manifest, set_)
    with stage_progress() as task:
        steps = run_recipe(config, Store(store), task, resume)
    emit(
        ["step", "status", "result"],
        [[s["step"], s["status"], s["result"]] for s in steps],
        Format.table,
        title=f"recipe {manifest.name}",
    )


def main() -> None:
    main_with_errors(app)


if __name__ == "__main__":
    main()
