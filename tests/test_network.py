"""The forward pass and the learning rules (method §1-§2)."""

import pytest
import torch

from fa_analysis.network import (
    ACTIVATIONS,
    RULES,
    backward_deltas,
    derivatives,
    forward,
    init_network,
    loss,
    output_error,
    sgd_step_,
    weight_updates,
)

SIZES = [7, 12, 10, 11, 8]  # non-square layers: a wrong transpose cannot pass unnoticed
D = len(SIZES) - 1


def _batch(seed, n=9, sizes=SIZES, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, sizes[0], generator=g, dtype=dtype)
    Y = torch.rand(n, sizes[-1], generator=g, dtype=dtype)
    return X, Y


def _net(activation="tanh_relu", seed=0, bias=True, init_std=0.5):
    return init_network(SIZES, init_std, bias=bias, activation=activation, seed=seed, dtype=torch.float64)


def _rule_updates(net, X, Y, rule):
    Z, L = forward(net, X)
    E = output_error(Y, L[-1])
    delta = backward_deltas(net, Z, L, E, rule, target=Y)  # the target: DRTP's signal
    return weight_updates(net, L, delta), delta


def test_shapes_follow_the_design_conventions():
    net = _net()
    assert [tuple(w.shape) for w in net.W] == [(SIZES[l], SIZES[l + 1]) for l in range(D)]
    assert [tuple(b.shape) for b in net.b] == [(SIZES[l],) for l in range(1, D + 1)]
    assert net.B[0] is None and net.D[0] is None
    assert [tuple(B.shape) for B in net.B[1:]] == [(SIZES[l + 1], SIZES[l]) for l in range(1, D)]
    assert [tuple(M.shape) for M in net.D[1:]] == [(SIZES[D], SIZES[l]) for l in range(1, D)]
    Z, L = forward(net, _batch(0)[0])
    assert Z[0] is None and len(Z) == len(L) == D + 1
    assert [tuple(x.shape) for x in L] == [(9, n) for n in SIZES]


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_derivative_pairs_match_autograd(activation):
    act = ACTIVATIONS[activation]
    Z = torch.linspace(-3, 3, 61, dtype=torch.float64).reshape(61, 1).requires_grad_()
    Z = Z[Z.detach().abs() > 1e-9].reshape(-1, 1).detach().requires_grad_()  # relu' undefined at 0
    L = act.f(Z, None)
    (grad,) = torch.autograd.grad(L.sum(), Z)
    torch.testing.assert_close(act.fprime(Z.detach(), L.detach(), None), grad)
    out = torch.empty_like(grad)
    assert act.fprime(Z.detach(), L.detach(), out) is out
    torch.testing.assert_close(out, grad)


def test_tanh_relu_is_tanh_of_relu():
    Z = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    L = ACTIVATIONS["tanh_relu"].f(Z, None)
    torch.testing.assert_close(L, torch.tanh(torch.relu(Z)))
    expected = (Z > 0) * (1 - torch.tanh(Z) ** 2)
    torch.testing.assert_close(ACTIVATIONS["tanh_relu"].fprime(Z, L, None), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tanh_relu_derivative_is_exactly_zero_where_Z_is_not_positive(dtype):
    """f' = sign(L) - L^2 needs L > 0 exactly where Z > 0, down to the smallest positive floats."""
    tiny = torch.finfo(dtype).tiny
    Z = torch.tensor([-1.0, -tiny, -0.0, 0.0, tiny / 2**10, tiny, 1e-30, 1e-8, 0.5, 20.0, 1e4], dtype=dtype)
    act = ACTIVATIONS["tanh_relu"]
    L = act.f(Z, None)
    assert torch.equal(L > 0, Z > 0)
    expected = torch.where(Z > 0, 1 - torch.tanh(Z) ** 2, torch.zeros_like(Z))
    assert torch.equal(act.fprime(Z, L, None), expected)


@pytest.mark.parametrize("activation", ["tanh_relu", "tanh"])
def test_float32_tanh_is_within_two_ulp_of_the_exact_value_also_on_strided_views(activation):
    g = torch.Generator().manual_seed(2)
    Z_all = torch.randn(40, 300, generator=g) * 4
    Z = Z_all[10:30].T  # (300, 20) transposed view, as the training loop stores layers
    out_all = torch.full_like(Z_all, -7.0)
    out = out_all[10:30].T
    assert ACTIVATIONS[activation].f(Z, out) is out
    x = Z.double().clamp(min=0) if activation == "tanh_relu" else Z.double()
    exact = torch.tanh(x)
    ulp = torch.finfo(torch.float32).eps * exact.abs().clamp(min=torch.finfo(torch.float32).tiny)
    assert ((out.double() - exact).abs() <= 2 * ulp).all()
    assert (out_all[:10] == -7.0).all() and (out_all[30:] == -7.0).all()  # nothing outside the view


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("bias", [True, False])
def test_bp_updates_are_minus_autograd_gradient_of_summed_loss(activation, bias):
    net = _net(activation, bias=bias)
    X, Y = _batch(3)
    (dW, db), _ = _rule_updates(net, X, Y, "bp")

    params = [w.clone().requires_grad_() for w in net.W] + [b.clone().requires_grad_() for b in net.b]
    f = ACTIVATIONS[activation].f
    h = X
    for l in range(D):
        h = f(h @ params[l] + params[D + l], None)
    total = 0.5 * ((Y - h) ** 2).sum()
    grads = torch.autograd.grad(total, params)
    for l in range(D):
        torch.testing.assert_close(dW[l], -grads[l])
        if bias:
            torch.testing.assert_close(db[l], -grads[D + l])
        else:
            assert torch.count_nonzero(db[l]) == 0


def test_loss_is_half_the_summed_squared_error():
    X, Y = _batch(4)
    net = _net()
    _, L = forward(net, X)
    E = output_error(Y, L[-1])
    torch.testing.assert_close(loss(E), 0.5 * ((Y - L[-1]) ** 2).sum())


def test_fa_with_B_equal_Wt_is_bp():
    net = _net()
    net.B = [None] + [W.T.clone() for W in net.W[1:]]
    X, Y = _batch(5)
    (dW_bp, db_bp), _ = _rule_updates(net, X, Y, "bp")
    (dW_fa, db_fa), _ = _rule_updates(net, X, Y, "fa")
    for l in range(D):
        assert torch.equal(dW_fa[l], dW_bp[l])
        assert torch.equal(db_fa[l], db_bp[l])


def test_output_layer_update_is_the_same_under_every_rule():
    net = _net()
    X, Y = _batch(6)
    updates = {rule: _rule_updates(net, X, Y, rule)[0] for rule in RULES}
    for rule in set(RULES) - {"bp"}:
        assert torch.equal(updates[rule][0][D - 1], updates["bp"][0][D - 1])
        assert torch.equal(updates[rule][1][D - 1], updates["bp"][1][D - 1])
    # ... and only there: the hidden layers see different feedback.
    assert not torch.allclose(updates["fa"][0][0], updates["bp"][0][0])
    assert not torch.allclose(updates["dfa"][0][0], updates["fa"][0][0])


@pytest.mark.parametrize("rule", RULES)
def test_every_hidden_layer_gets_a_nonzero_update(rule):
    net = _net()
    X, Y = _batch(7)
    (dW, db), delta = _rule_updates(net, X, Y, rule)
    assert delta[0] is None
    for l in range(D):
        assert torch.linalg.vector_norm(dW[l]) > 0
        assert torch.linalg.vector_norm(db[l]) > 0


def test_dfa_sends_the_output_delta_through_D():
    net = _net()
    X, Y = _batch(8)
    Z, L = forward(net, X)
    delta = backward_deltas(net, Z, L, output_error(Y, L[-1]), "dfa")
    fprime = derivatives(net, Z, L)
    for l in range(1, D):
        torch.testing.assert_close(delta[l], (delta[D] @ net.D[l]) * fprime[l])


def test_out_buffers_give_the_same_numbers():
    net = _net()
    X, Y = _batch(9)
    Z, L = forward(net, X)
    E = output_error(Y, L[-1])
    for rule in RULES:
        delta = backward_deltas(net, Z, L, E, rule, target=Y)
        buffers = [None] + [torch.empty_like(x) for x in delta[1:]]
        delta2 = backward_deltas(net, Z, L, E, rule, fprime=derivatives(net, Z, L), out=buffers, target=Y)
        assert all(torch.equal(delta2[l], delta[l]) for l in range(1, D + 1))


def test_sgd_step_moves_W_by_eta_dW_and_keeps_zero_biases():
    for bias in (True, False):
        net = _net(bias=bias)
        X, Y = _batch(10)
        W0 = [w.clone() for w in net.W]
        b0 = [b.clone() for b in net.b]
        (dW, db), _ = _rule_updates(net, X, Y, "fa")
        sgd_step_(net, dW, db, 0.1)
        for l in range(D):
            torch.testing.assert_close(net.W[l], W0[l] + 0.1 * dW[l])
            torch.testing.assert_close(net.b[l], b0[l] + 0.1 * db[l] if bias else torch.zeros_like(b0[l]))


def test_same_seed_same_W_B_b_whatever_the_rule_and_bias():
    a = init_network(SIZES, 0.1, seed=11, bias=True)
    b = init_network(SIZES, 0.1, seed=11, bias=False, activation="relu")
    c = init_network(SIZES, 0.1, generator=torch.Generator().manual_seed(11))
    for x, y, z in zip(a.W + a.B[1:] + a.D[1:], b.W + b.B[1:] + b.D[1:], c.W + c.B[1:] + c.D[1:]):
        assert torch.equal(x, y) and torch.equal(x, z)
    assert all(torch.equal(x, z) for x, z in zip(a.b, c.b))
    assert all(torch.count_nonzero(x) == 0 for x in b.b)


def test_different_seeds_give_different_initial_weights():
    a = init_network(SIZES, 0.1, seed=1)
    b = init_network(SIZES, 0.1, seed=2)
    assert all(not torch.equal(x, y) for x, y in zip(a.W + a.B[1:] + a.b, b.W + b.B[1:] + b.b))


def test_init_std_sets_the_spread():
    net = init_network([300, 200, 100], 0.1, seed=0, dtype=torch.float64)
    values = torch.cat([w.reshape(-1) for w in net.W] + [net.B[1].reshape(-1)])
    assert abs(values.std().item() - 0.1) < 0.002
    assert abs(values.mean().item()) < 0.002


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="activation"):
        init_network(SIZES, 0.1, seed=0, activation="softplus")
    with pytest.raises(ValueError, match="seed"):
        init_network(SIZES, 0.1)
    with pytest.raises(ValueError, match="rule"):
        net = _net()
        Z, L = forward(net, _batch(0)[0])
        backward_deltas(net, Z, L, L[-1], "hebb")
