"""``python -m more_lightning demo`` (what ``make demo`` runs): the whole product once, on a laptop CPU.

1. build the demo data from packaged sources if missing (``demo_data.py``);
2. evaluate the untrained policy (SmolLM2-135M-Instruct) on validation questions with live retrieval — the experts'
   collections are indexed into the embedded Weaviate server on first use;
3. train it with on-policy Step-GRPO for a few minutes (``configs/demo/fit.yaml``);
4. evaluate the trained adapter the same way, print the before/after F1-Recall and expert usage, and ``ask`` once.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "demo"
ADAPTER = "checkpoints/demo-adapter"
ASK = "Who directed the film Alien?"


DEMO_DATA_VERSION = "v1"


def demo_data_folder(data_dir: str | Path) -> Path:
    """The demo data folder. ``data_dir`` (default ``data/demo``, what the configs name) becomes a link to a folder in
    the cache, so every clone on this machine shares one built and indexed copy."""
    from more_lightning.paths import cache_root

    path = Path(data_dir)
    if not path.exists() and not path.is_symlink():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(cache_root() / "demo-data" / DEMO_DATA_VERSION, target_is_directory=True)
    return path


def ensure_demo_data(data_dir: str | Path, console: Console, seed: int = 0) -> Path:
    """Build the demo data into ``data_dir`` unless it is there and complete (``paths.build_once``); return it."""
    from more_lightning.demo_data import build_demo_data, verify_demo_data
    from more_lightning.paths import build_once, is_complete

    folder = demo_data_folder(data_dir)
    target = folder.resolve()
    if not is_complete(target):
        console.print("Building the demo data from packaged corpora (once per machine)...")

        def build(staging: Path) -> None:
            print_data_summary(build_demo_data(staging, seed=seed), folder, console)

        build_once(target, build, verify_demo_data)
    return folder


def print_data_summary(summary, folder: Path, console: Console) -> None:
    table = Table(title=f"Demo data in {folder}")
    table.add_column("file")
    table.add_column("rows", justify="right")
    for name, count in summary.counts.items():
        table.add_row(name, f"{count:,}")
    console.print(table)
    console.print(f"FanOutQA dev: {summary.fanoutqa}")
    for split, counts in summary.questions_by_expert.items():
        console.print(f"{split} questions by gold expert (source): {dict(counts)}")


def _evaluate(config: Path, console: Console, output: str, val_limit: int | None, adapter: str | None):
    from more_lightning.cli import command_arguments
    from more_lightning.commands import evaluate_reports

    args = ["evaluate", "--config", str(config), "--output_dir", output]
    if adapter:
        args += ["--policy.adapter", adapter]
    _, arguments = command_arguments(args)
    if val_limit is not None:
        for source in arguments["datasets"]:
            source.limit = val_limit
    return evaluate_reports(**arguments)


def _comparison(before, after) -> Table:
    table = Table(title="F1-Recall on the validation questions, before and after Step-GRPO")
    for column in ("dataset", "n", "before", "after", "avg steps before → after", "experts at step 1 (after)"):
        table.add_column(column, justify="left" if column in ("dataset", "experts at step 1 (after)") else "right")
    for b, a in zip(before, after, strict=True):
        usage = ", ".join(f"{e or '-'}×{n}" for e, n in a.expert_usage.get("step1", {}).items()) or "-"
        table.add_row(
            a.dataset,
            str(a.questions),
            f"{b.f1_recall:.2f}",
            f"{a.f1_recall:.2f}",
            f"{b.average_steps:.2f} → {a.average_steps:.2f}",
            usage,
        )
    return table


def run_demo(max_steps: int | None = None, val_limit: int | None = None, data_dir: str = "data/demo") -> int:
    from more_lightning.cli import run_lightning_cli

    console = Console()
    began = time.monotonic()
    console.rule("more_lightning demo: MoRE routing trained with Step-GRPO, experts in Weaviate")
    ensure_demo_data(data_dir, console)
    console.print(
        "[yellow]The text-image expert uses open_clip with RANDOM weights (none ships offline); its search "
        "leans on BM25 over captions.[/]"
    )
    timings = {}
    started = time.monotonic()
    console.rule("1/3 evaluate the untrained policy")
    before = _evaluate(CONFIGS / "eval.yaml", console, "eval_outputs/demo-before", val_limit, None)
    timings["evaluate before"] = time.monotonic() - started
    started = time.monotonic()
    console.rule("2/3 on-policy Step-GRPO")
    fit_args = ["fit", "--config", str(CONFIGS / "fit.yaml")]
    if max_steps is not None:
        fit_args += ["--trainer.max_steps", str(max_steps)]
    run_lightning_cli(fit_args)
    timings["fit"] = time.monotonic() - started
    started = time.monotonic()
    console.rule("3/3 evaluate the trained adapter")
    after = _evaluate(CONFIGS / "eval.yaml", console, "eval_outputs/demo-after", val_limit, ADAPTER)
    timings["evaluate after"] = time.monotonic() - started
    console.print(_comparison(before, after))
    from more_lightning.cli import command_arguments
    from more_lightning.commands import ask as ask_command

    _, arguments = command_arguments(
        ["ask", "--config", str(CONFIGS / "eval.yaml"), "--question", ASK, "--policy.adapter", ADAPTER]
    )
    ask_command(**arguments)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    console.print(
        f"Wall time: {', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}; total "
        f"{time.monotonic() - began:.0f} s; peak memory {peak:,.0f} MiB. Traces: eval_outputs/demo-*/"
    )
    return 0
