# Figures stage (method §9): one rule per figure, figure_{name}, drawn from aggregated results by
# fa_analysis.figures.plot_{name}. Each is a report output with the caption workflow/report/{name}.rst.
# The table says what each figure shows; its keys name the inputs for fa_analysis.cli.figure_job.

FA_MAIN = conditions_with_rule("main", "fa")
TERMS_CONDITION = config["alignment_terms"]["condition"]
TERMS = {
    variant: results(f"aggregated/terms/{TERMS_CONDITION}_{variant}")
    for variant in config["alignment_terms"]["variants"]
}
SHADOW = {"shadow": results(f"aggregated/shadow/{config['shadow']['condition']}")}
REMAINDER = {"remainder": results(f"aggregated/remainder/{config['remainder']['condition']}")}

FIGURE_INPUTS = {
    # angle(W_1, B_1^T) vs iteration per open-loop scenario (paper Fig 3)
    "open_loop": {scenario: results(f"open_loop/{scenario}.parquet") for scenario in OPEN_LOOP["scenarios"]},
    # final angle vs beta, without and with WN
    "open_loop_beta": {
        f"wn{int(wn)}": results(f"open_loop/beta_wn{int(wn)}.parquet") for wn in OPEN_LOOP["beta_sweep"]["wn"]
    },
    # angle(W_l, B_l^T) per layer, FA vs FA+WN (paper Fig 4)
    "angle_W_Bt": aggregated("main", FA_MAIN),
    # test accuracy and loss vs epoch, FA and FA+WN with BP and BP+WN beside them (paper Figs 5, 6)
    "accuracy_loss": aggregated("main"),
    # alignment-term angle vs lag at the chosen k, fixed order vs reshuffle vs wrong labels (Fig 7)
    "alignment_terms_lag": TERMS,
    # the same angle over iterations at the chosen lags
    "alignment_terms_time": TERMS,
    # angle(dW^FA, dW^BP) per layer, causal moving average, FA vs FA+WN (paper Fig 8)
    "update_angle": aggregated("main", FA_MAIN),
    # within- vs between-class similarity of layer inputs at the analysed lags, true vs permuted labels
    "similarity": TERMS,
    # real vs linearised shadow weights (Fig 9); real vs random-B' shadow (Fig 10)
    "shadow_linearised": SHADOW,
    "shadow_random_b": SHADOW,
    # the remainder of the expansion and the zero-degree term over iterations
    "remainder": REMAINDER,
    # weight trajectories: joint PCA with the loss landscape, and UMAP
    "trajectory_pca": {"pca": results("embedding/trajectory_pca.npz")},
    "trajectory_umap": {"umap": results("embedding/trajectory_umap.parquet")},
    # final accuracy and angles vs label-noise level, every condition; accuracy through a label change
    "label_noise": aggregated("label_noise"),
    "label_change": aggregated("label_change"),
    # the toy analyses (method §11): one alignment term over shape modes, its spectrum, changed
    # signal statistics, and products of matrices at prescribed angles
    "toy_term_geometry": {"angles": results("toy/term_geometry.parquet")},
    "toy_term_spectrum": {"spectrum": results("toy/term_spectrum.parquet")},
    "toy_distributions": {"distributions": results("toy/distributions.parquet")},
    "toy_depth": {"depth": results("toy/depth.parquet")},
    # the closed 100-100-10 net with an imposed error: per regime, with WN, and graded auto-correlation
    "toy_closed_net": {"regimes": results("toy/closed_net_regimes.parquet")},
    "toy_closed_net_wn": {"wn": results("toy/closed_net_wn.parquet")},
    "toy_autocorrelation": {
        f"{sweep}_wn{wn}": results(f"toy/autocorrelation_{sweep}_wn{wn}.parquet") for sweep, wn in TOY_AUTOCORRELATION
    },
}
# the rules experiment (method §8.4), where a config lists its conditions: main's aggregates for the
# conditions whose runs are main's
RULES_AGGREGATED = {name: results(f"aggregated/{'main' if name in RULES_REUSED else 'rules'}/{name}")
                    for name in config["experiments"]["rules"]["conditions"]}
if RULES_AGGREGATED:
    FIGURE_INPUTS.update(dict.fromkeys(("rules_accuracy_loss", "rules_angle_W_Bt", "rules_update_angle"), RULES_AGGREGATED))
# How a figure groups its inputs, where it does (the input names are flat): {input name: group keys}
FIGURE_GROUPS = {
    "open_loop_beta": {f"wn{int(wn)}": [bool(wn)] for wn in OPEN_LOOP["beta_sweep"]["wn"]},
    "label_noise": {run: [condition, level] for run, (condition, level) in label_noise_runs(config).items()},
}
FIGURE_OPTIONS = {
    "update_angle": {"window": config["figures"]["moving_average"]},
    "alignment_terms_time": {"window": config["figures"]["moving_average"]},
    "rules_update_angle": {"window": config["figures"]["moving_average"]},
}


for figure_name, figure_inputs in FIGURE_INPUTS.items():

    rule:
        name:
            f"figure_{figure_name}"
        input:
            **figure_inputs,
        output:
            figure(figure_name),
        params:
            options=FIGURE_OPTIONS.get(figure_name, {}),
            groups=FIGURE_GROUPS.get(figure_name, {}),
            code=CODE["figures"],
            upstream=upstream(figure_inputs),
        log:
            results(f"logs/figures/{figure_name}.log"),
        localrule: True
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        conda:
            ENV
        message:
            f"Drawing figure {figure_name}"
        script:
            "../scripts/figure.py"
