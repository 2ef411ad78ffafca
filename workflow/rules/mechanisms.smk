# Mechanisms stage (method §6): the alignment terms, the shadow weights and the remainder are
# measured inside FA training runs (observers of the engine; the run specs of experiments `terms`,
# `shadow` and `remainder` carry their settings), so this stage adds no job of its own: it names
# the stage as a target,
#   snakemake mechanisms --cores 8
# which trains and aggregates exactly those runs.


rule mechanisms:
    """Target: the aggregated alignment-term, shadow and remainder experiments."""
    input:
        [*aggregated("terms").values(), *aggregated("shadow").values(), *aggregated("remainder").values()],
