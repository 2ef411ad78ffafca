"""The learning rules by name, what each needs, and its settings (method §1.3, §1.6, §6).

Eight rules: BP, FA and DFA (method §1.3), and the five the field compares FA with (method §1.6):
sign-symmetric feedback in three forms (``usf``, ``frsf``, ``brsf``), Kolen-Pollack (``kp``) and
direct random target projection (``drtp``). This module says which family each belongs to, which
settings it takes (config section ``rule_settings``, completed by the schema's defaults) and whether
the analyses of method §6 hold for it. No torch: the run spec (``spec.py``) and the config check use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fa_analysis import settings

RULES = ("bp", "fa", "dfa", "usf", "frsf", "brsf", "kp", "drtp")
#: Sign-symmetric feedback: ``B_l[k] = M_l[k] ⊙ sign(W_l[k])ᵀ`` with magnitudes ``M_l`` (method §1.6).
SIGN_RULES = ("usf", "frsf", "brsf")
#: Rules whose hidden deltas are ``delta_l = (delta_{l+1} B_l) ⊙ f'(Z_l)`` with their feedback ``B_l``.
FEEDBACK_RULES = ("fa", *SIGN_RULES, "kp")
#: Rules whose feedback ``B_l`` changes during training (the angle is to the feedback in use at each step).
CHANGING_FEEDBACK = (*SIGN_RULES, "kp")
#: Rules that send a signal from the output straight to every hidden layer through ``D_l``.
DIRECT_RULES = ("dfa", "drtp")
#: Magnitude distributions of frSF and brSF, each with the second moment ``sigma^2`` of FA's entries.
MAGNITUDES = ("half_normal", "uniform")
#: The magnitudes drawn for frSF (``uniform``) and brSF come from the seed ``s + MAGNITUDE_SEED_OFFSET`` (method §2.4).
MAGNITUDE_SEED_OFFSET = 3_000_017


def defaults(rule: str) -> dict[str, Any]:
    """The schema's settings of ``rule`` (config ``rule_settings.{rule}``); empty for bp, fa and dfa."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")
    section = settings.schema()["properties"]["rule_settings"]["properties"]
    if rule not in section:
        return {}
    return settings.schema_defaults("rule_settings", rule)


def complete(rule: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``given`` (a condition's or the config's ``rule_settings`` of ``rule``) completed by the
    schema's defaults, in the schema's key order, numbers as floats (``decay: 0`` and ``0.0`` give one
    spec); an unknown key is an error naming it."""
    base = defaults(rule)
    given = dict(given or {})
    unknown = sorted(set(given) - set(base))
    if unknown:
        accepted = sorted(base) or "none (the rule has no settings)"
        raise ValueError(f"rule_settings of rule {rule!r} has unknown key(s) {unknown}; accepted: {accepted}")
    values = {key: given.get(key, value) for key, value in base.items()}
    return {key: float(value) if settings.is_int(value) else value for key, value in values.items()}


def settings_problem(rule: str, values: Any) -> str | None:
    """What is wrong with the complete settings ``values`` of ``rule`` (method §1.6), or None."""
    if not isinstance(values, Mapping):
        return f"rule_settings must be a mapping, got {values!r}"
    expected = list(defaults(rule))
    if sorted(values) != sorted(expected):
        return f"rule_settings of rule {rule!r} must have exactly the keys {expected}, got {sorted(values)}"

    def positive(key: str, allow_none: bool = False) -> str | None:
        value = values[key]
        if allow_none and value is None:
            return None
        if not _number(value) or not value > 0:
            return f"rule_settings.{key} of rule {rule!r} must be a positive number{' or null' if allow_none else ''}, got {value!r}"
        return None

    if rule == "usf":
        return positive("scale", allow_none=True)
    if rule in ("frsf", "brsf") and values["magnitude"] not in MAGNITUDES:
        return f"rule_settings.magnitude of rule {rule!r} must be one of {list(MAGNITUDES)}, got {values['magnitude']!r}"
    if rule == "kp":
        decay = values["decay"]
        if not _number(decay) or not 0 <= decay < 1:
            return f"rule_settings.decay of rule 'kp' must be a number in [0, 1), got {decay!r}"
        return positive("eta_feedback", allow_none=True)
    if rule == "drtp":
        return positive("target_scale")
    return None


def uniform_bound(init_std: float) -> float:
    """The bound ``a`` of the uniform magnitudes ``U(0, a)``: ``a = sqrt(3) sigma`` gives them the second
    moment ``sigma^2`` of FA's ``N(0, sigma^2)`` entries, as the half-normal magnitudes have."""
    return math.sqrt(3.0) * init_std


def mechanism_problem(rule: str, wn: bool) -> str | None:
    """Why the expansion of method §6 does not hold for a condition, or None (FA without WN).

    The alignment terms, the shadows and the remainder need ``W_{l-1}[k] = W_{l-1}[0] + sum eta dW``
    (no WN, no decay) and hidden deltas ``(delta_{l+1} B_l) ⊙ f'(Z_l)`` through one fixed ``B_l``
    (the linear term ``eta^2 B_l^T M^o`` and every angle to ``B_l^T``).
    """
    reasons = {
        "bp": "BP sends its deltas through W_l^T, which learns: there is no fixed B_l to expand around",
        "dfa": "DFA's hidden deltas come from delta_d D_l, not from delta_{l+1} B_l",
        "drtp": "DRTP's hidden deltas come from the target Y* D_l, not from delta_{l+1} B_l",
        "usf": "uSF's feedback sign(W_l)^T follows W_l, so B_l is not fixed",
        "frsf": "frSF's feedback M_l ⊙ sign(W_l)^T changes sign with W_l, so B_l is not fixed",
        "brsf": "brSF redraws its feedback every minibatch, so B_l is not fixed",
        "kp": "Kolen-Pollack learns B_l (and decays W), so B_l is not fixed",
    }
    if rule in reasons:
        return reasons[rule]
    if wn:
        return "WN rescales W after every step, so W is no longer its initial value plus the sum of its updates"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
