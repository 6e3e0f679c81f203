# %% [markdown]
# # Summary, deeper: a physicist's view
#
# *Deeper material.* Read `03_checkpoints` and `10_summary` (the card) first; this notebook makes
# two of the card's ideas concrete with a simulation.
#
# ## What you will take away
#
# - a checkpoint is a **state snapshot**, like the saved state of a physics simulation: it must
#   hold the *complete* state (for a stochastic simulation that includes the random number
#   generator), so that a restart continues exactly as if nothing had happened;
# - exporting a model is like **compiling** simulation code into an executable: the result runs
#   without the source, on other platforms, and can be optimised.
#
# This notebook makes both analogies concrete with a small simulation: Langevin dynamics of
# particles in a harmonic trap, a stochastic differential equation integrated with random kicks.

# %%
from course_lib import notebook

device, workdir = notebook.start("summary_b")

# %% [markdown]
# ## The simulation
#
# Each particle obeys $\dot x = v$, $\dot v = -\omega^2 x - \gamma v + \sqrt{2 \gamma k_B T}\,\xi(t)$,
# with white noise $\xi$. One Euler–Maruyama step draws fresh noise from torch's global RNG.

# %%
import math

import torch
from torch import nn


class LangevinStep(nn.Module):
    """One Euler-Maruyama step of a damped, noisy harmonic oscillator."""

    def __init__(self, omega=1.0, gamma=0.1, kT=0.5, dt=0.01):
        super().__init__()
        self.omega, self.gamma, self.dt = omega, gamma, dt
        self.kick = math.sqrt(2 * gamma * kT * dt)

    def forward(self, x, v, noise):
        v = v + self.dt * (-(self.omega**2) * x - self.gamma * v) + self.kick * noise
        x = x + self.dt * v
        return x, v


def simulate(state, n_steps):
    """Advance {'t', 'x', 'v'} by n_steps; return the new state and the mean energy per step."""
    step = LangevinStep()
    x, v, energies = state["x"], state["v"], []
    for _ in range(n_steps):
        x, v = step(x, v, torch.randn_like(v))
        energies.append(0.5 * (x**2 + v**2).mean().item())
    return {"t": state["t"] + n_steps, "x": x, "v": v}, energies


torch.manual_seed(0)
start = {"t": 0, "x": torch.ones(256, device=device), "v": torch.zeros(256, device=device)}
print(f"{start['x'].numel()} particles, starting at x = 1, v = 0")

# %% [markdown]
# ## A snapshot is the complete state
#
# Run 600 steps without stopping. Then run 300 steps, save a snapshot, "crash", restore the snapshot
# and run the remaining 300. A snapshot of positions and velocities alone is *not* the complete
# state: the next random kicks depend on the RNG's state, which `course_lib.rng` captures
# (Python's `random`, NumPy, torch CPU and every CUDA device) as plain tensors.

# %%
from course_lib.rng import capture_rng_state, restore_rng_state
from course_lib.safe_io import safe_load, safe_save

torch.manual_seed(0)
uninterrupted, energy_full = simulate(start, 600)

torch.manual_seed(0)
halfway, energy_first = simulate(start, 300)
safe_save({**halfway, "rng": capture_rng_state()}, workdir / "snapshot.pth")
torch.randn(1000)  # the crash: whatever ran next consumed random numbers

snapshot = safe_load(workdir / "snapshot.pth", map_location=device)
restore_rng_state(snapshot["rng"])
resumed, energy_second = simulate(snapshot, 300)

snapshot = safe_load(workdir / "snapshot.pth", map_location=device)  # the same, without the RNG
no_rng, energy_no_rng = simulate(snapshot, 300)

print(
    "restarted with RNG state, identical to the uninterrupted run:",
    torch.equal(resumed["x"], uninterrupted["x"]),
)
print(
    "restarted without RNG state, identical:                      ",
    torch.equal(no_rng["x"], uninterrupted["x"]),
)
print(
    f"max |x| difference without RNG state: {(no_rng['x'] - uninterrupted['x']).abs().max().item():.3f}"
)

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(range(600), energy_full, lw=3, color="lightgray", label="uninterrupted")
ax.plot(
    range(300, 600),
    energy_second,
    lw=1.2,
    color="tab:blue",
    label="restarted from snapshot (with RNG)",
)
ax.plot(
    range(300, 600),
    energy_no_rng,
    lw=1.2,
    ls="--",
    color="tab:red",
    label="restarted without RNG state",
)
ax.axvline(300, color="black", lw=0.8)
ax.text(305, min(energy_full), "snapshot", fontsize=9)
ax.set_xlabel("step")
ax.set_ylabel("mean energy per particle")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The restarted run lies exactly on the uninterrupted one. Without the RNG state it is still a valid
# sample of the same physics (same statistics), but it is a *different* trajectory: you can no longer
# reproduce or debug the original run. Training with shuffling and dropout is the same (chapter 6.3.3).
#
# ## Export is compilation
#
# `torch.export` turns the step into a self-contained program: a graph of tensor operations with
# its constants baked in, saved to a file that loads and runs without the `LangevinStep` class.
# (Chapters 6.3.6 and 6.3.7 do this for models, with TorchScript, `torch.export` and ONNX.)

# %%
example = (torch.ones(4), torch.zeros(4), torch.randn(4))
program = torch.export.export(LangevinStep().eval(), example)
torch.export.save(program, workdir / "langevin_step.pt2")

compiled_step = torch.export.load(workdir / "langevin_step.pt2").module()
x, v, noise = torch.randn(4), torch.randn(4), torch.randn(4)
same = all(
    torch.equal(a, b)
    for a, b in zip(compiled_step(x, v, noise), LangevinStep()(x, v, noise), strict=True)
)
print("the exported program computes the same step:", same)
print(
    "operations in the graph:",
    sorted({n.target.__name__ for n in program.graph.nodes if n.op == "call_function"}),
)

# %% [markdown]
# ## Conclusion
#
# | in a simulation | in deep learning | where in this course |
# |---|---|---|
# | state snapshot: positions, velocities, time, RNG | checkpoint: weights, optimizer, scheduler, epoch, RNG | 6.3.3, 6.3.8 |
# | restart from any snapshot | resume training exactly | 6.3.3 |
# | write the snapshot so a crash cannot corrupt it | atomic, durable saves | 6.3.9 |
# | compile the code into an executable | export: `torch.export`, ONNX | 6.3.6, 6.3.7 |
#
# ## Exercises
#
# The chapter's exercises are notebooks in `exercises/`, solved in `solutions/`: a complete
# checkpoint management system (`ex1`), exporting a trained model to ONNX and verifying it
# (`ex2`), loading weights partially from a pretrained model (`ex3`), and three from this
# course's additions (`ex4` weights-only checkpoints, `ex5` wrapper prefixes, `ex6` an atomic
# save). Check one from a terminal in the course folder:
# `./course check exercises/ex1_checkpoint_manager.ipynb` runs it in a fresh kernel and reports
# its self-check (and your teacher's hidden checks, where they are installed).
#
# One more for this notebook: snapshot the simulation at step 300 *without* `capture_rng_state`,
# but so that the restart is still exact. (Hint: draw the noise from a `torch.Generator` of
# your own and store its state.)
#
# <details><summary>Solution (run it after the cells above: the assert checks it)</summary>
#
# ```python
# import torch
# from course_lib.safe_io import safe_load, safe_save
#
# def simulate_with(generator, state, n_steps):
#     step, x, v = LangevinStep(), state["x"], state["v"]
#     for _ in range(n_steps):
#         noise = torch.randn(v.shape, generator=generator).to(v.device)
#         x, v = step(x, v, noise)
#     return {"t": state["t"] + n_steps, "x": x, "v": v}
#
# generator = torch.Generator().manual_seed(0)
# straight = simulate_with(generator, start, 600)
#
# generator = torch.Generator().manual_seed(0)
# half = simulate_with(generator, start, 300)
# safe_save({**half, "noise_rng": generator.get_state()}, workdir / "own_rng.pth")
#
# snap = safe_load(workdir / "own_rng.pth", map_location=device)
# restarted_rng = torch.Generator()
# restarted_rng.set_state(snap["noise_rng"].cpu())  # map_location moved it; a Generator takes CPU bytes
# restarted = simulate_with(restarted_rng, snap, 300)
# assert torch.equal(restarted["x"], straight["x"]), "the restart is not exact"
# print("exact restart with the generator's own state:", torch.equal(restarted["x"], straight["x"]))
# ```
#
# </details>
#
# ## Next
#
# Section 6.4 of the source course trains on several GPUs. Chapter 6.3.5 (`05_data_parallel.ipynb`)
# already showed how such runs save and load their checkpoints.

# %% [markdown]
# ## Further reading
#
# - PyTorch docs: [Reproducibility](https://pytorch.org/docs/stable/notes/randomness.html) and
#   [`torch.Generator`](https://pytorch.org/docs/stable/generated/torch.Generator.html)
#   (`get_state`, `set_state`)
# - PyTorch docs: [`torch.export`](https://pytorch.org/docs/stable/export.html) (the exported
#   program, its graph and `torch.export.save`/`load`)
# - PyTorch tutorial: [Saving and loading models](https://pytorch.org/tutorials/beginner/saving_loading_models.html)
