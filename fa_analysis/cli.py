"""Entry points of the workflow's jobs, and the ``fa-analysis`` command.

Each ``*_job`` function is what one Snakemake rule runs (its script in ``workflow/scripts`` is a
two-line call): it takes the job's paths and params as plain values, calls the package, and holds
no science. The same jobs can be run by hand, e.g. one training run of a config::

    fa-analysis check-config config.yaml
    fa-analysis train config.yaml main/fa/0 --dataset results/data/mnist15.npz --out /tmp/fa0

or one run of the protocol without the workflow, its data prepared from MNIST on the way::

    fa-analysis train --condition fa --seed 3 --epochs 5 --out /tmp/fa3 --mnist-root /data/mnist

A wrong argument stops the command before any compute with exit code 2 and a line naming the
argument and the fix.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from fa_analysis.jobs import log, observers_of


@contextlib.contextmanager
def job_log(path: str | Path) -> Iterator[None]:
    """Send the job's logging, stdout and stderr (and a failure's traceback) to its log file.

    The package logs at INFO; other libraries only their warnings and errors (matplotlib and
    fontTools would otherwise fill a figure's log with font-subsetting details).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", buffering=1) as handle:
        handler = logging.StreamHandler(handle)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        levels = (root.level, log.level)
        root.setLevel(logging.WARNING)
        log.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                yield
        except BaseException:
            handle.write(traceback.format_exc())
            raise
        finally:
            root.removeHandler(handler)
            root.setLevel(levels[0])
            log.setLevel(levels[1])


# --------------------------------------------------------------------------------------------
# Data


def prepare_data_job(root: str, download: bool, settings: Mapping, out_path: str) -> None:
    """The prepared MNIST set (method §4); ``settings`` = image_size, train_subset, test_subset."""
    from fa_analysis import data

    log.info("MNIST root %s (download=%s), settings %s", root, download, dict(settings))
    data.prepare_dataset(root, download, out_path, **settings)
    log.info("wrote %s", out_path)


def label_noise_job(prepared_path: str, level: int, seed: int, out_path: str) -> None:
    """The fixed draw of noisy training labels at ``level`` percent (method §4, §8)."""
    from fa_analysis import data

    data.prepare_label_noise(prepared_path, level, seed, out_path)
    log.info("wrote %s (%s %% noisy labels, seed %s)", out_path, level, seed)


# --------------------------------------------------------------------------------------------
# Training


def train_job(spec: Mapping, threads: int, dataset_path: str, labels_path: str | None, out_dir: str) -> None:
    """One training run (method §5): its artifact directory appears only once the run has finished."""
    import torch

    from fa_analysis import data, train
    from fa_analysis.spec import RunSpec

    labels, labels_source = train.read_labels(spec, labels_path)
    torch.set_num_threads(threads)
    run_spec = RunSpec.from_dict({**spec, "threads": threads})
    dataset = data.load_prepared(dataset_path)
    train.train_run(run_spec, dataset, out_dir, observers=observers_of(spec, true_labels=dataset.y_train),
                    log=log.info, labels=labels, labels_source=labels_source)


# --------------------------------------------------------------------------------------------
# Open loop


def open_loop_job(settings: Mapping, scenario: str, out_path: str) -> None:
    """One open-loop scenario (method §7)."""
    from fa_analysis import open_loop

    open_loop.open_loop_job(settings, scenario, out_path)
    log.info("wrote %s", out_path)


def beta_sweep_job(settings: Mapping, wn: bool, out_path: str) -> None:
    """The beta sweep of the open loop, without or with WN (method §7)."""
    from fa_analysis import open_loop

    open_loop.beta_sweep_job(settings, wn, out_path)
    log.info("wrote %s", out_path)


# --------------------------------------------------------------------------------------------
# Analysis


def aggregate_job(run_dirs: Sequence[str], out_dir: str, settings: Mapping) -> None:
    """Mean and sd over the seeds of one experiment/condition, written as one directory at once;
    ``settings`` is config ``analysis`` (``collapse_margin``)."""
    from fa_analysis import aggregate, artifacts

    with artifacts.staged_dir(out_dir) as staging:
        aggregate.aggregate_condition(run_dirs, staging, settings["collapse_margin"])
    log.info("aggregated %d runs into %s", len(run_dirs), out_dir)


def pca_job(run_dirs: Sequence[str], dataset_path: str, settings: Mapping, out_npz: str, out_json: str,
            analysis: Mapping) -> None:
    """Joint PCA of the weight trajectories with the loss landscape (method §8); ``analysis`` is
    config ``analysis`` (the runs' outcomes)."""
    from fa_analysis import embedding

    embedding.pca_landscape(embedding.trajectory_runs(run_dirs), dataset_path, out_npz, out_json, settings,
                            analysis["collapse_margin"])


def umap_job(run_dirs: Sequence[str], settings: Mapping, out_parquet: str, out_json: str, analysis: Mapping) -> None:
    """UMAP of the weight trajectories (method §8); ``analysis`` as for ``pca_job``."""
    from fa_analysis import embedding

    embedding.umap_embedding(embedding.trajectory_runs(run_dirs), out_parquet, out_json, settings,
                             analysis["collapse_margin"])


def summary_job(aggregated_dirs: Sequence[str], out_csv: str, out_md: str) -> None:
    """The summary table (method §9.9)."""
    from fa_analysis import aggregate

    aggregate.summary_table(aggregated_dirs, out_csv, out_md)


def sweep_table_job(run_dirs: Sequence[str], layout: Mapping, sweep: str, settings: Mapping, out_runs: str,
                    out_points: str, out_meta: str) -> None:
    """The tables of one sweep (method §12); ``layout`` is its entry of ``sweeps.sweep_layout``,
    ``settings`` config ``analysis`` (``collapse_margin``)."""
    from fa_analysis import sweep_table

    sweep_table.sweep_tables(run_dirs, layout, sweep, out_runs, out_points, out_meta, settings["collapse_margin"])
    log.info("tabled %d runs of sweep %s", len(run_dirs), sweep)


# --------------------------------------------------------------------------------------------
# Figures


def figure_job(name: str, inputs: Mapping[str, str], outputs: Sequence[str], options: Mapping,
               groups: Mapping[str, Sequence] | None = None) -> None:
    """Draw figure ``name`` (method §9) from its named inputs into ``figures/{name}.{format}``.

    ``inputs`` are keyed as the workflow names them: condition names for aggregated directories,
    scenario names, ``wn0``/``wn1`` for the beta sweep, the run names of label noise, alignment-term
    variants, ``shadow``, ``pca``, ``umap``. ``groups`` gives, for the figures that group their
    inputs, each input's group keys (``[wn]`` for the beta sweep, ``[condition, level]`` for label
    noise): names are never parsed. ``options`` are the figure's settings.
    """
    from fa_analysis import figures

    stems = {str(Path(path).with_suffix("")) for path in outputs}
    if len(stems) != 1:
        raise ValueError(f"figure {name}: outputs {list(outputs)} must differ only in their suffix")
    formats = [Path(path).suffix.lstrip(".") for path in outputs]
    plot = getattr(figures, f"plot_{name}", None)
    if plot is None:
        raise ValueError(f"no figure {name!r}: fa_analysis.figures has no plot_{name}")
    plot(figures.figure_inputs(name, dict(inputs), groups or {}), stems.pop(), formats=formats, **options)
    log.info("drew %s", ", ".join(outputs))


# --------------------------------------------------------------------------------------------
# The command line


EXAMPLES = """examples:
  fa-analysis check-config config.yaml      validate a config, count its training runs
  fa-analysis specs config.yaml             the run spec of every training job, as JSON lines
  fa-analysis train --condition fa --seed 3 --epochs 5 --out runs/fa3 --mnist-root /data/mnist
                                            one run of config.yaml's protocol (or --config FILE),
                                            the data prepared from MNIST on the way
  fa-analysis train config.yaml main/fa/0 --dataset results/data/mnist15.npz --out /tmp/fa0
                                            one training job of the workflow, from its prepared data

From Python: fa_analysis.train_one(...), fa_analysis.load_results("results") (README, "From Python").
"""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error naming the argument, instead of the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}\n")


def _run_id(text: str) -> tuple[str, str, int]:
    """``experiment/condition/seed``; a sweep's condition holds slashes (``sweep/s/fa/eta~3e-4/0``)."""
    parts = text.split("/")
    if len(parts) < 3 or (len(parts) > 3 and parts[0] != "sweep") or not parts[-1].isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not experiment/condition/seed, e.g. main/fa/0 (`fa-analysis specs CONFIG` lists the runs)")
    return parts[0], "/".join(parts[1:-1]), int(parts[-1])


def _threads(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of threads; pass e.g. --threads 1")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    from fa_analysis import __version__

    parser = _Parser(prog="fa-analysis", description=__doc__.splitlines()[0], epilog=EXAMPLES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check-config", help="validate a config and count its training runs")
    check.add_argument("config", nargs="?", default="config.yaml")

    specs = commands.add_parser("specs", help="print the run specs of a config as JSON lines")
    specs.add_argument("config", nargs="?", default="config.yaml")

    one = commands.add_parser("train", help="run one training job of a config by hand", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    one.add_argument("config", nargs="?", help="the config of the workflow's run")
    one.add_argument("run", nargs="?", type=_run_id, help="experiment/condition/seed, e.g. main/fa/0")
    one.add_argument("--dataset", help="the prepared data set (results/data/mnist15.npz)")
    one.add_argument("--labels", help="the noisy labels of the run's level (results/data/labels_noise{p}.npz), "
                                      "for runs with label noise only")
    one.add_argument("--out", required=True, help="the run directory to create; must not exist or be empty")
    one.add_argument("--force", action="store_true", help="replace --out even if it exists and is not empty")
    one.add_argument("--threads", type=_threads, default=1, help="torch threads (default 1)")
    add_one_off_options(one)

    args = parser.parse_args(argv)
    if args.command == "train":
        out = Path(args.out)
        if out.exists() and not args.force and (not out.is_dir() or any(out.iterdir())):
            one.error(f"argument --out: {out} exists and is not an empty directory; "
                      "give a new directory, or --force to replace it")
    if args.command == "train" and args.run is None:
        return train_one_off(one, args)
    if args.command == "train":
        check_workflow_form(one, args)
    from fa_analysis.config import ConfigError, experiment_conditions, load_config, run_specs

    try:
        runs = run_specs(load_config(args.config))
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    if args.command == "check-config":
        for experiment, conditions in experiment_conditions(runs).items():
            counts = ", ".join(f"{c} x{len(s)}" for c, s in conditions.items())
            print(f"{experiment}: {counts}")
        print(f"{len(runs)} training runs")
    elif args.command == "specs":
        for spec in runs.values():
            print(json.dumps(spec))
    elif args.command == "train":
        if args.run not in runs:
            one.error(f"argument run: no run {'/'.join(map(str, args.run))} in {args.config} "
                      f"(`fa-analysis specs {args.config}` lists the runs)")
        if not Path(args.dataset).is_file():
            one.error(f"argument --dataset: {args.dataset} does not exist; give the prepared data set "
                      "(the workflow's data/mnist15.npz)")
        from fa_analysis.train import read_labels

        try:
            read_labels(runs[args.run], args.labels)
        except (ValueError, FileNotFoundError) as error:
            one.error(f"argument --labels: {error}")
        logging.basicConfig(format="%(asctime)s %(message)s")
        log.setLevel(logging.INFO)
        train_job(runs[args.run], args.threads, args.dataset, args.labels, args.out)
    return 0


# --------------------------------------------------------------------------------------------
# One run by hand, outside the workflow: no run id, no prepared data set


def add_one_off_options(parser: argparse.ArgumentParser) -> None:
    """``train --condition ... --seed ...``: one run of a config's protocol, its data prepared on the way."""
    group = parser.add_argument_group("one run without the workflow (when RUN is not given)")
    group.add_argument("--config", dest="config_file", metavar="CONFIG",
                       help="a config file (default: the protocol of config.yaml, from the package's schema)")
    group.add_argument("--experiment", help="the experiment the run belongs to (default: main)")
    group.add_argument("--condition", help="a condition of that experiment (default: fa)")
    group.add_argument("--seed", type=int, help="the run seed (default: 0)")
    group.add_argument("--epochs", type=int, help="epochs to train (default: the config's)")
    group.add_argument("--mnist-root", help="MNIST in torchvision's layout, {root}/MNIST/raw (default: data.root)")
    group.add_argument("--train-subset", type=int, help="train on the first N training images only")
    group.add_argument("--test-subset", type=int, help="evaluate on the first N test images only")


ONE_OFF_OPTIONS = ("config_file", "experiment", "condition", "seed", "epochs", "mnist_root", "train_subset", "test_subset")


def check_workflow_form(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``train CONFIG RUN`` takes the prepared data set and none of the one-off options."""
    if args.dataset is None:
        parser.error("train CONFIG RUN needs --dataset (the prepared data set); without RUN, "
                     "train --condition ... --seed ... prepares the data itself")
    given = [f"--{name.removesuffix('_file').replace('_', '-')}" for name in ONE_OFF_OPTIONS if getattr(args, name) is not None]
    if given:
        parser.error(f"{', '.join(given)} belong to the form without RUN; RUN ({args.run}) already names the run")


def train_one_off(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """One run with ``api.train_one``, written to ``--out``; prints where it is and how it ended."""
    from fa_analysis.api import train_one
    from fa_analysis.config import ConfigError

    if args.config and args.config_file:
        parser.error(f"two configs given ({args.config} and --config {args.config_file}): give one")
    config_path = args.config_file or args.config
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        result = train_one(
            config_path, experiment=args.experiment or "main", condition=args.condition or "fa",
            seed=args.seed if args.seed is not None else 0, epochs=args.epochs,
            mnist_root=args.mnist_root, train_subset=args.train_subset, test_subset=args.test_subset,
            out_dir=args.out, threads=args.threads, log=log.info,
        )
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"fa-analysis train: {error}", file=sys.stderr)
        return 2
    print(f"{result.run_dir}: {result.status}, final test accuracy {result.final_test_accuracy:.4f}")
    return 0 if result.status == "completed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
