"""The ``tlmic`` click group.

Subcommands load lazily (name -> ``module:function``), so ``tlmic --help`` never imports torch.
Every expected error prints one line, ``tlmic: error: ...``, and exits 2 (usage) or 1 (a failed
run); an interruption says how to resume and exits 130.
"""

from __future__ import annotations

import importlib
import sys

import click

COMMANDS = {
    "extract": ("tlmic_cli.commands.extract:extract", "Extract pooled features of every cut point into a Zarr store."),
    "layers": ("tlmic_cli.commands.layers:layers", "List a backbone's cut points (channels, stride, parameters)."),
    "backbones": (
        "tlmic_cli.commands.layers:backbones",
        "List backbones: curated, and timm/torchvision models matching a pattern.",
    ),
    "probe": ("tlmic_cli.commands.probe:probe", "Train probes on every stored layer; per-layer metrics and plot."),
    "finetune": (
        "tlmic_cli.commands.finetune:finetune",
        "Finetune a backbone truncated at a cut point (or full depth).",
    ),
    "report": ("tlmic_cli.commands.probe:report", "Re-render a probe run's summary.md and layers.png."),
    "similarity": (
        "tlmic_cli.commands.similarity:similarity",
        "Layer similarity (CKA, SVCCA): a store's cut points, two stores, or a finetuned run's feature reuse.",
    ),
    "compare": (
        "tlmic_cli.commands.compare:compare",
        "Two predictions files on the same images: DeLong (AUROC), paired bootstrap (AUPRC).",
    ),
    "doctor": (
        "tlmic_cli.commands.doctor:doctor",
        "Devices, working onnxruntime providers, CPU features, versions, cache.",
    ),
    "data": ("tlmic_cli.commands.data:data", "Inspect a dataset: `tlmic data check --data D`."),
    "study": (
        "tlmic_cli.commands.study:study",
        "The paper's experiment: probes, a truncation search (probe, similarity, halving...), baselines, report.",
    ),
    "demo": ("tlmic_cli.commands.demo:demo", "A miniature study on the embedded phantom chest X-ray data."),
    "cache": ("tlmic_cli.commands.cache:cache", "What the cache folder holds (info, list) and reclaiming it (clean)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, _, attr = COMMANDS[name][0].partition(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help from the table above: listing must not import the command modules.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.ClickException as e:  # bad options: one line, exit 2
            click.echo(f"tlmic: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("tlmic: aborted", err=True)
            sys.exit(130)
        except KeyboardInterrupt:
            click.echo("tlmic: interrupted; rerun the same command to resume", err=True)
            sys.exit(130)
        except Exception as e:
            from tlmic_feats.runtime.errors import TlmicError

            if isinstance(e, TlmicError):
                click.echo(f"tlmic: error: {e}", err=True)
                sys.exit(e.exit_code)
            raise
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tlmic", prog_name="tlmic")
def cli() -> None:
    """tlmic: transfer learning for medical image classification.

    Extract per-layer features of a frozen backbone once, then probe or finetune at any cut point.
    """


def main() -> None:
    cli(prog_name="tlmic")


if __name__ == "__main__":  # `python -m tlmic_cli.main`: how torchrun starts each rank
    main()
