"""Entry points of the workflow's jobs, and the ``fa-analysis`` command.

Each ``*_job`` function is what one Snakemake rule runs (its script in ``workflow/scripts`` is a
two-line call): it takes the job's paths and params as plain values, calls the package, and holds
no science. The same jobs can be run by hand, e.g. one training run of a config::

    fa-analysis check-config config.yaml
    fa-analysis train config.yaml main/fa/0 --dataset results/data/mnist15.npz --out /tmp/fa0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

log = logging.getLogger("fa_analysis")


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
    """The prepared MNIST set (SPEC 4); ``settings`` = image_size, train_subset, test_subset."""
    from fa_analysis import data

    log.info("MNIST root %s (download=%s), settings %s", root, download, dict(settings))
    data.prepare_dataset(root, download, out_path, **settings)
    log.info("wrote %s", out_path)


def label_noise_job(prepared_path: str, level: int, seed: int, out_path: str) -> None:
    """The fixed draw of noisy training labels at ``level`` percent (SPEC 4, 8)."""
    from fa_analysis import data

    data.prepare_label_noise(prepared_path, level, seed, out_path)
    log.info("wrote %s (%s %% noisy labels, seed %s)", out_path, level, seed)


# --------------------------------------------------------------------------------------------
# Training


def observers_of(spec: Mapping, true_labels=None) -> list:
    """The observers a run spec asks for (``spec["observers"]``), each reading its own settings.

    ``true_labels`` (the clean training labels) lets the alignment-term similarity group a
    label-noise run's minibatches by their true classes as well as by the trained labels.
    """
    from fa_analysis.alignment_terms import AlignmentTermsObserver
    from fa_analysis.shadow import ShadowObserver

    known = {
        "alignment_terms": lambda: AlignmentTermsObserver(true_labels=true_labels),
        "shadow": ShadowObserver,
    }
    unknown = set(spec["observers"]) - set(known)
    if unknown:
        raise ValueError(f"run spec names unknown observers {sorted(unknown)}; known: {sorted(known)}")
    return [known[name]() for name in spec["observers"]]


def train_job(spec: Mapping, threads: int, dataset_path: str, labels_path: str | None, out_dir: str) -> None:
    """One training run (SPEC 5): its artifact directory appears only once the run has finished."""
    import torch

    from fa_analysis import data, train

    torch.set_num_threads(threads)
    run_spec = train.RunSpec.from_dict({**spec, "threads": threads})
    dataset = data.load_prepared(dataset_path)
    labels = data.load_labels(labels_path)[0] if labels_path else None
    train.train_run(run_spec, dataset, out_dir, observers=observers_of(spec, true_labels=dataset.y_train), log=log.info, labels=labels)


# --------------------------------------------------------------------------------------------
# Open loop


def open_loop_job(settings: Mapping, scenario: str, out_path: str) -> None:
    """One open-loop scenario (SPEC 7)."""
    from fa_analysis import open_loop

    open_loop.open_loop_job(settings, scenario, out_path)
    log.info("wrote %s", out_path)


def beta_sweep_job(settings: Mapping, wn: bool, out_path: str) -> None:
    """The beta sweep of the open loop, without or with WN (SPEC 7)."""
    from fa_analysis import open_loop

    open_loop.beta_sweep_job(settings, wn, out_path)
    log.info("wrote %s", out_path)


# --------------------------------------------------------------------------------------------
# Analysis


def aggregate_job(run_dirs: Sequence[str], out_dir: str) -> None:
    """Mean and sd over the seeds of one experiment/condition, written as one directory at once."""
    from fa_analysis import aggregate, artifacts

    with artifacts.staged_dir(out_dir) as staging:
        aggregate.aggregate_condition(run_dirs, staging)
    log.info("aggregated %d runs into %s", len(run_dirs), out_dir)


def trajectory_runs(run_dirs: Sequence[str]) -> dict[str, str]:
    """``{condition: run directory}`` of the trajectory runs (``runs/trajectory/{condition}/seed{s}``)."""
    return {Path(path).parent.name: str(path) for path in run_dirs}


def pca_job(run_dirs: Sequence[str], dataset_path: str, settings: Mapping, out_npz: str, out_json: str) -> None:
    """Joint PCA of the weight trajectories with the loss landscape (SPEC 8)."""
    from fa_analysis import embedding

    embedding.pca_landscape(trajectory_runs(run_dirs), dataset_path, out_npz, out_json, settings)


def umap_job(run_dirs: Sequence[str], settings: Mapping, out_parquet: str, out_json: str) -> None:
    """UMAP of the weight trajectories (SPEC 8)."""
    from fa_analysis import embedding

    embedding.umap_embedding(trajectory_runs(run_dirs), out_parquet, out_json, settings)


def summary_job(aggregated_dirs: Sequence[str], out_csv: str, out_md: str) -> None:
    """The summary table (SPEC 9, item 9)."""
    from fa_analysis import aggregate

    aggregate.summary_table(aggregated_dirs, out_csv, out_md)


# --------------------------------------------------------------------------------------------
# Figures


def figure_job(name: str, inputs: Mapping[str, str], outputs: Sequence[str], options: Mapping) -> None:
    """Draw figure ``name`` (SPEC 9) from its named inputs into ``figures/{name}.{format}``.

    ``inputs`` are keyed as the workflow names them: condition names for aggregated directories,
    scenario names, ``wn0``/``wn1`` for the beta sweep, the run names ``{condition}_p{level}`` of
    label noise,
    alignment-term variants, ``shadow``, ``pca``, ``umap``. ``options`` are the figure's settings.
    """
    from fa_analysis import figures

    stems = {str(Path(path).with_suffix("")) for path in outputs}
    if len(stems) != 1:
        raise ValueError(f"figure {name}: outputs {list(outputs)} must differ only in their suffix")
    formats = [Path(path).suffix.lstrip(".") for path in outputs]
    plot = getattr(figures, f"plot_{name}", None)
    if plot is None:
        raise ValueError(f"no figure {name!r}: fa_analysis.figures has no plot_{name}")
    plot(_figure_inputs(name, dict(inputs)), stems.pop(), formats=formats, **options)
    log.info("drew %s", ", ".join(outputs))


def _figure_inputs(name: str, inputs: dict[str, str]):
    """Reshape the named inputs into what ``figures.plot_{name}`` takes."""
    if name == "open_loop_beta":
        return {bool(int(key.removeprefix("wn"))): path for key, path in inputs.items()}
    if name == "label_noise":  # {condition: {level: path}}
        by_condition: dict[str, dict[int, str]] = {}
        for key, path in inputs.items():
            condition, level = re.fullmatch(r"(.+)_p(\d+)", key).groups()
            by_condition.setdefault(condition, {})[int(level)] = path
        return by_condition
    if len(inputs) == 1 and name in ("shadow_linearised", "shadow_random_b", "trajectory_pca", "trajectory_umap"):
        return next(iter(inputs.values()))
    return inputs


# --------------------------------------------------------------------------------------------
# The command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fa-analysis", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check-config", help="validate a config and count its training runs")
    check.add_argument("config", nargs="?", default="config.yaml")

    specs = commands.add_parser("specs", help="print the run specs of a config as JSON lines")
    specs.add_argument("config", nargs="?", default="config.yaml")

    one = commands.add_parser("train", help="run one training job of a config by hand")
    one.add_argument("config")
    one.add_argument("run", help="experiment/condition/seed, e.g. main/fa/0")
    one.add_argument("--dataset", required=True, help="the prepared data set (results/data/mnist15.npz)")
    one.add_argument("--labels", help="noisy labels, for runs with label noise")
    one.add_argument("--out", required=True, help="the run directory to create")
    one.add_argument("--threads", type=int, default=1)

    args = parser.parse_args(argv)
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
        experiment, condition, seed = args.run.split("/")
        key = (experiment, condition, int(seed))
        if key not in runs:
            print(f"no run {args.run} in {args.config}; see `fa-analysis specs {args.config}`", file=sys.stderr)
            return 2
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        train_job(runs[key], args.threads, args.dataset, args.labels, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
