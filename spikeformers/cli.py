"""``spikeformers <command>``: the one entry point users type (also ``python -m spikeformers``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import __version__
from .engine.config import TrainConfig
from .errors import ConfigError, SpikeformersError


class _Main(click.Group):
    """Turns our own errors (:class:`~spikeformers.errors.SpikeformersError`) into one clear line;
    any other exception is a bug and keeps its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SpikeformersError as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from None


def _d(name: str):
    """The training option ``name``'s default, from :class:`~spikeformers.engine.config.TrainConfig`."""
    return TrainConfig.default(name)


def _help(name: str) -> str:
    from .engine.config import flat_fields
    return flat_fields()[name][2].get("help", "")


def _threads(threads: int | None) -> None:
    """Set torch's CPU threads (when given) and keep freed memory for the long commands."""
    import torch

    from .accel import keep_freed_memory
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()   # big tensors through malloc; SPIKEFORMERS_MALLOC=0 opts out


def _json_object(text: str | None, flag: str) -> dict:
    """The JSON object ``text`` given to ``flag`` ({} when absent); a clear error for anything else."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"{text!r} is not valid JSON ({e.msg} at character {e.pos}); expected an "
                                 'object such as \'{"embed_dim": 128}\'', param_hint=flag) from None
    if not isinstance(value, dict):
        raise click.BadParameter(f"expected a JSON object of keyword arguments, got {text!r}", param_hint=flag)
    return value


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spikeformers")
def main():
    """spikeformers: spiking vision transformers - build, train, evaluate, measure."""


DATASETS = ["fashion-mnist", "cifar10", "cifar100", "imagefolder", "dvs128-gesture", "cifar10-dvs"]


def _parse_sets(items) -> dict:
    """``key=value`` pairs; values are read as YAML (numbers, true/false, lists, null)."""
    import yaml
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip().replace("-", "_")] = yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from None
    return out


def load_config_file(path) -> dict:
    """A YAML mapping of training options, nested by section or flat (see configs/); a syntax error
    is reported with its file, line and column."""
    import yaml
    try:
        with open(path) as f:
            d = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem}); expected a mapping of training options "
                          "such as 'optim: {lr: 0.001}'") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a YAML mapping of training options, got {type(d).__name__}")
    return d


def _flatten(d: dict) -> dict:
    """Nested recipe sections as flat option names (so that command-line options override them)."""
    from .engine.config import SECTIONS, flat_fields
    by_field = {(sec, name): flat for flat, (sec, name, _) in flat_fields().items()}
    out = {}
    for k, v in d.items():
        if k in SECTIONS and isinstance(v, dict):
            for name, value in v.items():
                if (k, name) not in by_field:
                    raise ConfigError(f"unknown option {name!r} in section {k!r} of the recipe")
                out[by_field[(k, name)]] = value
        else:
            out[k] = v
    return out


@main.command(context_settings={"show_default": True})
@click.option("--config", "config_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="YAML recipe (configs/*.yaml); explicit options and --set override it")
@click.option("--set", "set_items", multiple=True, metavar="KEY=VALUE",
              help="override any training option, e.g. --set lr=1e-3 --set randaugment=null (repeatable)")
@click.option("--optimizer", default=_d("optimizer"), type=click.Choice(["adamw", "lamb", "sgd", "adam"]))
@click.option("--precision", default=_d("precision"), type=click.Choice(["auto", "fp32", "bf16"]), help=_help("precision"))
@click.option("--compile", "compile", is_flag=True, default=None, help=_help("compile"))
@click.option("--fast-layers/--no-fast-layers", default=None, help=_help("fast_layers") + " [default: on]")
@click.option("--accum-steps", default=_d("accum_steps"), type=click.IntRange(min=1), help=_help("accum_steps"))
@click.option("--tet", is_flag=True, default=_d("tet"), help=_help("tet"))
@click.option("--sync-bn", is_flag=True, default=_d("sync_bn"), help=_help("sync_bn"))
@click.option("--workers", default=_d("workers"), type=click.IntRange(min=0), help=_help("workers"))
@click.option("--model", default=_d("model"), help=_help("model"))
@click.option("--data", default=_d("data"), type=click.Choice(DATASETS), help=_help("data"))
@click.option("--data-dir", default=_d("data_dir"), help=_help("data_dir"))
@click.option("--epochs", default=_d("epochs"), type=click.IntRange(min=1))
@click.option("--batch-size", default=_d("batch_size"), type=click.IntRange(min=1), help=_help("batch_size"))
@click.option("--lr", default=_d("lr"), type=float, help=_help("lr"))
@click.option("--weight-decay", default=_d("weight_decay"), type=float, help=_help("weight_decay"))
@click.option("--warmup-epochs", default=_d("warmup_epochs"), type=float, help=_help("warmup_epochs"))
@click.option("--label-smoothing", default=_d("label_smoothing"), type=float, help=_help("label_smoothing"))
@click.option("--T", "T", default=_d("T"), type=click.IntRange(min=1), help=_help("T"))
@click.option("--seed", default=_d("seed"), type=int, help=_help("seed"))
@click.option("--ema", default=_d("ema"), type=float, help=_help("ema"))
@click.option("--out", default=_d("out"), help="folder for checkpoints and logs [default: runs/MODEL]")
@click.option("--resume", is_flag=True, default=_d("resume"), help=_help("resume"))
@click.option("--init-from", default=_d("init_from"), type=click.Path(exists=True, dir_okay=False), help=_help("init_from"))
@click.option("--max-steps", default=_d("max_steps"), type=click.IntRange(min=1), help=_help("max_steps"))
@click.option("--threads", default=None, type=click.IntRange(min=1), help="torch CPU threads (default: all cores)")
@click.option("--model-kwargs", default=None, help='JSON of extra model kwargs, e.g. \'{"embed_dim": 256}\'')
@click.option("--log", default=_d("log"), type=click.Choice(["jsonl", "tensorboard"]), help=_help("log"))
def train(config_file, set_items, threads, **opts):
    """Train a model (default: A²OS²A on Fashion-MNIST) and write checkpoints and a metrics log.

    Options come from, in increasing priority: the defaults, --config FILE, options given on the
    command line, --set KEY=VALUE. Under `torchrun --nproc_per_node N -m spikeformers train ...`
    it trains with DistributedDataParallel."""
    from click.core import ParameterSource

    from .engine.trainer import fit
    _threads(threads)
    ctx = click.get_current_context()
    d = {k: v for k, v in opts.items() if v is not None}
    if config_file:
        d = {**d, **_flatten(load_config_file(config_file))}
    for k, v in opts.items():
        if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE:
            d[k] = v
    d.update(_parse_sets(set_items))
    if isinstance(d.get("model_kwargs"), str):
        d["model_kwargs"] = _json_object(d["model_kwargs"], "--model-kwargs")
    cfg = TrainConfig.from_dict(d)
    if not cfg.model.kwargs:
        cfg = cfg.replace(model_kwargs={})
    cfg = cfg.replace(out=cfg.out)   # runs/MODEL unless given
    m = fit(cfg)
    if not m:  # a non-zero rank under torchrun
        return
    raw = f" (EMA weights; the trained weights' best {m['best_test_acc_raw']:.2f} %)" if "best_test_acc_raw" in m else ""
    earlier = m.get("earlier_processes_s", 0.0)
    # decided by what the state file says earlier processes spent, not by comparing two clocks read at different
    # moments (elapsed_s stops at the last epoch's end, wall_s after the final checkpoints: a fast run raced)
    resumed = f" ({(earlier + m['wall_s']) / 60:.1f} min over all processes of the run)" if earlier > 0 else ""
    click.echo(f"done: best test accuracy {m['best_test_acc']:.2f} %{raw} in {m['wall_s'] / 60:.1f} min{resumed}; "
               f"checkpoints in {cfg.out}/ (best.safetensors, last.safetensors), log {cfg.out}/metrics.jsonl"
               + (f", curves {cfg.out}/curves.png" if cfg.runtime.plot else "")
               + (f", TensorBoard {cfg.out}/tensorboard" if cfg.runtime.log == "tensorboard" else ""))


@main.command("eval")
@click.option("--checkpoint", default=None, help="a .safetensors checkpoint")
@click.option("--pretrained", default=None,
              help="a pretrained folder, a shipped model name (e.g. a2os2a_fmnist) or hf-hub:owner/name")
@click.option("--data", default=None, help="dataset [default: the pretrained card's, else fashion-mnist]")
@click.option("--data-dir", default=None)
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "json_out", default=None, help="also write the metrics to this JSON file")
@click.option("--tta-flip", is_flag=True, help="average the logits of each image and its horizontal mirror")
@click.option("--int8", is_flag=True,
              help="evaluate the inference path `spikeformers bench` times: BatchNorm folded, bf16 weights, int8 "
                   "products where a layer's input is spikes (an approximation like bf16; docs/performance.md)")
@click.option("--device", default=None, help="cpu, cuda or cuda:N [default: cuda when available, else cpu]")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0),
              help="DataLoader workers (not Fashion-MNIST, which is held in memory)")
def eval_cmd(checkpoint, pretrained, data, data_dir, batch_size, json_out, tta_flip, int8, device, workers):
    """Evaluate a checkpoint or pretrained model on the test set."""
    import contextlib

    import torch

    from .accel import int8_available, int8_inference
    from .engine import evaluate, load_checkpoint
    from .engine.trainer import data_loaders
    _threads(None)
    device = _device(device)
    if int8 and device != "cpu":
        raise click.UsageError("--int8 runs oneDNN's CPU operators; use --device cpu")
    if int8 and not int8_available():
        raise click.UsageError("--int8 needs a CPU build of PyTorch with oneDNN's int8 operators (x86); "
                               "evaluate without it")
    if (checkpoint is None) == (pretrained is None):
        raise click.UsageError("give one of --checkpoint FILE or --pretrained SOURCE")
    if pretrained is not None:
        from .models.registry import from_pretrained
        model = from_pretrained(pretrained)
        meta = {"model": model.model_name}
        data = data or (model.pretrained.get("card") or {}).get("data")
    else:
        model, meta = load_checkpoint(checkpoint)
    data = data or "fashion-mnist"
    _, test, info = data_loaders(TrainConfig.from_dict(data=data, data_dir=data_dir, batch_size=batch_size,
                                                       workers=workers))
    if (model.in_chans, model.img_size, model.num_classes) != (info["in_chans"], info["img_size"], info["num_classes"]):
        raise ConfigError(f"checkpoint model {meta.get('model')} expects [B,{model.in_chans},{model.img_size},"
                         f"{model.img_size}] with {model.num_classes} classes; {data} has [B,{info['in_chans']},"
                         f"{info['img_size']},{info['img_size']}] with {info['num_classes']} classes")
    model = model.to(device)
    ctx = contextlib.nullcontext()
    if int8:
        model, ctx = int8_inference(model), torch.autocast("cpu", dtype=torch.bfloat16)
    with ctx:
        m = evaluate(model, test, desc="eval", tta_flip=tta_flip)
    click.echo(f"{meta.get('model')} on {data} test ({m['n']} images{', flip TTA' if tta_flip else ''}"
               f"{', int8 products' if int8 else ''}): accuracy {m['acc']:.2f} %, loss {m['loss']:.4f}, "
               f"{m['img_s']:.0f} img/s")
    classes = info.get("classes") or []
    if m["per_class_acc"]:
        click.echo("per class:")
        for k, acc in enumerate(m["per_class_acc"]):
            name = classes[k] if k < len(classes) else str(k)
            click.echo(f"  {k:>3} {str(name)[:24]:<24} {acc:6.2f} %")
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"model": meta.get("model"), "data": data, "tta_flip": tta_flip, "int8": int8, **m}, f, indent=2)


@main.command()
@click.argument("pattern", required=False)
@click.option("--params/--no-params", default=True, show_default=True, help="count parameters (builds each model on the meta device)")
@click.option("--markdown", is_flag=True, help="print the models table in Markdown (params, paper accuracy, source)")
def models(pattern, params, markdown):
    """List registered models (optionally matching a glob PATTERN) with their paper top-1 figures
    (a mark for a figure that rests on a secondary source)."""
    import torch

    from .models import create_model, list_models, model_entry
    from .models.table import SECONDARY_MARK, SECONDARY_NOTE, paper_figures
    names = list_models(pattern)
    if not names:
        raise ConfigError(f"no registered model matches {pattern!r}; see `spikeformers models` for the list")
    if markdown:
        from .models.table import markdown_table
        click.echo(markdown_table(pattern))
        return
    marked = False
    for name in names:
        e = model_entry(name)
        d = e.defaults
        line = f"{name:32s} T={d.get('T', '?'):<3} {d.get('in_chans', '?')}x{d.get('img_size', '?')}x{d.get('img_size', '?')} " \
               f"classes={d.get('num_classes', '?'):<5}"
        if params:
            with torch.device("meta"):
                n = sum(p.numel() for p in create_model(name).parameters())
            line += f" params={n:>12,}"
        figures = paper_figures(e.meta)
        if figures:
            line += "  paper: " + ", ".join(f"{v:g} {k}" + (f"{SECONDARY_MARK} ({conf or '?'} confidence)" if sec else "")
                                            for k, v, sec, conf in figures)
            marked = marked or any(sec for *_, sec, _ in figures)
        click.echo(line)
    if marked:
        click.echo(SECONDARY_NOTE)


@main.group()
def data():
    """Inspect datasets in their on-disk formats."""


@data.command("check")
@click.option("--data", "name", required=True, type=click.Choice(DATASETS), help="dataset")
@click.option("--data-dir", default=None, help="dataset folder")
@click.option("--T", "T", default=None, type=click.IntRange(min=1), help="event data: frames per sample (default 16)")
@click.option("--split-by", default="number", type=click.Choice(["number", "time"]), help="event data: frame split")
def data_check(name, data_dir, T, split_by):
    """Print the number of train and test samples, the classes and one sample's tensor shape."""
    from .data import build_dataset
    kw = {}
    if name in ("dvs128-gesture", "cifar10-dvs"):
        kw = {"T": T or 16, "split_by": split_by, "progress": True}
    train_ds = build_dataset(name, data_dir, True, **kw)
    test_ds = build_dataset(name, data_dir, False, **kw)
    x, y = train_ds[0]
    info = train_ds.info
    classes = list(info.classes)
    click.echo(f"{name} in {data_dir}: {len(train_ds)} train / {len(test_ds)} test samples")
    click.echo(f"{info.num_classes} classes: {', '.join(map(str, classes[:20]))}{' ...' if len(classes) > 20 else ''}")
    click.echo(f"sample 0: tensor {list(x.shape)} {str(x.dtype).replace('torch.', '')}, label {y}"
               + (f" ({classes[y]})" if y < len(classes) else ""))


@main.command()
@click.argument("official", type=click.Path(exists=True, dir_okay=False))
@click.option("--source", required=True,
              help='official code that made the weights, "owner/repo:path:Name", e.g. '
                   '"ZK-Zhou/spikformer:cifar10/model.py:Spikformer" (see --list-sources)')
@click.option("--kwargs", "kwargs_json", default=None,
              help='JSON of the official constructor kwargs, e.g. \'{"embed_dims": 384, "depths": 4}\'')
@click.option("--out", required=True, help="output .safetensors (a .json sidecar is written beside it)")
@click.option("--folder", default=None,
              help="also a pretrained folder (config.json, model.safetensors, README.md card) for "
                   "spikeformers.from_pretrained [default: OUT without its suffix]")
@click.option("--data", default=None, help="the data the official weights were trained on, for the card (e.g. cifar10)")
@click.option("--license", "license_", default=None, help="the official weights' licence, for the card")
def convert(official, source, kwargs_json, out, folder, data, license_):
    """Convert an official checkpoint OFFICIAL (.pth) into a spikeformers checkpoint and pretrained folder."""
    from .engine.checkpoint import save_checkpoint
    from .models import model_entry
    from .models.official import from_official
    kw = _json_object(kwargs_json, "--kwargs")
    model = from_official(official, source, **kw)
    # Saved in our own conventions ([B, K] logits); the numerical quirk flags are kept.
    if model.config.get("per_step_logits"):
        model.config["per_step_logits"] = False
    path = save_checkpoint(out, model, official_source=source, official_kwargs=kw,
                           official_dropped=model.official_dropped)
    repo = source.split(":")[0].split("@")[0]
    folder = Path(folder) if folder else path.with_suffix("")
    entry = model_entry(model.model_name)
    family = (sys.modules[entry.factory.__module__].__doc__ or model.model_name).splitlines()[0]
    model.save_pretrained(folder, data=data, architecture=f"{family} {entry.meta.get('source', '')}".strip(),
                          source=f"official checkpoint {Path(official).name} of https://github.com/{repo} "
                                 f"({source}), converted by `spikeformers convert` (same logits)",
                          license=license_ or f"not stated here: see https://github.com/{repo}",
                          official_kwargs=kw)
    n = sum(p.numel() for p in model.parameters())
    click.echo(f"{source} -> {path} and {folder}/ ({model.model_name} config, {n:,} params; dropped unused "
               f"official entries: {len(model.official_dropped)})")


@main.command("plot")
@click.argument("run_dir", type=click.Path(exists=True))
@click.option("--out", default=None, help="PNG to write [default: RUN_DIR/curves.png]")
def plot_cmd(run_dir, out):
    """Draw a run's curves (loss, accuracy, learning rate, firing rate) from RUN_DIR/metrics.jsonl."""
    from .analysis.plots import plot_run
    click.echo(f"wrote {plot_run(run_dir, out)}")


@main.command(context_settings={"show_default": True})
@click.option("--model", "name", required=True, help="registered model name (see `spikeformers models`)")
@click.option("--T", "T", default=4, type=click.IntRange(min=1), help="time steps")
@click.option("--batch", default=16, type=click.IntRange(min=1), help="batch size")
@click.option("--img-size", default=32, type=click.IntRange(min=1), help="input height and width")
@click.option("--num-classes", default=10, type=click.IntRange(min=1))
@click.option("--precision", default="auto", type=click.Choice(["auto", "fp32", "bf16"]),
              help="autocast precision; auto: the faster of the two on this machine, as `train` picks it")
@click.option("--compile/--no-compile", "compile_", default=False, help="torch.compile the model (slow to build)")
@click.option("--optimize/--no-optimize", default=True, help="1x1 convs as matmuls, channels-last")
@click.option("--fuse/--no-fuse", default=True, help="fold BatchNorm into the convs for inference")
@click.option("--int8/--no-int8", default=None,
              help="inference with int8 products where a layer's input is spikes (weights rounded per channel; "
                   "docs/performance.md for the accuracy); default: on for a CPU with oneDNN's int8 operators, off with --compile")
@click.option("--reps", default=5, type=click.IntRange(min=1), help="timed repetitions (median)")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="torch CPU threads (default: all cores)")
@click.option("--device", default=None, help="cpu, cuda or cuda:N [default: cuda when available, else cpu]")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--model-kwargs", default=None, help='JSON of extra model kwargs, e.g. \'{"embed_dim": 192}\'')
def bench(name, T, batch, img_size, num_classes, precision, compile_, optimize, fuse, int8, reps, threads, device,
          as_json, model_kwargs):
    """Train / inference images per second, peak memory and achieved GFLOP/s of a model, against
    this machine's measured fp32 and bf16 matmul peaks."""
    from .analysis.bench import bench_model
    _threads(threads)
    device = _device(device)
    r = bench_model(name, T=T, batch=batch, img_size=img_size, num_classes=num_classes, precision=precision,
                    compile=compile_, optimize=optimize, fuse=fuse, reps=reps, device=device,
                    model_kwargs=_json_object(model_kwargs, "--model-kwargs"), int8=int8)
    if as_json:
        click.echo(json.dumps(r.to_dict()))
        return
    precision = r.precision
    peak = r.peak_bf16_gflops_s if precision == "bf16" else r.peak_fp32_gflops_s
    click.echo(f"{name}: T={T} batch={batch} {img_size}x{img_size} {num_classes} classes, {precision}"
               f"{', compiled' if compile_ else ''}{', optimized' if optimize else ''}, {r.threads} threads"
               f"{f' on {r.cpu}' if r.cpu else ''}")
    share = (f"{100 * r.gflops_s / peak:.0f} % of the {precision} matmul peak" if peak == peak
             else f"{precision} is not native here: no peak")
    click.echo(f"  train     {r.train_img_s:8.1f} img/s   {r.gflops_s:7.1f} GFLOP/s "
               f"({share}; {r.train_gflop_per_step:.1f} GFLOP/step)")
    click.echo(f"  inference {r.infer_img_s:8.1f} img/s   {r.infer_gflops_s:7.1f} GFLOP/s"
               f"{' (BatchNorm folded)' if fuse else ''}; spiking neurons fired {100 * r.infer_spike_rate:.2f} % of outputs")
    if r.int8:
        click.echo(f"            (int8 products on spike inputs; with {precision} products: {r.infer_float_img_s:.1f} img/s)")
    bf16 = (f"{r.peak_bf16_gflops_s:.0f} GFLOP/s" if r.peak_bf16_gflops_s == r.peak_bf16_gflops_s
            else "not native (emulated, not timed)")
    click.echo(f"  peak memory {r.peak_mem_mb:.0f} MB; matmul peaks fp32 {r.peak_fp32_gflops_s:.0f} GFLOP/s, "
               f"bf16 {bf16}; {r.kernel}")


@main.command(context_settings={"show_default": True})
@click.option("--attentions", required=True,
              help="comma-separated attention names, or 'all' (ssa, sdsa, qk_token, qk_channel, dssa, a2os2a, "
                   "statten, stmixer, ms, ds2ta); NAME:KEY=VALUE[:KEY=VALUE] gives one entry options of its own, "
                   "so settings of one attention compare side by side: 'a2os2a,a2os2a:proj=none'")
@click.option("--backbone", default="spikedriven_fmnist",
              help="registered Spike-driven Transformer or Spikformer model that takes attention=")
@click.option("--data", default="fashion-mnist", type=click.Choice(DATASETS))
@click.option("--data-dir", default=None, help="dataset folder (default: $SPIKEFORMERS_DATA or the system copy)")
@click.option("--epochs", default=1, type=click.IntRange(min=1))
@click.option("--max-steps", default=None, type=click.IntRange(min=1), help="stop each training after N optimizer steps")
@click.option("--batch-size", default=128, type=click.IntRange(min=1))
@click.option("--lr", default=2e-3, type=float)
@click.option("--warmup-epochs", default=0.25, type=float,
              help="linear warm-up length in epochs (keep it below --max-steps' share of an epoch)")
@click.option("--T", "T", default=None, type=click.IntRange(min=1), help="time steps (default: the backbone's)")
@click.option("--seed", default=0, type=int)
@click.option("--model-kwargs", default=None, help='JSON of backbone kwargs shared by all, e.g. \'{"embed_dim": 64}\'')
@click.option("--attn-kwargs", default=None, help='JSON {attention: {option: value}}, e.g. \'{"statten": {"chunk": 1}}\'')
@click.option("--eval-images", default=None, type=click.IntRange(min=1), help="test on the first N test images (default: all)")
@click.option("--energy-images", default=256, type=click.IntRange(min=1), help="test images for firing rates and energy")
@click.option("--speed-images", default=512, type=click.IntRange(min=1), help="test images for inference img/s")
@click.option("--tp-keep", default=None, type=click.IntRange(min=1),
              help="also evaluate each trained model with TP token pruning, k^2 tokens per block (no retraining)")
@click.option("--halting", is_flag=True, help="also evaluate each trained model with STAS-style adaptive halting")
@click.option("--recalibrate-bn", default=0, type=click.IntRange(min=0),
              help="re-estimate BatchNorm statistics on N training images before testing (short budgets; 0 = off)")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="torch CPU threads (default: all cores)")
@click.option("--out", default="runs/compare", help="output folder (table, CSV, JSON, plot, one run folder per attention)")
def compare(attentions, backbone, model_kwargs, attn_kwargs, energy_images, speed_images, tp_keep, halting,
            recalibrate_bn, threads, out, **opts):
    """Train one backbone with each attention under the same seed, data and budget; write a table
    (accuracy, params, firing rate, energy under both accountings, train/inference img/s) as
    Markdown and CSV, and a plot of accuracy against energy."""
    from .analysis.compare import compare as run_compare
    from .nn.attention import ATTENTIONS
    _threads(threads)
    names = list(ATTENTIONS) if attentions.strip() == "all" else [a.strip() for a in attentions.split(",") if a.strip()]
    mk = _json_object(model_kwargs, "--model-kwargs")
    ak = _json_object(attn_kwargs, "--attn-kwargs")
    base = TrainConfig.from_dict(model=backbone, model_kwargs=mk, out=out, **opts)
    rows = run_compare(names, backbone, out, base, ak, energy_images, speed_images, tp_keep, halting,
                       recalibrate_bn)
    click.echo(Path(out, "compare.md").read_text())
    click.echo(f"{len(rows)} rows; table {out}/compare.md and .csv, plot {out}/compare.png")


@main.command()
@click.argument("dataset", type=click.Choice(["fashion-mnist", "cifar10", "cifar100"]))
@click.option("--dest", default=None,
              help="target folder (default: the cache ~/.cache/spikeformers, where the readers look without "
                   "--data-dir; Fashion-MNIST: its fashion-mnist/ subfolder)")
@click.option("--url", default=None,
              help="fetch from this mirror instead (CIFAR: the archive's URL; Fashion-MNIST: the folder's); "
                   "the published MD5 sums are still checked")
@click.option("--keep-archive", is_flag=True, help="CIFAR: keep the .tar.gz after extracting it")
@click.option("--quiet", is_flag=True, help="no progress bar")
def download(dataset, dest, url, keep_archive, quiet):
    """Download a dataset and verify its published MD5 sums (CIFAR: resumable, extracted safely; see
    docs/datasets.md)."""
    if dataset == "fashion-mnist":
        from .data.fashion_mnist import CACHE_DIR, DEFAULT_URL, download_fashion_mnist
        click.echo(f"Fashion-MNIST in {download_fashion_mnist(dest or CACHE_DIR, base_url=url or DEFAULT_URL)}")
        return
    from .data.download import download as download_archive
    folder = download_archive(dataset, dest, url=url, keep_archive=keep_archive, progress=not quiet)
    click.echo(f"{dataset} in {folder}" + (f" (train and evaluate with --data {dataset} --data-dir {dest})" if dest
                                           else f" (found there by --data {dataset} without --data-dir)"))


@main.command("export", context_settings={"show_default": True})
@click.option("--model", default=None, help="registered model name (with --checkpoint / --pretrained: the model it "
                                            "must hold)")
@click.option("--checkpoint", default=None, help="a .safetensors checkpoint (rebuilds its model)")
@click.option("--pretrained", default=None,
              help="a pretrained folder, the name of a model shipped with its weights, or hf-hub:owner/name")
@click.option("--format", "fmt", default="onnx", type=click.Choice(["onnx", "pt2"]),
              help="onnx (needs the export extra) or pt2 (a torch.export program)")
@click.option("--out", required=True, help="the file to write")
@click.option("--frames/--images", default=None,
              help="input [B,T,C,H,W] frames or [B,C,H,W] static images [default: frames for event-camera models]")
@click.option("--model-kwargs", default=None, help="JSON of model kwargs overrides")
@click.option("--opset", default=None, type=click.IntRange(min=7), help="ONNX opset [default: the exporter's]")
@click.option("--optimize/--no-optimize", default=True, help="let the ONNX exporter simplify the graph")
@click.option("--check/--no-check", default=True,
              help="load the file back, run it on another batch size and compare its logits with PyTorch's")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="torch CPU threads (default: all cores)")
def export_cmd(model, checkpoint, pretrained, fmt, out, frames, model_kwargs, opset, optimize, check, threads):
    """Export a model for inference: dynamic batch, T unrolled, no custom kernels (docs/export.md)."""
    from .analysis.energy import model_dataset
    from .analysis.export import export
    _threads(threads)
    net, note, hint, _ = _energy_model(model, checkpoint, pretrained, model_kwargs)
    if frames is None:
        frames = model_dataset(net, hint) in ("dvs128-gesture", "cifar10-dvs")
    r = export(net.cpu(), out, fmt, frames=frames, opset=opset, optimize=optimize, check=check)
    click.echo(f"{getattr(net, 'model_name', type(net).__name__)} ({note}) -> {r}")


# ----------------------------------------------------------------------------------------------
# energy / audit
# ----------------------------------------------------------------------------------------------
def _energy_model(model, checkpoint, pretrained, model_kwargs):
    """(model, note about its weights, the dataset its checkpoint was trained on, trained?)."""
    kwargs = _json_object(model_kwargs, "--model-kwargs")
    if checkpoint and pretrained:
        raise ConfigError("give --checkpoint FILE or --pretrained NAME|FOLDER, not both")
    if checkpoint:
        from .engine.checkpoint import load_checkpoint
        net, meta = load_checkpoint(checkpoint, expect_model=model, **kwargs)
        tc = meta.get("train_config") or {}
        hint = tc.get("data")
        hint = hint.get("name") if isinstance(hint, dict) else hint
        return net, f"weights: {checkpoint}", hint, True
    if pretrained:
        import spikeformers
        net = spikeformers.from_pretrained(pretrained, **kwargs)
        if model and getattr(net, "model_name", None) != model:
            raise ConfigError(f"--pretrained {pretrained} holds model {getattr(net, 'model_name', '?')!r}, "
                              f"expected {model!r} (--model); leave --model out to use whichever it holds")
        return net, f"weights: pretrained {pretrained}", None, True
    if model:
        from .models import create_model
        return create_model(model, **kwargs), "weights: random init (untrained)", None, False
    raise ConfigError("give --model NAME, --checkpoint FILE or --pretrained NAME|FOLDER")


def _device(device: str | None) -> str:
    """``device``, or cuda when PyTorch sees a GPU, else cpu; a clear error for one it cannot use."""
    import torch

    from .errors import UnsupportedError
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a device; expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnsupportedError(f"--device {device}: this PyTorch build sees no CUDA GPU; use --device cpu")
    return device


def _energy_setup(model, checkpoint, pretrained, data, data_dir, batches, batch_size, seed, model_kwargs,
                  calibrate_bn, device):
    """(model in eval mode on its device, list of input batches, note about weights and data, event
    input?) for energy / audit."""
    from .analysis import energy as E
    net, note, hint, trained = _energy_model(model, checkpoint, pretrained, model_kwargs)
    dev = _device(device)
    net = net.to(dev)
    xs, desc, events = E.load_batches(net, data, data_dir, batches, batch_size, seed, hint=hint)
    note += f"; data: {desc}"
    if calibrate_bn is None:
        calibrate_bn = not trained
    if calibrate_bn:
        E.calibrate_batchnorm(net, xs[0])
        note += ("; BatchNorm statistics calibrated on the first batch"
                 + ("" if trained else " (untrained weights: --no-calibrate-bn keeps the initial ones)"))
    return net.eval(), xs, f"{note}; device {dev}", events


def _silent_warning(report) -> None:
    silent = [n.name for n in report.silent_neurons]
    if silent and report.fired:
        click.echo(f"warning: {len(silent)} of {len(report.neurons)} neuron layers never fired "
                   f"({', '.join(silent[:4])}{', ...' if len(silent) > 4 else ''})", err=True)


def _energy_options(f):
    for opt in reversed([
        click.option("--model", default=None, help="registered model name (with --checkpoint / --pretrained: "
                                                   "the model it must hold)"),
        click.option("--checkpoint", default=None, help="a .safetensors checkpoint (rebuilds its model)"),
        click.option("--pretrained", default=None,
                     help="a pretrained folder, the name of a model shipped with its weights, or hf-hub:owner/name"),
        click.option("--data", default="auto", show_default=True, type=click.Choice(["auto", "random", *DATASETS]),
                     help="inputs: the first test samples of a dataset `train` reads; random: N(0,1) images of the "
                          "model's input shape; auto: the model's own dataset if it is on disk, else random"),
        click.option("--data-dir", default=None,
                     help="dataset folder (without it, Fashion-MNIST and CIFAR are looked for in $SPIKEFORMERS_DATA, "
                          "the system copy and the download cache)"),
        click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1)),
        click.option("--seed", default=0, show_default=True, type=int, help="seed of --data random"),
        click.option("--model-kwargs", default=None, help="JSON of model kwargs overrides"),
        click.option("--threads", default=None, type=click.IntRange(min=1),
                     help="torch CPU threads (1 is fastest for small models on shared cores)"),
        click.option("--device", default=None, help="cpu, cuda or cuda:N [default: cuda when available, else cpu]"),
        click.option("--calibrate-bn/--no-calibrate-bn", default=None,
                     help="set BatchNorm statistics from the first batch so that neurons fire "
                          "[default: on for untrained weights (--model), off for --checkpoint / --pretrained]"),
    ]):
        f = opt(f)
    return f


@main.command()
@_energy_options
@click.option("--batches", default=4, show_default=True, type=click.IntRange(min=1), help="batches to average over")
@click.option("--accounting", default="both", show_default=True, type=click.Choice(["paper", "strict", "both"]))
@click.option("--csv", "csv_out", default=None, help="write the per-layer table to this CSV file")
@click.option("--json", "json_out", default=None, help="write totals and layers to this JSON file")
@click.option("--plot", default=None, help="save a bar chart of per-layer firing rates (PNG)")
@click.option("--plot-attention", default=None,
              help="save the attention tensors of one input as a PNG grid: what passes through each "
                   "attention's attn_map (A2OS2A: K^T V per head, or Q K^T with order qk_v; SDSA: the "
                   "heads x channels mask)")
@click.pass_context
def energy(ctx, model, checkpoint, pretrained, data, data_dir, batch_size, seed, model_kwargs, threads, device,
           calibrate_bn, batches, accounting, csv_out, json_out, plot, plot_attention):
    """Per-layer FLOPs, firing rates, MACs/ACs/SOPs and energy per image (E_MAC 4.6 pJ, E_AC 0.9 pJ).

    `paper` counts energy the way the model's own paper does (event-camera input: the first layer
    accumulates events); `strict` counts every product without a spike operand as a MAC (the
    Spikingformer tool's rule). Exit status 3 (INCONCLUSIVE) when no neuron fired. See docs/energy.md."""
    from .analysis import energy as E
    _threads(threads)
    net, xs, note, events = _energy_setup(model, checkpoint, pretrained, data, data_dir, batches, batch_size, seed,
                                          model_kwargs, calibrate_bn, device)
    accs = ["paper", "strict"] if accounting == "both" else [accounting]
    report = E.measure(net, xs, events=True if events else None)
    click.echo(f"{report.model_name} (family {report.family}); {note}")
    click.echo(report.table(accs))
    _silent_warning(report)
    if csv_out:
        report.write_csv(csv_out, accs)
        click.echo(f"wrote {csv_out}")
    if json_out:
        report.write_json(json_out, accs)
        click.echo(f"wrote {json_out}")
    if plot:
        E.plot_firing_rates(report, plot)
        click.echo(f"wrote {plot}")
    if plot_attention:
        maps = E.capture_attention(net, xs[0][:1])
        E.plot_attention(maps, plot_attention)
        click.echo(f"wrote {plot_attention} ({len(maps)} attention modules)")
    if not report.fired:
        click.echo(f"INCONCLUSIVE: no neuron fired in any of the {len(report.neurons)} neuron layers: the figures "
                   "are those of a network that does nothing (measure trained weights on real data, or "
                   "calibrate BatchNorm with --calibrate-bn)")
        ctx.exit(E.EXIT_CODES["INCONCLUSIVE"])


@main.command()
@_energy_options
@click.option("--batches", default=1, show_default=True, type=click.IntRange(min=1))
@click.pass_context
def audit(ctx, model, checkpoint, pretrained, data, data_dir, batch_size, seed, model_kwargs, threads, device,
          calibrate_bn, batches):
    """List every product of two non-spike operands (real x real; integer is non-spike) outside the
    first layer and the classifier. Exit status: 0 PASS, 1 FAIL (such products exist), 3
    INCONCLUSIVE (no neuron fired, or products passed only on spike tensors that stayed zero)."""
    from .analysis import energy as E
    _threads(threads)
    net, xs, note, events = _energy_setup(model, checkpoint, pretrained, data, data_dir, batches, batch_size, seed,
                                          model_kwargs, calibrate_bn, device)
    report = E.measure(net, xs, events=True if events else None)
    result = E.audit_verdict(report)
    click.echo(f"{report.model_name} (family {report.family}); {note}")
    _silent_warning(report)
    enc, cls = [r for r in report.ops if report.role(r) == "first"], report.classifier
    layers = ", ".join(f"{r.name} ({' x '.join(r.domains)})" for r in enc) or "-"
    click.echo(f"exempt: input layer{'s' if len(enc) > 1 else ''} {layers}, "
               f"classifier {cls.name if cls else '-'} ({' x '.join(cls.domains) if cls else ''})")
    if result.verdict == "FAIL":
        click.echo(f"FAIL: {len(result.findings)} product(s) with no spike operand:")
        for f in result.findings:
            click.echo(f"  {f}")
        if any("integer" in f.domains or "signed-integer" in f.domains for f in result.findings):
            click.echo("note: an integer operand is a sum of spikes (e.g. a residual stream that adds spike tensors); "
                       "the strict rule counts a product with it as a multiplication, the paper accounting as "
                       "spikes (docs/energy.md)")
    else:
        click.echo(f"{result.verdict}: {result.reason}")
    ctx.exit(result.exit_code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
