"""Derives the coefficients of csrc/cpu/vec_math.h's tanh_rational: tanh(x) ~ x P(x^2) / Q(x^2)
with P(0) = Q(0) = 1 and P, Q of degree 4 in t = x^2, fitted on [0, 9] to the smallest
largest relative error. Linear least squares of (x P(t) - tanh(x) Q(t)) / (tanh(x) Q_prev(t))
(Loeb's linearization), reweighted by each point's error (Lawson's method) until the errors
level out. Prints the coefficients, the error in exact (float64) arithmetic, and after float32
Horner evaluation. Run: python docs/fit_tanh.py (numpy only)."""
import numpy as np

DEGREE, LIMIT, ROUNDS = 4, 9.0, 60


def fit():
    x = np.concatenate([np.linspace(1e-4, LIMIT, 20000), np.geomspace(1e-6, 1e-1, 2000)])
    y, t = np.tanh(x), x * x
    powers = np.stack([t ** k for k in range(1, DEGREE + 1)], 1)
    weights, q_prev = np.ones_like(x), np.ones_like(x)
    for _ in range(ROUNDS):
        a = np.concatenate([x[:, None] * powers, -y[:, None] * powers], 1)
        scale = np.sqrt(weights) / (y * q_prev)
        c, *_ = np.linalg.lstsq(a * scale[:, None], (y - x) * scale, rcond=None)
        p, q = np.r_[1.0, c[:DEGREE]], np.r_[1.0, c[DEGREE:]]
        q_prev = np.polyval(q[::-1], t)
        error = np.abs(x * np.polyval(p[::-1], t) / q_prev - y) / y
        weights = weights * error
        weights /= weights.sum()
    return p, q, error.max()


def float32_error(p, q):
    x = np.linspace(1e-6, LIMIT, 2_000_000, dtype=np.float32)
    t = x * x
    pf, qf = np.zeros_like(x), np.zeros_like(x)
    for k in p[::-1]:
        pf = (pf * t + np.float32(k)).astype(np.float32)
    for k in q[::-1]:
        qf = (qf * t + np.float32(k)).astype(np.float32)
    exact = np.tanh(x.astype(np.float64))
    error = np.abs((x * pf / qf).astype(np.float32) - exact) / exact
    return error.max(), error.mean()


if __name__ == "__main__":
    p, q, exact_error = fit()
    print("P (t^0 .. t^4):", ", ".join(f"{v:.8e}" for v in p))
    print("Q (t^0 .. t^4):", ", ".join(f"{v:.8e}" for v in q))
    print(f"largest relative error, float64 evaluation: {exact_error:.2e}")
    print("float32 Horner without FMA (largest, mean): {:.2e}, {:.2e}".format(*float32_error(p, q)))
