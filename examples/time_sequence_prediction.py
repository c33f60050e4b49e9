"""pytorch/examples' time_sequence_prediction with fused_rnn's cells, timed against torch.nn's.

The program: sine waves of 1000 steps (period 2*pi*20, random phase; 97 to train on, 3 to
test), a model of two LSTMCells (51 units) and a linear layer called once per step from a
Python loop, float64, trained with LBFGS to predict the next value; after each step it
predicts the 3 test waves and 1000 steps past their end. The same program runs twice from the
same seed and initial weights: once with ``torch.nn.LSTMCell``, once with
``fused_rnn.LSTMCell`` (the only change), and both are timed as a whole.

    python examples/time_sequence_prediction.py --quick --out /tmp/tsp   # 1 LBFGS step of 4, ~10 s
    python examples/time_sequence_prediction.py --threads 2 --out docs/examples/time_sequence_prediction

Writes ``predictions.png`` (the fused model's predictions after the last step: one step ahead
along the test waves, then fed its own outputs) and
``results.json`` (both runs' seconds, their ratio, and their test losses after each step) into
``--out``.
"""
import time

import torch
from _common import parse_args, pyplot, save_png, save_results
from torch import nn

import fused_rnn

HIDDEN, LENGTH, WAVES, PERIOD, TEST = 51, 1000, 100, 20, 3
# full: the original's 15 LBFGS steps of up to 20 evaluations each; quick: one step of 4.
MODES = {"quick": dict(steps=1, max_iter=4, future=100), "full": dict(steps=15, max_iter=20, future=1000)}


def sine_waves(seed):
    """[WAVES, LENGTH] float64 sines with a random phase each (the original's generate_sine_wave.py)."""
    g = torch.Generator().manual_seed(seed)
    shift = torch.randint(-4 * PERIOD, 4 * PERIOD, (WAVES, 1), generator=g)
    return torch.sin((torch.arange(LENGTH) + shift).double() / PERIOD)


class Sequence(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.lstm1, self.lstm2 = cell(1, HIDDEN), cell(HIDDEN, HIDDEN)
        self.linear = nn.Linear(HIDDEN, 1)

    def forward(self, input, future=0):
        outputs = []
        b = input.size(0)
        h1 = c1 = h2 = c2 = torch.zeros(b, HIDDEN, dtype=torch.double)
        for x in input.split(1, dim=1):
            h1, c1 = self.lstm1(x, (h1, c1))
            h2, c2 = self.lstm2(h1, (h2, c2))
            outputs.append(self.linear(h2))
        for _ in range(future):  # predicting the future: the model's output is the next input
            h1, c1 = self.lstm1(outputs[-1], (h1, c1))
            h2, c2 = self.lstm2(h1, (h2, c2))
            outputs.append(self.linear(h2))
        return torch.cat(outputs, dim=1)


def train(cell, data, seed, steps, max_iter, future):
    """The whole program with `cell`: (seconds, test losses after each step, last prediction)."""
    torch.manual_seed(seed)
    model = Sequence(cell).double()
    train_in, train_target = data[TEST:, :-1], data[TEST:, 1:]
    test_in, test_target = data[:TEST, :-1], data[:TEST, 1:]
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.8, max_iter=max_iter)
    losses, start = [], time.perf_counter()
    for _ in range(steps):
        def closure():
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(train_in), train_target)
            loss.backward()
            return loss
        optimizer.step(closure)
        with torch.no_grad():
            pred = model(test_in, future=future)
            losses.append(nn.functional.mse_loss(pred[:, :-future], test_target).item())
    return time.perf_counter() - start, losses, pred


def plot(pred, out_dir, future):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(12, 4))
    n = pred.size(1) - future
    for row, color in zip(pred, ("r", "g", "b")):
        ax.plot(range(n), row[:n], color, linewidth=1.5)
        ax.plot(range(n, n + future), row[n:], color + ":", linewidth=1.5)
    ax.set(title="fused_rnn.LSTMCell: one step ahead along the 3 test waves (solid), then on its own "
                 "predictions (dotted)", xlabel="step")
    return save_png(fig, out_dir, "predictions")


def main():
    args = parse_args(__doc__.splitlines()[0])
    mode = MODES["quick" if args.quick else "full"]
    steps = args.epochs or mode["steps"]
    data = sine_waves(args.seed)
    runs = {}
    for name, cell in (("torch.nn", nn.LSTMCell), ("fused_rnn", fused_rnn.LSTMCell)):
        seconds, losses, pred = train(cell, data, args.seed, steps, mode["max_iter"], mode["future"])
        runs[name] = {"seconds": seconds, "test_losses": losses}
        print(f"{name:9s} {seconds:7.2f} s  test loss after each step: {', '.join(f'{v:.3g}' for v in losses)}")
    ratio = runs["torch.nn"]["seconds"] / runs["fused_rnn"]["seconds"]
    worst = max(abs(a - b) for a, b in zip(runs["torch.nn"]["test_losses"], runs["fused_rnn"]["test_losses"]))
    print(f"speed ratio torch.nn / fused_rnn: {ratio:.2f}; largest test-loss difference {worst:.2g}")
    plot(pred, args.out, mode["future"])
    save_results({"cpu_threads": torch.get_num_threads(), "lbfgs_steps": steps, "runs": runs, "ratio": ratio,
                  "largest_test_loss_difference": worst}, args.out)


if __name__ == "__main__":
    main()
