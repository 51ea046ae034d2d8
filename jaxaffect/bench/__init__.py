"""`jaxaffect bench MODEL`: compile time, train-step speed and FLOP rates of the real train step.

  jaxaffect bench former_dfer [--json] [--config former_dfer:dfew] [--batch 4] [--steps 5]
                              [--warmup 1] [--reference PATH_TO_OFFICIAL_CHECKOUT]
                              [--peak-size 2048] [--init host|model] [--config.x=y ...]
  jaxaffect bench former_dfer --table3 [--xla] [--json]

What is measured (one process, the same batch shape for both frameworks):
  * the train step that `jaxaffect train` runs (`train.loop.build`: task loss, optimizer, mesh
    shardings), on random uint8 clips of the configured shape (`pipeline.InMemoryVideos`); the
    input pipeline is not timed (one batch is made once and reused), nor is initialisation
    (`--init host` fills the state on the host, `--init model` compiles the model's init_fn);
  * compile: `lower` and `compile` seconds of the AOT path, and the first execution;
  * steady state: median seconds per step over `--steps` steps after `--warmup` steps, each
    followed by `block_until_ready`; clips/s = batch / median;
  * FLOPs: XLA cost analysis of the compiled step (per device × devices), achieved FLOP/s, and the
    ratio to a measured f32 matmul peak of this machine (a jitted `--peak-size`² matmul, median of
    several runs); the model's forward matmul/conv GMACs per clip (torch convention) and params;
  * device memory of the compiled step from `compiled.memory_analysis()` (arguments + outputs −
    donated + temporaries, per device) when the backend reports it;
  * `--reference PATH`: the official PyTorch model imported from that checkout, trained with the
    same loss and optimizer family on the same batch (torch threads = CPUs JAX may use), its
    median step and clips/s, and jax/torch throughput; JAX and torch steps alternate, so that
    load changes on a shared machine affect both alike.
`--table3` prints the paper-vs-ours compute table of the model instead (Former-DFER's Table 3).
A readable table goes to stdout; with `--json` it goes to stderr and stdout gets one JSON line.

Timings on shared machines vary with the load of other processes: compare ratios measured in one
run (jax/torch, achieved/peak) rather than absolute numbers across runs.

A model is benchmarked when its model module's `bench_model()` returns a `BenchModel` (default config,
reference loader, optional paper table, random sources and the batch key of the model input, or a
`cost` function for models fed a dict, e.g. ABAW's feature streams). `inference=True` also times
the eval step (forward + metrics, `jaxaffect eval`) and the reference's no-grad eval forward, run
interleaved with the train steps (`bench abaw_tcn` reports windows/s for both).
"""
from jaxaffect.bench.core import (BenchModel, JaxInfer, JaxStep, Reference, TorchInfer,  # noqa: F401
                                  TorchStep, cpu_threads, host_state, load_config, main,
                                  matmul_peak, random_sources, time_steps, torch_matmul_peak)
from jaxaffect.bench.abaw_tcn import ABAW_TCN  # noqa: F401,E402
from jaxaffect.bench.est import EST  # noqa: F401,E402
from jaxaffect.bench.former_dfer import FORMER_DFER  # noqa: F401,E402
from jaxaffect.bench.mae import MAE_BENCH  # noqa: F401,E402
