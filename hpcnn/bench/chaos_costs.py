"""The measured inputs of the CHAOS time model (perfmodel.chaos), each from a run of its own, apart from the
benchmark's timed runs that the model predicts: the per-sample cost of one worker, the GIL share of a
layer-by-layer step, what a second worker costs per sample (shared weights, a busy neighbour core), and
the start of a worker thread."""
import statistics
import threading
import time

__all__ = ["CALIBRATION_SEED", "calibrate", "layers_gil_fraction", "second_worker_slowdown", "set_contention",
           "thread_start_seconds"]

# weights and sample orders of the calibration runs: no timed run of the benchmark uses them (those use 0, 1, ...)
CALIBRATION_SEED = 9973


def calibrate(options, train, val, args, *, cores, epochs=2):
    """perfmodel.chaos.ChaosCosts for LeNet with `options` on `train`, measured in calibration runs of their own,
    with `sources` saying where each input came from; and the step the engine runs ("fused" or "layers").

    c, g, s: a one-worker run of `epochs` epochs (after a warm-up fit that compiles), seed CALIBRATION_SEED,
    the benchmark's batch, chunk and step (the layer-by-layer step is GIL-bound and its g comes from
    layers_gil_fraction); t_thread: thread_start_seconds. kappa (fused step) is set by set_contention
    from second_worker_slowdown measurements, which the benchmark takes between its repeats.
    """
    from .. import chaos, models, nn
    from perfmodel import chaos as chaos_model

    def engine():
        return chaos.ChaosEngine(models.build("lenet", seed=CALIBRATION_SEED, **options), nn.CrossEntropyLoss(),
                                 threads=1, blas_threads=1, batch=args.batch, lr=args.lr, seed=CALIBRATION_SEED,
                                 step=args.step, chunk=args.chunk)

    warm = engine()
    warm.fit((train[0][:64], train[1][:64]), epochs=1)
    one = engine()
    history = one.fit(train, val, epochs=epochs)
    step = one.step
    t_thread = thread_start_seconds()
    what = f"a one-worker calibration run ({epochs} epochs, seed {CALIBRATION_SEED}, median epoch)"
    sources = {"sample_seconds": f"busy time per sample of {what}",
               "serial_seconds": f"epoch time outside the workers in {what}",
               "thread_seconds": "start + join of an idle worker thread (the least of 20)"}
    costs = chaos_model.costs_from_metrics(history, cores=cores, batch=args.batch, thread_seconds=t_thread)
    if step == "layers":
        fraction = layers_gil_fraction(models.build("lenet", seed=CALIBRATION_SEED, **options), nn.CrossEntropyLoss(),
                                       train, args.batch)
        costs.gil_seconds = fraction * costs.sample_seconds
        sources["gil_seconds"] = (f"{100 * fraction:.0f}% of c: the share outside numba kernels in a one-worker "
                                  "layer-by-layer run with timed kernels")
    else:
        sources["gil_seconds"] = f"busy time outside the nogil step per sample of {what}"
    if step != "fused":
        sources["contention"] = "0: not measured for the layer-by-layer step (GIL-bound)"
    costs.sources = sources
    return costs, step


def set_contention(costs, parts, epochs=1):
    """kappa of `costs` from second_worker_slowdown results [(corun, sharing)]: the medians of each part."""
    corun = statistics.median(p[0] for p in parts)
    sharing = statistics.median(p[1] for p in parts)
    costs.contention = (1.0 + corun) * (1.0 + sharing) - 1.0
    costs.sources["contention"] = (
        f"(1 + {corun:.3f}) (1 + {sharing:.3f}) - 1: two independent one-worker engines (own weights) at once "
        f"against one alone, then one two-worker engine (shared weights) against those; medians of "
        f"{len(parts)} calibration runs of {epochs} epoch(s), seed {CALIBRATION_SEED}, one before each repeat")


def thread_start_seconds(threads=20):
    """Seconds to start and join one worker thread that runs the workers' set-up and returns: the least of
    `threads` tries (a try that waited for a core busy with another process measures the load, not the start)."""
    from ..chaos.threads import worker_thread_setup
    times = []
    for _ in range(threads):
        t = time.perf_counter()
        th = threading.Thread(target=worker_thread_setup)
        th.start()
        th.join()
        times.append(time.perf_counter() - t)
    return min(times)


def layers_gil_fraction(model, loss, train, batch, samples=200):
    """The share of a layer-by-layer step's time spent outside numba kernels, i.e. holding the GIL.

    Every numba dispatcher that is a module global of hpcnn.kernels.cpu.* is wrapped with a timer for
    the measurement (the kernel wrappers look them up at call time), then restored. BLAS calls from
    numpy (Linear) also release the GIL but count here as held: an upper bound.
    """
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    from .. import chaos
    from ..kernels import cpu
    inside = [0.0]
    patched = []

    def timed(fn):
        def call(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                inside[0] += time.perf_counter() - t
        return call

    for info in pkgutil.iter_modules(cpu.__path__):
        module = importlib.import_module(f"{cpu.__name__}.{info.name}")
        for key, value in list(vars(module).items()):
            if isinstance(value, CPUDispatcher):
                patched.append((module, key, value))
                setattr(module, key, timed(value))
    x, y = train[0][:samples], train[1][:samples]
    try:
        engine = chaos.ChaosEngine(model, loss, threads=1, batch=batch, step="layers")
        engine.fit((x, y), epochs=1)           # warm-up: compile, caches
        inside[0] = 0.0
        metrics = engine.fit((x, y), epochs=1)[-1]
    finally:
        for module, key, value in patched:
            setattr(module, key, value)
    return min(1.0, max(0.0, 1.0 - inside[0] / metrics["busy_seconds"]))


def second_worker_slowdown(options, train, args, epochs=2):
    """(corun, sharing): how much slower a fused worker's time per sample gets when a second worker runs,
    from short calibration runs of their own (seed CALIBRATION_SEED, `epochs` epochs each, after a warm-up):

    corun    two independent one-worker engines (each its own weights) on two threads at once, against
             one alone: the machine's part (shared caches, memory bandwidth, SMT siblings, the host)
    sharing  one engine with two workers on one shared copy of the weights, against the two independent
             engines: the part that sharing the weights costs (cache lines that one worker's updates
             invalidate in the other's core)

    kappa for perfmodel.chaos is (1 + corun) * (1 + sharing) - 1.
    """
    from .. import chaos, models, nn

    def engine(threads):
        model = models.build("lenet", seed=CALIBRATION_SEED, **options)
        return chaos.ChaosEngine(model, nn.CrossEntropyLoss(), threads=threads, blas_threads=1, batch=args.batch,
                                 lr=args.lr, seed=CALIBRATION_SEED, step="fused", chunk=args.chunk)

    def per_sample(history):
        # busy time of every worker over the samples they did: one worker's time per sample
        return statistics.median(m["busy_seconds"] / m["samples"] for m in history)

    solo = engine(1)
    solo.fit(train, epochs=1)                      # warm-up: compile, caches
    alone = per_sample(solo.fit(train, epochs=epochs))
    engines = [engine(1) for _ in range(2)]
    for e in engines:
        e.fit(train, epochs=1)
    results = [None, None]

    def work(i):
        results[i] = per_sample(engines[i].fit(train, epochs=epochs))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if None in results:
        raise RuntimeError("second_worker_slowdown: a co-running engine failed")
    corun = statistics.median(results)
    pair = engine(2)
    pair.fit(train, epochs=1)
    shared = per_sample(pair.fit(train, epochs=epochs))
    return max(0.0, corun / alone - 1.0), max(0.0, shared / corun - 1.0)
