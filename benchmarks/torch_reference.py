"""JAX vs PyTorch on the same NoProp-DT block and training step, in one process.

Question: is the JAX implementation at least as fast as a straightforward PyTorch one on this
machine? The PyTorch side re-implements noprop_eqx's `PaperDTBlock` (the paper's DT block with
LayerNorm in place of BatchNorm, unpadded convolutions, dropout 0.2) and the Eq. 8 training
step (T blocks, each fed its own z_{t-1} ~ q(z_{t-1} | y); CE + KL + weighted denoising; AdamW
lr 1e-3, weight decay 1e-3), with the same shapes, batch and cosine ᾱ grid (taken from
noprop_eqx). Both use the same number of CPU threads (`torch.set_num_threads` = the cores this
process may use, which is also what XLA:CPU uses). Rows:

- block: one block's forward + backward of a sum-of-squares loss on a batch;
- DT step: the full training step (forward, backward, AdamW update).

PyTorch runs eager and under `torch.compile` (`--torch-compile none default ...`: the modes to
time); the JAX rows are compared with the fastest PyTorch form of the same row.

PyTorch is an optional extra (`pip install noprop-eqx[torch]`); without it the script says so
and exits 0.

    python benchmarks/torch_reference.py
    python benchmarks/torch_reference.py --networks mnist cifar --batch-sizes 128 1024
    python benchmarks/torch_reference.py --quick
"""

import functools
import os
import sys
import time

import _common

try:
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - exercised when torch is absent
    torch = None

NETWORKS = {
    "mnist": ((1, 28, 28), 10),
    "cifar": ((3, 32, 32), 10),
    "small": ((1, 16, 16), 10),  # --quick only
}

COLUMNS = [
    ("what", "what"),
    ("framework", "framework"),
    ("network", "network"),
    ("batch", "batch"),
    ("images_per_s", "images/s"),
    ("ms", "ms (median)"),
    ("ms_spread", "ms min–max"),
    ("jax_over_torch_throughput", "JAX ÷ fastest PyTorch images/s"),
    ("first_call_s", "first call s"),
]


if torch is not None:

    class TorchDTBlock(nn.Module):
        """PaperDTBlock in PyTorch (LayerNorm for BatchNorm, as noprop_eqx does)."""

        def __init__(self, num_classes: int, embed_dim: int, image_shape, dropout: float = 0.2):
            super().__init__()
            c, h, w = image_shape

            def size(s: int) -> int:
                return ((s - 2) // 2 - 4) // 2

            self.conv = nn.Sequential(
                nn.Conv2d(c, 32, 3),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Dropout(dropout),
                nn.Conv2d(32, 64, 3),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Conv2d(64, 128, 3),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Dropout(dropout),
                nn.Flatten(),
            )
            self.image_fc = nn.Linear(128 * size(h) * size(w), 256)
            self.label_fc = nn.ModuleList(
                [nn.Linear(embed_dim, 256), nn.Linear(256, 256), nn.Linear(256, 256)]
            )
            self.head = nn.ModuleList(
                [nn.Linear(512, 256), nn.Linear(256, 128), nn.Linear(128, num_classes)]
            )
            self.norms = nn.ModuleList(nn.LayerNorm(s) for s in (256, 256, 256, 256, 256, 128))

        def forward(self, z, x):
            n = self.norms
            image = n[0](self.image_fc(self.conv(x)))
            h = torch.relu(n[1](self.label_fc[0](z)))
            label = n[3](self.label_fc[2](torch.relu(n[2](self.label_fc[1](h))))) + h
            out = torch.cat([image, label], dim=1)
            out = torch.relu(n[4](self.head[0](out)))
            out = torch.relu(n[5](self.head[1](out)))
            return self.head[2](out)

    class TorchNoPropDT(nn.Module):
        """T blocks, a one-hot embedding and a linear readout; `loss` is Eq. 8."""

        def __init__(self, num_classes, image_shape, num_blocks, alpha_bar, eta=0.1):
            super().__init__()
            self.blocks = nn.ModuleList(
                TorchDTBlock(num_classes, num_classes, image_shape) for _ in range(num_blocks)
            )
            self.readout = nn.Linear(num_classes, num_classes)
            self.register_buffer("w_embed", torch.eye(num_classes))
            self.register_buffer("alpha_bar", torch.as_tensor(alpha_bar, dtype=torch.float32))
            self.num_blocks, self.eta = num_blocks, eta

        def loss(self, x, y):
            u_y = self.w_embed[y]
            ab = self.alpha_bar
            snr = ab / (1 - ab)
            d = u_y.shape[1]
            denoise = []
            for t, block in enumerate(self.blocks):
                z = ab[t].sqrt() * u_y + (1 - ab[t]).sqrt() * torch.randn_like(u_y)
                u_hat = torch.softmax(block(z, x), dim=1) @ self.w_embed
                weight = snr[t + 1] - snr[t]
                denoise.append((weight * ((u_hat - u_y) ** 2).sum(1)).mean())
            z_last = ab[-1].sqrt() * u_y + (1 - ab[-1]).sqrt() * torch.randn_like(u_y)
            ce = nn.functional.cross_entropy(self.readout(z_last), y)
            a0 = ab[0]
            kl = 0.5 * (a0 * (u_y**2).sum(1) + d * (1 - a0) - d - d * torch.log1p(-a0)).mean()
            return ce + kl + 0.5 * self.num_blocks * self.eta * torch.stack(denoise).mean()


def time_torch(fn, repeats: int, warmup: int, device: str = "cpu") -> dict:
    """Median and spread of `fn()`'s wall time; on CUDA each call is waited for."""

    def call():
        fn()
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return _common.summarize(times)


def torch_rows(network, batch_size, args, alpha_bar, compile_mode: str = "none") -> list[dict]:
    """The block and DT-step rows in eager PyTorch (`compile_mode` "none") or under
    `torch.compile(mode=compile_mode)`: the block's module and the step's loss are compiled
    (AOTAutograd compiles their backward too), and so is AdamW's `step`. The first timed warmup
    call holds the compilation; it is reported as `first_call_s`."""
    shape, classes = NETWORKS[network]
    device = args.torch_device
    torch.manual_seed(args.seed)
    x = torch.randn(batch_size, *shape, device=device)
    y = torch.randint(0, classes, (batch_size,), device=device)
    compiled = compile_mode != "none"

    def maybe_compile(fn):
        return torch.compile(fn, mode=compile_mode) if compiled else fn

    rows = []
    block = TorchDTBlock(classes, classes, shape).to(device).train()
    forward = maybe_compile(block)
    z = torch.randn(batch_size, classes, device=device)

    def block_step():
        block.zero_grad(set_to_none=True)
        (forward(z, x) ** 2).sum().backward()

    rows.append(("block", *_first_and_timed(block_step, args, device)))

    model = TorchNoPropDT(classes, shape, args.num_blocks, alpha_bar).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-3)
    loss_fn = maybe_compile(model.loss)
    update = maybe_compile(optimizer.step)
    before = [p.detach().clone() for p in model.parameters()]

    def dt_step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(x, y)
        loss.backward()
        update()
        return loss

    first_s, loss = _timed_once(dt_step, device)
    if not torch.isfinite(loss):
        raise RuntimeError(f"torch DT loss is not finite: {loss}")
    if all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)):
        raise RuntimeError("torch DT step left the parameters unchanged")
    rows.append(("DT step", first_s, time_torch(dt_step, args.repeats, args.warmup, device)))
    label = f"PyTorch {torch.__version__} ({device}"
    label += f", torch.compile mode={compile_mode})" if compiled else ", eager)"
    return [
        {
            "what": what,
            "framework": label,
            "torch_compile": compile_mode,
            "network": network,
            "batch": batch_size,
            "images_per_s": batch_size / stats["median"],
            "ms": stats["median"] * 1e3,
            "ms_spread": f"{stats['min'] * 1e3:.0f}–{stats['max'] * 1e3:.0f}",
            "seconds": stats,
            "first_call_s": first_s,
        }
        for what, first_s, stats in rows
    ]


def _timed_once(fn, device):
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def _first_and_timed(fn, args, device):
    """The first call's seconds (compilation included), then the timed calls."""
    first_s, _ = _timed_once(fn, device)
    return first_s, time_torch(fn, args.repeats, args.warmup, device)


def jax_rows(network, batch_size, args, matmul_flops_per_s) -> list[dict]:
    import equinox as eqx
    import jax
    import jax.random as jr
    import train_throughput

    import noprop_eqx as npx
    from noprop_eqx._xla import jit_options
    from noprop_eqx.models import PaperDTBlock

    shape, classes = NETWORKS[network]
    train_throughput.NETWORKS.setdefault(network, ("paper", shape, classes))
    key = jr.key(args.seed)
    block = PaperDTBlock(classes, classes, shape, key=key)
    x = jr.normal(key, (batch_size, *shape))
    z = jr.normal(jr.fold_in(key, 1), (batch_size, classes))

    # The library's per-backend compiler options, as `make_step` uses them.
    @functools.partial(eqx.filter_jit, **jit_options("auto"))
    def block_grad(block, z, x, key):
        def loss(block):
            keys = jr.split(key, batch_size)
            out = jax.vmap(lambda zi, xi, ki: block(zi, xi, key=ki))(z, x, keys)
            return (out**2).sum()

        return eqx.filter_grad(loss)(block)

    keys = list(jr.split(jr.fold_in(key, 2), args.warmup + args.repeats + 1))
    block_grad(block, z, x, keys[0])
    with _common.no_recompile(f"JAX block {network}/{batch_size}"):
        times = _common.time_calls(
            lambda i: block_grad(block, z, x, keys[i]), args.repeats, args.warmup
        )
    stats = _common.summarize(times)
    # The JAX DT step the training CLI uses: per-block gradients, unrolled.
    step = train_throughput.run_row("DT-auto", network, batch_size, args, matmul_flops_per_s)
    jax_version = f"JAX {jax.__version__}"
    return [
        {
            "what": "block",
            "framework": jax_version,
            "network": network,
            "batch": batch_size,
            "images_per_s": batch_size / stats["median"],
            "ms": stats["median"] * 1e3,
            "ms_spread": f"{stats['min'] * 1e3:.0f}–{stats['max'] * 1e3:.0f}",
            "seconds": stats,
        },
        {
            "what": "DT step",
            "framework": f"{jax_version} (make_dt_step(): {npx.default_dt_memory()} step, "
            f"{npx.default_dt_strategy()} strategy)",
            "network": network,
            "batch": batch_size,
            "images_per_s": step["images_per_s"],
            "ms": step["ms_per_step"],
            "ms_spread": step["ms_spread"],
            "seconds": step["seconds"],
            "compile_s": step["compile_s"],
        },
    ]


def main(argv=None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=["mnist"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128])
    parser.add_argument("--num-blocks", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="default: usable cores")
    parser.add_argument(
        "--torch-device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: cuda when JAX runs on a GPU and PyTorch sees one, else cpu",
    )
    parser.add_argument(
        "--torch-compile",
        nargs="+",
        choices=[
            "none",
            "default",
            "reduce-overhead",
            "max-autotune",
            "max-autotune-no-cudagraphs",
        ],
        default=["none", "default"],
        help="PyTorch rows to time: eager ('none') and/or torch.compile modes (default: none "
        "default)",
    )
    args = parser.parse_args(argv)
    _common.apply_jax_options(args)
    if torch is None:
        print("torch_reference: PyTorch is not installed (pip install 'noprop-eqx[torch]'); skip")
        return {"skipped": "torch not installed"}
    if args.torch_device == "auto":
        import jax

        on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
        args.torch_device = "cuda" if on_gpu else "cpu"
    if args.quick:
        args.networks, args.batch_sizes, args.num_blocks = ["small"], [8], 1
        args.repeats = args.repeats or 2
    args.repeats = args.repeats or 5
    args.strategy = None  # the DT row uses the model's default strategy
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)

    import noprop_eqx as npx

    matmul = _common.matmul_flops_per_second(256 if args.quick else 2048, 3)
    rows = []
    for network in args.networks:
        for batch_size in args.batch_sizes:
            alpha_bar = npx.noise_schedules.alpha_bar_grid(
                npx.noise_schedules.CosineNoiseSchedule(), args.num_blocks
            )
            grid = [float(a) for a in alpha_bar]
            t_rows = [
                row
                for mode in args.torch_compile
                for row in torch_rows(network, batch_size, args, grid, mode)
            ]
            j_rows = jax_rows(network, batch_size, args, matmul["flops_per_second"])
            for j in j_rows:  # against the fastest PyTorch form of the same row
                fastest = max(
                    (t for t in t_rows if t["what"] == j["what"]), key=lambda t: t["images_per_s"]
                )
                j["jax_over_torch_throughput"] = j["images_per_s"] / fastest["images_per_s"]
                j["fastest_torch"] = fastest["framework"]
            rows += t_rows + j_rows
    extra = {
        "threads": threads,
        "torch_version": torch.__version__,
        "torch_device": args.torch_device,
        "matmul": matmul,
    }
    _common.write_results("torch_reference", args, rows, COLUMNS, extra=extra)
    return {"rows": rows}


if __name__ == "__main__":
    main()
    sys.exit(0)
